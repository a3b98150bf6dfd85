"""The research loop behind `sealab run`.

    baseline ×k → loop: stop? → drift guard → propose → policy gate → commit (CAS) → execute (sealed)
                        → keep (branch stays on the new commit) | discard (refs/sealab/discarded/<id>, CAS back)
                        → drift guard → record

Pipelined (the default with one worker; agent/pipeline.py): the next proposal is asked, gated, committed
and its image sealed and loaded while an experiment runs, and judged by the rule written there.

The agent only ever sees the best commit's content read from git objects. Every ref move is a
compare-and-swap; the run's state is saved after every step, so `--resume` continues exactly there.

`Loop` is the façade: its fields are the run's collaborators, and each step lives in a module of its own:
begin.py (start, resume), gate.py (baseline, threshold), steps.py and rounds.py (one experiment, a round),
proposing.py, committed.py, attempts.py, verdicts.py and decisions.py, branch.py, drift_guard.py,
stopped.py and run_state.py.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from agent import attempts, begin, branch, committed, drift_guard, gate, pipeline, rounds, steps, stopped
from agent.context import Context
from agent.run_state import RunState
from agent.stopped import LoopStopped
from executor import git_source
from executor.backends.interface import Backend
from executor.docker_engine import Engine
from executor.ledger import Ledger
from executor.record import ExperimentRecord, RunLabels
from executor.workspace import Workspace

__all__ = ["Loop", "LoopStopped", "RunState", "default_tag"]


@dataclass
class Loop:
    ws: Workspace
    engine: Engine
    ledger: Ledger
    policy: Any
    proposer: Any
    drift_action: str = "restore"
    on_event: Callable[[str, RunState], None] = lambda line, state: None
    workers: int = 1  # experiments per round, run at once; 1 is the plain one-at-a-time loop
    backend: Backend | None = None  # where experiments run (None: the local engine)
    stopping: threading.Event = field(default_factory=threading.Event, repr=False)  # a round is being stopped
    pipeline: bool = True  # --workers 1: prepare the next proposal while one runs (agent/pipeline.py)

    @property
    def repo(self) -> git_source.Repository:
        return self.ws.git

    @property
    def _ctx(self) -> Context:
        """This loop's collaborators, as the steps reach them (built anew: a field changed is seen)."""
        return Context(self.ws, self.engine, self.ledger, self.policy, self.proposer, self.drift_action,
                       self.on_event, self.backend, self.stopping)

    def start(self, tag: str) -> RunState:
        """Create branch sealab/<tag> at the current commit (never moving any other branch)."""
        return begin.start(self._ctx, tag)

    def resume(self, tag: str) -> RunState:
        """Continue the run `tag` where it was saved (see begin.resume)."""
        return begin.resume(self._ctx, tag)

    def run(self, state: RunState, *, experiments: int | None, hours: float | None) -> RunState:
        """Baseline, then experiments (one at a time, or rounds of `workers`) until a stop condition holds."""
        ctx = self._ctx
        started = ctx.cycle_start = time.monotonic()
        started -= state.elapsed_s
        spec = committed.spec(ctx.repo, state.best_commit)
        stopped.check_spec(ctx.policy, spec)
        ahead: pipeline.Ahead | None = None

        def first_ahead() -> None:
            nonlocal ahead
            if self.pipeline and self.workers == 1:
                ahead = pipeline.first(ctx, state, spec, experiments)

        gate.baselines(ctx, state, first_ahead)
        steps.rerun_lost(ctx, state)
        while True:
            state.elapsed_s = time.monotonic() - started
            reason = stopped.reason(ctx.policy, state, experiments=experiments, hours=hours)
            branch.check(ctx, state)  # before each experiment: a moved branch stops the run at once
            if reason:
                if ahead is not None:
                    pipeline.park(ctx, state, ahead)
                return self._stop(ctx, state, reason)
            if self.workers > 1:
                rounds.round_(ctx, state, spec, rounds.size(self.workers, experiments, state))
            elif self.pipeline:
                ahead = pipeline.step(ctx, state, spec, prepare_next=pipeline.more(state, experiments), ahead=ahead)
            else:
                steps.step(ctx, state, spec)

    def _stop(self, ctx: Context, state: RunState, reason: str) -> RunState:
        drift_guard.guard(ctx, state, "end")
        branch.check(ctx, state)
        state.stop_reason = reason
        ctx.save(state)
        ctx.on_event(f"stopped: {reason}", state)
        return state

    def check_drift(self, state: RunState, where: str) -> None:
        """Run the drift guard now (e.g. once the loop has stopped)."""
        drift_guard.guard(self._ctx, state, where)

    # -- single steps, for tests --------------------------------------------------------------------
    def _run_commit(self, state: RunState, ws: Workspace, ledger: Ledger, commit: str,
                    on_record: Callable[[str], None], extra: RunLabels | None, *, editable: bool) -> ExperimentRecord:
        return attempts.run_commit(self._ctx, state, ws, ledger, commit, on_record, extra, editable=editable)

    def _stop_round(self, entries: list[dict[str, Any]], threads: list[threading.Thread], wait_s: float = 60) -> None:
        rounds.stop_round(self._ctx, entries, threads, wait_s)

    def _check_branch(self, state: RunState) -> None:
        branch.check(self._ctx, state)

    def _read(self, commit: str, path: str) -> str | None:
        """A file of `commit`, from git objects (never the work tree)."""
        return committed.read(self.repo, commit, path)


def default_tag() -> str:
    return time.strftime("%Y%m%d-%H%M%S")
