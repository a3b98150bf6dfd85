"""Which proposer drives `sealab run`: `select_proposer`. Kept apart from the proposer interface
(agent/proposal.py), which the proposers build on, so that nothing imports in a circle.
"""

from __future__ import annotations

import os

from agent.proposal import Proposer


def select_proposer(name: str | None = None, *, model: str | None = None, seed: int = 0, environ=None) -> Proposer:
    """The proposer called `name` ("claude" or "offline"); with None, Claude when `ANTHROPIC_API_KEY`
    is set, else the offline search (the default)."""
    env = os.environ if environ is None else environ
    if name is None:
        name = "claude" if (env.get("ANTHROPIC_API_KEY") or "").strip() else "offline"
    if name == "claude":
        from agent.claude import DEFAULT_MODEL, ClaudeProposer

        return ClaudeProposer(model or DEFAULT_MODEL)
    from agent.offline import OfflineProposer

    return OfflineProposer(seed)