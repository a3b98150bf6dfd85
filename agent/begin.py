"""Where a run begins: a new one (its branch `sealab/<tag>` made at HEAD, the state saved first), or
one resumed after a stop, crash or kill (the branch checked, a pending commit or a round in flight
decided from what finished, the rest discarded)."""

from __future__ import annotations

from typing import Any

from agent import branch, decisions, gate, run_state
from agent.context import Context
from agent.drift_guard import guard
from agent.run_state import RunState
from agent.stopped import RunRefused
from executor import git_source
from executor.record import ExperimentRecord
from executor.types import Status


def start(ctx: Context, tag: str) -> RunState:
    """Create branch sealab/<tag> at the current commit (never moving any other branch)."""
    if ctx.ledger.run_state(tag) is not None:
        raise RunRefused(f"a run tagged {tag!r} exists; use --resume or another --tag")
    if not ctx.detached and git_source.is_dirty(ctx.repo):  # (a detached run never uses the work tree)
        raise RunRefused("the working tree has uncommitted changes; commit or stash them before `sealab run`")
    head = git_source.head_commit(ctx.repo)
    if head is None:
        raise RunRefused("HEAD has no commit yet; commit the research files before `sealab run`")
    state = RunState(tag=tag, branch=f"sealab/{tag}", start_commit=head, best_commit=head)
    if branch.tip(ctx, state) is not None:
        raise RunRefused(f"branch {state.branch} exists already; use another --tag")
    ctx.save(state)  # first: a kill after the branch exists can be resumed
    branch.create(ctx, state, head)
    return state


def resume(ctx: Context, tag: str) -> RunState:
    """The run `tag` as it was saved, its undecided commits settled, its branch checked out at the best.

    Raises:
        RunRefused: no such run. LoopStopped: its branch is at a commit the run never made.
    """
    state = run_state.load(ctx.ledger, tag)
    if state is None:
        raise RunRefused(f"no run tagged {tag!r} to resume")
    guard(ctx, state, "resume", branch.resumable_tip(ctx, state))
    gate.adopt(ctx, state)
    if state.pending and _settle_pending(ctx, state, state.pending):
        return state
    if state.round:  # a round whose decision was never made: decide what finished, discard the rest
        _settle_round(ctx, state, state.round)
    branch.restore(ctx, state, state.best_commit)
    return state


def _record(ctx: Context, entry: dict[str, Any]) -> ExperimentRecord | None:
    """The record of a commit in flight (None: its experiment never began)."""
    return ctx.ledger.experiment(entry["experiment"]) if entry.get("experiment") else None


def _ended(record: ExperimentRecord | None) -> bool:
    """Whether it ran to an end (not still running, not interrupted), and so can be decided."""
    return record is not None and record.status not in (Status.RUNNING, Status.INTERRUPTED)


def _unrun(entry: dict[str, Any]) -> str:
    return entry.get("experiment") or "unrun-" + entry["commit"][:12]


def _settle_pending(ctx: Context, state: RunState, pending: dict[str, Any]) -> bool:
    """A commit was made, its experiment never decided: decide it now or discard it. True: it was lost
    to the engine, and `run` runs it again (the resume ends there)."""
    record = _record(ctx, pending)
    if record is not None and record.status == Status.INFRA_ERROR:
        pending["retry"] = True  # lost to the engine: `run` runs the commit again
        ctx.save(state)
        return True
    if record is not None and _ended(record):
        decisions.decide(ctx, state, record)
    else:
        branch.discard(ctx, state, pending["commit"], _unrun(pending))
        state.pending = None
        ctx.save(state)
    return False


def _settle_round(ctx: Context, state: RunState, entries: list[dict[str, Any]]) -> None:
    finished = []
    for entry in entries:
        record = _record(ctx, entry)
        if record is not None and _ended(record):
            finished.append((entry, record))
        else:
            branch.discard(ctx, state, entry["commit"], _unrun(entry))
    decisions.decide_round(ctx, state, finished)
