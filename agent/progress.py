"""Progress rendering for long steps (the base build) on the user's terminal."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import structlog
from rich.console import Console
from rich.markup import escape

from executor.image.base import build_base
from executor.docker_engine import Engine
from executor.types import BaseImage


class RichProgress:
    """A progress callback that renders on a terminal with rich.

    Step changes and summaries print as lines; the builder's and mmdebstrap's chatter shows in a
    transient status line (all of it printed dimmed with verbose=True). Use as a context manager
    so the status line is cleared at the end.
    """

    def __init__(self, console: Any = None, *, verbose: bool = False) -> None:
        self.console = console or Console(stderr=True)
        self.verbose = verbose
        self._status: Any = None

    def __enter__(self) -> RichProgress:
        self._status = self.console.status("sealab base", spinner="dots")
        self._status.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.__exit__(*exc)
            self._status = None

    def __call__(self, step: str, detail: str) -> None:
        chatter = step in ("build", "rootfs") and not detail.startswith(("Step ", "reusing", "cached"))
        if chatter:
            if self.verbose:
                self.console.print(f"[dim]{escape(detail)}[/]", highlight=False)
            if self._status is not None:
                self._status.update(f"[bold]{step}[/] [dim]{escape(detail[:100])}[/]")
            return
        style = "green" if step == "done" else "cyan"
        self.console.print(f"[bold {style}]{step:>7}[/] {escape(detail)}", highlight=False)
        if self._status is not None:
            self._status.update(f"[bold]{step}[/] {escape(detail[:100])}")


def build_base_with_progress(engine: Engine, *, source: str | None, wheels: Path, console: Console,
                             **options: Any) -> BaseImage:
    """Build or reuse the base image, showing each step and the builder's output as it goes
    (`options`: build_base's files, data_dirs, rebuild)."""
    with RichProgress(console) as progress:
        return build_base(source=source, wheels_dir=wheels, engine_client=engine, progress=progress, **options)


class LoopDisplay:
    """The loop's progress: a live status line on a terminal (experiment n of N, elapsed, ETA, best,
    last event) above the printed events; plain lines otherwise."""

    def __init__(self, console: Console, total: int | None) -> None:
        self.console, self.total = console, total
        self.started = time.monotonic()
        self._status = None

    def __enter__(self) -> LoopDisplay:
        if self.console.is_terminal:
            self._status = self.console.status("starting")
            self._status.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.__exit__(*exc)

    def event(self, line: str, state) -> None:
        """One loop event: a log line (the same renderer as every other line on stderr) and, on a
        terminal, the live status line."""
        elapsed = time.monotonic() - self.started
        done = state.experiments
        eta_s = (elapsed / done) * max(0, self.total - done) if self.total and done else None
        fields = {"experiment": done, "of": self.total, "elapsed_s": round(elapsed),
                  "eta_s": None if eta_s is None else round(eta_s), "best": state.best_value,
                  "best_commit": state.best_commit[:12]}
        structlog.get_logger().info(line, progress=True, **{k: v for k, v in fields.items() if v is not None})
        if self._status is not None:
            eta = f" · ETA {eta_s / 60:.1f} min" if eta_s is not None else ""
            best = (f"best {state.best_value:.6f} @ {state.best_commit[:12]}" if state.best_value is not None
                    else "baseline")
            self._status.update(f"experiment {done}{f' of {self.total}' if self.total else ''} · "
                                f"{elapsed / 60:.1f} min{eta} · {best} · last: {escape(line)[:60]}")
