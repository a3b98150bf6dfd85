"""Which process owns a running record, and whether that process is still alive (survives pid reuse)."""

from __future__ import annotations

import os
import socket


def _start_time(pid: int) -> str | None:
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: start time in clock ticks since boot


def token(pid: int | None = None) -> str:
    """`host:pid:start-time` of this process (or `pid`)."""
    pid = pid or os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}"


def alive(owner: str | None) -> bool:
    """Whether the process named by `token()` still runs; owners on other hosts count as alive."""
    if not owner:
        return False
    host, pid, start = owner.rsplit(":", 2)
    if host != socket.gethostname():
        return True
    return _start_time(int(pid)) == start
