"""The one layer writer, config builder and `docker load` archive writer of every sealab image.

Experiment images (seal.py) and the offline base (assemble.py) are both made here, byte for byte,
by hand rather than by `docker build`: the classic builder stamps build times into every layer and
config, so its image IDs differ from build to build. Written here, the same inputs always give the
same bytes, hence the same image ID (the sha256 of the config), known before anything reaches the
engine. Everything streams: a layer's files may be read from disk as they are written (`Entry.source`),
so a base layer of hundreds of MB never sits in memory; `layer_tar` and `load_archive` are the
in-memory forms the experiment side uses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, ContextManager, Iterable, Mapping, Sequence

from executor.types import canonical_json, sha256_hex

EPOCH = 1700000000  # fixed mtime of every layer and archive entry
CREATED = "1970-01-01T00:00:00Z"  # fixed `created` of every config and history entry


@dataclass(frozen=True, slots=True)
class Entry:
    """One file, directory or symlink of a layer; `path` is absolute (or relative) inside the image.

    A file's content is `data`, the file at `source` or what `stream()` opens (`size` bytes: a large git blob), read only while the layer is written.
    A symlink's target is `data`.
    """

    path: str
    data: bytes = b""
    mode: int = 0o644
    kind: str = "file"  # "file" | "dir" | "symlink" (data = link target)
    source: Path | None = None
    uid: int = 0
    gid: int = 0
    stream: Callable[[], ContextManager[IO[bytes]]] | None = None  # content opened when written (with `size`)
    size: int = 0

    def __post_init__(self) -> None:
        if (self.source is not None or self.stream is not None) and (self.data or self.kind != "file"):
            raise ValueError(f"layer entry {self.path}: a source file is the content of a file entry with no data; "
                             f"got kind {self.kind!r} with {len(self.data)} bytes of data")


class _Hashing:
    """A write-only file wrapper that hashes what passes through it."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out, self.sha = out, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        return self.out.write(data)


def write_layer(entries: Iterable[Entry], out: IO[bytes]) -> str:
    """Write a tar whose bytes depend only on the entries into `out`; return its diff ID ("sha256:…").

    Sorted by path components, parents first (missing parents are added as 0755 directories); mtime
    EPOCH; owner uid:gid of the entry (0:0 by default) with no user or group names; modes as given.
    Source files are streamed, never read whole.
    """
    by_path: dict[str, Entry] = {}
    for entry in entries:
        path = entry.path.strip("/")
        parts = path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            by_path.setdefault(parent, Entry(parent, mode=0o755, kind="dir"))
        by_path[path] = dataclasses.replace(entry, path=path)
    sink = _Hashing(out)
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(by_path, key=lambda p: p.split("/")):
            entry = by_path[path]
            info = tarfile.TarInfo(path)
            info.mtime, info.uid, info.gid, info.uname, info.gname = EPOCH, entry.uid, entry.gid, "", ""
            info.mode = entry.mode
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif entry.kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, os.fsdecode(entry.data)
                tar.addfile(info)
            elif entry.source is not None:
                info.size = entry.source.stat().st_size
                with entry.source.open("rb") as fh:
                    tar.addfile(info, fh)
            elif entry.stream is not None:
                info.size = entry.size
                with entry.stream() as fh:
                    tar.addfile(info, fh)
            else:
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
    return "sha256:" + sink.sha.hexdigest()


def layer_tar(entries: Iterable[Entry]) -> bytes:
    """`write_layer` into memory: the layer's bytes (an experiment layer is a few files)."""
    buf = io.BytesIO()
    write_layer(entries, buf)
    return buf.getvalue()


def tree_entries(root: Path, owners: Mapping[str, tuple[int, int]] | None = None) -> list[Entry]:
    """The tree under `root` as layer entries, its files as sources (nothing is read yet).

    Paths relative to `root`; owner 0:0 unless `owners` names the path; dirs 0755, files 0755 if any
    execute bit is set else 0644, symlinks 0777 and kept as links (also links to directories).
    """
    owners = owners or {}
    entries: list[Entry] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for path in [Path(dirpath) / d for d in dirnames] + [Path(dirpath) / f for f in sorted(filenames)]:
            rel = path.relative_to(root).as_posix()
            uid, gid = owners.get(rel, (0, 0))
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                entries.append(Entry(rel, os.fsencode(os.readlink(path)), 0o777, "symlink", uid=uid, gid=gid))
            elif stat.S_ISDIR(mode):
                entries.append(Entry(rel, mode=0o755, kind="dir", uid=uid, gid=gid))
            else:
                entries.append(Entry(rel, mode=0o755 if mode & 0o111 else 0o644, source=path, uid=uid, gid=gid))
    return entries


def image_config(
    *,
    diff_ids: Sequence[str],
    env: Iterable[str],
    cmd: Iterable[str],
    labels: Mapping[str, str],
    created_by: Sequence[str] | None = None,
    architecture: str = "amd64",
    os: str = "linux",
    user: str | None = None,
    workdir: str | None = None,
) -> bytes:
    """The canonical config JSON of an image with these layers; its sha256 is the image ID.

    `created_by` names each layer in the history (default "sealab layer <i>"); `user` and `workdir`
    are left out of the config when None (the engine's defaults: root, /).
    """
    diff_ids = list(diff_ids)
    if created_by is None:
        created_by = [f"sealab layer {i}" for i in range(len(diff_ids))]
    if len(created_by) != len(diff_ids):
        raise ValueError(f"an image config needs one history entry per layer: {len(diff_ids)} layers, "
                         f"{len(created_by)} history entries")
    runtime: dict[str, object] = {"Env": list(env), "Cmd": list(cmd), "Labels": dict(sorted(labels.items()))}
    if user is not None:
        runtime["User"] = user
    if workdir is not None:
        runtime["WorkingDir"] = workdir
    return canonical_json({
        "architecture": architecture,
        "os": os,
        "created": CREATED,
        "config": runtime,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": CREATED, "created_by": name} for name in created_by],
    })


def image_id(config: bytes) -> str:
    return "sha256:" + sha256_hex(config)


def write_archive(out: IO[bytes], config: bytes, layers: Sequence[tuple[str, bytes | Path | None]],
                  tag: str | None) -> None:
    """A `docker save`-format archive into `out`: the config, the layer files given, then the manifest.

    `layers` is every layer of the image in order as (diff ID, content): bytes, a file (streamed), or
    None for a layer the engine already holds, which the manifest lists but the archive omits
    (Docker 20.10 skips a layer whose chain it holds without opening the file).
    """
    config_name = sha256_hex(config) + ".json"
    names = [f"{diff.removeprefix('sha256:')}/layer.tar" for diff, _ in layers]
    manifest = [{"Config": config_name, "RepoTags": [tag] if tag else None, "Layers": names}]
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        members = [(config_name, config), *((n, c) for n, (_, c) in zip(names, layers) if c is not None),
                   ("manifest.json", canonical_json(manifest))]
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.mtime = EPOCH
            if isinstance(content, Path):
                info.size = content.stat().st_size
                with content.open("rb") as fh:
                    tar.addfile(info, fh)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))


def load_archive(config: bytes, layer: bytes, base_diff_ids: Iterable[str], tag: str | None) -> bytes:
    """`write_archive` into memory for an experiment image: the base layers listed, only the new one held."""
    buf = io.BytesIO()
    write_archive(buf, config, [*((d, None) for d in base_diff_ids), ("sha256:" + sha256_hex(layer), layer)], tag)
    return buf.getvalue()
