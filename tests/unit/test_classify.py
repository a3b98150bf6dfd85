"""How a container's end and the harness's result map to a status (pure)."""

import math

from executor.judge import classify
from executor.types import Resources, RunSpec, Status

SPEC = RunSpec(budget_s=10, grace_s=5, resources=Resources(memory_mb=512))
GOOD = {"val_bpb": 2.5, "train_py_blob": "t", "data_digest": "d", "steps": 3, "hyperparameters": {"X": 1}}


def status(exit_code=0, oom=False, timed_out=False, result=GOOD):
    return classify(exit_code, oom, timed_out, result, SPEC, "t", "d")


def test_ok_result_keeps_metrics():
    """A clean exit with a finite metric is ok, and the metric comes from result.json."""
    outcome = status()
    assert outcome.status is Status.OK and outcome.metrics["val_bpb"] == 2.5
    assert outcome.metrics["hyperparameters"] == {"X": 1}


def test_the_losses_of_a_step_budget_run_are_kept_only_when_well_formed():
    """result.json's per-step losses go into the metrics; a list that is too long, not numbers or not
    finite is left out (the run is still ok: the trace only explains a divergence)."""
    assert status(result={**GOOD, "losses": [3.5, 3.25]}).metrics["losses"] == [3.5, 3.25]
    for bad in ([], [1.0, "x"], [1.0, math.inf], [True], [1.0] * 1001, "3.5", None):
        outcome = status(result={**GOOD, "losses": bad})
        assert outcome.status is Status.OK and "losses" not in outcome.metrics, bad


def test_deadline_beats_everything():
    """A container killed at the deadline is a timeout, naming budget + grace."""
    outcome = status(exit_code=None, timed_out=True)
    assert outcome.status is Status.TIMEOUT and "15 s" in outcome.reason


def test_oom_kill():
    """An OOM-killed container is oom, naming the limit."""
    outcome = status(exit_code=137, oom=True)
    assert outcome.status is Status.OOM and "512 MB" in outcome.reason


def test_nonzero_exit_missing_or_nan_metric_is_crash():
    """Non-zero exit, no result.json, a missing metric or NaN are crashes."""
    assert status(exit_code=1).status is Status.CRASH
    assert status(result=None).status is Status.CRASH
    assert status(result={**GOOD, "val_bpb": None}).status is Status.CRASH
    assert status(result={**GOOD, "val_bpb": math.nan}).status is Status.CRASH
    assert status(result={**GOOD, "val_bpb": True}).status is Status.CRASH


def test_content_that_differs_from_the_commit_is_rejected():
    """If the harness saw another train.py or other data than sealed, the result is not believed."""
    assert status(result={**GOOD, "train_py_blob": "other"}).status is Status.REJECTED
    assert status(result={**GOOD, "data_digest": "other"}).status is Status.REJECTED


def test_crash_reason_quotes_the_last_line():
    """A crash says how the run ended in its own words (the log's last line), truncated."""
    outcome = classify(1, False, False, None, SPEC, "t", "d", "SyntaxError: invalid syntax" + "x" * 500)
    assert outcome.reason.startswith("exit code 1: SyntaxError: invalid syntax") and len(outcome.reason) < 230
