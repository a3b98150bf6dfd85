"""Re-run a recorded experiment from its sealed identity and compare the metric with the record.

Verdicts: `exact` (every rerun gives the recorded number to the last bit: a step budget on a CPU),
`within-noise` (every rerun is within the tolerance), `diverged`. A rerun happens only after the
record's identity checks out against git, the base and the engine; otherwise it is refused.

A clock-budgeted record (`train_seconds`, no `steps`) trains as many steps as the machine manages in the
budget, so its metric varies from run to run even with identical code and data: reproduce reruns it twice
by default, reports the steps and tokens of every run, and judges the mean of the reruns against a noise
floor it measured (`judge_clock`): σ, the larger of the run's own baseline runs' spread and the reruns'
spread; the verdict is `diverged` only when |mean − recorded| exceeds Z_CLOCK·σ·√(1 + 1/k). When the
reruns trained a markedly different number of steps and the metric differs beyond that noise, the
verdict is `other-speed` (the image is the same, verified; the machine trains at another speed), and
with one rerun and no baseline there is no noise floor: `inconclusive`. Replaying the recorded step count
is not offered: it changes the run spec, so it seals another image and is another experiment.

What `exact` covers: the same sealed image on the same CPU (model and x86-64 level, as each run's harness
recorded them in `cpu`). Float kernels take other code paths on another CPU (AVX-512 or AMX against AVX2,
other blockings), so a rerun there is not expected to give the same bits: it is judged within noise,
and the report names both CPUs. Where no tolerance was given and the run has no noise floor, the
cross-CPU tolerance is CROSS_CPU_RTOL of the recorded value.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from executor.docker_engine import Engine
from executor.errors import IdentityMismatch, WorkspaceError
from executor.ledger import Ledger, Query
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


Z_CLOCK = 3.0  # a clock-budgeted rerun's mean is explained by noise within 3 σ·√(1 + 1/k) of the recorded value
SPEED_RATIO = 1.2  # reruns that trained more than 1.2× (or under 1/1.2×) the recorded steps ran at another speed


def _sd(values: Sequence[float]) -> float | None:
    return statistics.stdev(values) if len(values) >= 2 else None


def _steps_text(steps: float | None, tokens: float | None) -> str:
    parts = [f"{steps:g} steps" if steps is not None else None, f"{tokens / 1e6:.3g} M tokens" if tokens else None]
    return ", ".join(p for p in parts if p) or "steps not recorded"


def judge_clock(recorded: float, values: Sequence[float | None], *, baseline: Sequence[float],
                baseline_of: str | None, recorded_steps: float | None, recorded_tokens: float | None,
                rerun_steps: Sequence[float | None], rerun_tokens: Sequence[float | None],
                tolerance: float | None = None) -> dict[str, Any]:
    """The verdict on reruns of a clock-budgeted record: `within-noise`, `diverged`, `other-speed` or
    `inconclusive`, the `tolerance` used (None: none could be measured) and a `reason` naming every
    number it used (values, steps and tokens of both, σ and where it came from, the bound)."""
    done = [v for v in values if v is not None]
    runs = f"reruns {', '.join('-' if v is None else f'{v:.6g}' for v in values)} " \
           f"({'; '.join(_steps_text(s, t) for s, t in zip(rerun_steps, rerun_tokens))})"
    told = f"recorded {recorded:.6g} ({_steps_text(recorded_steps, recorded_tokens)}); {runs}"
    if len(done) < len(values):
        return {"verdict": "diverged", "tolerance": tolerance, "note": None,
                "reason": f"{told}: a rerun gave no metric"}
    k, mean = len(done), statistics.fmean(done)
    gap = abs(mean - recorded)
    sigmas = {f"{len(baseline)} baseline runs{f' of run {baseline_of}' if baseline_of else ''}": _sd(baseline),
              f"{k} reruns": _sd(done)}
    known = {where: sd for where, sd in sigmas.items() if sd is not None}
    if tolerance is not None:
        bound, how = tolerance, f"the tolerance given, {tolerance:g}"
    elif known:
        where, sigma = max(known.items(), key=lambda item: item[1])
        bound = Z_CLOCK * sigma * math.sqrt(1 + 1 / k)
        how = (f"{Z_CLOCK:g}·σ·√(1+1/{k}) = {bound:.4g}, σ {sigma:.4g} from the {where}"
               + "".join(f" (the {w}: {sd:.4g})" for w, sd in known.items() if w != where))
    else:
        return {"verdict": "inconclusive", "tolerance": None, "note": None,
                "reason": f"{told}: a clock budget gives another metric on every run, and with one rerun and no "
                          "baseline runs there is no noise floor to judge against; rerun with --runs 2 or more"}
    if gap <= bound:
        return {"verdict": "within-noise", "tolerance": bound, "note": None,
                "reason": f"{told}: |mean − recorded| = {gap:.4g} ≤ {how}"}
    stepped = [s for s in rerun_steps if s is not None]
    if recorded_steps and stepped:
        ratio = statistics.fmean(stepped) / recorded_steps
        if ratio > SPEED_RATIO or ratio < 1 / SPEED_RATIO:
            return {"verdict": "other-speed", "tolerance": bound, "note": None,
                    "reason": f"{told}: |mean − recorded| = {gap:.4g} > {how}, but the reruns trained {ratio:.2f}× the "
                              "recorded steps in the same budget: the image is the same (verified), the machine "
                              "trains at another speed, so the metrics are not comparable"}
    return {"verdict": "diverged", "tolerance": bound, "note": None,
            "reason": f"{told}: |mean − recorded| = {gap:.4g} > {how}, at a comparable step count: more than "
                      "the measured noise explains"}


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
        found = ledger.pushed_as(ref)  # as stored: any shape
        if found is None:
            raise WorkspaceError(f"no experiment pushed as {ref} in {ledger.path}")
        return ExperimentRecord.from_dict(found)
    found = ledger.get(ref)
    if found is None:
        image = ref if ref.startswith("sha256:") else f"sha256:{ref}"
        found = next((r for _, r in ledger.select(Query(image_prefix=image, last=1))), None)
    if found is None:
        raise WorkspaceError(f"no experiment or image {ref} in {ledger.path}")
    return ExperimentRecord.from_dict(found)


def reproduce(ws: Workspace, engine: Engine, ledger: Ledger, ref: str, *, runs: int | None = None,
              tolerance: float | None = None) -> dict[str, Any]:
    """Re-run the experiment `ref` `runs` times (default: 1 for a step budget, 2 for a clock budget) and judge
    the numbers against its record.

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
    clock = not (original.run_spec or {}).get("steps")
    state = (ledger.run_state(original.run_tag) if original.run_tag else None) or {}
    runs = runs or (2 if clock else 1)
    reruns = []
    for _ in range(runs):
        rerun = ledger.record_rerun(execute(ws, original.commit, engine, ledger).id, original.id)
        if rerun.image_id != original.image_id:
            raise IdentityMismatch("rerun image", str(original.image_id), str(rerun.image_id))
        reruns.append(rerun)
    values = [number((r.metrics or {}).get(metric)) if r.status == Status.OK else None for r in reruns]
    got = original.metrics or {}
    if clock:
        judged = judge_clock(recorded, values, baseline=[float(v) for v in state.get("baseline") or []],
                             baseline_of=original.run_tag, recorded_steps=number(got.get("steps")),
                             recorded_tokens=number(got.get("tokens")), tolerance=tolerance,
                             rerun_steps=[number((r.metrics or {}).get("steps")) for r in reruns],
                             rerun_tokens=[number((r.metrics or {}).get("tokens")) for r in reruns])
    else:
        judged = judge(recorded, values, tolerance if tolerance is not None else state.get("threshold") or 0.0,
                       original.cpu, [r.cpu for r in reruns])
    parted = [diverged_in(got, r.metrics or {}, metric) for r in reruns]
    steps = [parted_at_step(got, r.metrics or {}) if phase == "train" else None
             for r, phase in zip(reruns, parted)]
    return {"experiment": original.id, "image_id": original.image_id, "metric": metric, "recorded": recorded,
            "values": values, "reruns": [r.id for r in reruns], "budget": "clock" if clock else "steps",
            "steps": {"recorded": number(got.get("steps")),
                      "reruns": [number((r.metrics or {}).get("steps")) for r in reruns]},
            "tokens": {"recorded": number(got.get("tokens")),
                       "reruns": [number((r.metrics or {}).get("tokens")) for r in reruns]},
            **judged, "diverged_in": parted, "parted_at_step": steps,
            "cpus": {"recorded": original.cpu, "reruns": [r.cpu for r in reruns]}}
