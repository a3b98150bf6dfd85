"""The judgement after the run (pure): the train phase, the scorer's verdict and the caps combined;
an eval phase's end; the editable scope."""

from executor.backends.interface import Finished
from executor.judge import Outcome, eval_outcome, judge, out_of_scope
from executor.types import Resources, RunSpec, Status

SPEC = RunSpec(budget_s=10, grace_s=5, resources=Resources(memory_mb=512))
RESULT = {"train_py_blob": "t", "data_digest": "d", "steps": 3, "model_file": "model.pt"}
CLEAN = Finished(exit_code=0, oom_killed=False, timed_out=False, output=b"done\n")
SCORED = Outcome(Status.OK, None, {"val_bpb": 2.25, "eval_causal": True, "metric_source": "evaluator"})


def verdict(end=CLEAN, result=RESULT, scored=SCORED, orchestrated=True, trusted=True):
    return judge(end, result, scored, SPEC, orchestrated=orchestrated, trusted=trusted, train_blob="t",
                 data_digest="d")


def test_the_scorers_metric_is_the_records():
    """When the orchestrator scores, val_bpb and the eval facts are the scorer's; the harness's own
    facts (steps) stay."""
    outcome = verdict()
    assert outcome.status is Status.OK
    assert outcome.metrics["val_bpb"] == 2.25 and outcome.metrics["metric_source"] == "evaluator"
    assert outcome.metrics["steps"] == 3


def test_a_failed_scoring_replaces_an_ok_train_phase():
    """A scorer that rejects (causality) or cannot score decides the outcome, not the train phase."""
    rejected = Outcome(Status.REJECTED, "the evaluator does not believe the model: probe 3", {"eval_causal": False})
    assert verdict(scored=rejected) == rejected


def test_the_train_phases_failure_wins_over_a_score():
    """A train phase that lied about its train.py is rejected even with a good score."""
    outcome = verdict(result={**RESULT, "train_py_blob": "other"})
    assert outcome.status is Status.REJECTED and "other" in outcome.reason


def test_orchestrated_without_a_model_is_a_crash():
    """Scored by the orchestrator, but no eval ran (no model saved): a crash saying so."""
    outcome = verdict(result={**RESULT, "val_bpb": 1.0}, scored=None)
    assert outcome.status is Status.CRASH and "saved no model" in outcome.reason


def test_a_harness_metric_counts_when_the_orchestrator_does_not_score():
    """Not orchestrated: the harness's result.json metric is the record's."""
    outcome = verdict(result={**RESULT, "val_bpb": 3.5}, scored=None, orchestrated=False)
    assert outcome.status is Status.OK and outcome.metrics["val_bpb"] == 3.5


def test_over_a_cap_is_a_crash_whatever_it_reported():
    """A run the backend stopped for exceeding a cap is a crash with the backend's reason."""
    end = Finished(exit_code=0, oom_killed=False, timed_out=False, output=b"", over_cap="/out exceeded 64 MB")
    outcome = verdict(end=end)
    assert outcome.status is Status.CRASH and outcome.reason == "/out exceeded 64 MB"


def test_how_an_eval_phase_ended():
    """Eval killed at the grace deadline, by the memory limit, or exiting non-zero decides the
    experiment; a clean exit leaves it to the logits (None)."""
    def ended(**kw):
        return eval_outcome(Finished(**{"exit_code": 0, "oom_killed": False, "timed_out": False,
                                        "output": b"Traceback\nRuntimeError: no\n", **kw}), SPEC)

    assert ended(exit_code=None, timed_out=True).status is Status.TIMEOUT
    assert "512 MB" in ended(oom_killed=True).reason
    crash = ended(exit_code=1)
    assert crash.status is Status.CRASH and crash.reason == "the eval phase exited 1: RuntimeError: no"
    assert ended() is None


def test_scope_is_globs_over_what_git_says_changed():
    """Paths no editable glob matches are out of scope; no scope allows everything."""
    assert out_of_scope(["train.py", "prepare.py", "notes/a.md"], ["train.py", "notes/*"]) == ["prepare.py"]
    assert out_of_scope(["prepare.py"], None) == []
