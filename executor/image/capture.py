"""[data] directories captured from the host into content-addressed, read-only base layers.

    snap = snapshot("~/.cache/autoresearch", home=Path.home())   # stat only: cheap, no file is read
    diff = write_data_layer(snap, out, progress)                 # streamed into a tar: its diff ID

A directory `~/REL` lies in the base at /opt/sealab/home/REL (the launcher links it into the run's
HOME, which is an empty tmpfs). Its layer is written like every sealab layer (layer.write_layer:
sorted, fixed mtimes, owner 0:0, files 0644 or 0755), so its diff ID is a pure function of the
files' paths, modes and bytes: the data's digest. Files are streamed from disk, never held whole.

Unchanged data is recognised without reading it: the snapshot (every path with its size, mtime,
inode and mode) is hashed into `Snapshot.key`, which goes into the base's recipe (executor/image/
extend.py), so an unchanged tree reuses the base that holds it. A file that changes while it is being
captured is refused.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator

from executor.errors import BaseImageError
from executor.image.layer import Entry, write_layer
from executor.types import canonical_json, sha256_hex

IMAGE_HOME = "opt/sealab/home"  # where captured directories lie in the base, as under HOME
Progress = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A [data] directory as the file system describes it right now (nothing read yet)."""

    name: str  # as written in sealab.toml: "~/.cache/NAME"
    root: Path  # on the host
    files: tuple[tuple[str, str, int, int, int, int], ...]  # (rel path, kind, mode, size, mtime_ns, inode)

    @property
    def key(self) -> str:
        """Hex hash of the snapshot: equal keys, equal trees (as far as stat can tell)."""
        return sha256_hex(canonical_json({"name": self.name, "files": self.files}))

    @property
    def size(self) -> int:
        return sum(f[3] for f in self.files if f[1] == "file")

    @property
    def count(self) -> int:
        return sum(1 for f in self.files if f[1] == "file")


def host_path(name: str, home: Path) -> Path:
    """`~/.cache/NAME` on this machine."""
    return home / name.removeprefix("~/")


def snapshot(name: str, home: Path) -> Snapshot:
    """Walk the directory `name` (under `home`) and stat everything in it.

    Raises:
        BaseImageError: it does not exist or is not a directory, holds something other than files,
            directories and relative symlinks, or cannot be read.
    """
    return _walk(name, host_path(name, home))


def _walk(name: str, root: Path) -> Snapshot:
    if not root.is_dir():
        raise BaseImageError(f"[data] directory {name} ({root}) does not exist: fill it first by running the "
                             "repository's prepare step once on this machine (e.g. `python prepare.py`), or "
                             "let `sealab base --prepare \"python prepare.py\"` do it")
    files: list[tuple[str, str, int, int, int, int]] = []

    def failed(exc: OSError) -> None:
        raise BaseImageError(f"[data] directory {name}: cannot read {exc.filename}: {exc.strerror}")

    for dirpath, dirnames, filenames in os.walk(root, onerror=failed):
        dirnames.sort()
        for entry in [*dirnames, *sorted(filenames)]:
            path = Path(dirpath) / entry
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(path)
                inside = os.path.normpath(os.path.join(os.path.dirname(rel), target))
                if os.path.isabs(target) or inside == ".." or inside.startswith("../"):
                    raise BaseImageError(f"[data] directory {name}: {rel} links to {target}, outside the directory; "
                                         "a sealed run could not follow it: copy the file in instead")
                files.append((rel, "symlink:" + target, 0o777, 0, st.st_mtime_ns, st.st_ino))
            elif stat.S_ISDIR(st.st_mode):
                files.append((rel, "dir", 0o755, 0, 0, 0))
            elif stat.S_ISREG(st.st_mode):
                mode = 0o755 if st.st_mode & 0o111 else 0o644
                files.append((rel, "file", mode, st.st_size, st.st_mtime_ns, st.st_ino))
            else:
                raise BaseImageError(f"[data] directory {name}: {rel} is not a file, directory or symlink")
    return Snapshot(name, root, tuple(files))


def entries(snap: Snapshot, progress: Progress) -> Iterator[Entry]:
    """The snapshot's layer entries (files streamed from disk); reports bytes written as it goes."""
    prefix = f"{IMAGE_HOME}/{snap.name.removeprefix('~/')}"
    yield Entry(prefix, mode=0o755, kind="dir")
    done, total, last = 0, snap.size, 0.0
    for rel, kind, mode, size, _mtime, _ino in snap.files:
        path = f"{prefix}/{rel}"
        if kind == "dir":
            yield Entry(path, mode=0o755, kind="dir")
        elif kind.startswith("symlink:"):
            yield Entry(path, kind.removeprefix("symlink:").encode(), 0o777, "symlink")
        else:
            yield Entry(path, mode=mode, source=snap.root / rel)
            done += size
            if time.monotonic() - last > 1 or done == total:
                last = time.monotonic()
                progress("data", f"{snap.name}: {done / 1e6:.1f} of {total / 1e6:.1f} MB")


def write_data_layer(snap: Snapshot, out: IO[bytes], progress: Progress) -> str:
    """Write the snapshot's layer into `out`; return its diff ID.

    Raises:
        BaseImageError: a file changed, appeared or vanished while it was written.
    """
    progress("data", f"capturing {snap.name} ({snap.count} files, {snap.size / 1e6:.0f} MB) from {snap.root}")
    try:
        diff = write_layer(entries(snap, progress), out)
    except FileNotFoundError as exc:
        raise BaseImageError(f"[data] directory {snap.name}: {exc.filename} vanished while it was captured; "
                             "run `sealab base` again once the preparation is done") from None
    after = _walk(snap.name, snap.root)
    if after.files != snap.files:
        changed = next((a[0] for a, b in zip(after.files, snap.files) if a != b),
                       (after.files or snap.files)[-1][0])
        raise BaseImageError(f"[data] directory {snap.name}: {changed} changed while it was captured; "
                             "run `sealab base` again once nothing writes there")
    return diff
