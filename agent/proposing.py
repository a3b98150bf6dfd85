"""Asking the proposer: what it is shown (the best commit's files from git objects, the run's history,
the last log's tail), and the policy's gate on what it proposes; a failed, rejected, parked or empty
proposal is recorded and counts as an experiment."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, NoReturn

from agent import committed
from agent.context import Context
from agent.proposal import ModelUnavailable, Proposal, ProposalContext, ProposalFailed, Usage
from agent.run_state import RunState
from executor.types import RunSpec
from policies import check_proposal


def context(ctx: Context, state: RunState, spec: RunSpec) -> ProposalContext:
    """What the proposer sees: the best commit's program.md and train.py, the run's records, the last log's tail."""
    records = ctx.ledger.experiments(state.tag)
    history = [{"commit": r.commit, "description": r.description, "status": r.status.value,
                "decision": r.decision.value if r.decision else None, "metric": r.value}
               for r in records]
    ended = [r for r in records if r.status.value != "running"]  # (pipelined: the one running has no tail yet)
    last = ended[-1] if ended else None
    tail = ""
    if last and last.log_path and (ctx.ws.root / last.log_path).exists():
        tail = "\n".join((ctx.ws.root / last.log_path).read_text(errors="replace").splitlines()[-50:])
    repo, best = ctx.repo, state.best_commit
    return ProposalContext(
        program=committed.read(repo, best, "program.md") or "", train_source=committed.read(repo, best, "train.py") or "",
        read_file=lambda path: committed.read(repo, best, path), history=history, last_log_tail=tail,
        metric=spec.metric, direction=spec.direction, experiment_index=state.experiments)


def propose(ctx: Context, state: RunState, shown: ProposalContext, spec: RunSpec) -> Proposal | None:
    """Ask for one proposal and gate it; a failed, rejected or parked one is recorded and gives None.

    Raises:
        ModelUnavailable: the model API failed (what was spent is counted and saved first).
    """
    try:
        proposal = ctx.proposer.propose(shown)
    except ProposalFailed as exc:
        failed(ctx, state, exc.reason, exc.usage)
        return None
    except ModelUnavailable as exc:
        unavailable(ctx, state, exc)
    state.cost_usd += proposal.usage.cost_usd
    return proposal if allowed(ctx, state, proposal, spec) else None


def failed(ctx: Context, state: RunState, reason: str, usage: Usage) -> None:
    """A proposer that produced nothing usable: counted, its cost too, and recorded."""
    state.cost_usd += usage.cost_usd
    _count(state)
    ctx.ledger.add_event(state.tag, "proposal_failed", {"reason": reason, "best_commit": state.best_commit})
    ctx.on_event(f"proposal failed: {reason}", state)
    ctx.save(state)


def unavailable(ctx: Context, state: RunState, exc: ModelUnavailable) -> NoReturn:
    """The model API failed: what was spent is counted and saved, and the run stops (exit 3)."""
    state.cost_usd += exc.usage.cost_usd
    ctx.save(state)
    raise ModelUnavailable(f"the model is unavailable: {exc}", exc.usage) from None


def verdict(ctx: Context, best: str, proposal: Proposal, spec: RunSpec) -> tuple[committed.Changes, Any]:
    """What the proposal changes against `best`, and the policy's verdict on it (pure: nothing recorded)."""
    changes = committed.changes(ctx.repo, best, proposal.files)
    return changes, check_proposal(ctx.policy, changes, current_spec=spec, proposed_spec=committed.proposed_spec(changes))


def allowed(ctx: Context, state: RunState, proposal: Proposal, spec: RunSpec) -> bool:
    """The policy's gate: a proposal that changes nothing, or that the policy rejects or parks, is recorded."""
    return screen(ctx, state, proposal, spec) is None


def screen(ctx: Context, state: RunState, proposal: Proposal, spec: RunSpec) -> tuple[str, str, str] | None:
    """The policy's gate, as `allowed`; what stopped the proposal: (`rejected` or `parked`, rule, reason),
    recorded; None: it may run."""
    changes, judged = verdict(ctx, state.best_commit, proposal, spec)
    if changes and judged.action == "allow":
        return None
    kind = "rejected" if not changes or judged.action == "reject" else "parked"
    rule, why = (judged.rule, judged.reason) if changes else ("empty", "the proposal changes nothing")
    refuse(ctx, state, proposal, kind, rule, why, committed.patch(changes))
    return kind, rule, why


def refuse(ctx: Context, state: RunState, proposal: Proposal, kind: str, rule: str, why: str, patch: str,
           **extra: Any) -> None:
    """Record a proposal that is not run (`rejected` or `parked`, by `rule`); it counts as an experiment."""
    ctx.ledger.add_event(state.tag, kind, {
        "description": proposal.description, "rule": rule, "reason": why, "proposer": proposal.proposer,
        "best_commit": state.best_commit, "patch": patch, "usage": asdict(proposal.usage), **extra})
    _count(state)
    ctx.save(state)
    ctx.on_event(f"{kind}: {proposal.description} ({rule}: {why})", state)


def _count(state: RunState) -> None:
    """A proposal that is not run still counts as an experiment, and as one without an improvement."""
    state.experiments += 1
    state.since_improvement += 1
