"""The dashboard's hash-chain check, in the background (`ChainWatch`): a walk of the whole chain takes
seconds at 100,000 records, so no poll waits for one. It runs in a child process (in a thread it would hold
the interpreter's lock against the polls), when the ledger changed and not more often than it can afford;
polls report its latest result (`ChainResult`) and when it was made.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from executor.errors import SealabError
from executor.ledger import Ledger, now, reading

CHAIN_INTERVAL_S = 5.0  # at least this long between two chain checks
CHAIN_IDLE_FACTOR = 4  # and at least this many times the last check's duration (a slow walk: a fifth of a core)
CHAIN_REFRESH_S = 600.0  # a check this long after the last one even when nothing seems to have changed
IN_THREAD_BYTES = 8 << 20  # a ledger this small (about 1,400 records) is checked in the thread: a walk of well
# under 0.1 s holds the polls back less than starting a child Python every few seconds costs a busy machine


def chain_problems(ledger: Ledger) -> list[dict[str, Any]]:
    """Every way the ledger's records disagree with their hash chain (`Ledger.chain_problems`: `{"id",
    "row", "field", "expected", "actual"}`). The one place the dashboard checks the chain."""
    return ledger.chain_problems()


def _files_of(path: Path) -> tuple[Any, ...]:
    """What changes on disk with any write to the ledger, through sealab or not (the main file, its WAL)."""
    stamps: list[Any] = []
    for name in (str(path), f"{path}-wal"):
        try:
            st = os.stat(name)
            stamps.append((st.st_mtime_ns, st.st_size))
        except OSError:
            stamps.append(None)
    return tuple(stamps)


# -- the hash chain, in the background ---------------------------------------------------------------------
@dataclass(frozen=True)
class ChainResult:
    """The latest chain check: its problems (None: none made yet), the ledger cursor it covered, when it
    ended and how long it took; `version` changes whenever the problems found change."""

    problems: tuple[dict[str, Any], ...] | None = None
    cursor: int | None = None
    checked_at: str | None = None
    took_s: float | None = None
    error: str | None = None
    version: int = 0
    ledger: tuple[Any, ...] | None = None  # (file identity, cursor, file stamps) it covered
    by_id: Mapping[Any, list[str]] = field(default_factory=dict)

    def payload(self, checking: bool) -> dict[str, Any]:
        return {"problems": None if self.problems is None else len(self.problems), "checked_at": self.checked_at,
                "cursor": self.cursor, "took_s": self.took_s, "checking": checking, "error": self.error,
                "version": self.version}


class ChainWatch:
    """Checks the ledger's hash chain in the background, one check at a time: when the ledger changed (its
    cursor, or its files: an edit outside sealab moves no cursor) since the last check, or CHAIN_REFRESH_S
    after it, and never sooner than `interval_s` nor `idle_factor` times the last check's duration after
    the last one ended.

    A daemon thread waits for each check. `check` None: `chain_problems` runs in a child process (a long
    walk there never holds this process's interpreter lock, which the requests' threads need), killed
    with this process, or in the thread for a ledger under IN_THREAD_BYTES; else `check(ledger)` runs in
    the thread (tests)."""

    def __init__(self, check: Callable[[Ledger], list[dict[str, Any]]] | None = None,
                 interval_s: float = CHAIN_INTERVAL_S, idle_factor: float = CHAIN_IDLE_FACTOR) -> None:
        self.check = check
        self.interval_s, self.idle_factor = interval_s, idle_factor
        self.result = ChainResult()
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._child: Any = None  # the child process of the check under way
        self._next = 0.0  # monotonic: no check starts before
        self._ended = 0.0

    @property
    def checking(self) -> bool:
        return self._thread is not None

    def poke(self, path: Path, identity: Any, cursor: int, *, force: bool = False) -> ChainResult:
        """Start a check of the ledger at `path` if one is due; the latest result."""
        with self._lock:
            state = (identity, cursor, _files_of(path))
            now = time.monotonic()
            due = (self.result.ledger != state or now - self._ended >= CHAIN_REFRESH_S) and now >= self._next
            if self._thread is None and (due or force):
                self._thread = threading.Thread(target=self._run, args=(path, state), name="sealab-serve-chain",
                                                daemon=True)
                self._thread.start()
            return self.result

    def wait(self, timeout: float = 60.0) -> ChainResult:
        """The result once no check runs (tests)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._thread is not None and time.monotonic() < deadline:
                self._lock.wait(0.05)
            return self.result

    def stop(self) -> None:
        """End a check under way in a child process (multiprocessing ends it anyway at this process's exit)."""
        child = self._child
        if child is not None and child.is_alive():
            child.kill()

    def _run(self, path: Path, state: tuple[Any, ...]) -> None:
        started = time.monotonic()
        problems: list[dict[str, Any]] | None = None
        cursor, error = None, None
        try:
            if self.check is None and _size(path) > IN_THREAD_BYTES:
                cursor, problems = self._in_child(path)
            elif self.check is None:
                cursor, problems = _check_chain(path, chain_problems)
            else:
                cursor, problems = _check_chain(path, self.check)
        except Exception as exc:  # noqa: BLE001 (said on the page; the thread must end in any case)
            error = str(exc) if isinstance(exc, SealabError) else f"{type(exc).__name__}: {exc}"
        took = time.monotonic() - started
        with self._lock:
            old = self.result
            if problems is None:
                self.result = ChainResult(old.problems, old.cursor, old.checked_at, round(took, 3), error,
                                          old.version, old.ledger, old.by_id)
            else:
                found = tuple(problems)
                by_id: dict[Any, list[str]] = {}
                for problem in found:
                    by_id.setdefault(problem.get("id"), []).append(say(problem))
                self.result = ChainResult(found, cursor, now(), round(took, 3), None,
                                          old.version + (found != old.problems), (state[0], cursor, state[2]), by_id)
            self._ended = time.monotonic()
            self._next = self._ended + max(self.interval_s, self.idle_factor * took)
            self._thread = None
            self._lock.notify_all()

    def _in_child(self, path: Path) -> tuple[int, list[dict[str, Any]]]:
        """`_check_chain(path)` in a child Python (multiprocessing's spawn: a fresh interpreter; daemonic,
        so that this process's exit ends it)."""
        context = multiprocessing.get_context("spawn")
        receive, send = context.Pipe(duplex=False)
        child = context.Process(target=chain_child, args=(str(path), os.getpid(), send), name="sealab-serve-chain",
                                daemon=True)
        child.start()
        send.close()
        self._child = child
        try:
            answer = receive.recv()
        except EOFError:  # it ended without an answer (killed)
            answer = None
        finally:
            receive.close()
            self._child = None
        child.join(5)
        if answer is None:
            raise SealabError(f"the chain check's process ended with exit code {child.exitcode}")
        if answer[0] != "ok":
            raise SealabError(answer[1])
        return answer[1], answer[2]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _check_chain(path: Path, check: Callable[[Ledger], list[dict[str, Any]]]) -> tuple[int, list[dict[str, Any]]]:
    """The ledger's cursor and `check(ledger)`, both of one read snapshot (a write meanwhile is no edit)."""
    with reading(path) as ledger:
        ledger.db.execute("BEGIN")
        try:
            return ledger.cursor(), check(ledger)
        finally:
            if ledger.db.in_transaction:
                ledger.db.execute("ROLLBACK")


def chain_child(path: str, parent: int, send: Any) -> None:
    """ChainWatch's child process: sends `("ok", cursor, problems)` of the ledger at `path` (or `("error",
    why)`), or ends as soon as its parent has gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # (Ctrl-C at a terminal reaches it too: its parent ends it)

    def orphaned() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(3)

    threading.Thread(target=orphaned, daemon=True).start()
    try:
        cursor, problems = _check_chain(Path(path), lambda ledger: chain_problems(ledger))
    except Exception as exc:  # noqa: BLE001 (said on the page)
        send.send(("error", str(exc) if isinstance(exc, SealabError) else f"{type(exc).__name__}: {exc}"))
    else:
        send.send(("ok", cursor, problems))
    send.close()


def say(problem: dict[str, Any]) -> str:
    row = f" (row {problem['row']})" if problem.get("row") is not None else ""
    return f"{problem['field']}{row}: expected {problem['expected']}, found {problem['actual']}"
