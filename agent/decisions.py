"""Applying verdicts: the decision written to the ledger, the branch kept on a winner or moved back
from a loser (discarded refs), and the run's counts (experiments, crashes in a row, since the last keep)."""

from __future__ import annotations

from typing import Any

from agent import branch, committed, confirm, held_out, verdicts
from agent.context import Context
from agent.run_state import RunState
from executor.record import Decision, ExperimentRecord


def result(record: ExperimentRecord, size: int = 0) -> verdicts.Result:
    return verdicts.Result(record.value, record.status, size, record.id)


def _count(state: RunState, record: ExperimentRecord) -> None:
    state.experiments += 1
    state.consecutive_crashes = state.consecutive_crashes + 1 if verdicts.crashed(record.status) else 0


def _shown(record: ExperimentRecord) -> str:
    return f"{record.value:.6f}" if record.value is not None else record.status.value


def decide(ctx: Context, state: RunState, record: ExperimentRecord) -> tuple[ExperimentRecord, ...]:
    """Keep the pending commit (the branch stays on it) or discard it (the branch goes back), and record why.
    A candidate that would be kept is confirmed first when the policy asks (agent/confirm.py): returns those
    confirmation runs."""
    verdict = verdicts.one(ctx.policy, direction=record.spec.direction, best=state.best_value,
                           threshold=state.threshold, result=result(record))
    value, runs = record.value, ()
    if verdict.decision == "keep" and confirm.needed(ctx) and record.value is not None:
        checked = confirm.confirm(ctx, state, [record])[0]
        verdict, value, runs = _confirmed(ctx, state, record, checked), checked.value, checked.runs
    _count(state, record)
    if verdict.decision == "keep":
        state.best_commit, state.best_value, state.since_improvement = record.commit, value, 0
    else:
        state.since_improvement += 1
        branch.discard(ctx, state, record.commit, record.id)
    state.pending = None
    ctx.ledger.record_decision(record.id, Decision(verdict.decision), verdict.why)
    ctx.save(state)
    ctx.on_event(f"{verdict.decision}: {record.description} → {_shown(record)}"
                 f"{f' (mean {value:.6f})' if runs and value is not None else ''} (best {state.best_value:.6f})", state)
    if verdict.decision == "keep":
        held_out.score(ctx, state, record)
    return runs


def _confirmed(ctx: Context, state: RunState, record: ExperimentRecord, checked: confirm.Confirmed) -> verdicts.Verdict:
    """The verdict on the mean of a candidate's runs (a failed confirmation discards it)."""
    if checked.value is None:
        return verdicts.Verdict("discard", f"not confirmed: {checked.why}.")
    again = verdicts.one(ctx.policy, direction=record.spec.direction, best=state.best_value,
                         threshold=state.threshold, result=verdicts.Result(checked.value, record.status))
    return verdicts.Verdict(again.decision, f"{'confirmed' if again.decision == 'keep' else 'not confirmed'}: "
                                            f"{checked.why}; {again.why}")


def decide_round(ctx: Context, state: RunState, finished: list[tuple[dict[str, Any], ExperimentRecord]]) -> None:
    """Keep the round's winner (if any), discard the rest, in proposal order; update the run's state. With the
    replication gate, every candidate that would be kept on its own is confirmed first (side by side), and
    the winner is chosen on the means."""
    spec = committed.spec(ctx.repo, state.best_commit)
    results = [result(record, entry.get("size", 0)) for entry, record in finished]
    checked: dict[int, confirm.Confirmed] = {}
    if confirm.needed(ctx):
        alone = [i for i, r in enumerate(results) if verdicts.one(
            ctx.policy, direction=spec.direction, best=state.best_value, threshold=state.threshold,
            result=r).decision == "keep"]
        confirmed = confirm.confirm(ctx, state, [finished[i][1] for i in alone], parallel=max(1, len(finished)))
        checked = dict(zip(alone, confirmed))
        results = [verdicts.Result(checked[i].value, r.status, r.size, r.experiment_id) if i in checked else r
                   for i, r in enumerate(results)]
    win, decided = verdicts.of_round(ctx.policy, direction=spec.direction, best=state.best_value,
                                     threshold=state.threshold, results=results)
    if win is not None:
        entry, record = finished[win]
        _keep(ctx, state, entry["commit"], results[win].value)
    for i, ((entry, record), verdict) in enumerate(zip(finished, decided)):
        _count(state, record)
        if i != win:
            branch.discard(ctx, state, entry["commit"], record.id)
        why = verdict.why
        if i in checked:
            done = checked[i]
            why = (f"not confirmed: {done.why}." if done.value is None
                   else f"{'confirmed' if i == win else 'after confirmation'}: {done.why}; {why}")
        ctx.ledger.record_decision(record.id, Decision(verdict.decision), why)
        ctx.on_event(f"{verdict.decision}: {record.description} → {_shown(record)}", state)
    state.since_improvement = 0 if win is not None else state.since_improvement + len(finished)
    state.round = None
    ctx.save(state)
    ctx.on_event(f"round done (best {state.best_value:.6f})", state)
    if win is not None:
        held_out.score(ctx, state, finished[win][1])


def _keep(ctx: Context, state: RunState, commit: str, value: float | None) -> None:
    """The round's winner becomes the best commit: the branch moves onto it, the work tree with it (both
    done already when a run killed after the move is resumed: its resume restores the tree)."""
    took = branch.take(ctx, state, commit)
    old = state.best_commit
    state.best_commit, state.best_value = commit, value
    if took:
        branch.move(ctx, state, old, state.best_commit, "after round")

