"""Re-run a recorded experiment from its sealed identity and compare the metric with the record.

Verdicts: `exact` (every rerun gives the recorded number to the last bit: a step budget on a CPU),
`within-noise` (every rerun is within the tolerance), `diverged`. A rerun happens only after the
record's identity checks out against git, the base and the engine; otherwise it is refused.

What `exact` covers: the same sealed image on the same CPU (model and x86-64 level, as each run's harness
recorded them in `cpu`). Float kernels take other code paths on another CPU (AVX-512 or AMX against AVX2,
other blockings), so a rerun there is not expected to give the same bits: it is judged within noise,
and the report names both CPUs. Where no tolerance was given and the run has no noise floor, the
cross-CPU tolerance is CROSS_CPU_RTOL of the recorded value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from executor.docker_engine import Engine
from executor.errors import IdentityMismatch, WorkspaceError
from executor.ledger import Ledger
from executor.record import ExperimentRecord, number
from executor.registry import ensure_by_digest
from executor.run import current_base, execute
from executor.verify import verify
from executor.types import Status
from executor.workspace import Workspace


CROSS_CPU_RTOL = 1e-3  # relative: float32 rounding on other kernels, not a change of the code or data


def cpu_label(cpu: Any) -> str:
    """One line naming a recorded CPU: "MODEL (ISA)", or "unknown CPU" for records made before it was kept."""
    if not isinstance(cpu, dict) or not cpu.get("model"):
        return "unknown CPU"
    return f"{cpu['model']} ({cpu.get('isa') or 'unknown ISA'})"


def same_cpu(a: Any, b: Any) -> bool:
    """Whether two recorded CPUs run the same kernels: same model and ISA level. Unknown counts as same
    (records made before the CPU was recorded keep their old meaning: bit-exact expected)."""
    if not isinstance(a, dict) or not isinstance(b, dict) or not a.get("model") or not b.get("model"):
        return True
    return (a.get("model"), a.get("isa")) == (b.get("model"), b.get("isa"))


def judge(recorded: float, values: Sequence[float | None], tolerance: float, recorded_cpu: Any,
          rerun_cpus: Sequence[Any]) -> dict[str, Any]:
    """The verdict on reruns `values` of a run that recorded `recorded`: its `verdict`, the `tolerance`
    used, and, when a rerun ran on another CPU than the original, a `note` naming both (exact bits are
    then not expected, and a zero tolerance becomes CROSS_CPU_RTOL of the recorded value)."""
    other = [c for c in rerun_cpus if not same_cpu(recorded_cpu, c)]
    note = None
    if other:
        names = sorted({cpu_label(c) for c in other})
        if not tolerance:
            tolerance = CROSS_CPU_RTOL * abs(recorded)
        note = (f"recorded on {cpu_label(recorded_cpu)}, rerun on {', '.join(names)}: bit-exact results are "
                f"expected on the same CPU only, so the reruns are judged within noise (tolerance {tolerance:g})")
    if all(v is not None and abs(v - recorded) <= tolerance for v in values):
        verdict = "within-noise"
        if not other and all(v == recorded for v in values):
            verdict = "exact"
    else:
        verdict = "diverged"
    return {"verdict": verdict, "tolerance": tolerance, "note": note}


PHASE_KEYS = (("train", "eval_model"), ("eval", "eval_logits"))  # what each phase made, as its digest


def diverged_in(recorded: dict[str, Any], rerun: dict[str, Any], metric: str) -> str | None:
    """Where a rerun's metrics part from the recorded ones: None (same metric), "train" (another model.pt),
    "eval" (same model, other logits), "score" (same logits, another number) or "unknown" (a record made
    before the phases' digests were kept, or scored from the run's own summary)."""
    if rerun.get(metric) == recorded.get(metric):
        return None
    for phase, key in PHASE_KEYS:
        if not recorded.get(key) or not rerun.get(key):
            return "unknown"
        if recorded[key] != rerun[key]:
            return phase
    return "score"


def parted_at_step(recorded: dict[str, Any], rerun: dict[str, Any]) -> int | None:
    """The first training step (1-based) whose loss differs between the record and a rerun, from the
    per-step losses a step-budget run keeps; None when both traces are missing or equal over the steps
    both have. Step k's loss is computed with the weights after k-1 updates, so a first difference at
    step k means the run parted in step k-1's backward pass or update, or in step k's forward pass."""
    a, b = recorded.get("losses"), rerun.get("losses")
    if not isinstance(a, list) or not isinstance(b, list):
        return None
    for step, (x, y) in enumerate(zip(a, b), start=1):
        if x != y:
            return step
    return None


def find_record(ledger: Ledger, ref: str) -> ExperimentRecord:
    """The record named by an experiment ID (or unambiguous prefix), an image ID (newest first) or a pushed
    `repo@sha256:…` (its `registry_digest`).

    Raises:
        WorkspaceError: nothing matches.
        RecordError: the record found does not decode.
    """
    if "@sha256:" in ref:  # a pushed image, by its registry digest (see executor.registry)
        matches = [r for r in ledger.records() if r.get("registry_digest") == ref]  # as stored: any shape
        if not matches:
            raise WorkspaceError(f"no experiment pushed as {ref} in {ledger.path}")
        return ExperimentRecord.from_dict(matches[-1])
    found = ledger.get(ref)
    if found is None:
        image = ref if ref.startswith("sha256:") else f"sha256:{ref}"
        matches = [r for r in ledger.records() if str(r.get("image_id") or "").startswith(image)]
        found = matches[-1] if matches else None
    if found is None:
        raise WorkspaceError(f"no experiment or image {ref} in {ledger.path}")
    return ExperimentRecord.from_dict(found)


def reproduce(ws: Workspace, engine: Engine, ledger: Ledger, ref: str, *, runs: int = 1,
              tolerance: float | None = None) -> dict[str, Any]:
    """Re-run the experiment `ref` `runs` times and judge the numbers against its record.

    Raises:
        WorkspaceError: unknown experiment, or one without a metric.
        RecordError: the record does not decode.
        IdentityMismatch: the record does not re-derive from git and its base, the base or the data
            changed, or a rerun sealed to another image; nothing (more) is run.
    """
    original = find_record(ledger, ref)
    metric = original.metric
    recorded = original.value
    if recorded is None:
        raise WorkspaceError(f"experiment {original.id} ended {original.status}: there is no metric to reproduce")
    if "@sha256:" in ref:
        ensure_by_digest(engine, ref, original.image_id or "")  # pulled by digest only, and its ID checked
    report = verify(ws.git, ledger, engine, [original.to_dict()])
    if report["mismatches"]:
        m = report["mismatches"][0]
        raise IdentityMismatch(f"experiment {original.id} {m['field']}", str(m["expected"]), str(m["actual"]))
    base = current_base(ledger, engine)
    if base.data_digest != original.data_digest:
        raise IdentityMismatch("data digest of the base image", str(original.data_digest), base.data_digest)
    if base.image_id != original.base_image_id:
        raise IdentityMismatch("base image", str(original.base_image_id), base.image_id)
    if tolerance is None:
        state = ledger.run_state(original.run_tag) if original.run_tag else None
        tolerance = (state or {}).get("threshold") or 0.0
    reruns = []
    for _ in range(runs):
        rerun = ledger.record_rerun(execute(ws, original.commit, engine, ledger).id, original.id)
        if rerun.image_id != original.image_id:
            raise IdentityMismatch("rerun image", str(original.image_id), str(rerun.image_id))
        reruns.append(rerun)
    values = [number((r.metrics or {}).get(metric)) if r.status == Status.OK else None for r in reruns]
    judged = judge(recorded, values, tolerance, original.cpu, [r.cpu for r in reruns])
    parted = [diverged_in(original.metrics or {}, r.metrics or {}, metric) for r in reruns]
    steps = [parted_at_step(original.metrics or {}, r.metrics or {}) if phase == "train" else None
             for r, phase in zip(reruns, parted)]
    return {"experiment": original.id, "image_id": original.image_id, "metric": metric, "recorded": recorded,
            "values": values, "reruns": [r.id for r in reruns], **judged, "diverged_in": parted,
            "parted_at_step": steps,
            "cpus": {"recorded": original.cpu, "reruns": [r.cpu for r in reruns]}}
