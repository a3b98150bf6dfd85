"""Keep or discard (agent/verdicts.py): the policy applied to finished experiments, one at a time or a
round at once. Pure: no git, no ledger."""

import pytest

from agent.verdicts import Result, Verdict, crashed, of_round, one
from executor.types import Status
from policies import decide, load_policy

POLICY = load_policy("default")


def test_an_improvement_beyond_the_threshold_is_kept_with_the_policys_reason():
    verdict = one(POLICY, direction="minimize", best=2.0, threshold=0.01, result=Result(1.9, Status.OK))
    assert verdict == Verdict(*decide(POLICY, direction="minimize", best=2.0, candidate=1.9, threshold=0.01))
    assert verdict.decision == "keep"


def test_within_the_noise_floor_is_discarded():
    assert one(POLICY, direction="minimize", best=2.0, threshold=0.2, result=Result(1.9, Status.OK)).decision == "discard"
    assert one(POLICY, direction="maximize", best=2.0, threshold=0.01, result=Result(1.9, Status.OK)).decision == "discard"


@pytest.mark.parametrize("status", [Status.CRASH, Status.TIMEOUT, Status.OOM, Status.REJECTED, Status.INFRA_ERROR])
def test_a_run_without_a_metric_is_discarded_naming_its_status(status):
    verdict = one(POLICY, direction="minimize", best=2.0, threshold=0.01, result=Result(None, status))
    assert verdict == Verdict("discard", f"status {status.value}")


def test_only_crashes_timeouts_and_ooms_count_as_crashes():
    assert {s for s in Status if crashed(s)} == {Status.CRASH, Status.TIMEOUT, Status.OOM}


def test_a_round_keeps_its_winner_and_discards_the_others_that_would_have_been_kept():
    results = [Result(1.9, Status.OK, 3, "a"), Result(1.8, Status.OK, 5, "b"), Result(None, Status.CRASH, 1, "c"),
               Result(2.5, Status.OK, 1, "d")]
    win, verdicts = of_round(POLICY, direction="minimize", best=2.0, threshold=0.01, results=results)
    assert win == 1
    assert [v.decision for v in verdicts] == ["discard", "keep", "discard", "discard"]
    assert verdicts[0].why == "b did better in the same round"
    assert verdicts[1] == one(POLICY, direction="minimize", best=2.0, threshold=0.01, result=results[1])
    assert verdicts[2].why == "status crash"
    assert verdicts[3] == one(POLICY, direction="minimize", best=2.0, threshold=0.01, result=results[3])


def test_a_round_without_an_improvement_has_no_winner():
    results = [Result(1.995, Status.OK, 1, "a"), Result(None, Status.OOM, 1, "b")]
    win, verdicts = of_round(POLICY, direction="minimize", best=2.0, threshold=0.01, results=results)
    assert win is None and [v.decision for v in verdicts] == ["discard", "discard"]
    assert of_round(POLICY, direction="minimize", best=2.0, threshold=0.01, results=[]) == (None, [])


def test_a_tie_goes_to_the_smaller_diff():
    results = [Result(1.5, Status.OK, 9, "a"), Result(1.5, Status.OK, 2, "b")]
    win, verdicts = of_round(POLICY, direction="minimize", best=2.0, threshold=0.01, results=results)
    assert win == 1 and verdicts[0] == Verdict("discard", "b did better in the same round")
