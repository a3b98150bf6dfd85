"""Another process holding the ledger with `BEGIN EXCLUSIVE`: sealab waits (busy timeout 30 s), then
either goes on once the lock is released or fails with one line (exit 5); nothing is corrupted."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.faults.kit import audit, fast_workspace, integrity, launch, ledger_rows, said, sealab, wait_for

pytestmark = pytest.mark.docker

HOLD = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.execute("COMMIT")
"""


def hold_lock(db, seconds: float) -> subprocess.Popen:
    """A process holding `BEGIN EXCLUSIVE` on `db` for `seconds` (returns once the lock is taken)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(db), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_short_lock_is_waited_for(tmp_path, base_image, engine):
    """A lock released within the busy timeout only delays `sealab exec`, which then records normally."""
    root = fast_workspace(tmp_path, base_image)
    holder = hold_lock(root / ".sealab" / "ledger.db", 3)
    started = time.monotonic()
    proc = sealab("exec", "--json", cwd=root)
    holder.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] == "ok" and time.monotonic() - started >= 2
    assert integrity(root / ".sealab" / "ledger.db") == "ok"
    assert json.loads(sealab("verify", "--all", "--json", cwd=root).stdout)["mismatches"] == []


def test_lock_held_past_the_busy_timeout_mid_run(tmp_path, base_image, engine):
    """Locked while an experiment runs and for longer than the busy timeout: `sealab exec` gives up with
    one line and exit 5; the lock released, the next command marks the record `interrupted`, earlier
    records are intact, the ledger verifies and no container is left."""
    root = fast_workspace(tmp_path, base_image)
    assert sealab("exec", cwd=root).returncode == 0
    before = ledger_rows(root)
    mark, go_on = tmp_path / "paused", tmp_path / "go"
    proc = launch(["exec", "--json"], root, pause="container", mark=mark, go_on=go_on)
    assert wait_for(mark, proc), proc.communicate()
    holder = hold_lock(root / ".sealab" / "ledger.db", 45)
    try:
        go_on.touch()
        out, err = proc.communicate(timeout=120)
    finally:
        holder.kill()
        holder.wait()
    lines = said(err.decode())
    assert proc.returncode == 5, err
    assert len(lines) == 1 and lines[0].startswith("sealab: error: ") and "database is locked" in lines[0], lines
    records = json.loads(sealab("status", "--json", cwd=root).stdout)
    assert records[: len(before)] == before and len(records) == len(before) + 1
    assert records[-1]["status"] == "interrupted", records[-1]
    assert integrity(root / ".sealab" / "ledger.db") == "ok"
    found = audit(root, None, engine=engine)
    assert found.clean, str(found)
