"""The CUDA torch of a base (`[base] torch = "cuda"`, `sealab base --torch cuda`): which wheels, and from where.

    wanted = requirements(files, cache_dir)      # a deps.Locked: hashed, pinned requirement lines
    wheels = deps.fetch(wanted, cache_dir, progress, kind="torch-cuda")

PyPI's Linux torch wheel is the CUDA build; its CUDA runtime comes in `nvidia-*` and `cuda-*` wheels.
Pinned and hashed, they are the same bytes on every machine, and the base's assembly
(executor/image/assemble.py) turns them into the same layers, so a CUDA base has one image ID
everywhere, like the CPU base, and needs no registry. The pins come from the commit's lock when it
pins torch (its torch and what only torch needs, at the lock's versions: deps.torch_requirements), else
from `torch-cuda.txt` beside this module (torch 2.13.0, the CPU wheel's public version). The CUDA build
runs on a CPU too: with no GPU, `torch.cuda.is_available()` is False and the harness trains on the CPU.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Mapping, Sequence

from executor.errors import BaseImageError
from executor.image import deps
from executor.types import sha256_hex

DEFAULT = Path(__file__).with_name("torch-cuda.txt")
TORCHES = ("cpu", "cuda")  # [base] torch


def default_requirements() -> str:
    """torch-cuda.txt without its comment lines."""
    try:
        text = DEFAULT.read_text()
    except OSError as exc:
        raise BaseImageError(f"cannot read {DEFAULT}: {exc.strerror}") from exc
    return "".join(line + "\n" for line in text.splitlines() if not line.startswith("#"))


def pinned_torch(requirements: str) -> str | None:
    """The torch version pinned in hashed requirement lines (pure)."""
    match = re.search(r"^torch==([^\s;\\]+)", requirements, re.MULTILINE)
    return match[1] if match else None


def requirements(files: Mapping[str, bytes] | None, cache_dir: Path,
                 locked: deps.Locked | None = None) -> deps.Locked:
    """What the torch layer of a CUDA base installs: the lock's torch at its pins, else torch-cuda.txt.

    `files` are the commit's top-level files; `locked` their deps.lock_of (read again when None).

    Raises:
        BaseImageError: an unreadable lock, a requirements.txt torch line without --hash.
    """
    files = files or {}
    locked = locked if locked is not None else (deps.lock_of(files, cache_dir) if files else None)
    if locked is not None and locked.torch is not None:
        own = deps.torch_requirements(files, cache_dir, locked)
        if pinned_torch(own) is None:
            raise BaseImageError(f"{locked.source} pins torch {locked.torch} but sealab found no hashed torch line in "
                                 "it: regenerate it with hashes (uv lock, or uv pip compile --generate-hashes)")
        indexes = (deps.lock_indexes(files, deps.names(own)) if deps.UV_LOCK in files
                   else deps.requirement_indexes(files.get(deps.REQUIREMENTS, b"").decode(errors="replace")))
        return deps.Locked(f"{locked.source} (its torch)", "sha256:" + sha256_hex(own.encode()), own, pinned_torch(own),
                           indexes)
    text = default_requirements()
    return deps.Locked(f"{DEFAULT.name} (sealab's pinned CUDA torch)", "sha256:" + sha256_hex(text.encode()), text,
                       pinned_torch(text))


def cuda_version(wheels: Sequence[Path]) -> str | None:
    """The CUDA version the torch wheel among `wheels` was built for (torch/version.py's `cuda`), or None
    for a CPU build."""
    torch_wheel = next((w for w in wheels if w.name.startswith("torch-")), None)
    if torch_wheel is None:
        return None
    try:
        with zipfile.ZipFile(torch_wheel) as zf:
            text = zf.read("torch/version.py").decode(errors="replace")
    except (OSError, KeyError, zipfile.BadZipFile):
        return None
    match = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", text, re.MULTILINE)
    return match[1] if match else None

