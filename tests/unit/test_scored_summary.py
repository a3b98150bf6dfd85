"""executor/scored_summary.py: the block sealab appends to a finished run's log (pure), and the append."""

from __future__ import annotations

import math

import pytest

from executor.record import ExperimentRecord
from executor.scored_summary import RECORDED_HEADER, SCORED_HEADER, append, render
from executor.summary import parse_summary
from executor.types import Status

SHA = "0123456789abcdef0123456789abcdef01234567"
IMAGE = "sha256:" + "ab" * 32


def record(status: Status = Status.OK, metrics: dict | None = None, reason: str | None = None,
           metric: str = "val_bpb", image_id: str | None = IMAGE) -> ExperimentRecord:
    return ExperimentRecord(id="0a1b2c3d4e", commit=SHA, status=status, reason=reason, image_id=image_id,
                            metrics=metrics, run_spec={"metric": metric})


def test_an_ok_scored_run_gets_the_metric_line_with_six_decimals():
    """The orchestrator's value, in the harness's `key: value` style, under a header naming sealab."""
    block = render(record(metrics={"val_bpb": 2.5635634, "metric_source": "evaluator", "steps": 9}))
    assert block == (f"{SCORED_HEADER}\nval_bpb: 2.563563\nmetric_source: evaluator\nstatus: ok\n"
                     f"experiment: 0a1b2c3d4e\ncommit: {SHA}\nimage: {IMAGE}\n")
    assert "train.py" in SCORED_HEADER and "sealab" in SCORED_HEADER


def test_the_metric_line_uses_the_run_specs_metric_name():
    """An adopted repository's metric (reported by its train.py's summary) under its own name and header."""
    block = render(record(metrics={"solve_rate": 0.5, "metric_source": "summary"}, metric="solve_rate"))
    assert block.splitlines()[:3] == [RECORDED_HEADER, "solve_rate: 0.500000", "metric_source: summary"]
    assert "val_bpb" not in block


@pytest.mark.parametrize("status, reason", [
    (Status.CRASH, "exit code 1: ValueError: bad shape"),
    (Status.TIMEOUT, "killed at the deadline (budget 2 s + grace 60 s)"),
    (Status.REJECTED, "paths changed by the commit: expected only train.py,\nactual prepare.py; nothing was started"),
    (Status.OOM, None),
])
def test_a_failed_run_gets_status_and_a_one_line_reason_never_a_metric_line(status, reason):
    """Whatever the metrics hold, a run that is not ok has no metric line (an empty grep means failure)."""
    block = render(record(status, metrics={"val_bpb": 3.0}, reason=reason))
    lines = block.splitlines()
    assert lines[1] == f"status: {status.value}" and lines[2].startswith("reason: ")
    assert lines[2] == "reason: " + (" ".join(reason.split()) if reason else "none given")
    assert not [line for line in lines if line.startswith("val_bpb")]
    assert lines[3:] == ["experiment: 0a1b2c3d4e", f"commit: {SHA}", f"image: {IMAGE}"]


@pytest.mark.parametrize("value", [None, math.nan, math.inf, "2.5", True])
def test_an_ok_run_without_a_finite_number_gets_no_metric_line(value):
    lines = render(record(metrics={"val_bpb": value})).splitlines()
    assert lines[1:3] == ["status: ok", "reason: no numeric val_bpb was recorded"]


def test_a_record_without_an_image_names_none():
    assert not [line for line in render(record(Status.REJECTED, image_id=None)).splitlines()
                if line.startswith("image")]


def test_the_block_does_not_extend_the_harness_summary():
    """parse_summary of a log with the block still reads the harness's `---` block alone."""
    log = "---\nscored_by: sealab\nnum_steps: 3\n" + render(record(metrics={"val_bpb": 2.0}))
    assert parse_summary(log) == {"scored_by": "sealab", "num_steps": 3}


def test_append_starts_on_a_line_of_its_own_and_creates_a_missing_log(tmp_path):
    """After output that ends mid-line the block starts on a new line; with no log (a backend that stored
    none, a run never started) the log is made, directory included."""
    log = tmp_path / "a.log"
    log.write_bytes(b"step 1\nTraceback (most recent call last)")
    append(log, "X: 1\n")
    assert log.read_bytes() == b"step 1\nTraceback (most recent call last)\nX: 1\n"
    append(log, "Y: 2\n")
    assert log.read_bytes().endswith(b"\nX: 1\nY: 2\n")
    missing = tmp_path / "logs" / "b.log"
    append(missing, "X: 1\n")
    assert missing.read_text() == "X: 1\n"


def test_append_raises_oserror_when_the_log_cannot_be_written(tmp_path):
    (tmp_path / "a.log").mkdir()
    with pytest.raises(OSError):
        append(tmp_path / "a.log", "X: 1\n")
