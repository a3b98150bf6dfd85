"""The pipelined loop (`sealab run`, one experiment at a time; `--sequential` turns it off): while
experiment N runs, a background thread already asks the proposer for N+1, gates it, commits it and
seals and loads its image, so that when N is decided the next training starts after nothing but the
checks and a container start. What runs is still exactly the sealed commit, re-derived and checked
before its container starts (executor/run.py); the background work only warms the engine.

The decision rule for a proposal made before N was decided:
  * it is asked from the best commit known when it is asked (while N runs: N's parent), with N shown to
    the proposer as running, as a round shows its siblings;
  * it is judged, like every experiment, against the best at its decision time;
  * if N was kept meanwhile, its change is carried onto N by git's three-way merge of the two changes
    (gitops.rebase) and the merged commit is gated again, sealed and run: a `rebased` ledger event names
    the commit as proposed and the commit run; if the two changes conflict, the proposal is recorded
    `rejected` (rule `pipeline.conflict`, with its patch) and the next one is asked from the new best;
  * each record's `cycle` says which commit it was proposed on (`proposed_on`), which best it was
    judged against (`best_at_decision`) and the commit it was rebased from (`rebased_from`), if any.

Nothing is lost to a kill: the background thread writes what it prepared as a `prepared` ledger event
(numbered; the run's state counts those taken up), so `--resume` takes up a proposal prepared while N
ran instead of asking again, and runs it once.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import structlog

from agent import attempts, branch, committed, cycle, decisions, gitops, proposing
from agent.context import Context
from agent.drift_guard import guard
from agent.proposal import ModelUnavailable, Proposal, ProposalFailed, Usage
from agent.rounds import with_siblings
from agent.run_state import RunState
from executor import config, git_source
from executor.backends.interface import ensure_image
from executor.errors import SealabError
from executor.image.seal import check_tree_size, seal
from executor.ledger import Ledger
from executor.run import check_base_fits, current_base
from executor.types import RunSpec

EVENT = "prepared"


@dataclass(frozen=True)
class Prepared:
    """A proposal asked ahead, as its `prepared` event holds it: the commit made of it on `parent` (the
    best when it was asked), or why the proposer gave none."""

    n: int
    parent: str
    event: dict[str, Any]
    commit: str | None = None
    proposal: Proposal | None = None
    failed: str | None = None
    usage: Usage = Usage()

    @classmethod
    def of_event(cls, ctx: Context, event: dict[str, Any]) -> Prepared:
        usage = Usage(**event.get("usage") or {})
        if event.get("failed") is not None:
            return cls(event["n"], event["parent"], event, failed=str(event["failed"]), usage=usage)
        commit = event["commit"]
        files = {path: committed.read(ctx.repo, commit, path) or "" for path in event["paths"]}
        proposal = Proposal(files, event["description"], event["proposer"], usage, event.get("prompt_digest"))
        return cls(event["n"], event["parent"], event, commit, proposal, usage=usage)


class Ahead:
    """The background preparation of the next proposal (one thread, with its own git handle and ledger
    connection); `take` waits for it."""

    def __init__(self, ctx: Context, state: RunState, spec: RunSpec, running: dict[str, Any] | None) -> None:
        self.n = state.prepared + 1
        self.event: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="sealab-ahead", daemon=True,
                                        args=(ctx, RunState(**asdict(state)), spec, running))
        self._thread.start()

    def _work(self, ctx: Context, state: RunState, spec: RunSpec, running: dict[str, Any] | None) -> None:
        ws, ledger = ctx.ws.again(), Ledger(ctx.ws.ledger_path)
        try:
            self.event = prepare(replace(ctx, ws=ws, ledger=ledger), state, spec, [running] if running else [], self.n)
        except BaseException as exc:  # re-raised in the loop's thread by `take`
            self.error = exc
        finally:
            ledger.close()

    def take(self, ctx: Context) -> Prepared | None:
        """Wait for the preparation; what it prepared (None: nothing).

        Raises:
            ModelUnavailable, or what else the background work raised.
        """
        while self._thread.is_alive():
            self._thread.join(0.2)
        if self.error is not None:
            raise self.error
        return None if self.event is None else Prepared.of_event(ctx, self.event)


def prepare(ctx: Context, state: RunState, spec: RunSpec, running: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """Ask for a proposal from `state.best_commit` (the `running` experiments shown as siblings), commit
    it (git objects only), write the `prepared` event numbered `n` and, if the policy allows the
    proposal, seal its image and load it. Returns the event.

    Raises:
        ModelUnavailable: the model API failed (no event is written).
    """
    parent = state.best_commit
    shown = with_siblings(proposing.context(ctx, state, spec), state, running, len(running))
    base_event = {"n": n, "parent": parent}
    try:
        proposal = ctx.proposer.propose(shown)
    except ProposalFailed as exc:
        event = {**base_event, "failed": exc.reason, "usage": asdict(exc.usage)}
        ctx.ledger.add_event(state.tag, EVENT, event)
        return event
    commit = committed.commit(ctx.repo, parent, proposal)
    event = {**base_event, "commit": commit, "paths": sorted(proposal.files), "description": proposal.description,
             "proposer": proposal.proposer, "usage": asdict(proposal.usage), "prompt_digest": proposal.prompt_digest}
    ctx.ledger.add_event(state.tag, EVENT, event)  # first: a kill from here on loses nothing
    changes, judged = proposing.verdict(ctx, parent, proposal, spec)
    if changes and judged.action == "allow":
        warm(ctx, commit)
    return event


def warm(ctx: Context, commit: str) -> None:
    """Seal the commit's image and load it into this machine's engine, so that its run finds it there
    (the run seals again and checks the ID: this only saves time). Failures are left to the run to report."""
    if ctx.backend is not None and getattr(ctx.backend, "name", "") != "local":
        return  # another engine loads what it runs itself
    try:
        facts = git_source.resolve(ctx.repo, commit)
        settings = config.of_commit(facts.files, facts.sha)
        check_tree_size(facts, settings.run_spec)
        base = current_base(ctx.ledger, ctx.engine)
        check_base_fits(facts, settings, base)
        ensure_image(ctx.engine, seal(facts, base, settings.run_spec))
    except SealabError as exc:
        structlog.get_logger().info("pipeline.warm_skipped", commit=commit[:12], reason=str(exc))


def find(ctx: Context, state: RunState, n: int) -> Prepared | None:
    """This run's `prepared` event numbered `n` (None: none was written)."""
    for event in reversed(ctx.ledger.events(EVENT, run_tag=state.tag)):
        if event.get("n") == n:
            return Prepared.of_event(ctx, event)
    return None


def more(state: RunState, experiments: int | None, *, first: bool = False) -> bool:
    """Whether another experiment may follow the next one (`first`: whether there is to be one at all)
    by the experiment limit; other stops cannot be foreseen, and a proposal prepared for nothing is kept
    for a --resume."""
    return experiments is None or state.experiments + (0 if first else 1) < experiments


def first(ctx: Context, state: RunState, spec: RunSpec, experiments: int | None) -> Ahead | None:
    """Prepare the first proposal while the last baseline runs, when there is to be one and nothing is
    waiting already (one kept at a stop, or one a killed run prepared: taken up instead, never asked twice)."""
    if not more(state, experiments, first=True) or state.ahead is not None or find(ctx, state, state.prepared + 1):
        return None
    return Ahead(ctx, state, spec, None)


def step(ctx: Context, state: RunState, spec: RunSpec, *, prepare_next: bool, ahead: Ahead | None) -> Ahead | None:
    """One pipelined step: take the proposal prepared ahead (or ask for one now), run it, and while it
    runs prepare the next (when `prepare_next`: more experiments may follow). Returns that preparation."""
    guard(ctx, state, "before proposal")
    waited = time.monotonic()
    prepared = take(ctx, state, spec, ahead)
    proposal_s = time.monotonic() - waited
    chosen = settle(ctx, state, spec, prepared) if prepared is not None else None
    if chosen is None:
        return None
    proposal, commit, rebased_from = chosen
    guard(ctx, state, "before commit")  # every reset of the work tree is preceded by a drift check
    state.ahead = None
    state.pending = {"commit": commit, "experiment": None}
    ctx.save(state)  # before the branch moves, so that --resume knows this commit
    branch.take(ctx, state, commit)
    branch.move(ctx, state, state.best_commit, commit, "before run")
    following = Ahead(ctx, state, spec, {"commit": commit, "description": proposal.description}) if prepare_next else None
    record = attempts.experiment(ctx, state, None, proposal)
    ran = time.monotonic()
    guard(ctx, state, "after run")
    best = state.best_commit
    confirmations = decisions.decide(ctx, state, record)
    cycle.note(ctx, record, proposal_s=proposal_s, ran=ran, pipelined=True, proposed_on=prepared.parent, best=best,
               rebased_from=rebased_from, confirmations=confirmations)
    return following


def take(ctx: Context, state: RunState, spec: RunSpec, ahead: Ahead | None) -> Prepared | None:
    """The next proposal: the one taken up before a stop (state.ahead), the one prepared ahead, one a
    killed run had prepared, or else one asked now, in this thread. Its cost is counted once, here.

    Raises:
        ModelUnavailable: the model API failed (what was spent is counted and saved first).
    """
    if state.ahead is not None:
        return Prepared.of_event(ctx, state.ahead)
    try:
        prepared = ahead.take(ctx) if ahead is not None else find(ctx, state, state.prepared + 1)
        if prepared is None:
            prepared = Prepared.of_event(ctx, prepare(ctx, state, spec, [], state.prepared + 1))
    except ModelUnavailable as exc:
        proposing.unavailable(ctx, state, exc)
    if prepared is not None:
        state.prepared = prepared.n
        state.cost_usd += prepared.usage.cost_usd
        ctx.save(state)
    return prepared


def park(ctx: Context, state: RunState, ahead: Ahead) -> None:
    """The run stops with a proposal being prepared: wait for it, count its cost and keep it in the
    run's state, so that a --resume runs it (a failed model call is only counted)."""
    try:
        prepared = take(ctx, state, committed.spec(ctx.repo, state.best_commit), ahead)
    except ModelUnavailable:
        return
    if prepared is not None:
        state.ahead = prepared.event
        ctx.save(state)


def settle(ctx: Context, state: RunState, spec: RunSpec,
           prepared: Prepared) -> tuple[Proposal, str, str | None] | None:
    """What a prepared proposal runs as: (proposal, commit, the commit it was rebased from), or None when
    it is not run (failed, rejected, parked, or conflicting with a change kept meanwhile; all recorded)."""
    if prepared.proposal is None or prepared.commit is None:
        proposing.failed(ctx, state, prepared.failed or "the proposer gave nothing", Usage())  # cost counted in take
        return None
    proposal, commit, rebased_from = prepared.proposal, prepared.commit, None
    if prepared.parent != state.best_commit:  # a change was kept since it was asked: carry it onto that
        merged = gitops.rebase(ctx.repo, commit, state.best_commit)
        if merged is None:
            patch = committed.patch(committed.changes(ctx.repo, prepared.parent, proposal.files))
            proposing.refuse(ctx, state, proposal, "rejected", "pipeline.conflict",
                             f"it was proposed on {prepared.parent[:12]} and conflicts with the change kept since "
                             f"({state.best_commit[:12]})", patch, commit=commit, proposed_on=prepared.parent)
            return None
        ctx.ledger.add_event(state.tag, "rebased", {"description": proposal.description, "proposed": commit,
                                                    "proposed_on": prepared.parent, "commit": merged,
                                                    "onto": state.best_commit})
        ctx.on_event(f"rebased: {proposal.description} onto the kept {state.best_commit[:12]}", state)
        rebased_from, commit = commit, merged
        proposal = replace(proposal, files={p: committed.read(ctx.repo, merged, p) or "" for p in proposal.files})
    if not proposing.allowed(ctx, state, proposal, spec):
        return None
    return proposal, commit, rebased_from
