"""The SQLite ledger: records, bases, schema version, and durability of committed records."""

import sqlite3
from pathlib import Path

import pytest

from executor.errors import LedgerError
from executor.ledger import RECORD_KEYS, SCHEMA_VERSION, Ledger
from executor.record import RECORD_VERSION, ExperimentRecord, Finish, Results
from executor.types import BaseImage, Status
from tests.conftest import begin

BASE = BaseImage("sha256:" + "b" * 64, ("sha256:" + "1" * 64,), ("PATH=/usr/bin",), ("python3",),
                 "recipe", "sha256:" + "d" * 64, "offline:bookworm")


def test_record_lifecycle(tmp_path):
    """A record begins as running with every key (this sealab's record version among them), and
    finishes in place with its final status."""
    ledger = Ledger(tmp_path / "l.db")
    ledger.begin(ExperimentRecord(id="e1", commit="c" * 40, status=Status.RUNNING, created_at="t"), "owner")
    assert ledger.running() == [("e1", "owner")]
    assert set(ledger.get("e1")) == set(RECORD_KEYS) and ledger.get("e1")["status"] == "running"
    assert ledger.get("e1")["record_version"] == RECORD_VERSION == ledger.experiment("e1").record_version
    ledger.finish("e1", Finish(Status.OK, results=Results(metrics={"val_bpb": 1.5}, drift=[])))
    reopened = Ledger(tmp_path / "l.db")
    assert reopened.running() == [] and reopened.get("e")["metrics"] == {"val_bpb": 1.5}
    assert reopened.experiment("e").status == Status.OK and reopened.experiment("e").value == 1.5


def test_base_roundtrip(tmp_path):
    """The current base survives a reopen with every field."""
    Ledger(tmp_path / "l.db").set_base(BASE)
    assert Ledger(tmp_path / "l.db").current_base() == BASE


def test_schema_version_and_wal(tmp_path):
    """The file carries its schema version and uses WAL so readers never block the writer."""
    Ledger(tmp_path / "l.db")
    db = sqlite3.connect(tmp_path / "l.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_newer_schema_is_refused(tmp_path):
    """A ledger from a newer sealab is not touched."""
    Ledger(tmp_path / "l.db").close()
    sqlite3.connect(tmp_path / "l.db").execute("PRAGMA user_version = 99")
    with pytest.raises(LedgerError, match="newer"):
        Ledger(tmp_path / "l.db")


def test_garbage_file_is_a_clear_error(tmp_path):
    """A file that is not SQLite gives a LedgerError, not a traceback."""
    (tmp_path / "l.db").write_bytes(b"not a database" * 100)
    with pytest.raises(LedgerError):
        Ledger(tmp_path / "l.db")


def test_ambiguous_prefix_finds_nothing(tmp_path):
    """A prefix that matches two records resolves to none."""
    ledger = Ledger(tmp_path / "l.db")
    for eid in ("ab1", "ab2"):
        begin(ledger, id=eid, commit="c", created_at="t")
    assert ledger.get("ab") is None and ledger.get("ab2")["id"] == "ab2"


def test_like_wildcards_in_a_prefix_match_only_themselves(tmp_path):
    """`_`, `%` and `\\` in what the user typed are literal characters, not SQL LIKE wildcards."""
    ledger = Ledger(tmp_path / "l.db")
    begin(ledger, id="abc123", commit="c", created_at="t")
    assert ledger.get("abc")["id"] == "abc123"
    for typed in ("a_c", "_bc", "a%", "%", "ab\\", "abc12_"):
        assert ledger.get(typed) is None, typed
    begin(ledger, id="a_c9", commit="c", created_at="t")
    assert ledger.get("a_c")["id"] == "a_c9"


def test_version_1_ledger_is_migrated_in_place(tmp_path):
    """A schema-1 file gains the run and event tables and keeps its records."""
    from executor.ledger import _SCHEMA

    db = sqlite3.connect(tmp_path / "l.db")
    db.executescript(_SCHEMA + "PRAGMA user_version = 1;")
    db.execute("INSERT INTO experiments (id, status, owner, record, created_at, updated_at) VALUES "
               "('e1', 'ok', NULL, '{\"id\": \"e1\", \"status\": \"ok\"}', 't', 't')")
    db.commit()
    db.close()
    ledger = Ledger(tmp_path / "l.db")
    assert ledger.get("e1")["status"] == "ok"
    ledger.add_event("tag", "drift", {"path": "train.py"})
    assert ledger.events("drift")[0]["path"] == "train.py"
    assert sqlite3.connect(tmp_path / "l.db").execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def chained(tmp_path, n=3):
    ledger = Ledger(tmp_path / "l.db")
    for i in range(n):
        begin(ledger, id=f"e{i}", commit="c", created_at="t")
        ledger.finish(f"e{i}", Finish(Status.OK, results=Results(metrics={"val_bpb": 1.0 + i}, drift=[])))
    return ledger, sqlite3.connect(tmp_path / "l.db")


def test_untouched_chain_has_no_problems(tmp_path):
    """Records written through the ledger agree with their hash chain."""
    ledger, _ = chained(tmp_path)
    ledger.record_decision("e1", "keep", "better")
    assert ledger.chain_problems() == []


def test_edited_record_is_reported_with_its_row(tmp_path):
    """A record edited directly in the SQLite file is reported, naming its id and row."""
    ledger, db = chained(tmp_path)
    db.execute("UPDATE experiments SET record = replace(record, '2.0', '1.5') WHERE id = 'e1'")
    db.commit()
    [problem] = ledger.chain_problems()
    assert problem["id"] == "e1" and problem["row"] == 2 and problem["field"] == "record"


def test_deleted_and_inserted_records_are_reported(tmp_path):
    """A deleted record and a record inserted behind sealab's back are both reported."""
    ledger, db = chained(tmp_path)
    db.execute("DELETE FROM experiments WHERE id = 'e0'")
    db.execute("INSERT INTO experiments (id, status, owner, record, created_at, updated_at) "
               "VALUES ('x', 'ok', NULL, '{\"id\": \"x\"}', 't', 't')")
    db.commit()
    found = {(p["id"], p["actual"]) for p in ledger.chain_problems()}
    assert ("e0", "deleted") in found and ("x", "a record the chain has never seen") in found


def test_reordered_records_are_reported(tmp_path):
    """Swapping the order of two records is reported."""
    ledger, db = chained(tmp_path)
    db.execute("UPDATE experiments SET seq = 100 WHERE id = 'e0'")
    db.commit()
    assert [p["field"] for p in ledger.chain_problems()] == ["order"]


def test_edited_chain_link_is_reported(tmp_path):
    """Rewriting a link of the chain itself breaks the links after it."""
    ledger, db = chained(tmp_path)
    db.execute("UPDATE chain SET record_sha256 = 'f' || substr(record_sha256, 2) WHERE seq = 2")
    db.commit()
    assert any(p["field"] == "chain link" for p in ledger.chain_problems())


@pytest.mark.parametrize("how", ["removed", "replaced"])
def test_a_ledger_removed_or_replaced_stops_its_writes_and_is_rescued(tmp_path, how):
    """Each write first checks the file is the one opened: a removed or replaced ledger stops the
    writes (LedgerGone, exit 5) and what the open one held is copied out, usable as a ledger."""
    import shutil

    from executor.errors import LedgerGone

    path = tmp_path / ".sealab" / "ledger.db"
    ledger = Ledger(path)
    ledger.add_event("t", "note", {"n": 1})
    shutil.rmtree(path.parent)
    if how == "replaced":
        Ledger(path).close()
    with pytest.raises(LedgerGone, match="is gone" if how == "removed" else "was replaced") as raised:
        ledger.add_event("t", "note", {"n": 2})
    assert raised.value.exit_code == 5
    rescued = list(path.parent.glob("ledger.rescued-*.db"))
    assert len(rescued) == 1 and str(rescued[0]) in str(raised.value)
    assert [e["n"] for e in Ledger(rescued[0]).events("note")] == [1]
    if how == "replaced":
        assert Ledger(path).events("note") == []  # the new file was not written to


def test_a_ledger_left_to_the_collector_gives_its_descriptors_back(tmp_path):
    """The descriptor a Ledger holds for its identity check is closed by close() or when the Ledger is
    collected: thousands of in-process commands (a test session, a server) do not pile them up."""
    import gc
    import os

    open_fds = lambda: len(os.listdir("/proc/self/fd"))  # noqa: E731
    Ledger(tmp_path / "l.db").close()
    before = open_fds()
    for _ in range(200):
        Ledger(tmp_path / "l.db")
    gc.collect()
    assert open_fds() - before < 5


def test_closing_one_ledger_keeps_the_locks_of_the_others_in_the_process(tmp_path):
    """Two Ledgers of one file in this process, one closed; another process then opens and closes the file.
    It must not take itself for the WAL's last user and remove it under the open one (SQLite's "disk I/O
    error", which killed a loop whose background thread closed its own Ledger)."""
    import subprocess
    import sys

    path = tmp_path / "ledger.db"
    first, second = Ledger(path), Ledger(path)
    first.save_run("t", {"tag": "t"})
    second.close()
    code = ("import sys; sys.path.insert(0, sys.argv[2]); from pathlib import Path; from executor.ledger import Ledger; "
            "l = Ledger(Path(sys.argv[1])); l.run_state('t'); l.close()")
    for _ in range(3):
        subprocess.run([sys.executable, "-c", code, str(path), str(Path(__file__).resolve().parents[2])], check=True)
    first.save_run("t", {"tag": "t", "again": True})
    assert first.run_state("t") == {"tag": "t", "again": True}
    assert (tmp_path / "ledger.db-wal").exists()  # still this process's, in use
    first.close()
