"""Pure drift summaries: what differs between a working tree and the commit that runs.

`train.py: SCALAR_LR = 0.5 -> 0.3` is what a user needs to see at a glance; the full patch is kept too.
"""

from __future__ import annotations

import re
from typing import Any

_TOKEN = re.compile(r"\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|\w+|\s+|\S")


def change_line(old: str, new: str) -> str:
    """`SCALAR_LR = 0.5  # x` vs `SCALAR_LR = 0.3  # x` → `SCALAR_LR = 0.5 -> 0.3`."""
    a, b = _TOKEN.findall(old), _TOKEN.findall(new)
    head = 0
    while head < min(len(a), len(b)) and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < min(len(a), len(b)) - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    prefix = "".join(a[:head])
    old_mid, new_mid = "".join(a[head:len(a) - tail]), "".join(b[head:len(b) - tail])
    return f"{prefix}{old_mid.strip()} -> {new_mid.strip()}".strip()


def summarize(diff: str, untracked: list[str]) -> list[dict[str, Any]]:
    """Drift entries `{"path", "changes", "patch"}` from a `--unified=0` git diff and untracked paths."""
    files: list[dict[str, Any]] = []
    removed: list[str] = []
    added: list[str] = []

    def flush() -> None:
        if files:
            changes = files[-1]["changes"]
            changes += [change_line(o, n) for o, n in zip(removed, added)]
            changes += [f"- {o.strip()}" for o in removed[len(added):]]
            changes += [f"+ {n.strip()}" for n in added[len(removed):]]
        removed.clear()
        added.clear()

    for line in diff.splitlines():
        if line.startswith("diff --git "):
            flush()
            path = line.split(" b/", 1)[-1]
            files.append({"path": path, "changes": [], "patch": line + "\n"})
            continue
        if not files:
            continue
        files[-1]["patch"] += line + "\n"
        if line.startswith("@@"):
            flush()
        elif line.startswith("-") and not line.startswith("--- "):
            removed.append(line[1:])
        elif line.startswith("+") and not line.startswith("+++ "):
            added.append(line[1:])
    flush()
    files += [{"path": p, "changes": ["untracked file"], "patch": ""} for p in untracked]
    return files


def describe(entries: list[dict[str, Any]]) -> list[str]:
    """One line per change, `path: change`, for warnings and reports."""
    return [f"{e['path']}: {c}" for e in entries for c in e["changes"]]
