"""Deterministic layers, configs and image IDs (pure: no Docker, no git)."""

import io
import json
import tarfile

import pytest

from executor.errors import SourceError
from executor.git_source import CommitFacts, TreeFile, blob_sha
from executor.image.layer import EPOCH, Entry, layer_tar
from executor.image.seal import REVISION, RUN_SPEC_PATH, VAL_WHITEOUT, scored_by_orchestrator, seal
from executor.types import BaseImage, Resources, RunSpec, sha256_hex

BASE = BaseImage("sha256:" + "b" * 64, ("sha256:" + "1" * 64,), ("PATH=/usr/bin",), ("python3",),
                 "recipe", "sha256:" + "d" * 64, "offline:bookworm")


def facts(train: bytes = b"SCALAR_LR = 0.5\n", sha: str = "c" * 40, harness: bytes = b"harness\n") -> CommitFacts:
    files = [("prepare.py", harness, 0o644), ("train.py", train, 0o644), ("run.sh", b"#!/bin/sh\n", 0o755)]
    return CommitFacts(sha, None, "e" * 40, "subject",
                       tuple(TreeFile(p, "file", m, d, blob_sha(d)) for p, d, m in files))


def test_same_inputs_same_id():
    """Sealing the same commit twice on the same base gives byte-identical images."""
    a, b = seal(facts(), BASE, RunSpec()), seal(facts(), BASE, RunSpec())
    assert a.image_id == b.image_id and a.layer == b.layer and a.config == b.config


def test_image_ids_are_pinned():
    """The fixture commit seals to the IDs it had before the image writer was shared with the base
    (commit 7e236fd): ledgers pin image IDs, so no refactoring may move them."""
    assert seal(facts(), BASE, RunSpec()).image_id == \
        "sha256:f8d271291c75c46f6dbee840ac9b9bfe76e798c80a9955bbc8c5ce606accdb3c"
    hidden = seal(facts(), BASE, RunSpec(), hide_val=True)
    assert hidden.image_id == "sha256:9ac90b06b63482ba0b7ac345c30aee87cccc98443bc7db9a5bbfe8d73b6c758e"
    assert sha256_hex(hidden.layer) == "f9c6bf6d22f9099aa56682dd1119a5f25a18589314ab6a7368897d446f5c58b2"


def test_id_is_sha256_of_config():
    """The image ID is the sha256 of the config bytes, which list the base layers then the new one."""
    s = seal(facts(), BASE, RunSpec())
    assert s.image_id == "sha256:" + sha256_hex(s.config)
    config = json.loads(s.config)
    assert config["rootfs"]["diff_ids"] == [*BASE.diff_ids, "sha256:" + sha256_hex(s.layer)]
    assert config["config"]["Labels"][REVISION] == "c" * 40
    assert config["config"]["User"] == "1000:1000"


@pytest.mark.parametrize("change", ["train_byte", "commit", "base", "spec", "data"])
def test_any_input_change_changes_id(change):
    """One byte of train.py, the commit (a label), the base, the run spec or the data digest: a new ID."""
    kwargs = {"f": facts(), "base": BASE, "spec": RunSpec()}
    if change == "train_byte":
        kwargs["f"] = facts(b"SCALAR_LR = 0.3\n")
    elif change == "commit":
        kwargs["f"] = facts(sha="f" * 40)
    elif change == "base":
        kwargs["base"] = BaseImage(**{**BASE.to_dict(), "image_id": "sha256:" + "a" * 64})
    elif change == "spec":
        kwargs["spec"] = RunSpec(resources=Resources(memory_mb=1024))
    else:
        kwargs["base"] = BaseImage(**{**BASE.to_dict(), "data_digest": "sha256:" + "0" * 64})
    assert seal(kwargs["f"], kwargs["base"], kwargs["spec"]).image_id != seal(facts(), BASE, RunSpec()).image_id


def test_layer_entries_are_fixed_and_sorted():
    """Layer entries are sorted with parents first, mtime fixed, owner 0:0, and git modes kept."""
    s = seal(facts(), BASE, RunSpec())
    with tarfile.open(fileobj=io.BytesIO(s.layer)) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == ["sealab", "sealab/run_spec.json", "workspace", "workspace/prepare.py",
                     "workspace/run.sh", "workspace/train.py"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(EPOCH, 0, 0, "", "")}
    assert {m.name: m.mode for m in members}["workspace/run.sh"] == 0o755
    assert RUN_SPEC_PATH.lstrip("/") in names


def test_run_spec_is_sealed_into_the_layer():
    """The run spec the harness reads is the canonical spec whose digest is labelled."""
    spec = RunSpec(budget_s=7)
    s = seal(facts(), BASE, spec)
    with tarfile.open(fileobj=io.BytesIO(s.layer)) as tar:
        data = tar.extractfile("sealab/run_spec.json").read()
    assert json.loads(data)["budget_s"] == 7.0
    assert s.labels["sealab.run-spec"] == "sha256:" + sha256_hex(data.rstrip(b"\n"))


def test_entry_order_does_not_matter():
    """The layer depends on entries, not on the order they were listed in."""
    entries = [Entry("/w/b", b"2"), Entry("/w/a/x", b"1"), Entry("/w/a", kind="dir", mode=0o755)]
    assert layer_tar(entries) == layer_tar(list(reversed(entries)))


def test_commit_without_harness_is_refused():
    """A commit without prepare.py cannot be sealed: there would be no harness to run."""
    bare = CommitFacts("c" * 40, None, "e" * 40, "s", (TreeFile("train.py", "file", 0o644, b"", blob_sha(b"")),))
    with pytest.raises(SourceError, match="prepare.py"):
        seal(bare, BASE, RunSpec())


def test_equal_specs_hash_equally():
    """Integer and float spellings of the same budget give the same run-spec digest."""
    assert RunSpec(budget_s=60).digest() == RunSpec(budget_s=60.0).digest()
    assert RunSpec.from_dict(RunSpec().to_dict()) == RunSpec()


def test_hide_val_whites_out_the_validation_split():
    """hide_val adds an empty OCI whiteout of /opt/sealab/data/val.bin, the same bytes every time, and a new ID."""
    hidden, again = seal(facts(), BASE, RunSpec(), hide_val=True), seal(facts(), BASE, RunSpec(), hide_val=True)
    plain = seal(facts(), BASE, RunSpec(), hide_val=False)
    assert hidden.layer == again.layer and hidden.image_id == again.image_id != plain.image_id
    with tarfile.open(fileobj=io.BytesIO(hidden.layer)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    whiteout = members["opt/sealab/data/.wh.val.bin"]
    assert VAL_WHITEOUT == "/opt/sealab/data/.wh.val.bin"
    assert whiteout.isfile() and whiteout.size == 0 and whiteout.mode == 0o644
    assert all(members[d].isdir() and members[d].mode == 0o755 for d in ("opt", "opt/sealab", "opt/sealab/data"))
    assert [n for n in members if n.startswith("opt/")] == ["opt/sealab", "opt/sealab/data",
                                                            "opt/sealab/data/.wh.val.bin"]


def test_hide_val_follows_the_commits_harness():
    """Without hide_val, a harness that declares EVALUATOR = "orchestrator" is sealed without val.bin; an
    older or adopted harness keeps it, so records sealed before the switch re-derive to the same ID."""
    modern = facts(harness=b'"""harness"""\nEVALUATOR = "orchestrator"  # comment\n')
    assert scored_by_orchestrator(modern) and not scored_by_orchestrator(facts())
    assert seal(modern, BASE, RunSpec()).image_id == seal(modern, BASE, RunSpec(), hide_val=True).image_id
    assert seal(facts(), BASE, RunSpec()).image_id == seal(facts(), BASE, RunSpec(), hide_val=False).image_id


