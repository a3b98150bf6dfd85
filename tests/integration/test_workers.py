"""`sealab run --workers 2` on the local engine: two experiments at once, a deterministic merge."""

from __future__ import annotations

from datetime import datetime, timedelta

import git
import pytest

from tests.conftest import sealab, sealab_json
from tests.integration.test_loop import check_run_consistency, fast_workspace

pytestmark = pytest.mark.docker


def step_budget(root, steps: int = 3) -> None:
    """A fixed number of training steps: the metric of a commit is the same in every run (a generous
    grace: on 2 busy vCPUs the evaluation alone can take tens of seconds)."""
    from agent.gitops import commit_file, set_constant

    toml = (root / "sealab.toml").read_text().replace("# steps = 200", f"steps = {steps}")
    toml = set_constant(toml, "grace_seconds", "240")
    commit_file(git.Repo(root), "sealab.toml", toml, "step budget")


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
