"""[data] directories captured into layers (executor/image/capture.py): snapshots, digests, refusals."""

import io
import os
import tarfile

import pytest

from executor.errors import BaseImageError
from executor.image import capture, extend


def _tree(home):
    root = home / ".cache" / "prep"
    (root / "shards").mkdir(parents=True)
    (root / "shards" / "a.bin").write_bytes(b"a" * 5000)
    (root / "tok.json").write_text('{"v": 1}')
    os.symlink("shards/a.bin", root / "latest")
    return root


def _layer(snap):
    buf = io.BytesIO()
    diff = capture.write_data_layer(snap, buf, lambda step, line: None)
    return diff, buf.getvalue()


def test_the_layer_lies_under_opt_sealab_home_and_its_digest_follows_the_bytes(tmp_path):
    root = _tree(tmp_path)
    snap = capture.snapshot("~/.cache/prep", tmp_path)
    assert (snap.count, snap.size) == (2, 5008)
    diff, data = _layer(snap)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar}
        assert tar.extractfile("opt/sealab/home/.cache/prep/shards/a.bin").read() == b"a" * 5000
    assert members["opt/sealab/home/.cache/prep/latest"].linkname == "shards/a.bin"
    assert {m.mtime for m in members.values()} == {capture.write_layer.__globals__["EPOCH"]}
    assert _layer(capture.snapshot("~/.cache/prep", tmp_path))[0] == diff  # same bytes, same digest
    (root / "tok.json").write_text('{"v": 2}')
    assert _layer(capture.snapshot("~/.cache/prep", tmp_path))[0] != diff


def test_a_snapshot_sees_a_change_without_reading_a_file(tmp_path):
    root = _tree(tmp_path)
    key = capture.snapshot("~/.cache/prep", tmp_path).key
    assert capture.snapshot("~/.cache/prep", tmp_path).key == key
    os.utime(root / "tok.json", ns=(1, 1))
    assert capture.snapshot("~/.cache/prep", tmp_path).key != key


def test_missing_dirs_and_links_out_of_the_tree_are_one_line_errors(tmp_path):
    with pytest.raises(BaseImageError) as info:
        capture.snapshot("~/.cache/none", tmp_path)
    said = str(info.value)
    assert said.startswith(f"[data] directory ~/.cache/none ({tmp_path}/.cache/none) does not exist: fill it first")
    assert "python prepare.py" in said and "\n" not in said
    root = _tree(tmp_path)
    os.symlink("/etc/passwd", root / "out")
    with pytest.raises(BaseImageError, match="out links to /etc/passwd, outside the directory"):
        capture.snapshot("~/.cache/prep", tmp_path)
    (root / "out").unlink()
    os.symlink("../../elsewhere", root / "shards" / "up")
    with pytest.raises(BaseImageError, match="shards/up links to ../../elsewhere, outside the directory"):
        capture.snapshot("~/.cache/prep", tmp_path)


def test_a_file_that_changes_while_captured_is_refused(tmp_path):
    root = _tree(tmp_path)
    snap = capture.snapshot("~/.cache/prep", tmp_path)
    (root / "tok.json").write_text("changed meanwhile")
    with pytest.raises(BaseImageError, match="tok.json changed while it was captured"):
        _layer(snap)


def test_the_data_digest_covers_every_captured_directory():
    manifest = "sha256:" + "1" * 64
    assert extend.data_digest(manifest, ()) == manifest  # a base without captured data keeps its digest
    one = extend.data_digest(manifest, (("~/.cache/a", "sha256:" + "2" * 64),))
    assert one != manifest
    assert one != extend.data_digest(manifest, (("~/.cache/a", "sha256:" + "3" * 64),))
