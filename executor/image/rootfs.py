"""The offline root file system: a reproducible Debian python3 tree made by mmdebstrap, cached as a tar.

The mirror is never named here: mmdebstrap is given the host's own deb822 apt sources file, so the
tar comes from whatever mirror (or snapshot, or proxy) the host already uses. With a fixed
SOURCE_DATE_EPOCH and unchanged packages on the mirror, the tar is bit-for-bit the same on every run.
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from executor.errors import BaseImageError
from executor.image.layer import EPOCH
from executor.types import canonical_json, sha256_hex

SUITE = "bookworm"
SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
SOURCE_DATE_EPOCH = str(EPOCH)  # the mtime mmdebstrap stamps, the same as every layer entry's
PACKAGES = ("python3", "python3-pip")
MERGED_USR_HOOKS = "/usr/share/mmdebstrap/hooks/merged-usr"

_OPTIONS = (
    "--variant=apt",
    "--format=tar",  # not guessed from the file name (our partial name would give a directory)
    f"--hook-dir={MERGED_USR_HOOKS}",  # without it usrmerge drags in perl (+48 MB)
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-include=/usr/share/locale/locale.alias",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/info/*",
    ('--customize-hook=rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/apt/* '
     '"$1"/var/log/dpkg.log'),
)


def mmdebstrap_argv(out: Path, *, suite: str = SUITE, sources: Path = SOURCES,
                    packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """The mmdebstrap command line that writes the root file system tar to `out`."""
    return ["mmdebstrap", *_OPTIONS, f"--include={','.join(packages)}", suite, str(out), str(sources)]


def rootfs_key(*, suite: str = SUITE, sources: Path = SOURCES, packages: tuple[str, ...] = PACKAGES) -> str:
    """Hex hash of everything that decides the tar: the options, the suite, the packages, the sources file."""
    try:
        sources_bytes = sources.read_bytes()
    except OSError as exc:
        raise BaseImageError(f"cannot read the apt sources file {sources}: {exc.strerror}; "
                             "pass another deb822 sources file") from exc
    return sha256_hex(canonical_json({
        "argv": mmdebstrap_argv(Path("OUT.tar"), suite=suite, sources=Path("SOURCES"), packages=packages),
        "sources": sha256_hex(sources_bytes),
        "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH,
    }))


def ensure_rootfs(cache_dir: Path, *, suite: str = SUITE, sources: Path = SOURCES,
                  packages: tuple[str, ...] = PACKAGES,
                  progress: Callable[[str], None] = lambda line: None) -> tuple[Path, str]:
    """The cached root file system tar for these inputs, made with mmdebstrap if it is not there yet.

    Returns (tar path, key). `progress` receives mmdebstrap's output lines.

    Raises:
        BaseImageError: mmdebstrap is missing or fails (with the tail of its output).
    """
    key = rootfs_key(suite=suite, sources=sources, packages=packages)
    out = cache_dir / "rootfs" / f"{suite}-{key[:16]}.tar"
    if out.is_file() and out.stat().st_size > 0:
        progress(f"cached {out}")
        return out, key
    if shutil.which("mmdebstrap") is None:
        raise BaseImageError("mmdebstrap is not installed: install mmdebstrap (apt-get install mmdebstrap), "
                             "or pass --from IMAGE")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f"{out.stem}.{os.getpid()}.partial.tar")
    argv = mmdebstrap_argv(partial, suite=suite, sources=sources, packages=packages)
    env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH, "LC_ALL": "C.UTF-8"}
    tail: collections.deque[str] = collections.deque(maxlen=40)
    try:
        with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=env, text=True, errors="replace") as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip()
                if line:
                    tail.append(line)
                    progress(line)
            rc = proc.wait()
        if rc != 0:
            raise BaseImageError(f"mmdebstrap failed (exit {rc}) making the {suite} root file system",
                                 "\n".join(tail))
        if not partial.is_file() or partial.stat().st_size < 1024 * 1024:
            raise BaseImageError(f"mmdebstrap wrote no usable tar at {partial}", "\n".join(tail))
        partial.replace(out)
    finally:
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)
    return out, key
