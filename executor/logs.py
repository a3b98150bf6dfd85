"""structlog set-up: JSON lines into the workspace's log file; on stderr one renderer for every line
(the experiments' events and the loop's progress alike): console lines on a terminal, logfmt otherwise.

Configured once, at the edge (the CLI). Nothing here binds context at module scope.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


class JsonLinesFile:
    """A processor that appends each event as one JSON line to a file, then passes it on."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def __call__(self, logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as fh:
                fh.write(json.dumps(event, default=str, sort_keys=True) + "\n")
        return event


def _quiet_unless_tty(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Off a terminal, stderr only gets warnings, errors and progress events; the file gets everything."""
    if not sys.stderr.isatty() and method not in ("warning", "error", "critical") and not event.get("progress"):
        import structlog

        raise structlog.DropEvent
    event.pop("progress", None)
    return event


class _Stderr:
    """Whatever sys.stderr is at the time of each write: under a live progress line (rich replaces
    sys.stderr while it shows one) log lines print above it instead of through it."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def renderer() -> Any:
    """The one renderer of every line on stderr: structlog's console lines on a terminal, logfmt
    (`timestamp=… level=… event=…`, one line per event) for pipes and log collectors."""
    import structlog

    if sys.stderr.isatty():
        return structlog.dev.ConsoleRenderer(colors=True)
    return structlog.processors.LogfmtRenderer(key_order=["timestamp", "level", "event"], drop_missing=True)


def configure(log_file: Path | None) -> None:
    import structlog  # (here, not at the top: a command that logs nothing does not pay for it)

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            JsonLinesFile(log_file),
            _quiet_unless_tty,
            renderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=_Stderr()),
        cache_logger_on_first_use=False,
    )
