"""The verification cache (executor/verify_cache.py): a cached `verify --all` reports exactly what an
uncached one does, derives nothing a second time while nothing changed, and is refused whenever any input
of a verdict changed (the record, its commit or what git resolves it to, the base record, the run spec,
the code, the key, the cache file itself). Real git repository and real sealing; no Docker."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace

import pytest

from executor import git_source
from executor import verify as verify_module
from executor.image.seal import seal
from executor.ledger import Ledger
from executor.record import Finish, Results
from executor.types import BaseImage, RunSpec, Status
from executor.verify import verify
from executor.verify_cache import CACHE_DIR, CACHE_NAME, VerifyCache, problems_for, verify_all
from tests.conftest import begin, write_stored

SPEC = {"budget_s": 2.0, "grace_s": 40.0, "seed": 42, "metric": "val_bpb", "direction": "minimize", "resources": {}}
BASE = BaseImage(image_id="sha256:" + "b" * 64, diff_ids=("sha256:" + "d" * 64,), env=("PATH=/usr/bin",),
                 cmd=("python3",), recipe="r", data_digest="sha256:" + "e" * 64, source="test")
WRONG = "sha256:" + "0" * 64


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A workspace whose ledger has records on three commits (two sharing an identity), one never sealed,
    one with a wrong image ID, one still running and one that does not decode."""
    from agent.create import init
    from agent.gitops import make_commit
    from executor import owner

    monkeypatch.setenv("SEALAB_CHECKPOINT_KEY", str(tmp_path / "keys" / "checkpoint.key"))
    w = init(tmp_path / "ws")
    repo = w.git
    start = git_source.head_commit(repo)
    train = (w.root / "train.py").read_text()
    c1 = make_commit(repo, start, {"train.py": train + "\nX = 1\n"}, "one")
    c2 = make_commit(repo, c1, {"train.py": train + "\nX = 2\n"}, "two")
    ledger = Ledger(w.ledger_path)
    ledger.set_base(BASE)

    def add(eid, commit, image="sealed", status=Status.OK):
        begin(ledger, owner.token(), id=eid, commit=commit, tree=git_source.tree_of(repo, commit),
              base_image_id=BASE.image_id, data_digest=BASE.data_digest, run_spec=SPEC, created_at="t")
        if status is None:
            return
        image_id = seal(git_source.resolve(repo, commit), BASE, RunSpec.from_dict(SPEC)).image_id \
            if image == "sealed" else image
        ledger.finish(eid, Finish(status, None if status == Status.OK else "exit code 1", image_id=image_id,
                                  results=Results(metrics={"val_bpb": 1.0}, drift=[])))

    add("e1", start)
    add("e2", c1)
    add("e3", c2, status=Status.CRASH)
    add("e4", c1, image=None, status=Status.INFRA_ERROR)
    add("e5", c1)
    add("e6", start, image=WRONG)
    add("e7", c2, status=None)
    write_stored(ledger, {**ledger.get("e2"), "id": "e8", "metrics": "0.9"})
    return {"ws": w, "repo": repo, "ledger": ledger, "commits": (start, c1, c2), "state": w.state,
            "cache": w.state / CACHE_DIR / CACHE_NAME}


def uncached(world):
    return verify(world["repo"], world["ledger"], None, world["ledger"].records(), whole_ledger=True)


def cached(world, **kw):
    return verify_all(world["repo"], world["ledger"], None, world["state"], **kw)


def same(a, b):
    assert a["checked"] == b["checked"] and a["mismatches"] == b["mismatches"]


def no_derivation(monkeypatch):
    """Any read of a commit's files or sealing fails the test from here on."""
    def refuse(*_a, **_k):
        raise AssertionError("derived again")

    monkeypatch.setattr(verify_module.git_source, "resolve", refuse)
    monkeypatch.setattr(verify_module, "seal", refuse)


def test_a_second_run_takes_every_verdict_from_the_cache(world, monkeypatch):
    """The first run derives each distinct identity once and reports what the uncached check does; the
    second derives nothing (only the records' stored text is hashed) and reports the same."""
    first = cached(world)
    same(first, uncached(world))
    assert [(m["id"], m["field"]) for m in first["mismatches"]] == [("e6", "image_id"), ("e8", "metrics")]
    assert first["checked"] == 7 and first["rederived"] == 4 and first["chain_from"] == 0  # (e4: no spec to seal)
    no_derivation(monkeypatch)
    second = cached(world)
    same(second, first)
    assert second["rederived"] == 0 and second["cached"] == 8  # every row, the running one included
    assert second["chain_from"] == world["ledger"].cursor() and second["notes"] == []


def test_new_and_rewritten_records_reuse_the_identities_they_share(world, monkeypatch):
    """A record annotated since (new text) and a new record on a commit already seen re-derive nothing."""
    cached(world)
    ledger = world["ledger"]
    ledger.record_decision("e2", "keep", "better")
    write_stored(ledger, {**ledger.get("e5"), "id": "e9"})
    expected = uncached(world)
    no_derivation(monkeypatch)
    report = cached(world)
    same(report, expected)
    assert report["rederived"] == 0 and report["cached"] == 9


def _replace_commit(world):
    """c1's object replaced by c2's (`git replace`): the same commit ID now reads as c2's tree, for a new
    git process (this one's GitPython handle read the replacements when it started)."""
    start, c1, c2 = world["commits"]
    subprocess.run(["git", "-C", str(world["ws"].root), "replace", c1, c2], check=True)
    world["repo"] = git_source.open_repo(world["ws"].root)


def _drop_commit(world):
    start, c1, c2 = world["commits"]
    path = world["repo"].git_dir / "objects" / c2[:2] / c2[2:]
    path.unlink()


def _forge_cache(world):
    """Say e6 (wrong image ID) verified clean, in the cache file."""
    text = world["cache"].read_text()
    lines = [line for line in text.splitlines() if line.startswith("r\t") and '"e6"' in line]
    assert lines
    world["cache"].write_text(text.replace(lines[0], lines[0].rsplit("\t", 1)[0] + "\t[]"))


def _another_key(world, monkeypatch):
    monkeypatch.setenv("SEALAB_CHECKPOINT_KEY", str(world["state"].parent.parent / "keys" / "other.key"))


# Each input a verdict depends on, changed after a first (cached) run: (change, the record and field the
# change must show up as, or None where nothing is wrong but nothing may come from the old entries).
CHANGES = {
    "record image_id": (lambda w, mp: write_stored(w["ledger"], {**w["ledger"].get("e2"), "image_id": WRONG}),
                        ("e2", "image_id")),
    "record tree": (lambda w, mp: write_stored(w["ledger"], {**w["ledger"].get("e2"), "tree": "f" * 40}),
                    ("e2", "tree")),
    "record data_digest": (lambda w, mp: write_stored(w["ledger"], {**w["ledger"].get("e2"), "data_digest": WRONG}),
                           ("e2", "data_digest")),
    "record run spec": (lambda w, mp: write_stored(w["ledger"], {**w["ledger"].get("e2"),
                                                                   "run_spec": {**SPEC, "budget_s": 3.0}}),
                        ("e2", "image_id")),
    "record commit": (lambda w, mp: write_stored(w["ledger"], {**w["ledger"].get("e2"), "commit": w["commits"][2]}),
                      ("e2", "tree")),
    "record edited in SQL": (lambda w, mp: w["ledger"].db.execute(
        "UPDATE experiments SET record = replace(record, 'infra_error', 'ok') WHERE id = 'e4'"), ("e4", "record")),
    "base record": (lambda w, mp: w["ledger"].set_base(replace(BASE, env=("PATH=/bin",))), ("e2", "image_id")),
    "base data digest": (lambda w, mp: w["ledger"].set_base(replace(BASE, data_digest=WRONG)), ("e2", "data_digest")),
    "base removed": (lambda w, mp: w["ledger"].db.execute("DELETE FROM bases"), ("e2", "base_image_id")),
    "commit rewritten (git replace)": (lambda w, mp: _replace_commit(w), ("e2", "tree")),
    "commit gone from the repository": (lambda w, mp: _drop_commit(w), ("e3", "commit")),
    "cache file forged": (lambda w, mp: _forge_cache(w), ("e6", "image_id")),
    "another key": (lambda w, mp: _another_key(w, mp), None),
    "another sealab (code)": (lambda w, mp: mp.setattr(verify_module, "_code", "another"), None),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_the_cache_is_refused_when_any_input_changed(world, monkeypatch, change):
    """After the change the cached check reports exactly what the uncached one does, the change shows up
    where it must (so no old verdict vouched for it), and an unchanged identity is still taken from it."""
    cached(world)
    make, shows = CHANGES[change]
    make(world, monkeypatch)
    report, expected = cached(world), uncached(world)
    same(report, expected)
    if shows is not None:
        assert shows in {(m["id"], m["field"]) for m in report["mismatches"]}, report["mismatches"]
    if change in ("another key", "another sealab (code)", "cache file forged"):
        assert report["rederived"] >= 3  # nothing of the old file was used
    if change.startswith("record ") and change != "record edited in SQL":
        assert report["rederived"] <= 1 and report["cached"] >= 6  # the others came from the cache


def test_a_cached_run_with_an_edited_ledger_reports_the_chain_too(world):
    """Identity and chain problems together, cached or not, in the same order."""
    cached(world)
    world["ledger"].db.execute("UPDATE experiments SET record = replace(record, 'val_bpb', 'val_loss') WHERE id = 'e1'")
    world["ledger"].db.execute("DELETE FROM experiments WHERE id = 'e3'")
    report = cached(world)
    same(report, uncached(world))
    assert {m["field"] for m in report["mismatches"]} >= {"record", "image_id", "metrics"}


def test_full_derives_everything_again_and_keeps_only_what_it_found(world, monkeypatch):
    first = cached(world)
    full = cached(world, full=True)
    same(full, first)
    assert full["rederived"] == 4 and full["cached"] == 0 and full["chain_from"] == 0
    entries = VerifyCache(world["cache"], bytes.fromhex((world["state"].parent.parent / "keys" / "checkpoint.key")
                                                       .read_text().strip()))
    assert len(entries) == 8 + 4  # a verdict per row, an entry per identity


def test_a_torn_write_loses_only_its_own_block(world):
    """A block cut short (a crash mid-write) is skipped; what was written before and after is read."""
    cached(world)
    with open(world["cache"], "ab") as f:
        f.write(b"\n@\tcode\nr\tt:abc\t-\t10\t[]")  # no closing line
    world["ledger"].record_decision("e1", "keep", "x")
    cached(world)
    key = bytes.fromhex((world["state"].parent.parent / "keys" / "checkpoint.key").read_text().strip())
    entries = VerifyCache(world["cache"], key)
    assert entries.rejected == 0 and entries.record("t:abc") is None
    text = world["ledger"]._query("SELECT record FROM experiments WHERE id = 'e1'").fetchone()[0]
    from executor.chain_check import text_digest

    assert entries.record("t:" + text_digest(text)) is not None


def test_problems_for_one_record_uses_the_same_cache(world, monkeypatch):
    """The dashboard's per-row check: verify's identity mismatches of that record, and the second time
    (a new cache object on the same file: another process) without deriving anything."""
    from executor.chain_check import load_key

    key = load_key()
    ledger, repo = world["ledger"], world["repo"]
    cache = VerifyCache(world["cache"], key)
    for eid in ("e1", "e4", "e6", "e7", "e8"):
        record = ledger.get(eid)
        expected = [m for m in verify(repo, ledger, None, [record])["mismatches"] if "row" not in m]
        assert problems_for(record, repo=repo, ledger=ledger, cache=cache) == expected, eid
    cache.flush()
    no_derivation(monkeypatch)
    again = VerifyCache(world["cache"], key)
    assert [m["field"] for m in problems_for(ledger.get("e6"), repo=repo, ledger=ledger, cache=again)] == ["image_id"]
    assert problems_for(ledger.get("e1"), repo=repo, ledger=ledger, cache=again) == []


def test_the_cli_says_what_came_from_the_cache_and_where_the_chain_check_started(world, monkeypatch):
    from click.testing import CliRunner

    from agent.cli import main
    from executor.docker_engine import Engine
    from executor.errors import EngineUnavailable

    def no_engine(*_a, **_k):
        raise EngineUnavailable("no engine in this test")

    monkeypatch.setattr(Engine, "connect", classmethod(no_engine))
    root = str(world["ws"].root)
    run = lambda *args: CliRunner().invoke(main, ["-C", root, "verify", *args])  # noqa: E731
    first = run("--all")
    assert first.exit_code == 1, first.output
    assert "checked 7 record(s) (re-derived 4 identities, 0 from the cache; whole chain walked;" in first.output
    assert "MISMATCH e6 image_id" in first.output and first.output.strip().endswith("2 mismatch(es)")
    second = run("--all", "--json")
    data = json.loads(second.output)
    assert (data["checked"], data["rederived"], data["cached"], len(data["mismatches"])) == (7, 0, 8, 2)
    assert data["chain_from"] == world["ledger"].cursor()
    assert f"chain from link {world['ledger'].cursor()}" in run("--all").output
    full = run("--all", "--full")
    assert "re-derived 4 identities, 0 from the cache; whole chain walked" in full.output
    one = run("e6")
    assert one.exit_code == 1 and "MISMATCH e6 image_id" in one.output
    assert "checked 1 record(s), 1 mismatch" in one.output
    assert run("e6", "--full").exit_code == 2


class FakeEngine:
    """Holds e1's image with one label changed, and e2's tag on another image."""

    def __init__(self, world):
        ledger = world["ledger"]
        self.e1, self.e2 = ledger.get("e1")["image_id"], ledger.get("e2")["image_id"]
        self.tag2 = f"sealab/exp:{ledger.get('e2')['commit'][:12]}-{self.e2.removeprefix('sha256:')[:12]}"
        self.asked = 0

    def image_id(self, ref):
        self.asked += 1
        return {self.e1: self.e1, self.tag2: WRONG}.get(ref)

    def image_labels(self, image):
        self.asked += 1
        return {"sealab.train": "edited"}


def test_engine_checks_are_asked_every_time_and_agree(world):
    """The engine's side is never taken from the cache, is asked once per image in a check, and gives
    the same mismatches with or without the cache."""
    engine = FakeEngine(world)
    ledger, repo = world["ledger"], world["repo"]
    expected = verify(repo, ledger, engine, ledger.records(), whole_ledger=True)
    fields = {(m["id"], m["field"]) for m in expected["mismatches"]}
    assert ("e1", "engine label sealab.train") in fields and ("e2", f"engine image {engine.tag2}") in fields
    assert ("e5", f"engine image {engine.tag2}") in fields  # (the same image as e2's: asked once)
    for _ in range(2):
        engine.asked = 0
        report = verify_all(repo, ledger, engine, world["state"])
        assert report["mismatches"] == expected["mismatches"]
        assert engine.asked == 7  # three images: e1's (and e6's), e2's (and e5's), e3's


def test_commit_trees_in_one_git_process_agree_with_one_by_one(world):
    """What the cache keys are made of: each ref's commit and tree, None for a ref that names no commit,
    the same whether looked up one by one or many in one `git cat-file --batch`."""
    repo, (start, c1, c2) = world["repo"], world["commits"]
    prefixes = [sha[:n] for sha in (start, c1, c2) for n in (7, 9, 12, 20)]
    refs = [start, c1, c2, *prefixes, "HEAD", "main", "nope", "c" * 40, "HEAD^{tree}", "a b", "", start + "\n"] * 2
    many = git_source.commit_trees(repo, refs)
    assert len(set(refs)) - 3 > git_source.BATCH_FROM  # (those but the last three in one git process)
    one = {ref: git_source.commit_trees(repo, [ref])[ref] for ref in refs}
    assert many == one
    assert many[c1] == (c1, git_source.tree_of(repo, c1)) == many[c1[:9]] and many["HEAD^{tree}"] is None
    assert many["nope"] is None and many["a b"] is None and many[""] is None


def test_the_dashboard_verifies_its_rows_through_the_cache_and_never_writes_it(world, monkeypatch):
    """`sealab serve`'s per-row verification reads `verify --all`'s cache: after one run, the page's rows are
    verified with nothing derived again, and the cache file (and the key) are left as they were."""
    from agent.dashboard import Dashboard
    from executor.ledger import reading

    cached(world)
    before = world["cache"].read_bytes()
    no_derivation(monkeypatch)
    board = Dashboard(root=world["ws"].root, repo=world["repo"], alive=lambda holder: True,
                      check_chain=lambda ledger: [], chain_interval_s=3600)
    with reading(world["ws"].ledger_path) as ledger:
        rows = {row["id"]: row["verification"] for row in board.experiments(ledger)["experiments"]}
    assert rows["e1"]["state"] == "ok" and rows["e2"]["state"] == "ok"
    assert rows["e6"]["state"] == "mismatch" and any("image_id" in p for p in rows["e6"]["problems"])
    assert world["cache"].read_bytes() == before
