"""Why a run stops: the loop's stop error (exit 4; a run refused at its start as asked: exit 2), the policy's check of the committed run spec, and
the stop conditions (limits of experiments, hours, cost, crashes in a row, plateau)."""

from __future__ import annotations

from typing import Any

from agent.run_state import RunState
from executor.errors import SealabError
from executor.types import RunSpec
from policies import check_run_spec, should_stop


class LoopStopped(SealabError):
    exit_code = 4


class RunRefused(LoopStopped):
    """A run that cannot begin as asked (a tag that exists or does not, a dirty tree, no commit): bad
    input, exit 2, and nothing was changed."""

    exit_code = 2


def check_spec(policy: Any, spec: RunSpec) -> None:
    """Raises LoopStopped: the committed sealab.toml breaks the policy."""
    allowed = check_run_spec(policy, spec)
    if allowed.action != "allow":
        raise LoopStopped(f"the committed sealab.toml breaks the policy ({allowed.rule}: {allowed.reason})")


def reason(policy: Any, state: RunState, *, experiments: int | None, hours: float | None) -> str | None:
    """Why the run must stop before its next experiment, or None (the command line's limits with the policy's)."""
    return should_stop(policy, experiments=state.experiments, hours=state.elapsed_s / 3600,
                       cost_usd=state.cost_usd, consecutive_crashes=state.consecutive_crashes,
                       since_improvement=state.since_improvement, max_experiments=experiments, max_hours=hours)
