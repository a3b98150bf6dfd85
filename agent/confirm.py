"""The replication gate (`[acceptance] confirm_runs = N`): a candidate that beats the best by the threshold
on its one run is run N more times from the same sealed image before it is decided, and kept only if the
mean of its 1 + N runs still beats the best by the threshold. The kept value is that mean, so the next
candidate is judged against what the change reliably gives, not against its luckiest run.

Each confirmation is a full experiment record of the same commit (the executor seals it again and checks
the image ID before it starts; one that seals to another image fails the confirmation), labelled
`decision: confirm` and `reproduces: <candidate>`, with the candidate's proposal. Confirmations count as
the run's cost (`RunState.confirmations`), not as experiments. With one worker they run one after another;
a round's (`--workers N`) run side by side, at most N at once.
"""

from __future__ import annotations

import statistics
import threading
from dataclasses import dataclass
from typing import Sequence

from agent import attempts
from agent.context import Context
from agent.run_state import RunState
from executor.ledger import Ledger
from executor.record import Decision, ExperimentRecord, RunLabels
from executor.types import Status


@dataclass(frozen=True)
class Confirmed:
    """A candidate's confirmation runs and what they say: the mean of all its runs (None: one failed)."""

    candidate: ExperimentRecord
    runs: tuple[ExperimentRecord, ...]
    value: float | None
    why: str


def needed(ctx: Context) -> int:
    return int(getattr(ctx.policy.acceptance, "confirm_runs", 0) or 0)


def _one(ctx: Context, state: RunState, ledger: Ledger, candidate: ExperimentRecord, ws=None) -> ExperimentRecord:
    labels = RunLabels(state.tag, Decision.CONFIRM, candidate.proposal)
    rerun = attempts.run_commit(ctx, state, ws or ctx.ws, ledger, candidate.commit, lambda eid: None, labels,
                                editable=True)
    return ledger.record_rerun(rerun.id, candidate.id)


def judged(candidate: ExperimentRecord, runs: Sequence[ExperimentRecord]) -> Confirmed:
    """The mean of the candidate's value and its confirmations' (None, and why, when one gave no metric or
    ran another image)."""
    for run in runs:
        if run.image_id != candidate.image_id:
            return Confirmed(candidate, tuple(runs), None, f"confirmation {run.id} ran image {str(run.image_id)[:19]}, "
                                                           f"not the candidate's {str(candidate.image_id)[:19]}")
        if run.status != Status.OK or run.value is None:
            return Confirmed(candidate, tuple(runs), None, f"confirmation {run.id} ended {run.status.value}")
    values = [candidate.value, *(r.value for r in runs)]
    mean = statistics.fmean(v for v in values if v is not None)
    shown = ", ".join(f"{v:.6f}" for v in values if v is not None)
    return Confirmed(candidate, tuple(runs), mean,
                     f"{len(runs)} confirmation run(s) ({', '.join(r.id for r in runs)}) of the same image: "
                     f"{shown}; mean {mean:.6f}")


def confirm(ctx: Context, state: RunState, candidates: Sequence[ExperimentRecord], *,
            parallel: int = 1) -> list[Confirmed]:
    """`needed(ctx)` confirmation runs of each candidate, at most `parallel` at once (one thread each, with its
    own git handle and ledger connection); counted in `state.confirmations` and saved."""
    n = needed(ctx)
    jobs = [(c, j) for c in candidates for j in range(n)]
    done: dict[str, list[ExperimentRecord]] = {c.id: [] for c in candidates}
    for candidate in candidates:
        ctx.on_event(f"confirming: {candidate.description} ({n} more run(s) of image {str(candidate.image_id)[7:19]})",
                     state)
    if parallel <= 1 or len(jobs) <= 1:
        for candidate, _ in jobs:
            done[candidate.id].append(_one(ctx, state, ctx.ledger, candidate))
    else:
        _parallel(ctx, state, jobs, done, parallel)
    state.confirmations += len(jobs)
    ctx.save(state)
    return [judged(c, done[c.id]) for c in candidates]


def _parallel(ctx: Context, state: RunState, jobs: list[tuple[ExperimentRecord, int]],
              done: dict[str, list[ExperimentRecord]], parallel: int) -> None:
    lock, slots = threading.Lock(), threading.Semaphore(parallel)
    failures: list[BaseException] = []

    def work(candidate: ExperimentRecord) -> None:
        with slots:
            ledger = Ledger(ctx.ws.ledger_path)
            try:
                record = _one(ctx, state, ledger, candidate, ctx.ws.again())
                with lock:
                    done[candidate.id].append(record)
            except BaseException as exc:  # re-raised in the loop's thread below
                failures.append(exc)
            finally:
                ledger.close()

    threads = [threading.Thread(target=work, args=(c,), name=f"sealab-confirm-{i}", daemon=True)
               for i, (c, _) in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.2)
    if failures:
        raise failures[0]
