"""The validation split for the scorer (executor/valdata.py): read from the base once, checked, cached."""

import hashlib
import json

import pytest

from executor import valdata
from executor.errors import IdentityMismatch
from executor.image.seal import VAL_WHITEOUT

VAL = b"def f():\n    return 1\n" * 100
BASE = "sha256:" + "b" * 64


def manifest(val: bytes = VAL) -> bytes:
    return json.dumps({"val": {"file": "val.bin", "bytes": len(val), "sha256": hashlib.sha256(val).hexdigest()},
                       "train": {"file": "train.bin", "bytes": 0, "sha256": ""}}, sort_keys=True).encode()


DIGEST = "sha256:" + hashlib.sha256(manifest()).hexdigest()


class FakeImage:
    """A FileSource holding the files of one base image; counts reads."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.reads = files, []

    def read_file(self, image_id: str, path: str) -> bytes:
        self.reads.append((image_id, path))
        return self.files[path]


def base(val: bytes = VAL, man: bytes | None = None) -> FakeImage:
    return FakeImage({"/opt/sealab/data/manifest.json": man or manifest(), "/opt/sealab/data/val.bin": val})


def test_reads_once_then_serves_from_the_cache(tmp_path):
    """The first call reads manifest and val.bin from the base image; the next is served from the cache."""
    source = base()
    assert valdata.load_val(source, BASE, DIGEST, tmp_path) == VAL
    assert [p for _, p in source.reads] == ["/opt/sealab/data/manifest.json", "/opt/sealab/data/val.bin"]
    assert (tmp_path / DIGEST.removeprefix("sha256:") / "val.bin").read_bytes() == VAL
    again = base()
    assert valdata.load_val(again, BASE, DIGEST, tmp_path) == VAL and again.reads == []


def test_corrupted_cache_is_refetched(tmp_path):
    """A cached val.bin that no longer matches the manifest is read again from the image, never believed."""
    valdata.load_val(base(), BASE, DIGEST, tmp_path)
    (tmp_path / DIGEST.removeprefix("sha256:") / "val.bin").write_bytes(b"edited")
    source = base()
    assert valdata.load_val(source, BASE, DIGEST, tmp_path) == VAL
    assert [p for _, p in source.reads] == ["/opt/sealab/data/val.bin"]


def test_manifest_must_have_the_data_digest(tmp_path):
    """A base whose manifest is not the one the data digest names is an IdentityMismatch with both digests."""
    other = manifest(b"other")
    with pytest.raises(IdentityMismatch) as info:
        valdata.load_val(base(man=other), BASE, DIGEST, tmp_path)
    assert info.value.expected == DIGEST and info.value.actual == "sha256:" + hashlib.sha256(other).hexdigest()
    assert not (tmp_path / DIGEST.removeprefix("sha256:")).exists()


def test_val_must_match_the_manifest(tmp_path):
    """A val.bin whose sha256 or size differs from the manifest is refused and not cached."""
    with pytest.raises(IdentityMismatch, match="val.bin"):
        valdata.load_val(base(val=VAL + b"x"), BASE, DIGEST, tmp_path)
    assert not (tmp_path / DIGEST.removeprefix("sha256:") / "val.bin").exists()


def test_whiteout_names_the_val_file():
    """The seal's whiteout hides exactly the file the scorer reads from the base."""
    directory, _, name = valdata.val_path().rpartition("/")
    assert VAL_WHITEOUT == f"{directory}/.wh.{name}"
