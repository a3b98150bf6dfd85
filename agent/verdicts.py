"""Keep or discard, decided: the policy's rules applied to finished experiments, one at a time or a
round at once (its winner, the rest discarded). Pure: no git, no ledger, no state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from executor.types import Status
from policies import decide, pick_winner

CRASHES = (Status.CRASH, Status.TIMEOUT, Status.OOM)  # what counts towards stop.max_consecutive_crashes


@dataclass(frozen=True)
class Result:
    """What a verdict looks at of a finished experiment."""

    value: float | None  # its metric (None: it gave none)
    status: Status
    size: int = 0  # changed lines of its proposal (a round's tie-break)
    experiment_id: str = ""


@dataclass(frozen=True)
class Verdict:
    decision: str  # "keep" | "discard"
    why: str


def crashed(status: Status) -> bool:
    return status in CRASHES


def one(policy: Any, *, direction: str, best: float | None, threshold: float | None, result: Result) -> Verdict:
    """The policy's `decide` against the best so far; a run without a metric is discarded."""
    if result.value is None:
        return Verdict("discard", f"status {result.status.value}")
    return Verdict(*decide(policy, direction=direction, best=best, candidate=result.value, threshold=threshold))


def of_round(policy: Any, *, direction: str, best: float | None, threshold: float | None,
             results: Sequence[Result]) -> tuple[int | None, list[Verdict]]:
    """The round's winner (`pick_winner`: an index, or None) and a verdict for each result, in order:
    the winner's is its own against `best`; another that would have been kept on its own is discarded
    because the winner did better."""
    win = pick_winner(policy, direction=direction, best=best, threshold=threshold,
                      candidates=[(r.value, r.size) for r in results])
    verdicts = []
    for i, result in enumerate(results):
        verdict = one(policy, direction=direction, best=best, threshold=threshold, result=result)
        if i != win and verdict.decision == "keep":
            verdict = Verdict("discard", f"{results[win].experiment_id} did better in the same round")
        verdicts.append(verdict)
    return win, verdicts
