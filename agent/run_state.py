"""The persisted state of one research run: what is saved in the ledger after every step, and what
`--resume` reads back."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from executor.ledger import Ledger


@dataclass
class RunState:
    """Everything `--resume` needs; saved in the ledger after every step."""

    tag: str
    branch: str
    start_commit: str
    best_commit: str
    best_value: float | None = None
    threshold: float | None = None
    baseline: list[float] = field(default_factory=list)
    baseline_ids: list[str] | None = field(default_factory=list)  # None: a state saved before they were kept
    experiments: int = 0
    consecutive_crashes: int = 0
    since_improvement: int = 0
    cost_usd: float = 0.0
    elapsed_s: float = 0.0
    drift_events: int = 0
    stop_reason: str | None = None
    pending: dict[str, Any] | None = None  # a commit made but not yet decided: {"commit", "experiment"}
    round: list[dict[str, Any]] | None = None  # --workers > 1: the round's commits, run side by side
    prepared: int = 0  # the pipelined loop: how many of its `prepared` ledger events were taken up
    ahead: dict[str, Any] | None = None  # the pipelined loop: a prepared proposal taken up but not yet run
    confirmations: int = 0  # the replication gate's extra runs so far (agent/confirm.py): their cost

    def in_flight(self) -> list[str]:
        """The commits made but not yet decided: the pending one, the round's."""
        return [c for c in [(self.pending or {}).get("commit"), *(e["commit"] for e in self.round or ())] if c]


def save(ledger: Ledger, state: RunState) -> None:
    ledger.save_run(state.tag, asdict(state))


def load(ledger: Ledger, tag: str) -> RunState | None:
    """The state saved for run `tag` (None: no such run), as resume reads it: no stop reason."""
    data = ledger.run_state(tag)
    if data is None:
        return None
    data.setdefault("baseline_ids", None)
    state = RunState(**data)
    state.stop_reason = None
    return state
