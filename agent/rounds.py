"""Parallel rounds (`--workers N`): up to N distinct proposals from the best commit, run side by side
(one thread each, with its own git handle and ledger connection), the winner kept; and stopping a
round (its records marked `interrupted`, its containers removed or jobs cancelled)."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, replace
from typing import Any

from agent import attempts, committed, decisions, proposing, run_state
from agent.context import Context
from agent.drift_guard import guard
from agent.proposal import Proposal, ProposalContext
from agent.run_state import RunState
from executor import git_source
from executor.ledger import Ledger
from executor.record import ExperimentRecord
from executor.types import RunSpec


def size(workers: int, experiments: int | None, state: RunState) -> int:
    """How many proposals the next round takes: `workers`, or fewer when the experiment limit is near."""
    left = None if experiments is None else experiments - state.experiments
    return min(workers, left) if left is not None else workers


def round_(ctx: Context, state: RunState, spec: RunSpec, n: int) -> None:
    """Take up to `n` distinct proposals from the best commit, run them side by side, keep the winner.

    The branch stays at the best commit (and the work tree with it) while the round runs; every
    candidate is a child of it, built from git objects. The decision is `pick_winner`'s.
    """
    guard(ctx, state, "before proposal")
    entries, proposals = _candidates(ctx, state, spec, n)
    if not entries:
        ctx.save(state)
        return
    state.round = entries
    ctx.save(state)  # before anything runs, so that --resume knows the round
    ctx.on_event(f"round of {len(entries)}: " + "; ".join(e["description"] for e in entries), state)
    records = run_round(ctx, state, entries, proposals)
    guard(ctx, state, "after run")
    decisions.decide_round(ctx, state, list(zip(entries, records)))


def _candidates(ctx: Context, state: RunState, spec: RunSpec,
                n: int) -> tuple[list[dict[str, Any]], list[Proposal]]:
    """The round's commits (entries: commit, experiment, description, size) and their proposals; each
    proposer call sees the ones before it as siblings, and a duplicate of one of them is rejected."""
    shown = proposing.context(ctx, state, spec)
    entries: list[dict[str, Any]] = []
    proposals: list[Proposal] = []
    for i in range(n):
        proposal = proposing.propose(ctx, state, with_siblings(shown, state, entries, i), spec)
        if proposal is None:
            continue
        commit = committed.commit(ctx.repo, state.best_commit, proposal)
        if _duplicate(ctx, state, proposal, commit, entries):
            continue
        entries.append({"commit": commit, "experiment": None, "description": proposal.description,
                        "size": committed.size(ctx.repo, state.best_commit, proposal.files)})
        proposals.append(proposal)
    return entries, proposals


def with_siblings(shown: ProposalContext, state: RunState, entries: list[dict[str, Any]], i: int) -> ProposalContext:
    siblings = [{"commit": e["commit"], "description": e["description"], "status": "running",
                 "decision": None, "metric": None} for e in entries]
    return replace(shown, experiment_index=state.experiments + i, history=(*shown.history, *siblings),
                   siblings=tuple(e["description"] for e in entries))


def _duplicate(ctx: Context, state: RunState, proposal: Proposal, commit: str, entries: list[dict[str, Any]]) -> bool:
    """Whether another proposal of this round makes the same change (then it is recorded as rejected)."""
    tree = git_source.tree_of(ctx.repo, commit)
    if not any(git_source.tree_of(ctx.repo, e["commit"]) == tree for e in entries):
        return False
    ctx.ledger.add_event(state.tag, "rejected", {
        "description": proposal.description, "rule": "round.duplicate", "proposer": proposal.proposer,
        "reason": "another proposal of this round makes the same change", "best_commit": state.best_commit,
        "patch": "", "usage": asdict(proposal.usage)})
    state.experiments += 1
    ctx.on_event(f"rejected: {proposal.description} (round.duplicate)", state)
    return True


def run_round(ctx: Context, state: RunState, entries: list[dict[str, Any]],
              proposals: list[Proposal]) -> list[ExperimentRecord]:
    """Execute the round's commits at once, one thread each (own git handle and ledger connection)."""
    lock = threading.Lock()
    results: list[ExperimentRecord | BaseException | None] = [None] * len(entries)

    def note(i: int, eid: str, ledger: Ledger) -> None:
        with lock:
            entries[i]["experiment"] = eid
            run_state.save(ledger, state)  # this thread's own connection

    def work(i: int) -> None:
        ledger = Ledger(ctx.ws.ledger_path)
        try:
            record = attempts.run_commit(ctx, state, ctx.ws.again(), ledger, entries[i]["commit"],
                                         lambda eid: note(i, eid, ledger), attempts.labels(state, None, proposals[i]),
                                         editable=True)
            results[i] = attempts.annotate(ledger, record, state, None, proposals[i])
        except BaseException as exc:  # re-raised in the loop's thread below
            results[i] = exc
        finally:
            ledger.close()

    threads = [threading.Thread(target=work, args=(i,), name=f"sealab-worker-{i}", daemon=True)
               for i in range(len(entries))]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    except KeyboardInterrupt:  # stop the round's runs now; their records say so
        stop_round(ctx, entries, threads)
        raise
    for outcome in results:
        if isinstance(outcome, BaseException):
            raise outcome
    return [r for r in results if isinstance(r, ExperimentRecord)]


def stop_round(ctx: Context, entries: list[dict[str, Any]], threads: list[threading.Thread], wait_s: float = 60) -> None:
    """Mark the round's running records `interrupted` and remove their containers (or cancel their
    jobs), again until every worker thread has ended, so that none can start a phase or a retry
    afterwards; a record begun while this runs is marked before its container is removed."""
    ctx.stopping.set()
    deadline = time.monotonic() + wait_s
    while True:
        for entry in entries:
            experiment_id = entry.get("experiment")
            if not experiment_id:
                continue
            ctx.ledger.interrupt(experiment_id, "stopped by the user")  # a record still running only
            attempts.cleanup(ctx, experiment_id)
        alive = [t for t in threads if t.is_alive()]
        if not alive or time.monotonic() > deadline:
            return
        for t in alive:
            t.join(0.5)
