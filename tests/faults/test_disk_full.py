"""Disk full on the state directory: `.sealab` on a small tmpfs, filled before and during a run."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess

import pytest

from tests.conftest import unavailable
from tests.faults.kit import audit, fast_workspace, integrity, launch, ledger_rows, said, sealab, wait_for

pytestmark = pytest.mark.docker


@pytest.fixture
def small_disk(tmp_path, base_image):
    """A workspace whose state directory `.sealab` is a 256 MiB tmpfs (room for the eval phase's ~70 MB
    of logits; we are root in CI); yields the workspace and unmounts afterwards whatever happened. (With
    the whole workspace on the full disk, git itself fails first: see docs/reliability.md.)"""
    if os.geteuid() != 0:
        unavailable("mounting a tmpfs needs root")
    root = fast_workspace(tmp_path, base_image)
    state = root / ".sealab"
    aside = shutil.move(str(state), str(tmp_path / "state-aside"))
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(state)], check=True)
    try:
        shutil.copytree(aside, state, dirs_exist_ok=True)
        yield root
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def fill(mnt) -> int:
    """Write a file until the device has no byte left; returns the bytes written."""
    written = 0
    with open(mnt / "filler", "wb", buffering=0) as fh:
        for size in (1 << 20, 4096, 1):
            while True:
                try:
                    written += fh.write(b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    return written


def one_error_line(proc) -> str:
    lines = said(proc.stderr)
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_disk_full_before_a_run(small_disk, engine):
    """With no space left, exec fails with one clear line (exit 5) and status still reads (or says why);
    nothing recorded is lost or corrupted, and with space again everything works and verifies."""
    root = small_disk
    first = sealab("exec", "--json", cwd=root)
    assert first.returncode == 0, first.stderr
    before = ledger_rows(root)
    fill(root / ".sealab")
    proc = sealab("exec", "--json", cwd=root)
    assert proc.returncode == 5, proc.stderr
    assert "no space left" in one_error_line(proc)
    status = sealab("status", "--json", cwd=root)  # a read works, or says why not in one line
    if status.returncode == 0:
        assert json.loads(status.stdout) == before
    else:
        assert status.returncode == 5 and "no space left" in one_error_line(status)
    (root / ".sealab" / "filler").unlink()
    assert integrity(root / ".sealab" / "ledger.db") == "ok"
    assert ledger_rows(root) == before
    again = sealab("exec", "--json", cwd=root)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["status"] == "ok"
    verify = sealab("verify", "--all", "--json", cwd=root)
    assert verify.returncode == 0 and json.loads(verify.stdout)["mismatches"] == [], verify.stdout


def test_disk_full_during_a_run(small_disk, engine, tmp_path):
    """The disk fills while the container runs: a one-line error and a non-zero exit; the records written
    before are intact, the cut-off one ends `interrupted` at the next command, no container is left."""
    root = small_disk
    assert sealab("exec", cwd=root).returncode == 0
    before = ledger_rows(root)
    mark, go_on = tmp_path / "paused", tmp_path / "go"
    proc = launch(["exec", "--json"], root, pause="container", mark=mark, go_on=go_on)
    assert wait_for(mark, proc), proc.communicate()
    fill(root / ".sealab")
    go_on.touch()
    out, err = proc.communicate(timeout=300)
    (root / ".sealab" / "filler").unlink()
    cut = subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(), err.decode())
    line = one_error_line(cut)
    assert cut.returncode != 0 and "space" in line.lower(), line
    status = sealab("status", "--json", cwd=root)  # the next command settles the cut-off record
    assert status.returncode == 0, status.stderr
    records = json.loads(status.stdout)
    assert records[: len(before)] == before and len(records) == len(before) + 1
    assert records[-1]["status"] in ("interrupted", "infra_error"), records[-1]
    assert integrity(root / ".sealab" / "ledger.db") == "ok"
    found = audit(root, None, engine=engine)
    assert found.clean, str(found)
    assert cut.returncode == 5, line  # a state-directory failure, in one line
