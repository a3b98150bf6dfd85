"""Re-run a recorded experiment from its sealed identity and compare the metric with the record.

Verdicts: `exact` (every rerun gives the recorded number to the last bit: a step budget on a CPU),
`within-noise` (every rerun is within the tolerance), `diverged`. A rerun happens only after the
record's identity checks out against git, the base and the engine; otherwise it is refused.
"""

from __future__ import annotations

from typing import Any

from executor.docker_engine import Engine
from executor.errors import IdentityMismatch, WorkspaceError
from executor.ledger import Ledger
from executor.registry import ensure_by_digest
from executor.run import current_base, execute
from executor.verify import verify
from executor.workspace import Workspace


def find_record(ledger: Ledger, ref: str) -> dict[str, Any]:
    """The record named by an experiment ID (or unambiguous prefix), an image ID (newest first) or a pushed
    `repo@sha256:…` (its `registry_digest`).

    Raises:
        WorkspaceError: nothing matches.
    """
    if "@sha256:" in ref:  # a pushed image, by its registry digest (see executor.registry)
        matches = [r for r in ledger.records() if r.get("registry_digest") == ref]
        if not matches:
            raise WorkspaceError(f"no experiment pushed as {ref} in {ledger.path}")
        return matches[-1]
    found = ledger.get(ref)
    if found is None:
        image = ref if ref.startswith("sha256:") else f"sha256:{ref}"
        matches = [r for r in ledger.records() if str(r.get("image_id") or "").startswith(image)]
        found = matches[-1] if matches else None
    if found is None:
        raise WorkspaceError(f"no experiment or image {ref} in {ledger.path}")
    return found


def reproduce(ws: Workspace, engine: Engine, ledger: Ledger, ref: str, *, runs: int = 1,
              tolerance: float | None = None) -> dict[str, Any]:
    """Re-run the experiment `ref` `runs` times and judge the numbers against its record.

    Raises:
        WorkspaceError: unknown experiment, or one without a metric.
        IdentityMismatch: the record does not re-derive from git and its base, the base or the data
            changed, or a rerun sealed to another image; nothing (more) is run.
    """
    original = find_record(ledger, ref)
    metric = original["run_spec"]["metric"]
    recorded = (original.get("metrics") or {}).get(metric)
    if original["status"] != "ok" or not isinstance(recorded, (int, float)):
        raise WorkspaceError(f"experiment {original['id']} ended {original['status']}: there is no metric to reproduce")
    if "@sha256:" in ref:
        ensure_by_digest(engine, ref, original["image_id"])  # pulled by digest only, and its ID checked
    report = verify(ws.repo, ledger, engine, [original])
    if report["mismatches"]:
        m = report["mismatches"][0]
        raise IdentityMismatch(f"experiment {original['id']} {m['field']}", str(m["expected"]), str(m["actual"]))
    base = current_base(ledger, engine)
    if base.data_digest != original["data_digest"]:
        raise IdentityMismatch("data digest of the base image", original["data_digest"], base.data_digest)
    if base.image_id != original["base_image_id"]:
        raise IdentityMismatch("base image", original["base_image_id"], base.image_id)
    if tolerance is None:
        state = ledger.run_state(original["run_tag"]) if original.get("run_tag") else None
        tolerance = (state or {}).get("threshold") or 0.0
    reruns = []
    for _ in range(runs):
        rerun = ledger.annotate(execute(ws, original["commit"], engine, ledger)["id"], reproduces=original["id"])
        if rerun["image_id"] != original["image_id"]:
            raise IdentityMismatch("rerun image", original["image_id"], str(rerun["image_id"]))
        reruns.append(rerun)
    values = [(r.get("metrics") or {}).get(metric) if r["status"] == "ok" else None for r in reruns]
    if all(v == recorded for v in values):
        verdict = "exact"
    elif all(v is not None and abs(v - recorded) <= tolerance for v in values):
        verdict = "within-noise"
    else:
        verdict = "diverged"
    return {"experiment": original["id"], "image_id": original["image_id"], "metric": metric, "recorded": recorded,
            "values": values, "reruns": [r["id"] for r in reruns], "tolerance": tolerance, "verdict": verdict}
