"""What readers get from a ledger record, whatever shape the sealab that wrote it gave it.

A record is kept exactly as it was written (its hash chain covers those bytes; the dashboard and
`verify` recompute the digest from them), so readers never rewrite one: they read its structured
fields through these accessors, which give the current shape or its empty value. An older or
hand-made record (metrics that are not a table, drift as plain strings, no durations) is then shown
for what it holds instead of failing the page or command that reads it.
"""

from __future__ import annotations

from typing import Any


def table(record: dict[str, Any], key: str) -> dict[str, Any]:
    """`record[key]` when it is a table, else an empty one."""
    value = record.get(key)
    return value if isinstance(value, dict) else {}


def metrics(record: dict[str, Any]) -> dict[str, Any]:
    return table(record, "metrics")


def run_spec(record: dict[str, Any]) -> dict[str, Any]:
    return table(record, "run_spec")


def durations(record: dict[str, Any]) -> dict[str, Any]:
    return table(record, "durations")


def number(value: Any) -> float | None:
    """A metric value as a float, or None (absent, text, a boolean)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def drift(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The record's drift as `{"path", "changes"}` entries. An older record's plain "path: change"
    strings become one entry each; anything else is left out."""
    entries = record.get("drift")
    out: list[dict[str, Any]] = []
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, str):
            path, _, change = entry.partition(": ")
            out.append({"path": path, "changes": [change] if change else []})
        elif isinstance(entry, dict) and isinstance(entry.get("path"), str):
            changes = entry.get("changes")
            out.append({**entry, "changes": [str(c) for c in changes] if isinstance(changes, list) else []})
    return out
