"""The ledger alone on a full device: every failure is one LedgerError naming the cause, nothing is lost."""

from __future__ import annotations

import os
import sqlite3
import subprocess

import pytest

from executor.errors import LedgerError
from executor.ledger import Ledger
from tests.conftest import begin, unavailable


@pytest.fixture
def tiny_disk(tmp_path):
    if os.geteuid() != 0:
        unavailable("mounting a tmpfs needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_writes_on_a_full_disk_fail_as_ledger_errors(tiny_disk):
    """When SQLite has already rolled the transaction back itself (SQLITE_FULL), the error is still a
    LedgerError that says the disk is full (it was a raw `cannot rollback` OperationalError), and the
    records written before stay readable and intact."""
    ledger = Ledger(tiny_disk / "ledger.db")
    begin(ledger, "owner", id="a", commit="c" * 40, created_at="2026-01-01T00:00:00Z")
    with open(tiny_disk / "filler", "wb", buffering=0) as fh:
        for size in (1 << 16, 1024, 1):
            while True:
                try:
                    fh.write(b"\0" * size)
                except OSError:
                    break
    with pytest.raises(LedgerError) as caught:
        for i in range(50):
            begin(ledger, "owner", id=f"b{i}", commit="c" * 40, created_at="2026-01-01T00:00:00Z", big="y" * 200_000)
    assert not isinstance(caught.value, sqlite3.Error)
    assert "no space left" in str(caught.value) and "\n" not in str(caught.value)
    assert [r["id"] for r in ledger.records()] == ["a"] and ledger.chain_problems() == []
    (tiny_disk / "filler").unlink()
    begin(ledger, "owner", id="c", commit="c" * 40, created_at="2026-01-01T00:00:00Z")
    assert [r["id"] for r in ledger.records()] == ["a", "c"] and ledger.chain_problems() == []
    assert ledger.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
