"""The keep threshold: the baseline runs of the start commit, whose mean is the first best value and
whose spread sets the noise floor a candidate must beat (and the adoption, on resume, of baseline runs
that finished but were not counted)."""

from __future__ import annotations

import statistics
import time
from typing import Callable

from agent import attempts, cycle, held_out
from agent.context import Context
from agent.drift_guard import guard
from agent.run_state import RunState
from agent.stopped import LoopStopped
from executor.record import Decision
from policies import noise_floor


def missing(ctx: Context, state: RunState) -> bool:
    """Whether the run still lacks some of the policy's noise_runs baseline runs."""
    return len(state.baseline) < ctx.policy.acceptance.noise_runs


def count(ctx: Context, state: RunState, value: float, record_id: str) -> None:
    """Count one baseline run: the best value is their mean (one lucky run sets no bar), the threshold
    the policy's noise floor of them."""
    state.baseline.append(value)
    if state.baseline_ids is not None:
        state.baseline_ids.append(record_id)
    state.best_value = statistics.fmean(state.baseline)
    state.threshold = noise_floor(ctx.policy, state.baseline)
    ctx.save(state)


def baselines(ctx: Context, state: RunState, before_last: Callable[[], None] = lambda: None) -> None:
    """Run the start commit until the policy's noise_runs baseline runs are counted; `before_last` is
    called as the last one starts (the pipelined loop prepares its first proposal meanwhile).

    Raises:
        LoopStopped: a baseline run gave no metric.
    """
    while missing(ctx, state):
        if len(state.baseline) + 1 == ctx.policy.acceptance.noise_runs:
            before_last()
        record = attempts.experiment(ctx, state, "baseline")
        ran = time.monotonic()
        guard(ctx, state, "after baseline run")
        value = record.value
        cycle.note(ctx, record, proposal_s=0.0, ran=ran, pipelined=False, best=state.best_commit)
        if value is None:
            raise LoopStopped(f"the baseline run {record.id} ended {record.status}: {record.reason}")
        count(ctx, state, value, record.id)
        ctx.on_event(f"baseline {len(state.baseline)}/{ctx.policy.acceptance.noise_runs}: {value:.6f}", state)
        held_out.score(ctx, state, record)  # (after it is counted: no decision waits for it)


def adopt(ctx: Context, state: RunState) -> None:
    """Count baseline runs of this run that finished but were not counted (killed in between)."""
    if state.baseline_ids is None:
        return
    for record in ctx.ledger.experiments(state.tag):
        if not missing(ctx, state):
            return
        if record.decision == Decision.BASELINE and record.id not in state.baseline_ids and record.value is not None:
            count(ctx, state, record.value, record.id)
