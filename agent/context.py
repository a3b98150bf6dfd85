"""What every step of a research run reaches: the workspace (and its git handle), the engine and the
backend, the ledger, the policy, the proposer, where progress lines go, and whether a round is being
stopped, and whether the run keeps off the work tree. The Loop façade builds one for each of its calls (start, resume, run), so a field changed on
the Loop is seen from its next call on."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from agent import run_state
from agent.run_state import RunState
from executor import git_source
from executor.backends.interface import Backend
from executor.docker_engine import Engine
from executor.ledger import Ledger
from executor.workspace import Workspace


@dataclass
class Context:
    ws: Workspace
    engine: Engine
    ledger: Ledger
    policy: Any
    proposer: Any
    drift_action: str = "restore"
    on_event: Callable[[str, RunState], None] = lambda line, state: None
    backend: Backend | None = None
    stopping: threading.Event = field(default_factory=threading.Event)
    cycle_start: float | None = None  # when the loop's current time account began (agent/cycle.py)
    detached: bool = False  # the run keeps off the work tree (sealab mcp): its branch moves by ref CAS only,
    #                         nothing is checked out, and there is no drift guard (runs read git objects)

    @property
    def repo(self) -> git_source.Repository:
        return self.ws.git

    def save(self, state: RunState) -> None:
        run_state.save(self.ledger, state)
