"""kill -9 of `sealab run` at exact points, then `sealab run --resume`: nothing lost, nothing run twice."""

from __future__ import annotations

import time

import pytest

from tests.faults.kit import audit, fast_workspace, kill9, launch, ledger_rows, sealab, wait_for

pytestmark = pytest.mark.docker

# (id, pause point, min_delta): a huge min_delta makes every proposal a discard, so that the
# discard's two CAS moves come right after the proposal's own.
POINTS = [
    ("begun", "begun:2", 0.0001),                  # the proposal's record was just inserted as running
    ("seal", "seal:2", 0.0001),                    # its image is sealed, not loaded yet
    ("container", "container:2", 0.0001),          # its container is running
    ("finished-baseline", "finished:1", 0.0001),   # the baseline record is finished, not yet counted
    ("finished", "finished:2", 0.0001),            # the proposal's record is finished, not yet annotated
    ("annotated", "annotated:2", 0.0001),          # annotated with the run tag, not yet kept or discarded
    ("cas-branch-created", "cas:1", 0.0001),       # sealab/<tag> created, no run state saved yet
    ("cas-commit", "cas:2", 0.0001),               # the branch moved to the proposal's commit
    ("cas-discarded-ref", "cas:3", 1e6),           # refs/sealab/discarded/<id> created, the branch not moved back
    ("cas-branch-back", "cas:4", 1e6),             # the branch moved back to the best commit, state not saved
]


def prepared(root) -> list[dict]:
    """The pipelined loop's `prepared` events (proposals asked ahead), read without writing."""
    return ledger_rows(root, "SELECT record FROM events WHERE kind = 'prepared' ORDER BY seq")


@pytest.mark.parametrize("name,point,min_delta", POINTS, ids=[p[0] for p in POINTS])
def test_kill_9_then_resume(name, point, min_delta, tmp_path, base_image, engine):
    """kill -9 at one exact point, then --resume: zero lost or duplicated records, no commit run twice,
    branch and refs consistent, `verify --all` clean, no container left."""
    root = fast_workspace(tmp_path, base_image, min_delta=min_delta)
    mark = tmp_path / "paused"
    proc = launch(["run", "--experiments", "2", "--tag", "k", "--proposer", "offline"], root, pause=point, mark=mark)
    paused = wait_for(mark, proc)
    if name == "container":  # the pipelined loop prepares experiment 2 while experiment 1 runs
        deadline = time.monotonic() + 30
        while not prepared(root) and time.monotonic() < deadline:
            time.sleep(0.1)
    before = ledger_rows(root)
    ahead = prepared(root)
    kill9(proc)
    assert paused, f"never reached {point}: {proc.returncode}"
    resumed = sealab("run", "--resume", "--tag", "k", "--experiments", "2", "--proposer", "offline", cwd=root)
    assert "Traceback" not in resumed.stderr
    assert resumed.returncode == 0, resumed.stderr
    found = audit(root, "k", before=before, engine=engine)
    assert found.clean, str(found)
    every = prepared(root)
    assert sorted(e["n"] for e in every) == list(range(1, len(every) + 1))  # none asked twice after the resume
    if name == "container":
        assert ahead, "experiment 2 was not prepared while experiment 1 ran"
        ran = [r for r in found.records if ahead[-1]["commit"] in (r["commit"], (r.get("cycle") or {}).get("rebased_from"))]
        assert len(ran) == 1 and ran[0]["status"] == "ok"  # taken up by the resumed run, and run once
    assert [r for r in found.records if r["status"] == "ok" and r.get("decision") in ("keep", "discard")]
