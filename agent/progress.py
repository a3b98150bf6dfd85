"""Progress rendering for long steps (the base build) on the user's terminal."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from executor.base import RichProgress, build_base
from executor.docker_engine import Engine
from executor.types import BaseImage


def build_base_with_progress(engine: Engine, *, source: str | None, wheels: Path, console: Console) -> BaseImage:
    """Build or reuse the base image, showing each step and the builder's output as it goes."""
    with RichProgress(console) as progress:
        return build_base(source=source, wheels_dir=wheels, engine_client=engine, progress=progress)
