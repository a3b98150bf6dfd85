"""Run `sealab ARGS` with one pause injected, so that a test can kill -9 the process at an exact point.

`SEALAB_FAULT_PAUSE=point[:n]` pauses on the n-th time (default 1) the point is reached; the process
writes `SEALAB_FAULT_MARK` (a path) and sleeps until it is killed, or until the file
`SEALAB_FAULT_CONTINUE` exists (then it goes on: a test can break something at that point first).
The points wrap real functions and change nothing else:

| point       | where the process stops                                                              |
|-------------|--------------------------------------------------------------------------------------|
| `begun`     | the record was just inserted as `running` (`Ledger.begin`), nothing sealed or loaded  |
| `seal`      | the image is sealed, about to be loaded into the engine (`Engine.load_written`)       |
| `container` | the training container was just started and runs (`Engine.start`; the eval and held-out test phases skipped) |
| `finished`  | the executor finished the record (`Ledger.finish`, with durations), nothing labelled yet |
| `annotated` | the record carries the run's tag, no decision yet (`Ledger.label`)                    |
| `cas`       | a ref has just moved by compare-and-swap, the run state not yet saved (`gitops.cas`)   |

The hooks sit on the adapters (ledger, engine, git), not on executor/run.py or agent/loop.py, so they
survive refactors of those two.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def _pause_hook():
    point, _, nth = os.environ["SEALAB_FAULT_PAUSE"].partition(":")
    wanted = int(nth or 1)
    hits = {"n": 0}

    def hit(name: str) -> None:
        if name != point:
            return
        hits["n"] += 1
        if hits["n"] == wanted:
            Path(os.environ["SEALAB_FAULT_MARK"]).write_text(f"{name}:{wanted} pid {os.getpid()}\n")
            go_on = os.environ.get("SEALAB_FAULT_CONTINUE")
            while not (go_on and os.path.exists(go_on)):
                time.sleep(0.05)

    return point, hit


def _phase(engine, container: str) -> str | None:
    """The `sealab.phase` label of a container (`train`, `eval`, `test`; None before phases existed)."""
    return (engine.api.inspect_container(container)["Config"].get("Labels") or {}).get("sealab.phase")


def install() -> None:
    import agent.gitops
    from executor.docker_engine import Engine
    from executor.ledger import Ledger

    point, hit = _pause_hook()

    def before(fn, name):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            hit(name)
            return fn(*args, **kwargs)
        return wrapper

    def after(fn, name, when=lambda args, kwargs: True):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            value = fn(*args, **kwargs)
            if when(args, kwargs):
                hit(name)
            return value
        return wrapper

    Ledger.begin = after(Ledger.begin, "begun")
    Engine.load_written = before(Engine.load_written, "seal")
    Engine.start = after(Engine.start, "container", lambda a, kw: _phase(*a[:2]) in ("train", None))
    Ledger.finish = after(Ledger.finish, "finished", lambda a, kw: (a[2] if len(a) > 2 else kw["outcome"]).durations
                          is not None)  # a run's end (not a recovery's)
    Ledger.label = after(Ledger.label, "annotated")
    agent.gitops.cas = after(agent.gitops.cas, "cas")
    assert point in ("begun", "seal", "container", "finished", "annotated", "cas"), point


if __name__ == "__main__":
    if os.environ.get("SEALAB_FAULT_PAUSE"):
        install()
    from agent.cli import main

    sys.argv[0] = "sealab"
    sys.exit(main())
