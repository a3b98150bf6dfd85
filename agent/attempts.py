"""Running one commit as an experiment, with the loop's labels: a run lost to the engine
(`infra_error`) is run again as a new record, per the policy's [retry], once the engine answers."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Callable

from agent.context import Context
from agent.proposal import Proposal
from agent.run_state import RunState
from executor.errors import EngineUnavailable, NoGpu, SealabError
from executor.ledger import Ledger
from executor.record import Decision, ExperimentRecord, RunLabels
from executor.run import execute
from executor.workspace import Workspace


def labels(state: RunState, decision: str | None, proposal: Proposal | None) -> RunLabels:
    """The loop's labels of a record: the run tag, its role (`baseline`), the proposal it tries."""
    return RunLabels(state.tag, Decision(decision) if decision else None, None if proposal is None else {
        "proposer": proposal.proposer, "description": proposal.description, "usage": asdict(proposal.usage),
        "prompt_digest": proposal.prompt_digest})


def experiment(ctx: Context, state: RunState, decision: str | None, proposal: Proposal | None = None) -> ExperimentRecord:
    """Run the pending commit (else the best one) in the loop's own workspace and ledger."""
    commit = state.pending["commit"] if state.pending else state.best_commit
    record = run_commit(ctx, state, ctx.ws, ctx.ledger, commit, lambda eid: note_pending(ctx, state, eid),
                        labels(state, decision, proposal), editable=bool(state.pending))
    return annotate(ctx.ledger, record, state, decision, proposal)


def note_pending(ctx: Context, state: RunState, experiment_id: str) -> None:
    """The pending commit's record exists: save its id, so that --resume finds it."""
    if state.pending:
        state.pending["experiment"] = experiment_id
        ctx.save(state)


def annotate(ledger: Ledger, record: ExperimentRecord, state: RunState, decision: str | None,
             proposal: Proposal | None) -> ExperimentRecord:
    """The loop's labels on a finished record (already there from its first write; idempotent)."""
    return ledger.label(record.id, labels(state, decision, proposal))


def run_commit(ctx: Context, state: RunState, ws: Workspace, ledger: Ledger, commit: str,
               on_record: Callable[[str], None], extra: RunLabels | None, *, editable: bool) -> ExperimentRecord:
    """Execute `commit` (the executor re-checks the scope itself); a run lost to the engine
    (`infra_error`) is run again as a new record, per the policy's [retry], once the engine answers."""
    attempt, ids = 0, []

    def noted(experiment_id: str) -> None:
        ids.append(experiment_id)
        on_record(experiment_id)

    while True:
        try:
            return execute(ws, commit, ctx.engine, ledger, on_record=noted,
                           editable=ctx.policy.scope.editable if editable else None, backend=ctx.backend,
                           labels=extra)
        except EngineUnavailable as exc:
            attempt += 1
            if attempt > ctx.policy.retry.infra_error or ctx.stopping.is_set() or isinstance(exc, NoGpu):
                raise  # (a stopping round removes its containers: that is no loss to retry; a host without a GPU
                #         runtime will not grow one between two attempts)
            ledger.add_event(state.tag, "retry", {"commit": commit, "attempt": attempt, "reason": str(exc)})
            wait_for_engine(ctx, exc)
            if ids:  # what the lost run left on the engine (e.g. an exited container after a restart)
                cleanup(ctx, ids[-1])


def cleanup(ctx: Context, experiment_id: str) -> None:
    """Remove what an experiment left running (its containers, or its backend's job); errors ignored."""
    try:
        (ctx.backend.cleanup if ctx.backend is not None else ctx.engine.remove_experiment_containers)(experiment_id)
    except SealabError:
        pass


def wait_for_engine(ctx: Context, cause: EngineUnavailable) -> None:
    """Ping the engine with backoff until it answers, for at most the policy's retry.wait_s."""
    deadline = time.monotonic() + ctx.policy.retry.wait_s
    delay = 0.5
    while True:
        try:
            ctx.engine.ping()
            return
        except EngineUnavailable:
            if time.monotonic() + delay > deadline:
                raise cause from None
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
