"""The held-out test split: the last TEST_BYTES of the validation split, which no decision is scored on
(`evaluate.split_test` cuts it off).

Over hundreds of experiments the research loop optimises the validation windows themselves. The test
split shows it: the scorer's validation windows (and the bytes its causality probes draw on) come from
the validation split *before* its last TEST_BYTES; the test windows from those last bytes only. Both are
hidden from training alike (the sealed image has no val.bin). The orchestrator scores the baseline runs
and every kept commit on the test windows too (`score`), with the same trusted scorer, the same probes
and the same rules for what the model sees: the model.pt the train phase made is handed to a fresh eval
container of the same sealed image, as for the validation score. The result is the record's `test`
annotation; the report and the dashboard show validation and test side by side, and the gap.

A harness that scores itself (an adopted repository: `metric_source = "summary"`) has no test split:
`score` says so (None) and nothing is recorded.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

from executor import config, evaluate, git_source
from executor.backends.interface import Backend
from executor.backends.local import DockerBackend
from executor.docker_engine import Engine
from executor.errors import SealabError
from executor.judge import Outcome, eval_outcome
from executor.ledger import Ledger
from executor.record import ExperimentRecord

def why_not(record: ExperimentRecord) -> str | None:
    """Why `record` has no test score to be made (None: it can be scored)."""
    metrics = record.metrics or {}
    if metrics.get("metric_source") != "evaluator":
        return "its harness scores itself (no orchestrator's eval phase), so there is no held-out test split"
    if record.value is None or not record.image_id:
        return f"it ended {record.status.value} with no model to score"
    return None


def score(ws: Any, record: ExperimentRecord, engine: Engine, ledger: Ledger,
          backend: Backend | None = None) -> dict[str, Any] | None:
    """Score the model of `record` (its .sealab/outputs/<id>/model.pt) on the held-out test windows, on
    `backend` (the one it ran on; default this machine's engine), and write the record's `test` annotation.
    None when the record cannot be scored (see `why_not`).

    Raises:
        SealabError: the commit no longer seals to the record's image, the model is gone, or the engine failed.
    """
    from executor.image.seal import seal
    from executor.run import current_base, eval_phase, file_digest  # (run imports evaluate, never this module)

    if why_not(record) is not None:
        return None
    started = time.monotonic()
    facts = git_source.resolve(ws.git, record.commit)
    spec = config.of_commit(facts.files, facts.sha).run_spec
    base = current_base(ledger, engine)
    sealed = seal(facts, base, spec)
    if sealed.image_id != record.image_id:
        raise SealabError(f"commit {record.commit[:12]} seals to {sealed.image_id[:19]} now, not to the record's "
                          f"{str(record.image_id)[:19]}: not scored on the test split")
    out_dir = ws.outputs / record.id
    model = out_dir / evaluate.MODEL_FILE
    if not model.is_file():
        raise SealabError(f"the model of {record.id} is gone from {out_dir}: not scored on the test split")
    phase = eval_phase(ws, record.id, sealed, spec, base, engine, out_dir, part="test")
    if isinstance(phase, Outcome):
        return _record(ledger, record, {"val_bpb": None, "failure": phase.reason})
    try:
        shutil.copyfile(model, phase.in_dir / evaluate.MODEL_FILE)
        end = (backend or DockerBackend(engine)).run(phase.job)
        ended = eval_outcome(end, spec)
        if ended is not None:
            return _record(ledger, record, {"val_bpb": None, "failure": ended.reason})
        result = evaluate.score_file(phase.evalset, phase.job.out_dir / evaluate.LOGITS_FILE)
    finally:
        shutil.rmtree(phase.in_dir, ignore_errors=True)
        shutil.rmtree(phase.job.out_dir, ignore_errors=True)
    test = {"val_bpb": result.val_bpb if result.ok else None, "eval_windows": result.windows_digest,
            "eval_causal": result.causal, "eval_model": file_digest(model), "seconds": round(time.monotonic() - started, 3)}
    if not result.ok:
        test["failure"] = result.failure
    return _record(ledger, record, test)


def _record(ledger: Ledger, record: ExperimentRecord, test: dict[str, Any]) -> dict[str, Any]:
    ledger.record_test(record.id, test)
    return test

