"""One experiment at a time per research run, across processes: an advisory lock file per run tag in
the workspace's state directory (`.sealab/runs/<tag>.lock`). Two `sealab mcp` servers (two agents, or
two linked work trees) that share a run take turns: the second waits, and says so, while the first's
experiment runs. The lock dies with its process: a killed server never leaves a run locked."""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


class Cancelled(Exception):
    """The caller stopped waiting (its request was cancelled) before the lock was taken."""


@contextmanager
def held(state_dir: Path, tag: str, *, on_wait: Callable[[], None] = lambda: None,
         cancelled: Callable[[], bool] = lambda: False, poll_s: float = 0.2) -> Iterator[None]:
    """Hold run `tag`'s lock; `on_wait()` is called once if another process holds it, and waiting ends
    with Cancelled as soon as `cancelled()` is true."""
    path = state_dir / "runs" / f"{tag}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told:
                    on_wait()
                    told = True
                if cancelled():
                    raise Cancelled(f"stopped waiting for run {tag!r}'s lock") from None
                time.sleep(poll_s)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
