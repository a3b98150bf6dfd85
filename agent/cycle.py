"""Where a research run's wall time goes: each experiment's training seconds and its idle seconds by
cause (the record's `cycle` annotation), and the run's duty cycle = training seconds / wall seconds.

An experiment's wall time runs from the end of the one before it (its decision) to the end of its own
decision, as the loop's thread sees it. What the loop did meanwhile in the background (a pipelined
proposal, sealing and loading the next image) is not idle time: only what the loop waited for is.
Training seconds are the harness's own `training_seconds` (its clock starts when train() is called).

Idle causes:
  proposal     waiting for the proposer (the model's turns, the gate, the commit)
  seal_load    sealing the commit's image and loading it into the engine
  container    creating and checking the container, the in-container start-up (imports, data check), saving
               the model, collecting the output and removing the container: the train phase minus training
  eval         the eval phase's container (the trained model turns the evaluation windows into logits), and
               starting it ahead of training where it is (executor/run.py start_eval_ahead)
  scoring      the orchestrator computing the metric from the logits
  decision     keep or discard: the verdict, ref moves, the work tree, the ledger
  other        the rest (drift guards, ledger writes, the gate on a rejected proposal)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

if TYPE_CHECKING:
    from agent.context import Context
    from executor.record import ExperimentRecord

CAUSES = ("proposal", "seal_load", "container", "eval", "scoring", "decision", "other")
LABELS = {"proposal": "proposal", "seal_load": "seal+load", "container": "container start/stop", "eval": "eval",
          "scoring": "scoring", "decision": "decision", "other": "other"}


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value else 0.0


def account(*, wall_s: float, training_s: float, durations: Mapping[str, Any], proposal_s: float,
            decision_s: float, pipelined: bool, proposed_on: str | None = None, best_at_decision: str | None = None,
            rebased_from: str | None = None) -> dict[str, Any]:
    """One experiment's `cycle`: its wall and training seconds and the idle seconds by cause, from the
    executor's `durations` (seal, load, verify, run, eval, score) and what the loop timed itself. The
    causes add up to wall − training ("other" takes the rest, never below zero)."""
    d = {k: _num(v) for k, v in durations.items()}
    training_s = max(0.0, min(training_s, wall_s))
    idle = {
        "proposal": proposal_s,
        "seal_load": d.get("seal", 0.0) + d.get("load", 0.0),
        "container": d.get("verify", 0.0) + max(0.0, d.get("run", 0.0) - training_s),
        "eval": max(0.0, d.get("eval", 0.0) - d.get("score", 0.0)) + d.get("eval_ahead", 0.0),
        "scoring": d.get("score", 0.0),
        "decision": decision_s,
    }
    idle["other"] = max(0.0, wall_s - training_s - sum(idle.values()))
    return {"pipelined": pipelined, "wall_s": round(wall_s, 3), "training_s": round(training_s, 3),
            "idle": {k: round(max(0.0, v), 3) for k, v in idle.items()}, "proposed_on": proposed_on,
            "best_at_decision": best_at_decision, "rebased_from": rebased_from}


@dataclass(frozen=True)
class Duty:
    """A run's duty cycle over the records that carry a `cycle` (baselines included)."""

    experiments: int = 0
    training_s: float = 0.0
    wall_s: float = 0.0
    idle: Mapping[str, float] = field(default_factory=dict)  # cause -> seconds, all experiments together

    @classmethod
    def of(cls, records: Iterable[Any]) -> Duty:
        """From ExperimentRecords or stored record dicts; records without a `cycle` are left out."""
        n, training, wall = 0, 0.0, 0.0
        idle = dict.fromkeys(CAUSES, 0.0)
        for record in records:
            cycle = record.get("cycle") if isinstance(record, Mapping) else getattr(record, "cycle", None)
            if not isinstance(cycle, Mapping):
                continue
            n += 1
            training += _num(cycle.get("training_s"))
            wall += _num(cycle.get("wall_s"))
            causes = cycle.get("idle") if isinstance(cycle.get("idle"), Mapping) else {}
            for cause in CAUSES:
                idle[cause] += _num(causes.get(cause))
        return cls(n, training, wall, idle)

    @property
    def duty(self) -> float | None:
        return self.training_s / self.wall_s if self.wall_s > 0 else None

    @property
    def per_hour(self) -> float | None:
        """Experiments per hour of wall time."""
        return 3600 * self.experiments / self.wall_s if self.wall_s > 0 else None

    def idle_per_experiment(self) -> dict[str, float]:
        return {c: (self.idle.get(c, 0.0) / self.experiments if self.experiments else 0.0) for c in CAUSES}

    def to_dict(self) -> dict[str, Any]:
        return {"experiments": self.experiments, "training_s": round(self.training_s, 3),
                "wall_s": round(self.wall_s, 3), "duty": None if self.duty is None else round(self.duty, 4),
                "per_hour": None if self.per_hour is None else round(self.per_hour, 2),
                "idle_per_experiment": {c: round(v, 3) for c, v in self.idle_per_experiment().items()}}

    def line(self) -> str:
        """One line for a person: the duty cycle and where the rest went."""
        if self.duty is None:
            return "duty cycle: no experiment of this run has a time account yet"
        rest = ", ".join(f"{LABELS[c]} {v:.1f} s" for c, v in self.idle_per_experiment().items() if v >= 0.05)
        return (f"duty cycle {self.duty:.2f}: {self.training_s:.0f} s training in {self.wall_s:.0f} s over "
                f"{self.experiments} experiment(s), {self.per_hour:.0f}/hour; idle per experiment: {rest or 'none'}")


def note(ctx: Context, record: ExperimentRecord, *, proposal_s: float, ran: float, pipelined: bool,
         proposed_on: str | None = None, best: str | None = None, rebased_from: str | None = None,
         confirmations: Sequence[ExperimentRecord] = ()) -> None:
    """Write the experiment's time account onto its record: from the end of the last account (the
    loop's `cycle_start`) to now; `ran` is when its run ended (what came after is its decision). The
    replication gate's `confirmations` of it ran during its decision: their training counts as training,
    their phases as the same idle causes. The next account starts now."""
    end = time.monotonic()
    start = ctx.cycle_start if ctx.cycle_start is not None else end - _num((record.durations or {}).get("total"))
    training = _num((record.metrics or {}).get("training_seconds"))
    durations = {k: _num(v) for k, v in (record.durations or {}).items()}
    for run in confirmations:
        training += _num((run.metrics or {}).get("training_seconds"))
        for key, value in (run.durations or {}).items():
            durations[key] = durations.get(key, 0.0) + _num(value)
    confirm_wall = sum(_num((run.durations or {}).get("total")) for run in confirmations)
    ctx.cycle_start = end
    ctx.ledger.record_cycle(record.id, {**account(
        wall_s=end - start, training_s=training, durations=durations, proposal_s=proposal_s,
        decision_s=max(0.0, end - ran - confirm_wall), pipelined=pipelined, proposed_on=proposed_on,
        best_at_decision=best, rebased_from=rebased_from), **({"confirmations": len(confirmations)} if confirmations else {})})
