"""The hash chain checked from a signed checkpoint (executor/chain_check.py): the same problems as the full
walk for every edit before or after the checkpoint, a chain rewritten or cut back before it, a checkpoint
edited or signed with another key (then the whole chain is walked), and a clean run after new writes."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest

from executor import chain_check
from executor.ledger import Ledger, link_hash, record_digest
from executor.record import Finish, Results
from executor.types import Status
from tests.conftest import begin

KEY = bytes(range(32))


def chained(tmp_path, n=4):
    ledger = Ledger(tmp_path / "l.db")
    for i in range(n):
        write(ledger, f"e{i}", 1.0 + i)
    return ledger, sqlite3.connect(tmp_path / "l.db", isolation_level=None)


def write(ledger, eid, value):
    begin(ledger, id=eid, commit="c", created_at="t")
    ledger.finish(eid, Finish(Status.OK, results=Results(metrics={"val_bpb": value}, drift=[])))


def checkpointed(tmp_path, before=4, after=3, rewrite=True):
    """A ledger of `before` records and a clean checkpoint of it, then `after` more records and (`rewrite`)
    a decision on e1 (a record rewritten after the checkpoint)."""
    ledger, db = chained(tmp_path, before)
    path = tmp_path / "cache" / chain_check.CHECKPOINT_NAME
    assert chain_check.check(ledger, path, KEY).problems == []
    checkpoint, note = chain_check.load(path, KEY)
    assert note is None and checkpoint.chain_seq == ledger.cursor() == 2 * before
    for i in range(before, before + after):
        write(ledger, f"e{i}", 1.0 + i)
    if rewrite:
        ledger.record_decision("e1", "keep", "better")
    return ledger, db, checkpoint


def test_a_clean_ledger_checks_from_its_checkpoint_and_moves_it_on(tmp_path):
    """After new writes (new records, a record rewritten) the incremental check finds nothing, starts at
    the checkpoint's link, decodes only what was written after it, and signs a checkpoint at the new head."""
    ledger, _, checkpoint = checkpointed(tmp_path)
    path = tmp_path / "cache" / chain_check.CHECKPOINT_NAME
    result = chain_check.check(ledger, path, KEY)
    assert result.problems == [] and result.start == checkpoint.chain_seq and result.note is None
    assert ledger.chain_problems() == []
    moved, _ = chain_check.load(path, KEY)
    assert moved.chain_seq == ledger.cursor() > checkpoint.chain_seq and len(moved.rows) == 7
    again = chain_check.check(ledger, path, KEY)
    assert again.problems == [] and again.start == ledger.cursor()


def test_the_incremental_check_reads_no_record_it_need_not(tmp_path, monkeypatch):
    """Rows untouched since the checkpoint are compared by their stored text's hash: never decoded."""
    ledger, _, checkpoint = checkpointed(tmp_path, before=20, after=2)
    decoded = []
    real = chain_check._record_digest
    monkeypatch.setattr(chain_check, "_record_digest",
                        lambda text: decoded.append(json.loads(text)["id"]) or real(text))
    assert chain_check.since(ledger, checkpoint).problems == []
    assert sorted(decoded) == ["e1", "e20", "e21"]


# Each edit, done in SQL behind sealab's back, before (rows e0-e3, links 1-8) or after (e4-e6, e1's decision)
# the checkpoint.
EDITS = {
    "record before": "UPDATE experiments SET record = replace(record, '3.0', '1.5') WHERE id = 'e2'",
    "record after": "UPDATE experiments SET record = replace(record, '5.0', '1.5') WHERE id = 'e4'",
    "record rewritten after": "UPDATE experiments SET record = replace(record, 'better', 'worse') WHERE id = 'e1'",
    "deleted before": "DELETE FROM experiments WHERE id = 'e2'",
    "deleted after": "DELETE FROM experiments WHERE id = 'e5'",
    "inserted": "INSERT INTO experiments (id, status, owner, record, created_at, updated_at) "
                "VALUES ('x', 'ok', NULL, '{\"id\": \"x\"}', 't', 't')",
    "reordered before": "UPDATE experiments SET seq = 100 WHERE id = 'e0'",
    "reordered after": "UPDATE experiments SET seq = 100 WHERE id = 'e4'",
    "link after": "UPDATE chain SET record_sha256 = 'f' || substr(record_sha256, 2) WHERE seq = 10",
    "link deleted after": "DELETE FROM chain WHERE seq = 11",
    "link inserted after": "INSERT INTO chain (seq, experiment_id, record_sha256, prev, hash) "
                           "SELECT max(seq) + 1, 'e3', record_sha256, hash, hash FROM chain",
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_an_edit_is_caught_with_the_full_walks_problems(tmp_path, edit):
    """Whatever is edited, before or after the checkpoint, the incremental check reports it exactly as
    Ledger.chain_problems does (and chain_check.full is the same walk)."""
    ledger, db, checkpoint = checkpointed(tmp_path)
    db.execute(EDITS[edit])
    expected = ledger.chain_problems()
    assert expected, edit
    result = chain_check.since(ledger, checkpoint)
    assert result.problems == expected and result.start == checkpoint.chain_seq
    assert chain_check.full(ledger).problems == expected


@pytest.mark.parametrize("edit", ["link", "link deleted", "cut back"])
def test_a_chain_changed_before_the_checkpoint_is_walked_whole_and_reported(tmp_path, edit):
    """A link up to the checkpoint edited or deleted, or the ledger cut back to before it: the whole chain
    is walked (its problems reported) and that the chain is not the one signed is one more problem."""
    ledger, db, checkpoint = checkpointed(tmp_path, rewrite=False)
    db.execute({"link": "UPDATE chain SET record_sha256 = 'f' || substr(record_sha256, 2) WHERE seq = 5",
                "link deleted": "DELETE FROM chain WHERE seq = 3",
                "cut back": "DELETE FROM chain WHERE seq >= 7"}[edit])
    if edit == "cut back":  # (a ledger restored from an older backup, say)
        db.execute("DELETE FROM experiments WHERE id NOT IN ('e0', 'e1', 'e2')")
    result = chain_check.since(ledger, checkpoint)
    assert result.start == 0 and "not the one the checkpoint signed" in result.note
    assert result.problems[:-1] == ledger.chain_problems()
    assert result.problems[-1]["field"] == "chain checkpoint" and result.problems[-1]["row"] == 8
    assert (ledger.chain_problems() == []) == (edit == "cut back")  # a cut is what only the checkpoint sees


def test_a_chain_recomputed_over_an_edit_is_caught_by_the_checkpoint(tmp_path):
    """Someone who edits a record and recomputes the whole chain passes the full walk, not the checkpoint."""
    ledger, db, checkpoint = checkpointed(tmp_path)
    db.execute("UPDATE experiments SET record = replace(record, '3.0', '1.5') WHERE id = 'e2'")
    latest, prev = {}, "0" * 64
    for (eid, text) in db.execute("SELECT id, record FROM experiments").fetchall():
        latest[eid] = record_digest(json.loads(text))
    for seq, eid in db.execute("SELECT seq, experiment_id FROM chain ORDER BY seq").fetchall():
        digest = latest[eid]
        db.execute("UPDATE chain SET record_sha256 = ?, prev = ?, hash = ? WHERE seq = ?",
                   (digest, prev, link_hash(prev, eid, digest), seq))
        prev = link_hash(prev, eid, digest)
    assert ledger.chain_problems() == []
    problems = chain_check.since(ledger, checkpoint).problems
    assert [p["field"] for p in problems] == ["chain checkpoint"]


def test_a_record_written_out_again_unchanged_is_no_problem(tmp_path):
    """The same record stored as other JSON text (other spacing) is the same record for the chain."""
    ledger, db, checkpoint = checkpointed(tmp_path)
    text = db.execute("SELECT record FROM experiments WHERE id = 'e0'").fetchone()[0]
    db.execute("UPDATE experiments SET record = ? WHERE id = 'e0'", (json.dumps(json.loads(text), indent=1),))
    assert chain_check.since(ledger, checkpoint).problems == [] == ledger.chain_problems()


@pytest.mark.parametrize("how", ["edited", "another key", "not a checkpoint"])
def test_a_checkpoint_edited_or_signed_with_another_key_is_not_used(tmp_path, how):
    """Said in one line, and the whole chain is walked; the checkpoint is not replaced by a plain check
    (`whole`, i.e. `--full`, signs a new one)."""
    ledger, db, _ = checkpointed(tmp_path)
    path = tmp_path / "cache" / chain_check.CHECKPOINT_NAME
    key = KEY
    if how == "edited":
        data = path.read_bytes().replace(b'"chain_seq":8', b'"chain_seq":6')
        assert data != path.read_bytes()
        path.write_bytes(data)
    elif how == "another key":
        key = bytes(32)
    else:
        path.write_text("{}")
    before = path.read_bytes()
    checkpoint, note = chain_check.load(path, key)
    assert checkpoint is None and len(note.splitlines()) == 1
    assert ("another key" in note) == (how == "another key") and "whole chain is walked" in note
    result = chain_check.check(ledger, path, key)
    assert result.note == note and result.start == 0 and result.problems == []
    assert path.read_bytes() == before
    chain_check.check(ledger, path, key, whole=True)
    assert chain_check.load(path, key)[0].chain_seq == ledger.cursor()


def test_no_checkpoint_is_written_over_problems(tmp_path):
    """A check with problems keeps the old checkpoint, so the next one reports them again."""
    ledger, db, checkpoint = checkpointed(tmp_path)
    path = tmp_path / "cache" / chain_check.CHECKPOINT_NAME
    db.execute(EDITS["record before"])
    assert chain_check.check(ledger, path, KEY).problems
    assert chain_check.load(path, KEY)[0] == checkpoint
    assert chain_check.check(ledger, path, KEY).problems


def test_the_key_is_made_once_outside_the_workspace_mode_0600(tmp_path, monkeypatch):
    monkeypatch.setenv("SEALAB_KEY_DIR", str(tmp_path / "keys"))
    monkeypatch.delenv(chain_check.KEY_ENV, raising=False)
    key = chain_check.load_key()
    assert chain_check.key_path() == tmp_path / "keys" / "checkpoint.key"
    assert os.stat(chain_check.key_path()).st_mode & 0o777 == 0o600
    assert chain_check.load_key() == key and len(key) == 32
    monkeypatch.setenv(chain_check.KEY_ENV, str(tmp_path / "ws" / "k"))
    from executor.signing import SigningError

    with pytest.raises(SigningError, match="inside the workspace"):
        chain_check.load_key(workspaces=(tmp_path / "ws",))
