"""structlog set-up: JSON lines into the workspace's log file, readable lines on a terminal.

Configured once, at the edge (the CLI). Nothing here binds context at module scope.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import structlog


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
    """Off a terminal, stderr only gets warnings and errors; the file gets everything."""
    if not sys.stderr.isatty() and method not in ("warning", "error", "critical"):
        raise structlog.DropEvent
    return event


def configure(log_file: Path | None) -> None:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            JsonLinesFile(log_file),
            _quiet_unless_tty,
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
