"""`sealab run --workers 2` on the local engine: two experiments at once, a deterministic merge."""

from __future__ import annotations

from datetime import datetime, timedelta

import git
import pytest

from executor.git_source import open_repo
from tests.conftest import sealab, sealab_json
from tests.faults.kit import ledger_rows
from tests.integration.test_loop import check_run_consistency, fast_workspace

pytestmark = pytest.mark.docker


def step_budget(root, steps: int = 3) -> None:
    """A fixed number of training steps: the metric of a commit is the same in every run (a generous
    grace: on 2 busy vCPUs the evaluation alone can take tens of seconds)."""
    from agent.gitops import commit_file, set_constant

    toml = (root / "sealab.toml").read_text().replace("# steps = 200", f"steps = {steps}")
    toml = set_constant(toml, "grace_seconds", "240")
    commit_file(open_repo(root), "sealab.toml", toml, "step budget")


def interval(record):
    end = datetime.fromisoformat(record["finished_at"].replace("Z", "+00:00"))
    return end - timedelta(seconds=record["durations"]["run"]), end


def test_two_workers_overlap_and_merge_like_a_sequential_evaluation(make_workspace, engine):
    root = fast_workspace(make_workspace)
    step_budget(root)
    proc = sealab("run", "--workers", "2", "--experiments", "4", "--proposer", "offline", "--tag", "w", cwd=root,
                  timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = check_run_consistency(root, "w", engine)
    proposals = [r for r in records if r.get("proposal")]
    assert len(proposals) == 4 and all(r["status"] == "ok" for r in proposals)
    rounds = [proposals[0:2], proposals[2:4]]
    for a, b in rounds:
        (a0, a1), (b0, b1) = interval(a), interval(b)
        assert a0 < b1 and b0 < a1, f"runs of one round did not overlap: {a0}-{a1} vs {b0}-{b1}"
        assert a["parent"] == b["parent"], "both proposals of a round start from the same best commit"

    # The same commits evaluated one after another, outside the loop, give the same numbers and the same choice.
    state = sealab_json("status", cwd=root)
    baseline = [r for r in state if r.get("decision") == "baseline"]
    best = sum(r["metrics"]["val_bpb"] for r in baseline) / len(baseline)
    from policies import decide, load_policy

    policy = load_policy(str(root.parent.parent / "policy.toml"))
    a, b = rounds[0]
    sequential = []
    for record in (a, b):
        rerun = sealab_json("exec", record["commit"], cwd=root, ok_codes=(0,))
        assert rerun["metrics"]["val_bpb"] == record["metrics"]["val_bpb"]
        sequential.append(rerun["metrics"]["val_bpb"])
    threshold = _noise(policy, baseline)
    keep = [i for i, v in enumerate(sequential)
            if decide(policy, direction="minimize", best=best, candidate=v, threshold=threshold)[0] == "keep"]
    expected = min(keep, key=lambda i: (sequential[i], i)) if keep else None
    decisions = [r["decision"] for r in (a, b)]
    assert decisions == [("keep" if i == expected else "discard") for i in range(2)], (sequential, best, decisions)


def _noise(policy, baseline):
    from policies import noise_floor

    return noise_floor(policy, [r["metrics"]["val_bpb"] for r in baseline])


def wait_for_round(root, deadline_s: float = 600) -> None:
    """Until two records of one round (the proposals, not the baseline) are running at once."""
    import time

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        time.sleep(0.3)
        if sum(r["status"] == "running" and bool(r.get("proposal")) for r in ledger_rows(root)) >= 2:
            return
    raise AssertionError("no round of two running experiments appeared")


@pytest.mark.parametrize("how", ["kill9", "sigterm"])
def test_stopping_a_round_then_resume(make_workspace, engine, how):
    """kill -9 (or SIGTERM) while a round's two experiments run, then `--resume`: both end `interrupted`
    with their commits preserved, no container is left, nothing is run twice, the run finishes."""
    import os
    import signal
    import subprocess

    from tests.conftest import SEALAB

    root = fast_workspace(make_workspace)
    step_budget(root)
    proc = subprocess.Popen([SEALAB, "run", "--workers", "2", "--experiments", "4", "--tag", "r", "--proposer",
                             "offline"], cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_round(root)
    os.kill(proc.pid, signal.SIGKILL if how == "kill9" else signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    if how == "sigterm":
        assert proc.returncode == 130 and "Traceback" not in stderr, stderr
        # read the ledger directly: `sealab status` would mark records of a dead process itself
        statuses = [r["status"] for r in ledger_rows(root)]
        assert "running" not in statuses and statuses.count("interrupted") == 2, statuses  # SIGTERM did it
    resumed = sealab("run", "--resume", "--tag", "r", "--experiments", "4", cwd=root, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    records = sealab_json("status", cwd=root)
    interrupted = [r for r in records if r["status"] == "interrupted"]
    assert len(interrupted) == 2, [(r["id"], r["status"]) for r in records]
    repo = git.Repo(root)
    for r in interrupted:
        assert repo.git.rev_parse(f"refs/sealab/discarded/{r['id']}") == r["commit"]
    decided = [r["commit"] for r in records if r.get("decision") in ("keep", "discard")]
    assert len(decided) == len(set(decided)) and len(decided) >= 2  # nothing run twice; the run went on
    assert engine.api.containers(all=True, filters={"label": "sealab.experiment"}) == [] or all(
        c["Labels"].get("sealab.experiment") not in {r["id"] for r in records}
        for c in engine.api.containers(all=True, filters={"label": "sealab.experiment"}))
    check_run_consistency(root, "r", engine)
