"""The run's branch `sealab/<tag>` and its discarded commits: every move a compare-and-swap through
agent/gitops.py, the work tree taken along without overwriting anything (unless the run is detached:
then no work tree is touched), and the checks that the branch is where this run left it."""

from __future__ import annotations

from agent import gitops
from agent.context import Context
from agent.drift_guard import guard, on_branch
from agent.run_state import RunState
from agent.stopped import LoopStopped
from executor import git_source


def ref(state: RunState) -> str:
    return f"refs/heads/{state.branch}"


def tip(ctx: Context, state: RunState) -> str | None:
    return git_source.ref_value(ctx.repo, ref(state))


def create(ctx: Context, state: RunState, commit: str) -> None:
    """Make the branch at `commit` (it must not exist) and check it out."""
    gitops.cas(ctx.repo, ref(state), commit, gitops.ZERO)
    restore(ctx, state, commit)


def resumable_tip(ctx: Context, state: RunState) -> str:
    """Where a resumed run's branch is: its best commit, or one it made but had not decided (the
    pending commit, a commit of the round in flight). A missing branch (killed between saving the
    state and creating it) is made at the best commit.

    Raises:
        LoopStopped: the branch is at a commit this run never made.
    """
    found = tip(ctx, state)
    if found is None:
        gitops.cas(ctx.repo, ref(state), state.best_commit, gitops.ZERO)
        found = state.best_commit
    if found != state.best_commit and found not in state.in_flight():
        raise LoopStopped(f"branch {state.branch} is at {str(found)[:12]}, which this run never made; "
                          "someone moved it, so sealab will not continue on it")
    return found


def check(ctx: Context, state: RunState) -> None:
    """The run's branch must be where the run left it (its best commit), or it stops: another
    process moved it, and nothing is built on a commit the run did not choose.

    Raises:
        LoopStopped: the branch is elsewhere (exit 4, like a moved ref at a compare-and-swap).
    """
    found = tip(ctx, state)
    if found != state.best_commit:
        raise LoopStopped(f"branch {state.branch} is at {str(found)[:12]}, not at the run's best commit "
                          f"{state.best_commit[:12]}: someone moved it")


def take(ctx: Context, state: RunState, commit: str) -> bool:
    """Point the branch from the best commit at `commit` (the work tree follows with `move`); False
    when it is there already (idempotent: a run resumed after a kill that came after this step)."""
    if tip(ctx, state) == commit:
        return False
    gitops.cas(ctx.repo, ref(state), commit, state.best_commit)
    return True


def move(ctx: Context, state: RunState, old: str, new: str, where: str) -> None:
    """Take the work tree from `old` to `new` without overwriting anything: if git refuses, what is
    in the way is reported as drift against `old` before the tree is forced to `new`."""
    if ctx.detached:
        return
    if not gitops.move(ctx.repo, state.branch, old, new):
        if not guard(ctx, state, where, tip=old, restore_to=new):
            gitops.restore(ctx.repo, state.branch, new)


def restore(ctx: Context, state: RunState, commit: str) -> None:
    """Check out the branch (at `commit`) with index and work tree equal to it (a detached run: nothing)."""
    if ctx.detached:
        return
    gitops.restore(ctx.repo, state.branch, commit)


def discard(ctx: Context, state: RunState, commit: str, experiment_id: str) -> None:
    """Keep the discarded commit reachable, and move the branch back to the best one (CAS)."""
    keep = f"refs/sealab/discarded/{experiment_id}"
    if git_source.ref_value(ctx.repo, keep) != commit:  # idempotent: a resumed run may redo this step
        gitops.cas(ctx.repo, keep, commit, gitops.ZERO)
    if tip(ctx, state) == commit:
        gitops.cas(ctx.repo, ref(state), state.best_commit, commit)
        move(ctx, state, commit, state.best_commit, "after run")
    elif not ctx.detached and not on_branch(ctx, state):
        restore(ctx, state, state.best_commit)
