"""The one layer writer, config builder and archive writer (executor/image/layer.py) that experiment
images and the offline base share: same entries, same bytes; streamed from disk; and the bytes the
base's own writer and builder produced before they were merged into these (golden sha256 values)."""

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from executor.image import assemble
from executor.image.layer import EPOCH, Entry, image_config, layer_tar, tree_entries, write_archive, write_layer
from executor.types import sha256_hex

# Computed with assemble.dir_layer and assemble.config_bytes as they were before issue 12 merged the
# base's writer and builder into layer.py (commit 7e236fd): the offline base's bytes must not move.
GOLDEN_TREE_LAYER = "sha256:796802c6d07016740463c068137fb1c27a50010aab853e511549074226df3423"
GOLDEN_BASE_CONFIG = "78acd001426f6311eca23d1378d337a9dab4684865be4090b3948d51db85efec"


def small_tree(root: Path) -> Path:
    """usr/bin/tool (0700), usr/lib/a.py (0600), usr/lib/link -> a.py, and the empty home/sealab and out."""
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/lib").mkdir()
    (root / "usr/bin/tool").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "usr/bin/tool", 0o700)
    (root / "usr/lib/a.py").write_bytes(b"a = 1\n")
    os.chmod(root / "usr/lib/a.py", 0o600)
    (root / "usr/lib/link").symlink_to("a.py")
    (root / "home/sealab").mkdir(parents=True)
    (root / "out").mkdir()
    return root


def members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getmembers()


def test_same_entries_same_bytes_in_any_order():
    """The layer's bytes depend on the entries only, not their order; the diff ID is their sha256."""
    entries = [Entry("/w/b", b"2"), Entry("/w/a/x", b"1", 0o600), Entry("/z/l", b"../w/b", 0o777, "symlink")]
    a, b = io.BytesIO(), io.BytesIO()
    diff = write_layer(entries, a)
    assert write_layer(reversed(entries), b) == diff == "sha256:" + sha256_hex(a.getvalue())
    assert a.getvalue() == b.getvalue() == layer_tar(entries)


def test_entries_sorted_parents_first_with_fixed_mtime_and_owner():
    """Sorted by path components with missing parents added as 0755 dirs; mtime EPOCH, no owner names,
    uid:gid 0:0 unless the entry says otherwise; modes and link targets as given."""
    data = layer_tar([Entry("/b/x", b"x"), Entry("/a-b", b""), Entry("/a/c", b"c", 0o755),
                      Entry("/home/u", kind="dir", mode=0o755, uid=1000, gid=1000),
                      Entry("/a/l", b"c", 0o777, "symlink")])
    got = members(data)
    assert [m.name for m in got] == ["a", "a/c", "a/l", "a-b", "b", "b/x", "home", "home/u"]
    assert {(m.mtime, m.uname, m.gname) for m in got} == {(EPOCH, "", "")}
    by_name = {m.name: m for m in got}
    assert (by_name["home/u"].uid, by_name["home/u"].gid, by_name["home"].uid) == (1000, 1000, 0)
    assert by_name["a"].isdir() and by_name["a"].mode == 0o755 and by_name["a/c"].mode == 0o755
    assert by_name["a/l"].issym() and by_name["a/l"].linkname == "c"


def test_source_file_is_streamed_and_equals_its_bytes(tmp_path):
    """An entry whose content is a file on disk gives the same bytes as one holding that content, and the
    writer passes it on in small pieces instead of reading it whole (base layers are hundreds of MB)."""
    content = bytes(range(256)) * (4 * 4096)  # 4 MiB
    (tmp_path / "big").write_bytes(content)

    class Sink(io.BytesIO):
        largest = 0

        def write(self, data) -> int:
            self.largest = max(self.largest, len(data))
            return super().write(data)

    sink = Sink()
    write_layer([Entry("/opt/big", source=tmp_path / "big")], sink)
    assert sink.getvalue() == layer_tar([Entry("/opt/big", content)])
    assert sink.largest < len(content) // 16


def test_entry_with_both_data_and_source_is_refused(tmp_path):
    """A file entry has one content: data and a source file together are an error naming both."""
    with pytest.raises(ValueError, match="got kind 'file' with 3 bytes"):
        Entry("/x", b"abc", source=tmp_path / "x")


def test_tree_layer_bytes_are_the_bases_as_before(tmp_path):
    """A tree on disk becomes the layer the base's own writer used to make, byte for byte: modes
    normalised (dirs and executables 0755, other files 0644, links 0777), uid 1000 only on USER_DIRS."""
    root = small_tree(tmp_path / "tree")
    out = io.BytesIO()
    assert write_layer(tree_entries(root, assemble.USER_DIRS), out) == GOLDEN_TREE_LAYER
    modes = {m.name: (oct(m.mode), m.uid) for m in members(out.getvalue())}
    assert modes == {"home": ("0o755", 0), "home/sealab": ("0o755", 1000), "out": ("0o755", 1000),
                     "usr": ("0o755", 0), "usr/bin": ("0o755", 0), "usr/bin/tool": ("0o755", 0),
                     "usr/lib": ("0o755", 0), "usr/lib/a.py": ("0o644", 0), "usr/lib/link": ("0o777", 0)}


def test_base_config_is_the_one_assemble_built_before():
    """The offline base's config, now made by the shared builder, has the bytes (and so the image ID)
    the base's own builder gave for the same layers and labels: no User or WorkingDir, one named
    history entry per layer."""
    diff_ids = ["sha256:" + c * 64 for c in "123"]
    config = assemble.config_bytes(diff_ids, {"sealab.recipe": "sha256:" + "9" * 64, "sealab.source": "offline:bookworm"})
    assert sha256_hex(config) == GOLDEN_BASE_CONFIG
    parsed = json.loads(config)
    assert "User" not in parsed["config"] and "WorkingDir" not in parsed["config"]
    assert [h["created_by"] for h in parsed["history"]] == ["sealab base layer " + n for n in assemble.LAYERS]


def test_config_needs_one_history_entry_per_layer():
    """A history that does not match the layers is refused with both counts."""
    with pytest.raises(ValueError, match="2 layers, 1 history entries"):
        image_config(diff_ids=["sha256:a", "sha256:b"], env=[], cmd=[], labels={}, created_by=["only one"])


def test_archive_lists_every_layer_and_holds_those_given(tmp_path):
    """The archive holds the config, the layers given (bytes or a file) and the manifest last; a layer
    given as None is listed in the manifest but left out (the engine already has it)."""
    layer_file = tmp_path / "l.tar"
    layer_file.write_bytes(layer_tar([Entry("/f", b"file")]))
    in_memory = layer_tar([Entry("/m", b"memory")])
    config = b'{"rootfs":"any config"}'
    out = io.BytesIO()
    write_archive(out, config, [("sha256:" + "1" * 64, None), ("sha256:f", layer_file), ("sha256:m", in_memory)], None)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("manifest.json").read())
        assert tar.extractfile("f/layer.tar").read() == layer_file.read_bytes()
        assert tar.extractfile("m/layer.tar").read() == in_memory
    assert names == [sha256_hex(config) + ".json", "f/layer.tar", "m/layer.tar", "manifest.json"]
    assert manifest == [{"Config": sha256_hex(config) + ".json", "RepoTags": None,
                         "Layers": ["1" * 64 + "/layer.tar", "f/layer.tar", "m/layer.tar"]}]


def test_base_recipe_covers_the_shared_writer(tmp_path, monkeypatch):
    """The offline base's recipe hashes layer.py as well as assemble.py: a change to either, which may
    change the base's bytes, is a new recipe, so a cached base is not reused for it."""
    from executor.image import base, layer

    before = base._assembly_code()
    for module in (layer, assemble):
        changed = tmp_path / f"{module.__name__}.py"
        changed.write_bytes(Path(module.__file__).read_bytes() + b"\n# changed\n")
        with monkeypatch.context() as patch:
            patch.setattr(module, "__file__", str(changed))
            assert base._assembly_code() != before
    assert base._assembly_code() == before
