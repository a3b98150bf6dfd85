"""`sealab base`: build the base environment image offline, or reuse it when its recipe is unchanged.

    base = build_base(engine_client, source=None, wheels_dir=Path("/opt/wheels"),
                      cache_dir=default_cache_dir(), progress=callback)   # -> BaseImage
    (agent.progress.RichProgress renders the callback on a terminal)

Steps, each reported as progress(step, detail):
  source           --from IMAGE: that image, which must be present locally
  wheels           the torch wheel from wheels_dir plus its dependencies (and numpy, so that torch
                   imports without a warning): from wheels_dir when all are there, otherwise
                   downloaded once with pip into cache_dir/wheels and reused after.
                   torch="cuda": PyPI's CUDA torch and its nvidia-* runtime wheels at pinned, hashed
                   versions (executor.image.cuda), downloaded once into cache_dir/torch-cuda
  torch-cuda       torch="cuda": one line a wheel as pip downloads it
  rootfs           no --from: a reproducible Debian bookworm python3 tree (executor.image.rootfs, cached
                   under cache_dir/rootfs)
  recipe           no --from: sha256 over the rootfs tar, the wheels, prepare_data.py and the assembly
                   code (assemble.py and layer.py, which write the image's bytes); the image is assembled
                   deterministically (executor.image.assemble), so the same recipe gives the same
                   image ID on any machine, and a known one is reused unbuilt.
                   --from: sha256 over Dockerfile.train, prepare_data.py, the FROM image ID and the
                   wheels; an image whose own build labelled it sealab.recipe=<it> is reused, unbuilt
  assemble         one call per layer of the assembled base
  build            --from: one call per line of the classic builder's output (network none)
  data             the data manifest read out of the image without running it
  done             the image ID
Docker is reached only through executor.image.docker_build and executor.docker_engine.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Mapping

from executor.image import assemble, capture, cuda, deps, docker_build, extend, layer, rootfs
from executor.image.layer import Entry, write_archive, write_layer
from executor.docker_engine import load_stream
from executor.errors import BaseImageError
from executor.types import BaseImage, canonical_json, sha256_hex

Progress = Callable[[str, str], None]

_HERE = Path(__file__).resolve().parents[1]  # executor/
# A built wheel carries the recipe as executor/Dockerfile.train (pyproject force-include); a source
# checkout has it at the repository's top level.
DOCKERFILE = next((p for p in (_HERE / "Dockerfile.train", _HERE.parent / "Dockerfile.train") if p.is_file()),
                  _HERE.parent / "Dockerfile.train")
PREPARE_DATA = _HERE / "scaffold" / "prepare_data.py"
CONTEXT_DOCKERFILE = "Dockerfile.train"
CONTEXT_PREPARE_DATA = "executor/scaffold/prepare_data.py"  # the paths Dockerfile.train COPYs from
CONTEXT_WHEELS = "wheels"

BASE_TAG = "sealab/base:latest"
OFFLINE_SOURCE = "offline:bookworm"
LABEL_RECIPE = "sealab.recipe"
LABEL_SOURCE = "sealab.source"
DATA_MANIFEST = "/opt/sealab/data/manifest.json"

# The interpreter the wheels are for: Debian bookworm's python3 (3.11) on x86_64.
PYTHON_VERSION = "3.11"
PLATFORM = "manylinux_2_28_x86_64"
EXTRA_REQUIREMENTS = ("numpy",)  # not a torch dependency, but without it `import torch` warns
RECIPE_VERSION = "sealab-base/1"  # bump when the meaning of the recipe inputs changes


def _quiet(step: str, detail: str) -> None:
    pass


def default_cache_dir() -> Path:
    """$SEALAB_CACHE_DIR, else $XDG_CACHE_HOME/sealab, else ~/.cache/sealab."""
    if os.environ.get("SEALAB_CACHE_DIR"):
        return Path(os.environ["SEALAB_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sealab"


# -- the recipe ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Wheel:
    """One wheel that goes into the build context."""

    name: str  # the file name, which pip needs intact
    path: Path
    sha256: str  # hex


def recipe_hash(dockerfile: bytes, prepare_data: bytes, base_id: str, wheels: Iterable[tuple[str, str]]) -> str:
    """"sha256:<hex>" over everything that decides the base image; pure.

    `wheels` is (file name, sha256 hex) pairs, in any order; `base_id` is the FROM image's ID.
    """
    return "sha256:" + sha256_hex(canonical_json({
        "version": RECIPE_VERSION,
        "dockerfile": sha256_hex(dockerfile),
        "prepare_data": sha256_hex(prepare_data),
        "base": base_id,
        "wheels": sorted([name, digest] for name, digest in wheels),
    }))


# -- wheels -------------------------------------------------------------------------------------------

def _version_key(filename: str) -> tuple:
    version = filename.split("-")[1] if filename.count("-") >= 2 else ""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.+]", version))


def _torch_wheels(wheels_dir: Path) -> list[Path]:
    tag = "cp" + PYTHON_VERSION.replace(".", "")
    return sorted((p for p in wheels_dir.glob("torch-*.whl") if f"-{tag}-" in p.name and "x86_64" in p.name),
                  key=lambda p: _version_key(p.name))


class _HashCache:
    """sha256 of files, remembered by (path, size, mtime, inode) so a warm run does not reread 200 MB."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.data: dict[str, list] = json.loads(path.read_text())
        except (OSError, ValueError):
            self.data = {}
        self.dirty = False

    def sha256(self, file: Path) -> str:
        st = file.stat()
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        known = self.data.get(str(file))
        if known and known[:3] == stamp:
            return known[3]
        h = hashlib.sha256()
        with file.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        self.data[str(file)] = [*stamp, h.hexdigest()]
        self.dirty = True
        return h.hexdigest()

    def save(self) -> None:
        if self.dirty:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + f".{os.getpid()}")
            tmp.write_text(json.dumps(self.data, sort_keys=True))
            tmp.replace(self.path)


def _pip_download(dest: Path, wheels_dir: Path, requirements: Sequence[str], *, offline: bool,
                  progress: Progress) -> tuple[bool, str]:
    argv = [sys.executable, "-m", "pip", "download", "--dest", str(dest), "--only-binary=:all:",
            "--python-version", PYTHON_VERSION, "--platform", PLATFORM, "--implementation", "cp",
            "--find-links", str(wheels_dir), "--progress-bar", "off", "--disable-pip-version-check",
            "--retries", "2", "--timeout", "60"]
    if offline:
        argv.append("--no-index")
    argv.extend(requirements)
    progress("wheels", ("resolving offline from " if offline else "downloading with pip, beside ")
             + f"{wheels_dir}: {' '.join(Path(r).name for r in requirements)}")
    proc = subprocess.run(argv, check=False, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace")
    return proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


def wheel_version(filename: str) -> str:
    """`torch-2.13.0+cpu-cp311-…whl` → `2.13.0+cpu`."""
    return filename.split("-")[1] if filename.count("-") >= 2 else ""


def gather_wheels(wheels_dir: Path, cache_dir: Path, *, require_torch: bool = True,
                  extras: Sequence[str] = EXTRA_REQUIREMENTS, progress: Progress = _quiet,
                  torch_version: str | None = None, lock_source: str = "the lock") -> list[Wheel]:
    """The wheels of the build: the newest cp311 x86_64 torch wheel in `wheels_dir` and its dependencies.

    Dependencies (and `extras`) are taken from `wheels_dir` when all are there; otherwise pip
    downloads them once into cache_dir/wheels/<key>/ (key: the listing of wheels_dir and the target)
    and later calls reuse that. `extras` that cannot be had are left out, with a progress note.
    With no torch wheel: [] when `require_torch` is false (a --from base may bring torch).
    `torch_version` (what the repository's lock pins): the torch wheel of that version, never another.

    Raises:
        BaseImageError: no torch wheel (and one is required), none of the locked version, or pip
            cannot resolve torch's dependencies.
    """
    wheels_dir = wheels_dir.resolve()
    torch_wheels = _torch_wheels(wheels_dir) if wheels_dir.is_dir() else []
    if not torch_wheels:
        if require_torch:
            raise BaseImageError(f"no torch wheel for cp{PYTHON_VERSION.replace('.', '')} x86_64 in {wheels_dir}; "
                                 "put one there (--wheels DIR) or use --from an image that has torch")
        progress("wheels", f"no torch wheel in {wheels_dir}: relying on the base's own torch")
        return []
    torch_wheel = torch_wheels[-1]
    if torch_version is not None:
        matching = [p for p in torch_wheels if deps.public_version(wheel_version(p.name)) ==
                    deps.public_version(torch_version)]
        if not matching:
            deps.check_torch_version(torch_version, wheel_version(torch_wheel.name), lock_source, wheels_dir)
        torch_wheel = matching[-1]
    listing = sorted([p.name, p.stat().st_size] for p in wheels_dir.glob("*.whl"))
    key = sha256_hex(canonical_json({"dir": str(wheels_dir), "listing": listing, "torch": torch_wheel.name,
                                     "extras": list(extras), "python": PYTHON_VERSION, "platform": PLATFORM}))
    store = cache_dir / "wheels" / key[:16]
    resolved_file = store / "resolved.json"
    hashes = _HashCache(cache_dir / "wheels" / "sha256.json")

    def located(names: Iterable[str]) -> list[Path] | None:
        paths = []
        for name in names:
            for candidate in (store / name, wheels_dir / name):
                if candidate.is_file():
                    paths.append(candidate)
                    break
            else:
                return None
        return paths

    paths = None
    if resolved_file.is_file():
        paths = located(json.loads(resolved_file.read_text()))
        if paths is not None:
            progress("wheels", f"{len(paths)} wheels, resolved before ({store})")
    if paths is None:
        paths = _resolve(store, wheels_dir, torch_wheel, extras, progress)
    wheels = [Wheel(p.name, p, hashes.sha256(p)) for p in paths]
    hashes.save()
    return wheels


def _resolve(store: Path, wheels_dir: Path, torch_wheel: Path, extras: Sequence[str],
             progress: Progress) -> list[Path]:
    store.parent.mkdir(parents=True, exist_ok=True)
    attempts = [(True, tuple(extras)), (False, tuple(extras))]
    if extras:
        attempts += [(True, ()), (False, ())]
    log = ""
    for offline, wanted in attempts:
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=store.parent))
        try:
            ok, log = _pip_download(tmp, wheels_dir, [str(torch_wheel), *wanted], offline=offline, progress=progress)
            if not ok:
                continue
            if tuple(wanted) != tuple(extras):
                progress("wheels", f"could not get {', '.join(extras)}; building without (torch will warn)")
            names = sorted(p.name for p in tmp.glob("*.whl"))
            for name in names:  # keep only what wheels_dir lacks; no second copy of torch
                original = wheels_dir / name
                if original.is_file() and original.stat().st_size == (tmp / name).stat().st_size:
                    (tmp / name).unlink()
            (tmp / "resolved.json").write_text(json.dumps(names, indent=1) + "\n")
            shutil.rmtree(store, ignore_errors=True)
            tmp.replace(store)
            fetched = sorted(p.name for p in store.glob("*.whl"))
            progress("wheels", f"{len(names)} wheels: {len(names) - len(fetched)} from {wheels_dir}, "
                               f"{len(fetched)} downloaded into {store}")
            return [store / n if (store / n).is_file() else wheels_dir / n for n in names]
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    raise BaseImageError(f"pip could not gather torch's dependencies for {torch_wheel.name}", log)


# -- the FROM image -----------------------------------------------------------------------------------

def _from_image(api: Any, source: str, progress: Progress) -> str:
    info = docker_build.inspect(api, source)
    if info is None and "@sha256:" in source:
        progress("source", f"{source} is not present; trying to pull it by digest")
        if docker_build.pull_digest(api, source):
            info = docker_build.inspect(api, source)
    if info is None:
        raise BaseImageError(f"image {source} is not present locally; docker pull it first")
    progress("source", f"building on {source} ({info['Id'][:19]})")
    return info["Id"]


# -- the build ----------------------------------------------------------------------------------------

def write_context(out: IO[bytes], dockerfile: bytes, prepare_data: bytes, wheels: Sequence[Wheel]) -> None:
    """The build context tar, laid out like the repository so Dockerfile.train also builds by hand
    (written like a layer: layer.write_layer, the wheels streamed from disk)."""
    write_layer([Entry(CONTEXT_DOCKERFILE, dockerfile), Entry(CONTEXT_PREPARE_DATA, prepare_data),
                 Entry(CONTEXT_WHEELS, mode=0o755, kind="dir"),  # there even when empty: Dockerfile.train COPYs it
                 *(Entry(f"{CONTEXT_WHEELS}/{w.name}", source=w.path) for w in wheels)], out)


def _built(api: Any, base_id: str, source_label: str, cache_dir: Path, dockerfile_bytes: bytes,
           prepare_bytes: bytes, wheels: Sequence[Wheel], tag: str, rebuild: bool,
           progress: Progress) -> tuple[str, str]:
    """`--from IMAGE`: Dockerfile.train with the classic builder (reused while its recipe is unchanged)."""
    recipe = recipe_hash(dockerfile_bytes, prepare_bytes, base_id, ((w.name, w.sha256) for w in wheels))
    labels = {LABEL_RECIPE: recipe, LABEL_SOURCE: source_label}
    image_id = None if rebuild else docker_build.find_built(api, {LABEL_RECIPE: recipe, LABEL_SOURCE: None})
    if image_id is not None:
        progress("recipe", f"{recipe[:23]} unchanged: reusing {image_id[:19]}")
        docker_build.tag(api, image_id, tag)
        return image_id, recipe
    progress("recipe", f"{recipe[:23]}: building ({len(wheels)} wheels, "
                       f"{sum(w.path.stat().st_size for w in wheels) / 1e6:.0f} MB)")
    build_started = time.monotonic()
    with tempfile.TemporaryFile(prefix="sealab-context-", dir=_tmp_dir(cache_dir)) as context:
        write_context(context, dockerfile_bytes, prepare_bytes, wheels)
        context.seek(0)
        image_id = docker_build.build(
            api, context, dockerfile=CONTEXT_DOCKERFILE, tag=tag, buildargs={"BASE": base_id},
            labels=labels, nocache=rebuild, on_line=lambda line: progress("build", line),
        )
    progress("recipe", f"built {image_id[:19]} in {time.monotonic() - build_started:.1f} s")
    return image_id, recipe


def _assembled(api: Any, cache_dir: Path, sources: Path, wheels: Sequence[Wheel], prepare_data: Path,
               prepare_bytes: bytes, tag: str, rebuild: bool, progress: Progress) -> tuple[str, str]:
    """The offline base, assembled deterministically (executor.image.assemble): same inputs, same image ID.

    The recipe (rootfs tar, wheels, prepare_data.py, the assembly code: assemble.py and layer.py) maps
    to the image ID in cache_dir/assembled/, so an unchanged recipe whose image the engine holds is
    reused unbuilt.
    """
    tar, _key = rootfs.ensure_rootfs(cache_dir, sources=sources, progress=lambda line: progress("rootfs", line))
    recipe = "sha256:" + sha256_hex(canonical_json({
        "assembly": _assembly_code(), "rootfs": assemble.file_digest(tar),
        "wheels": sorted((w.name, w.sha256) for w in wheels), "prepare_data": sha256_hex(prepare_bytes)}))
    known = cache_dir / "assembled" / f"{recipe.removeprefix('sha256:')}.json"
    if not rebuild and known.is_file():
        image_id = json.loads(known.read_text())["image_id"]
        if docker_build.inspect(api, image_id) is not None:
            progress("recipe", f"{recipe[:23]} unchanged: reusing {image_id[:19]}")
            docker_build.tag(api, image_id, tag)
            return image_id, recipe
    progress("recipe", f"{recipe[:23]}: assembling ({len(wheels)} wheels, "
                       f"{sum(w.path.stat().st_size for w in wheels) / 1e6:.0f} MB)")
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="sealab-assemble-", dir=_tmp_dir(cache_dir)))
    try:
        image_id, config, layers = assemble.assemble(
            rootfs_tar=tar, wheels=[w.path for w in sorted(wheels, key=lambda w: w.name)],  # any order in, one out
            prepare_data=prepare_data, work=work, labels={LABEL_RECIPE: recipe, LABEL_SOURCE: OFFLINE_SOURCE},
            progress=progress)
        archive = work / "base.tar"
        with archive.open("wb") as fh:
            write_archive(fh, config, layers, tag)
        progress("assemble", f"loading {image_id[:19]} into the engine ({archive.stat().st_size / 1e6:.0f} MB)")
        with archive.open("rb") as fh:
            load_stream(api, fh)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if docker_build.inspect(api, image_id) is None:
        raise BaseImageError(f"the engine did not keep the assembled base as {image_id}")
    known.parent.mkdir(parents=True, exist_ok=True)
    known.write_text(json.dumps({"image_id": image_id, "recipe": recipe}))
    progress("recipe", f"assembled {image_id[:19]} in {time.monotonic() - started:.1f} s")
    return image_id, recipe


def build_base(engine_client: Any = None, *, source: str | None = None, wheels_dir: Path = Path("/opt/wheels"),
               cache_dir: Path | None = None, progress: Progress | None = None, rebuild: bool = False,
               extras: Sequence[str] = EXTRA_REQUIREMENTS, sources: Path = rootfs.SOURCES,
               dockerfile: Path = DOCKERFILE, prepare_data: Path = PREPARE_DATA, tag: str = BASE_TAG,
               files: Mapping[str, bytes] | None = None, data_dirs: Sequence[str] = (),
               home: Path | None = None, torch: str = "cpu") -> BaseImage:
    """Build the base environment image, or reuse the one with the same recipe; describe it.

    Args:
        engine_client: None (DOCKER_HOST / the default socket), a docker.APIClient, a
            docker.DockerClient, or an executor.docker_engine.Engine; the only positional argument.
        source: None for the offline Debian bookworm root file system, or an image reference
            (name, ID or repo@sha256:) that is present locally, e.g. a CUDA PyTorch image; if it
            already imports torch, the wheels are not installed.
        wheels_dir: holds the torch wheel (cp311, x86_64) and optionally its dependencies.
        cache_dir: root file system tars, downloaded wheels, wheel hashes (default_cache_dir()).
        progress: called as progress(step, detail); see the module docstring. agent.progress.RichProgress()
            renders it on a terminal; None is silent.
        rebuild: build even when an image with this recipe exists, without the builder's cache.
        extras: requirements added beside torch (numpy by default); left out if unobtainable.
        sources: the deb822 apt sources file mmdebstrap uses as its mirror (host's by default).
        dockerfile, prepare_data, tag: the recipe files and the name given to the result.
        files: the top-level files of the workspace's commit (path → bytes): its uv.lock and
            pyproject.toml (or requirements.txt) give the packages of the base (executor/image/deps.py),
            and the torch wheel of the lock's version is chosen.
        torch: "cpu" (the torch wheel of wheels_dir) or "cuda" (PyPI's CUDA torch at pinned, hashed
            versions: the lock's when it pins torch, else executor/image/torch-cuda.txt); the offline
            base only: `source` brings its own torch.
        data_dirs: [data] dirs (`~/.cache/NAME`, under `home`, default the user's) captured into the
            base (executor/image/capture.py, executor/image/extend.py).

    Raises:
        BaseImageError: missing inputs, mmdebstrap or pip failure, a failed build (log_tail has
            the end of the build log), or an image without the data manifest.
        EngineUnavailable: the Docker engine cannot be reached.
    """
    progress = progress or _quiet
    cache_dir = cache_dir or default_cache_dir()
    started = time.monotonic()
    if torch not in cuda.TORCHES:
        raise BaseImageError(f"[base] torch is {torch!r}; expected one of {', '.join(cuda.TORCHES)}")
    if torch == "cuda" and source is not None:
        raise BaseImageError(f"torch = \"cuda\" assembles the reproducible CUDA base from PyPI, --from {source} builds on "
                             "that image's own torch: choose one (drop --from, or use --torch cpu)")
    try:
        dockerfile_bytes = dockerfile.read_bytes()
        prepare_bytes = prepare_data.read_bytes()
    except OSError as exc:
        raise BaseImageError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    api = docker_build.connect(engine_client)
    locked = deps.lock_of(files, cache_dir) if files else None
    if locked is not None:
        progress("deps", f"{locked.source}: {len(locked.packages)} packages"
                         + (f", torch {locked.torch}" if locked.torch else "") + f" ({locked.digest[:19]})")
    snapshots = [capture.snapshot(name, home or Path.home()) for name in data_dirs]  # a missing one fails now
    for snap in snapshots:
        progress("data", f"{snap.name}: {snap.count} files, {snap.size / 1e6:.1f} MB")

    if source is not None:  # a missing image is the cheapest failure: check it first
        base_id, source_label = _from_image(api, source, progress), source
    if torch == "cuda":
        wheels = cuda_wheels(files, cache_dir, locked, progress)
    else:
        wheels = gather_wheels(wheels_dir, cache_dir, require_torch=source is None, extras=extras,
                               progress=progress, torch_version=locked.torch if locked else None,
                               lock_source=locked.source if locked else "the lock")
    if source is None:  # after the wheels, so that a missing wheel fails before a 20 s mmdebstrap
        image_id, recipe = _assembled(api, cache_dir, sources, wheels, prepare_data, prepare_bytes, tag, rebuild,
                                      progress)
        source_label = OFFLINE_SOURCE
    else:
        image_id, recipe = _built(api, base_id, source_label, cache_dir, dockerfile_bytes, prepare_bytes, wheels,
                                  tag, rebuild, progress)

    manifest = docker_build.read_file(api, image_id, DATA_MANIFEST)
    data_digest = "sha256:" + sha256_hex(manifest)
    progress("data", f"{DATA_MANIFEST}: {data_digest[:23]}")
    info = docker_build.inspect(api, image_id)
    if info is None:
        raise BaseImageError(f"the base image {image_id} vanished while it was being described")
    config = info.get("Config") or {}
    torch_version = next((wheel_version(w.name) for w in wheels if w.name.startswith("torch-")), None)
    base = BaseImage(
        image_id=info["Id"],
        diff_ids=tuple(info["RootFS"]["Layers"]),
        env=tuple(config.get("Env") or ()),
        cmd=tuple(config.get("Cmd") or ()),
        recipe=recipe,
        data_digest=data_digest,
        source=source_label,
        architecture=info.get("Architecture") or "amd64",
        os=info.get("Os") or "linux",
        torch=torch_version,
        cuda=cuda.cuda_version([w.path for w in wheels]) if torch == "cuda" else None,
    )
    if locked is not None or snapshots:
        fetched = deps.fetch(locked, cache_dir, progress) if locked is not None else []
        hashes = _HashCache(cache_dir / "wheels" / "sha256.json")
        wheel_list = [(p.name, hashes.sha256(p), p) for p in fetched]
        hashes.save()
        base = extend.extend(api, base, config.get("Labels") or {}, locked, wheel_list, snapshots,
                             cache_dir=cache_dir, tmp_dir=_tmp_dir(cache_dir), tag=tag, rebuild=rebuild,
                             progress=progress)
        info = docker_build.inspect(api, base.image_id) or info
    progress("done", f"{base.image_id} ({info.get('Size', 0) / 1e6:.0f} MB, {len(base.diff_ids)} layers) "
                     f"in {time.monotonic() - started:.1f} s")
    return base


def cuda_wheels(files: Mapping[str, bytes] | None, cache_dir: Path, locked: deps.Locked | None,
                progress: Progress) -> list[Wheel]:
    """The CUDA torch's wheels (executor.image.cuda), downloaded once, with their sha256 (by name)."""
    wanted = cuda.requirements(files, cache_dir, locked)
    progress("wheels", f"CUDA torch {wanted.torch} and its runtime, {len(wanted.packages)} packages pinned by "
                       f"{wanted.source}")
    fetched = deps.fetch(wanted, cache_dir, progress, kind="torch-cuda")
    hashes = _HashCache(cache_dir / "wheels" / "sha256.json")
    wheels = sorted((Wheel(p.name, p, hashes.sha256(p)) for p in fetched), key=lambda w: w.name)
    hashes.save()
    allowed = set(re.findall(r"--hash[= ]sha256:([0-9a-f]{64})", wanted.requirements))
    for wheel in wheels:  # pip checked them when it downloaded them; the cache may have changed since
        if wheel.sha256 not in allowed:
            raise BaseImageError(f"the cached wheel {wheel.path} has sha256 {wheel.sha256[:16]}…, which {wanted.source} "
                                 f"does not list: delete {wheel.path.parent} and run `sealab base` again")
    if not any(w.name.startswith("torch-") for w in wheels):
        raise BaseImageError(f"{wanted.source} brought no torch wheel")
    return wheels


def _assembly_code() -> str:
    """sha256 over the code that writes the offline base's bytes: assemble.py, and layer.py's writer and builder."""
    return sha256_hex(b"".join(sha256_hex(Path(module.__file__).read_bytes()).encode()
                               for module in (assemble, layer)))


def _tmp_dir(cache_dir: Path) -> Path:
    path = cache_dir / "tmp"
    path.mkdir(parents=True, exist_ok=True)
    return path
