"""The validation split for the trusted scorer: read once from the base image, cached by data digest.

Experiment images hold no val.bin (the seal layer whites it out), so the orchestrator reads it from the
base image (`Engine.read_file`: a container created, never started) and checks it against the base's
manifest, whose sha256 is the data digest. Cached as <cache_dir>/<digest hex>/val.bin and re-checked
against the manifest on every use, so a corrupted or edited cache is refetched, never believed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Protocol

from executor.errors import IdentityMismatch

DATA_DIR = "/opt/sealab/data"
MANIFEST = "manifest.json"
SPLIT = "val"


class FileSource(Protocol):
    def read_file(self, image_id: str, path: str) -> bytes: ...


def val_path(data_dir: str = DATA_DIR) -> str:
    """Where the base image keeps val.bin (the name every manifest prepare_data.py writes gives it)."""
    return f"{data_dir}/{SPLIT}.bin"


def default_cache_dir() -> Path:
    from executor.image.base import default_cache_dir as sealab_cache

    return sealab_cache() / "val"


def load_val(source: FileSource, base_image_id: str, data_digest: str, cache_dir: Path | None = None) -> bytes:
    """The bytes of the validation split of `base_image_id`, whose data digest must be `data_digest`.

    Raises:
        IdentityMismatch: the base's manifest or val.bin is not what the digest names.
        EngineUnavailable, BaseImageError: from `source` (the engine, or the file is not in the image).
    """
    cache = (cache_dir or default_cache_dir()) / data_digest.removeprefix("sha256:")
    manifest_bytes = _cached(cache / MANIFEST)
    if manifest_bytes is None or _digest(manifest_bytes) != data_digest:
        manifest_bytes = source.read_file(base_image_id, f"{DATA_DIR}/{MANIFEST}")
        if _digest(manifest_bytes) != data_digest:
            raise IdentityMismatch(f"data manifest of {base_image_id[:19]}", data_digest, _digest(manifest_bytes))
        _store(cache / MANIFEST, manifest_bytes)
    entry = json.loads(manifest_bytes)[SPLIT]
    val = _cached(cache / entry["file"])
    if val is None or not _matches(val, entry):
        val = source.read_file(base_image_id, f"{DATA_DIR}/{entry['file']}")
        if not _matches(val, entry):
            raise IdentityMismatch(f"{entry['file']} of {base_image_id[:19]}",
                                   f"sha256:{entry['sha256']} ({entry['bytes']} bytes)",
                                   f"sha256:{hashlib.sha256(val).hexdigest()} ({len(val)} bytes)")
        _store(cache / entry["file"], val)
    return val


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _matches(data: bytes, entry: dict) -> bool:
    return len(data) == entry["bytes"] and hashlib.sha256(data).hexdigest() == entry["sha256"]


def _cached(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _store(path: Path, data: bytes) -> None:
    """Write atomically (tmp + os.replace): a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
