"""autoresearch's printed summary: the `---` line and the `key: value` lines after it (pure).

Used only for workspaces adopted with `sealab init --adopt` (`[harness] metric_source = "summary"`),
where train.py prints its own numbers: what this parses was REPORTED BY EDITABLE CODE.
"""

from __future__ import annotations

import re

_LINE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*):\s*(.*?)\s*")


def _value(text: str) -> float | int | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_summary(text: str) -> dict[str, float | int | str] | None:
    """The `key: value` lines after the last line that is exactly `---`; None if there is none.

    The block ends at the first line that is not `key: value`. Values are int, float (`nan` and
    `inf` included) or else the string as printed.
    """
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.rstrip("\r") == "---"]
    if not starts:
        return None
    block: dict[str, float | int | str] = {}
    for line in lines[starts[-1] + 1:]:
        match = _LINE.fullmatch(line)
        if match is None:
            break
        block[match[1]] = _value(match[2])
    return block


def last_values(text: str, names: tuple[str, ...]) -> dict[str, float | int]:
    """For each of `names`, the number on the last line that is `name: number` (or `name = number`),
    for a run that prints its metric without a `---` block; names never printed are left out."""
    found: dict[str, float | int] = {}
    wanted = set(names)
    for line in text.splitlines():
        match = _NAMED.fullmatch(line.strip().rstrip("\r"))
        if match is not None and match[1] in wanted:
            value = _value(match[2])
            if isinstance(value, (int, float)):
                found[match[1]] = value
    return found


_NAMED = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*[:=]\s*(\S+)")
