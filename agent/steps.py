"""One experiment at a time (`--workers 1`): propose from the best commit, commit the proposal, move
the branch onto it (CAS), run it sealed, decide; and the rerun of a pending commit the engine lost."""

from __future__ import annotations

import time

from agent import attempts, branch, committed, cycle, decisions, proposing
from agent.context import Context
from agent.drift_guard import guard
from agent.proposal import Proposal
from agent.run_state import RunState
from executor.record import ExperimentRecord
from executor.types import RunSpec


def step(ctx: Context, state: RunState, spec: RunSpec) -> None:
    guard(ctx, state, "before proposal")
    asked = time.monotonic()
    proposal = proposing.propose(ctx, state, proposing.context(ctx, state, spec), spec)
    proposal_s = time.monotonic() - asked
    if proposal is None:
        return
    try_(ctx, state, proposal, proposal_s=proposal_s)


def try_(ctx: Context, state: RunState, proposal: Proposal, *, proposal_s: float) -> ExperimentRecord:
    """A gated proposal as an experiment: committed on the best commit, the branch moved onto it (CAS),
    run sealed and decided. Returns its record as decided."""
    guard(ctx, state, "before commit")  # every reset of the work tree is preceded by a drift check
    commit = committed.commit(ctx.repo, state.best_commit, proposal)
    state.pending = {"commit": commit, "experiment": None}
    ctx.save(state)  # before the branch moves, so that --resume knows this commit
    branch.take(ctx, state, commit)
    branch.move(ctx, state, state.best_commit, commit, "before run")
    record = attempts.experiment(ctx, state, None, proposal)
    ran = time.monotonic()
    guard(ctx, state, "after run")
    best = state.best_commit
    confirmations = decisions.decide(ctx, state, record)
    cycle.note(ctx, record, proposal_s=proposal_s, ran=ran, pipelined=False, proposed_on=best, best=best,
               confirmations=confirmations)
    return ctx.ledger.experiment(record.id) or record


def rerun_lost(ctx: Context, state: RunState) -> None:
    """A resumed run whose pending commit the engine lost (`infra_error`): run it again and decide it."""
    if not (state.pending and state.pending.get("retry")):
        return
    branch.restore(ctx, state, state.pending["commit"])
    record = attempts.experiment(ctx, state, None)
    ran = time.monotonic()
    guard(ctx, state, "after run")
    best = state.best_commit
    confirmations = decisions.decide(ctx, state, record)
    cycle.note(ctx, record, proposal_s=0.0, ran=ran, pipelined=False, best=best, confirmations=confirmations)
