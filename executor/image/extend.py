"""A repository's own base: the plain base plus its locked packages and its captured data, written by hand.

    base = extend(api, core, core_labels, locked, wheels, snapshots, cache_dir=..., progress=...)

Layers on top of the plain base (`core`, which the engine holds, so the archive lists its layers
without their bytes), each written by layer.write_layer, so that the same inputs give the same bytes
and therefore the same image ID on any machine (the classic builder would stamp build times):

  deps      the lock's wheels installed under /opt/sealab/deps (deps.install), first on PYTHONPATH
  data      one layer per [data] directory, at /opt/sealab/home/REL (capture.write_data_layer)
  sealab    /opt/sealab/home.json: the captured directories, which the launcher links into HOME

The recipe (the core's ID, this code, the lock's digest and its wheels' sha256, each directory's
stat snapshot) maps to the image ID in cache_dir/extended/, so an unchanged lock and unchanged data
reuse the base without reading a byte of them. The base's data digest covers the embedded data
manifest and every captured directory's diff ID.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from executor.errors import BaseImageError
from executor.image import capture, deps, docker_build, layer
from executor.image.capture import Snapshot
from executor.image.deps import Locked
from executor.image.layer import Entry, image_config, tree_entries, write_archive, write_layer
from executor.docker_engine import load_stream
from executor.types import BaseImage, canonical_json, sha256_hex

RECIPE_VERSION = "sealab-extend/1"
HOME_LIST = "opt/sealab/home.json"
Progress = Callable[[str, str], None]


def data_digest(manifest_digest: str, dirs: Sequence[tuple[str, str]]) -> str:
    """The data digest of a base with captured directories: the embedded manifest's and each
    directory's diff ID (pure); a base without any keeps the manifest's digest."""
    if not dirs:
        return manifest_digest
    return "sha256:" + sha256_hex(canonical_json({"manifest": manifest_digest, "dirs": [list(d) for d in dirs]}))


def recipe(core: BaseImage, locked: Locked | None, wheels: Sequence[tuple[str, str]],
           snapshots: Sequence[Snapshot]) -> str:
    """"sha256:<hex>" over everything that decides the extended base (pure but for reading this code)."""
    code = sha256_hex(b"".join(sha256_hex(Path(m.__file__).read_bytes()).encode()
                               for m in (capture, deps, layer)) + Path(__file__).read_bytes())
    return "sha256:" + sha256_hex(canonical_json({
        "version": RECIPE_VERSION, "core": core.image_id, "code": code,
        "lock": locked.digest if locked else None, "wheels": sorted(list(w) for w in wheels),
        "data": [[s.name, s.key] for s in snapshots]}))


def extend(api: Any, core: BaseImage, core_labels: Mapping[str, str], locked: Locked | None,
           wheels: Sequence[tuple[str, str, Path]], snapshots: Sequence[Snapshot], *, cache_dir: Path,
           tmp_dir: Path, tag: str, rebuild: bool, progress: Progress) -> BaseImage:
    """The core base with the lock's packages (`wheels`: name, sha256, path) and the captured directories.

    Raises:
        BaseImageError: installing the wheels failed, a [data] directory changed while captured, or
            the engine did not keep the image.
    """
    key = recipe(core, locked, [(n, h) for n, h, _ in wheels], snapshots)
    known = cache_dir / "extended" / f"{key.removeprefix('sha256:')}.json"
    if not rebuild and known.is_file():
        base = BaseImage.from_dict(json.loads(known.read_text()))
        if docker_build.inspect(api, base.image_id) is not None:
            progress("recipe", f"lock and data unchanged ({key[:23]}): reusing {base.image_id[:19]}")
            docker_build.tag(api, base.image_id, tag)
            return base
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="sealab-extend-", dir=tmp_dir))
    try:
        layers: list[tuple[str, Path]] = []
        names: list[str] = []
        if wheels:
            tree = work / "deps-tree"
            progress("assemble", f"installing {len(wheels)} wheels of {locked.source if locked else 'the lock'}")
            deps.install([p for _, _, p in wheels], tree)
            path = work / "deps.tar"
            with path.open("wb") as fh:
                diff = write_layer(tree_entries(tree), fh)
            shutil.rmtree(tree, ignore_errors=True)
            layers.append((diff, path))
            names.append("sealab base layer deps")
            progress("assemble", f"deps layer {diff[:19]} ({path.stat().st_size / 1e6:.0f} MB)")
        captured: list[tuple[str, str]] = []
        for i, snap in enumerate(snapshots):
            path = work / f"data-{i}.tar"
            with path.open("wb") as fh:
                diff = capture.write_data_layer(snap, fh, progress)
            layers.append((diff, path))
            names.append(f"sealab base layer data {snap.name}")
            captured.append((snap.name, diff))
            progress("assemble", f"data layer {snap.name} {diff[:19]} ({path.stat().st_size / 1e6:.0f} MB)")
        path = work / "sealab.tar"
        with path.open("wb") as fh:
            diff = write_layer([Entry(HOME_LIST, json.dumps([s.name for s in snapshots]).encode() + b"\n")], fh)
        layers.append((diff, path))
        names.append("sealab base layer home")
        env = list(core.env)
        if wheels:
            old = next((e for e in env if e.startswith("PYTHONPATH=")), None)
            if old is not None:
                env.remove(old)
            env.append(f"PYTHONPATH=/{deps.SITE}" + (":" + old.removeprefix("PYTHONPATH=") if old else ""))
        labels = {**core_labels, "sealab.recipe": key, "sealab.core": core.image_id,
                  "sealab.data-dirs": json.dumps([list(c) for c in captured])}
        if locked is not None:
            labels["sealab.deps"] = locked.digest
        diff_ids = [*core.diff_ids, *(d for d, _ in layers)]
        config = image_config(diff_ids=diff_ids, env=env, cmd=core.cmd, labels=labels,
                              created_by=[*(f"sealab base layer {i}" for i in range(len(core.diff_ids))), *names],
                              architecture=core.architecture, os=core.os)
        image_id = layer.image_id(config)
        archive = work / "base.tar"
        with archive.open("wb") as fh:
            write_archive(fh, config, [*((d, None) for d in core.diff_ids), *layers], tag)
        progress("assemble", f"loading {image_id[:19]} ({archive.stat().st_size / 1e6:.0f} MB of new layers)")
        with archive.open("rb") as fh:
            load_stream(api, fh)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if docker_build.inspect(api, image_id) is None:
        raise BaseImageError(f"the engine did not keep the extended base as {image_id}")
    base = BaseImage(image_id=image_id, diff_ids=tuple(diff_ids), env=tuple(env), cmd=core.cmd, recipe=key,
                     data_digest=data_digest(core.data_digest, captured), source=core.source,
                     architecture=core.architecture, os=core.os, deps=locked.digest if locked else None,
                     torch=core.torch, cuda=core.cuda, data_dirs=tuple(captured))
    known.parent.mkdir(parents=True, exist_ok=True)
    known.write_text(json.dumps(base.to_dict()))
    progress("recipe", f"extended {core.image_id[:19]} into {image_id[:19]} in {time.monotonic() - started:.1f} s")
    return base
