"""The research loop's use of the held-out test split (executor/heldout.py): every baseline run and every
kept commit is scored on it after its decision, never before and never for one. A score that cannot be
made is a `test_failed` event, never a stop: the decisions do not depend on it."""

from __future__ import annotations

from agent.context import Context
from agent.run_state import RunState
from executor import heldout
from executor.errors import SealabError
from executor.record import ExperimentRecord


def score(ctx: Context, state: RunState, record: ExperimentRecord) -> None:
    try:
        done = heldout.score(ctx.ws, record, ctx.engine, ctx.ledger, ctx.backend)
    except SealabError as exc:
        ctx.ledger.add_event(state.tag, "test_failed", {"experiment": record.id, "reason": str(exc)})
        ctx.on_event(f"held-out test of {record.id} not scored: {exc}", state)
        return
    if done is not None and done.get("val_bpb") is not None:
        shown = f"{done['val_bpb']:.6f}"
        val = record.value
        ctx.on_event(f"held-out test of {record.id}: {shown}"
                     + (f" (validation {val:.6f}, gap {done['val_bpb'] - val:+.6f})" if val is not None else ""), state)
