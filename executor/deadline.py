"""The kill deadline of an adopted repository's run, measured from its baseline runs (pure).

An adopted `[harness] command` trains on whatever clock the repository keeps (autoresearch's
TIME_BUDGET = 300 s), then evaluates; `[budget] train_seconds` is only handed to it
(SEALAB_TRAIN_SECONDS). So when sealab.toml sets no `[budget] grace_seconds`, the grace is measured:

  first run (nothing measured yet)   budget + max(600 s, budget)
  later runs                         budget + max(60 s, 2 × the largest (run time − budget) of the
                                     earlier `ok` runs with the same command and budget, + 30 s)

where a run's time is the container's wall time (the backend's `run` timing). A set grace_seconds
keeps the fixed deadline: budget + grace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from executor.types import RunSpec

FIRST_GRACE_S = 600.0
MIN_GRACE_S = 60.0
SLACK_S = 30.0


@dataclass(frozen=True, slots=True)
class Deadline:
    seconds: float
    why: str  # how it was derived, for a timeout's reason

    def reason(self) -> str:
        return f"{self.seconds:g} s = {self.why}"


def measured(spec: RunSpec, run_times: Iterable[float]) -> Deadline:
    """The deadline of a run of `spec`, given the container wall times of earlier ok runs like it."""
    times = [t for t in run_times if t > 0]
    budget = spec.budget_s
    if not times:
        grace = max(FIRST_GRACE_S, budget)
        return Deadline(budget + grace, f"budget {budget:g} s + {grace:g} s for a first run, before any was measured")
    overhead = max(0.0, max(times) - budget)
    grace = max(MIN_GRACE_S, 2 * overhead + SLACK_S)
    return Deadline(budget + grace, f"budget {budget:g} s + {grace:g} s (2 × the {overhead:.0f} s of start-up and "
                                    f"evaluation the earlier runs needed, + {SLACK_S:g} s)")


RECENT_RUNS = 1000  # how many of the latest ok records the deadline learns from (a ledger holds years of them)


def earlier_run_times(records: Iterable[Mapping[str, Any]], spec: RunSpec) -> list[float]:
    """The container wall times of the stored `ok` records (as the ledger holds them) run with the same
    command and budget."""
    times = []
    for rec in records:
        if not isinstance(rec, Mapping) or rec.get("status") != "ok":
            continue
        run_spec = rec.get("run_spec") if isinstance(rec.get("run_spec"), Mapping) else {}
        if run_spec.get("command") != list(spec.command or ()) or run_spec.get("budget_s") != spec.budget_s:
            continue
        durations = rec.get("durations") if isinstance(rec.get("durations"), Mapping) else {}
        run = durations.get("run")
        if isinstance(run, (int, float)):
            times.append(float(run))
    return times
