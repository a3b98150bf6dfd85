"""The research loop behind `sealab run`.

    baseline ×k → loop: stop? → drift guard → propose → policy gate → commit (CAS) → execute (sealed)
                        → keep (branch stays on the new commit) | discard (refs/sealab/discarded/<id>, CAS back)
                        → drift guard → record

The agent only ever sees the best commit's content read from git objects. Every ref move is a
compare-and-swap; the run's state is saved after every step, so `--resume` continues exactly there.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable

from agent import attempts, branch, committed, decisions, drift_guard, gate, run_state, stopped
from agent.context import Context
from agent.proposal import ModelUnavailable, Proposal, ProposalContext, ProposalFailed
from executor import git_source
from executor.docker_engine import Engine
from executor.backends.interface import Backend
from executor.ledger import Ledger
from executor.record import ExperimentRecord, RunLabels
from executor.types import RunSpec, Status
from executor.workspace import Workspace
from agent.run_state import RunState
from agent.stopped import LoopStopped
from policies import check_proposal

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

    @property
    def repo(self) -> git_source.Repository:
        return self.ws.git

    @property
    def _ctx(self) -> Context:
        """This loop's collaborators, as the steps reach them (built anew: a field changed is seen)."""
        return Context(self.ws, self.engine, self.ledger, self.policy, self.proposer, self.drift_action,
                       self.on_event, self.backend, self.stopping)

    # -- set-up -------------------------------------------------------------------------------------
    def start(self, tag: str) -> RunState:
        """Create branch sealab/<tag> at the current commit (never moving any other branch)."""
        if self.ledger.run_state(tag) is not None:
            raise LoopStopped(f"a run tagged {tag!r} exists; use --resume or another --tag")
        if git_source.is_dirty(self.repo):
            raise LoopStopped("the working tree has uncommitted changes; commit or stash them before `sealab run`")
        head = git_source.head_commit(self.repo)
        if head is None:
            raise LoopStopped("HEAD has no commit yet; commit the research files before `sealab run`")
        state = RunState(tag=tag, branch=f"sealab/{tag}", start_commit=head, best_commit=head)
        if branch.tip(self._ctx, state) is not None:
            raise LoopStopped(f"branch {state.branch} exists already; use another --tag")
        self._save(state)  # first: a kill after the branch exists can be resumed
        branch.create(self._ctx, state, head)
        return state

    def resume(self, tag: str) -> RunState:
        state = run_state.load(self.ledger, tag)
        if state is None:
            raise LoopStopped(f"no run tagged {tag!r} to resume")
        tip = branch.resumable_tip(self._ctx, state)
        self._guard(state, "resume", tip)
        gate.adopt(self._ctx, state)
        if state.pending:  # a commit was made, its experiment never decided: decide it now or discard it
            record = self.ledger.experiment(state.pending["experiment"]) if state.pending.get("experiment") else None
            if record is not None and record.status == Status.INFRA_ERROR:
                state.pending["retry"] = True  # lost to the engine: `run` runs the commit again
                self._save(state)
                return state
            if record is not None and record.status not in (Status.RUNNING, Status.INTERRUPTED):
                self._decide(state, record)
            else:
                self._discard(state, state.pending["commit"], state.pending.get("experiment") or
                              "unrun-" + state.pending["commit"][:12])
                state.pending = None
                self._save(state)
        if state.round:  # a round whose decision was never made: decide what finished, discard the rest
            finished = []
            for entry in state.round:
                record = self.ledger.experiment(entry["experiment"]) if entry.get("experiment") else None
                if record is not None and record.status not in (Status.RUNNING, Status.INTERRUPTED):
                    finished.append((entry, record))
                else:
                    self._discard(state, entry["commit"], entry.get("experiment") or "unrun-" + entry["commit"][:12])
            self._decide_round(state, finished)
        branch.restore(self._ctx, state, state.best_commit)
        return state

    # -- the loop -----------------------------------------------------------------------------------
    def run(self, state: RunState, *, experiments: int | None, hours: float | None) -> RunState:
        started = time.monotonic() - state.elapsed_s
        spec = self._spec(state.best_commit)
        stopped.check_spec(self.policy, spec)
        gate.baselines(self._ctx, state)
        if state.pending and state.pending.get("retry"):  # resumed after the engine lost the pending commit
            branch.restore(self._ctx, state, state.pending["commit"])
            record = self._execute(state, None)
            self._guard(state, "after run")
            self._decide(state, record)
        while True:
            state.elapsed_s = time.monotonic() - started
            reason = stopped.reason(self.policy, state, experiments=experiments, hours=hours)
            self._check_branch(state)  # before each experiment: a moved branch stops the run at once
            if reason:
                self._guard(state, "end")
                self._check_branch(state)
                state.stop_reason = reason
                self._save(state)
                self.on_event(f"stopped: {reason}", state)
                return state
            if self.workers > 1:
                left = None if experiments is None else experiments - state.experiments
                self._round(state, spec, min(self.workers, left) if left is not None else self.workers)
            else:
                self._step(state, spec)

    def _step(self, state: RunState, spec: RunSpec) -> None:
        self._guard(state, "before proposal")
        proposed = self._propose(state, self._context(state, spec), spec)
        if proposed is None:
            return
        proposal = proposed
        self._guard(state, "before commit")  # every reset of the work tree is preceded by a drift check
        commit = committed.commit(self.repo, state.best_commit, proposal)
        state.pending = {"commit": commit, "experiment": None}
        self._save(state)  # before the branch moves, so that --resume knows this commit
        branch.take(self._ctx, state, commit)
        branch.move(self._ctx, state, state.best_commit, commit, "before run")
        record = self._execute(state, None, proposal)
        self._guard(state, "after run")
        self._decide(state, record)

    def _propose(self, state: RunState, context: ProposalContext, spec: RunSpec) -> Proposal | None:
        """Ask for one proposal and gate it; a failed, rejected or parked one is recorded and gives None."""
        try:
            proposal = self.proposer.propose(context)
        except ProposalFailed as exc:
            state.cost_usd += exc.usage.cost_usd
            state.experiments += 1
            state.since_improvement += 1
            self.ledger.add_event(state.tag, "proposal_failed", {"reason": exc.reason, "best_commit": state.best_commit})
            self.on_event(f"proposal failed: {exc.reason}", state)
            self._save(state)
            return None
        except ModelUnavailable as exc:
            state.cost_usd += exc.usage.cost_usd
            self._save(state)
            raise ModelUnavailable(f"the model is unavailable: {exc}", exc.usage) from None
        state.cost_usd += proposal.usage.cost_usd
        changes = committed.changes(self.repo, state.best_commit, proposal.files)
        proposed_spec = committed.proposed_spec(changes)
        verdict = check_proposal(self.policy, changes, current_spec=spec, proposed_spec=proposed_spec)
        if not changes or verdict.action != "allow":
            kind = "rejected" if not changes or verdict.action == "reject" else "parked"
            rule, why = (verdict.rule, verdict.reason) if changes else ("empty", "the proposal changes nothing")
            self.ledger.add_event(state.tag, kind, {
                "description": proposal.description, "rule": rule, "reason": why, "proposer": proposal.proposer,
                "best_commit": state.best_commit, "patch": committed.patch(changes), "usage": asdict(proposal.usage)})
            state.experiments += 1
            state.since_improvement += 1
            self._save(state)
            self.on_event(f"{kind}: {proposal.description} ({rule}: {why})", state)
            return None
        return proposal

    def _execute(self, state: RunState, decision: str | None, proposal: Proposal | None = None) -> ExperimentRecord:
        return attempts.experiment(self._ctx, state, decision, proposal)

    def _run_commit(self, state: RunState, ws: Workspace, ledger: Ledger, commit: str,
                    on_record: Callable[[str], None], extra: RunLabels | None, *, editable: bool) -> ExperimentRecord:
        return attempts.run_commit(self._ctx, state, ws, ledger, commit, on_record, extra, editable=editable)

    # -- parallel rounds (--workers N) --------------------------------------------------------------
    def _round(self, state: RunState, spec: RunSpec, n: int) -> None:
        """Take up to `n` distinct proposals from the best commit, run them side by side, keep the winner.

        The branch stays at the best commit (and the work tree with it) while the round runs; every
        candidate is a child of it, built from git objects. The decision is `pick_winner`'s.
        """
        self._guard(state, "before proposal")
        context = self._context(state, spec)
        entries: list[dict[str, Any]] = []
        proposals: list[Proposal] = []
        for i in range(n):
            siblings = [{"commit": e["commit"], "description": e["description"], "status": "running",
                         "decision": None, "metric": None} for e in entries]
            ctx = replace(context, experiment_index=state.experiments + i, history=(*context.history, *siblings),
                          siblings=tuple(e["description"] for e in entries))
            proposal = self._propose(state, ctx, spec)
            if proposal is None:
                continue
            commit = committed.commit(self.repo, state.best_commit, proposal)
            tree = git_source.tree_of(self.repo, commit)
            if any(git_source.tree_of(self.repo, e["commit"]) == tree for e in entries):
                self.ledger.add_event(state.tag, "rejected", {
                    "description": proposal.description, "rule": "round.duplicate", "proposer": proposal.proposer,
                    "reason": "another proposal of this round makes the same change", "best_commit": state.best_commit,
                    "patch": "", "usage": asdict(proposal.usage)})
                state.experiments += 1
                self.on_event(f"rejected: {proposal.description} (round.duplicate)", state)
                continue
            entries.append({"commit": commit, "experiment": None, "description": proposal.description,
                            "size": committed.size(self.repo, state.best_commit, proposal.files)})
            proposals.append(proposal)
        if not entries:
            self._save(state)
            return
        state.round = entries
        self._save(state)  # before anything runs, so that --resume knows the round
        self.on_event(f"round of {len(entries)}: " + "; ".join(e["description"] for e in entries), state)
        records = self._run_round(state, entries, proposals)
        self._guard(state, "after run")
        self._decide_round(state, list(zip(entries, records)))

    def _run_round(self, state: RunState, entries: list[dict[str, Any]],
                   proposals: list[Proposal]) -> list[ExperimentRecord]:
        """Execute the round's commits at once, one thread each (own git handle and ledger connection)."""
        lock = threading.Lock()
        results: list[ExperimentRecord | BaseException | None] = [None] * len(entries)

        def note(i: int, eid: str, ledger: Ledger) -> None:
            with lock:
                entries[i]["experiment"] = eid
                ledger.save_run(state.tag, asdict(state))

        def work(i: int) -> None:
            ledger = Ledger(self.ws.ledger_path)
            try:
                record = self._run_commit(state, Workspace(self.ws.root), ledger, entries[i]["commit"],
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
            self._stop_round(entries, threads)
            raise
        for outcome in results:
            if isinstance(outcome, BaseException):
                raise outcome
        return [r for r in results if isinstance(r, ExperimentRecord)]

    def _stop_round(self, entries: list[dict[str, Any]], threads: list[threading.Thread], wait_s: float = 60) -> None:
        """Mark the round's running records `interrupted` and remove their containers (or cancel their
        jobs), again until every worker thread has ended, so that none can start a phase or a retry
        afterwards; a record begun while this runs is marked before its container is removed."""
        self.stopping.set()
        deadline = time.monotonic() + wait_s
        while True:
            for entry in entries:
                experiment_id = entry.get("experiment")
                if not experiment_id:
                    continue
                self.ledger.interrupt(experiment_id, "stopped by the user")  # a record still running only
                attempts.cleanup(self._ctx, experiment_id)
            alive = [t for t in threads if t.is_alive()]
            if not alive or time.monotonic() > deadline:
                return
            for t in alive:
                t.join(0.5)

    def _decide_round(self, state: RunState, finished: list[tuple[dict[str, Any], ExperimentRecord]]) -> None:
        decisions.decide_round(self._ctx, state, finished)

    def _decide(self, state: RunState, record: ExperimentRecord) -> None:
        decisions.decide(self._ctx, state, record)

    def _discard(self, state: RunState, commit: str, experiment_id: str) -> None:
        branch.discard(self._ctx, state, commit, experiment_id)

    # -- drift guard --------------------------------------------------------------------------------
    def _check_branch(self, state: RunState) -> None:
        branch.check(self._ctx, state)

    def _guard(self, state: RunState, where: str, tip: str | None = None, restore_to: str | None = None) -> bool:
        return drift_guard.guard(self._ctx, state, where, tip, restore_to)

    def check_drift(self, state: RunState, where: str) -> None:
        """Run the drift guard now (e.g. once the loop has stopped)."""
        self._guard(state, where)

    # -- helpers ------------------------------------------------------------------------------------
    def _context(self, state: RunState, spec: RunSpec) -> ProposalContext:
        records = self.ledger.experiments(state.tag)
        history = [{"commit": r.commit, "description": r.description, "status": r.status.value,
                    "decision": r.decision.value if r.decision else None, "metric": self._metric(r)}
                   for r in records]
        last = records[-1] if records else None
        tail = ""
        if last and last.log_path and (self.ws.root / last.log_path).exists():
            tail = "\n".join((self.ws.root / last.log_path).read_text(errors="replace").splitlines()[-50:])
        best = state.best_commit
        return ProposalContext(
            program=self._read(best, "program.md") or "", train_source=self._read(best, "train.py") or "",
            read_file=lambda path: self._read(best, path), history=history, last_log_tail=tail,
            metric=spec.metric, direction=spec.direction, experiment_index=state.experiments)

    def _read(self, commit: str, path: str) -> str | None:
        """A file of `commit`, from git objects (never the work tree)."""
        return committed.read(self.repo, commit, path)

    def _spec(self, commit: str) -> RunSpec:
        return committed.spec(self.repo, commit)

    @staticmethod
    def _metric(record: ExperimentRecord) -> float | None:
        return record.value

    def _save(self, state: RunState) -> None:
        run_state.save(self.ledger, state)


def default_tag() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


