"""The drift guard: any difference between the work tree/index and the commit the run stands on is
drift; it is recorded (an event and a patch file) and the tree restored, or the run halted per policy.
The agent never sees or builds on drifted content."""

from __future__ import annotations

from typing import Any

from agent import gitops
from agent.context import Context
from agent.run_state import RunState
from agent.stopped import LoopStopped
from executor import git_source
from executor.drift import describe, summarize


def on_branch(ctx: Context, state: RunState) -> bool:
    return git_source.current_branch(ctx.repo) == state.branch  # None (detached HEAD) is no branch


def guard(ctx: Context, state: RunState, where: str, tip: str | None = None, restore_to: str | None = None) -> bool:
    """Record any drift against `tip` (default: the pending commit, else the best), then restore the
    tree (default) or halt.

    The tree is diffed again just before the (forced) restore, and anything new is reported too,
    so a change made while the first report was written is not erased unseen. Returns whether
    there was drift (and so whether the tree was restored, to `restore_to` or `tip`). A detached run
    (`ctx.detached`) has no work tree of its own: nothing to guard, False."""
    if ctx.detached:
        return False
    tip = tip or (state.pending["commit"] if state.pending else state.best_commit)
    reported: set[tuple[str, tuple[str, ...]]] = set()
    for _ in range(3):
        entries = [e for e in _differences(ctx, state, tip) if (e["path"], tuple(e["changes"])) not in reported]
        if not entries:
            break
        reported |= {(e["path"], tuple(e["changes"])) for e in entries}
        _report(ctx, state, where, tip, entries)
    if not reported:
        return False
    gitops.restore(ctx.repo, state.branch, restore_to or tip)
    return True


def _differences(ctx: Context, state: RunState, tip: str) -> list[dict[str, Any]]:
    moved = [] if on_branch(ctx, state) else [{"path": "HEAD", "changes": [f"HEAD is not {state.branch}"], "patch": ""}]
    diff, _untracked = git_source.working_diff(ctx.repo, tip)
    return moved + summarize(diff, [])


def _report(ctx: Context, state: RunState, where: str, tip: str, entries: list[dict[str, Any]]) -> None:
    state.drift_events += 1
    patch_dir = ctx.ws.state / "drift"
    patch_dir.mkdir(parents=True, exist_ok=True)
    patch = patch_dir / f"{state.tag}-{state.drift_events:04d}.patch"
    patch.write_text("".join(e["patch"] for e in entries))
    ctx.ledger.add_event(state.tag, "drift", {
        "where": where, "commit": tip, "changes": describe(entries), "patch_path": str(patch.relative_to(ctx.ws.root)),
        "action": ctx.drift_action})
    ctx.save(state)
    ctx.on_event(f"drift {where}: {'; '.join(describe(entries))}", state)
    if ctx.drift_action == "halt":
        raise LoopStopped(f"drift {where} ({'; '.join(describe(entries))}); halted per policy, patch in {patch}")
