"""Declarative policies (TOML files beside this module) that gate what the research loop may run."""

from __future__ import annotations

from pathlib import Path

POLICY_DIR = Path(__file__).parent


def policy_path(name: str) -> Path:
    """The file of policy `name`; raises FileNotFoundError naming the known policies."""
    path = POLICY_DIR / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in POLICY_DIR.glob("*.toml")))
        raise FileNotFoundError(f"no policy {name!r} (known: {known})")
    return path
