"""Deterministic image assembly: one layer tar, the image config, and a `docker load` archive.

Pure functions over bytes. The same inputs always give the same bytes, hence the same image ID
(the sha256 of the config), which is known before anything reaches the engine.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from typing import Iterable, Mapping

from executor.types import canonical_json, sha256_hex

EPOCH = 1700000000  # fixed mtime of every layer entry
CREATED = "1970-01-01T00:00:00Z"  # fixed `created` of every config and history entry


@dataclass(frozen=True, slots=True)
class Entry:
    """One file, directory or symlink of a layer; `path` is absolute inside the image."""

    path: str
    data: bytes = b""
    mode: int = 0o644
    kind: str = "file"  # "file" | "dir" | "symlink" (data = link target)


def layer_tar(entries: Iterable[Entry]) -> bytes:
    """A tar whose bytes depend only on the entries: sorted, parents first, fixed mtime and owner."""
    by_path: dict[str, Entry] = {}
    for entry in entries:
        path = entry.path.strip("/")
        parts = path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            by_path.setdefault(parent, Entry(parent, mode=0o755, kind="dir"))
        by_path[path] = Entry(path, entry.data, entry.mode, entry.kind)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(by_path, key=lambda p: p.split("/")):
            entry = by_path[path]
            info = tarfile.TarInfo(path)
            info.mtime, info.uid, info.gid, info.uname, info.gname = EPOCH, 0, 0, "", ""
            info.mode = entry.mode
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif entry.kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, entry.data.decode()
                tar.addfile(info)
            else:
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
    return buf.getvalue()


def image_config(
    *,
    base_diff_ids: Iterable[str],
    layer_digest: str,
    env: Iterable[str],
    cmd: Iterable[str],
    labels: Mapping[str, str],
    architecture: str = "amd64",
    os: str = "linux",
    user: str = "1000:1000",
    workdir: str = "/workspace",
) -> bytes:
    """The canonical config JSON of base layers + one new layer; its sha256 is the image ID."""
    diff_ids = [*base_diff_ids, layer_digest]
    config = {
        "architecture": architecture,
        "os": os,
        "created": CREATED,
        "config": {
            "Env": list(env),
            "Cmd": list(cmd),
            "Labels": dict(sorted(labels.items())),
            "User": user,
            "WorkingDir": workdir,
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": CREATED, "created_by": f"sealab layer {i}"} for i in range(len(diff_ids))],
    }
    return canonical_json(config)


def image_id(config: bytes) -> str:
    return "sha256:" + sha256_hex(config)


def load_archive(config: bytes, layer: bytes, base_diff_ids: Iterable[str], tag: str | None) -> bytes:
    """A `docker save`-format archive holding the config and only the new layer.

    The base layers are listed in the manifest but their files are omitted: the engine already has
    them (Docker 20.10 skips a layer whose chain it holds without opening the file).
    """
    layer_hex = sha256_hex(layer)
    config_name = sha256_hex(config) + ".json"
    layers = [f"{d.removeprefix('sha256:')}/layer.tar" for d in base_diff_ids] + [f"{layer_hex}/layer.tar"]
    manifest = [{"Config": config_name, "RepoTags": [tag] if tag else None, "Layers": layers}]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in ((config_name, config), (f"{layer_hex}/layer.tar", layer),
                           ("manifest.json", canonical_json(manifest))):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), EPOCH
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
