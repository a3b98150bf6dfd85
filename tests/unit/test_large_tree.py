"""A commit with a large file: its blob is streamed from git into the layer (never whole in memory),
the image is byte for byte the one an in-memory seal makes, and [resources] tree_mb refuses a tree
past it, naming the largest files. Real git repositories (the seam), no Docker."""

from __future__ import annotations

import dataclasses
import tracemalloc

import pytest

from executor.errors import SourceError
from executor.git_source import INLINE_MAX, resolve
from executor.image.seal import seal
from executor.types import BaseImage, Resources, RunSpec

BASE = BaseImage("sha256:" + "b" * 64, ("sha256:" + "1" * 64,), ("PATH=/usr/bin",), ("python3",),
                 "recipe", "sha256:" + "d" * 64, "offline:bookworm")
BIG = 24 << 20  # past INLINE_MAX and the in-memory layer limit


@pytest.fixture(scope="module")
def big_commit(tmp_path_factory):
    import git

    root = tmp_path_factory.mktemp("repo")
    repo = git.Repo.init(root, initial_branch="main")
    (root / "prepare.py").write_text("harness\n")
    (root / "train.py").write_text("SCALAR_LR = 0.5\n")
    (root / "model.pt").write_bytes(bytes(range(256)) * (BIG // 256))
    repo.index.add(["prepare.py", "train.py", "model.pt"])
    repo.index.commit("a checkpoint committed by mistake")
    from executor.git_source import open_repo

    return resolve(open_repo(root), "HEAD")


def test_a_large_blob_is_streamed_and_seals_to_the_same_image(big_commit):
    model = next(f for f in big_commit.files if f.path == "model.pt")
    assert BIG > INLINE_MAX and model.data == b"" and model.length == BIG and model.git_dir is not None
    tracemalloc.start()
    try:
        streamed = seal(big_commit, BASE, RunSpec())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak  # a 24 MB file, sealed with a few MB of Python memory
    inline = dataclasses.replace(big_commit, files=tuple(
        dataclasses.replace(f, data=f.read(), size=None, git_dir=None) for f in big_commit.files))
    in_memory = seal(inline, BASE, RunSpec())
    from pathlib import Path

    assert isinstance(streamed.layer, Path)  # the layer went to a file, the blob from git into it
    assert streamed.image_id == in_memory.image_id and streamed.layer_bytes() == in_memory.layer_bytes()
    assert streamed.archive() == in_memory.archive()
    path = streamed.layer
    del streamed
    import gc

    gc.collect()
    assert not path.exists()  # the temporary layer goes with its Sealed


def test_tree_mb_refuses_a_larger_tree_naming_its_largest_files(big_commit):
    spec = RunSpec(resources=Resources(tree_mb=16))
    with pytest.raises(SourceError) as refused:
        seal(big_commit, BASE, spec)
    said = str(refused.value)
    assert refused.value.exit_code == 2 and "tree_mb = 16" in said and said.index("model.pt (25.2 MB)") < said.index(
        "train.py") and "git rm --cached" in said
    seal(big_commit, BASE, RunSpec(resources=Resources(tree_mb=25)))  # 25 MB holds it
