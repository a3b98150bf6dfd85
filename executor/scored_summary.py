"""sealab's summary of a finished run, appended to the end of its log (`.sealab/logs/<id>.log`).

The harness's own summary cannot hold the metric when the orchestrator scores the saved model after
the train phase; an agent that reads the log (`grep "^val_bpb:" LOG`, as program.md says) finds the
recorded value here, in the harness's `key: value` style, under a header that says sealab wrote it.
The metric line is written only for an `ok` run with a numeric metric (autoresearch's convention: an
empty grep means the run failed); any other status gets `status:` and `reason:` lines instead. Being
the last lines of the log, sealab's `metric:` line is the last one: a train.py printing its own comes
before it.
"""

from __future__ import annotations

import math
from pathlib import Path

from executor.record import ExperimentRecord
from executor.types import Status

SCORED_HEADER = "--- sealab: scored by the orchestrator after the run (not train.py's output) ---"
RECORDED_HEADER = "--- sealab: recorded after the run (not train.py's output) ---"


def render(record: ExperimentRecord) -> str:
    """The block for a finished record, each line ending in a newline (pure)."""
    metrics = record.metrics or {}
    value = metrics.get(record.metric)
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    scored = metrics.get("metric_source") == "evaluator"
    lines = [SCORED_HEADER if scored else RECORDED_HEADER]
    if record.status == Status.OK and numeric:
        lines.append(f"{record.metric}: {value:.6f}")
        if "metric_source" in metrics:
            lines.append(f"metric_source: {metrics['metric_source']}")
        lines.append(f"status: {record.status.value}")
    else:
        lines.append(f"status: {record.status.value}")
        reason = record.reason or (f"no numeric {record.metric} was recorded" if record.status == Status.OK
                                   else "none given")
        lines.append(f"reason: {' '.join(reason.split())}")
    lines.append(f"experiment: {record.id}")
    lines.append(f"commit: {record.commit}")
    if record.image_id:
        lines.append(f"image: {record.image_id}")
    return "".join(line + "\n" for line in lines)


def append(log_path: Path, block: str) -> None:
    """Append `block` to the log, on a line of its own; creates the log (and its directory) when the
    run left none (a backend that stores none, a run rejected before it started).

    Raises:
        OSError: the log cannot be written.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a+b") as f:
        size = f.seek(0, 2)
        if size:
            f.seek(size - 1)
            ends_line = f.read(1) == b"\n"
        else:
            ends_line = True
        f.seek(0, 2)
        f.write((b"" if ends_line else b"\n") + block.encode())
