"""The offline proposer: a seeded, reproducible one-constant search over `train.py`'s hyperparameters.

The default when no API key is set. Each proposal changes exactly ONE numeric UPPER_CASE
module-level constant of the current `train.py` (coordinate / random search):

* Candidates are module-level `NAME = <number>` (or `NAME: T = <number>`) assignments whose value
  is an int or float literal, optionally negated, written on one line. Bools, strings, tuples
  (`ADAM_BETAS`), expressions and anything not UPPER_CASE are never touched.
* The new value is the current value times one of `STEPS` (x0.5, x0.7, x1.4, x2). Floats are
  rounded to 3 significant digits and stay floats; ints are rounded, stay ints, and are kept >= 1.
  A float that is 0.0 (e.g. `WEIGHT_DECAY`) can only move to one of `ZERO_STEPS`.
* Floats named `*_RATIO` / `*_FRAC` whose current value is <= 1 (schedule fractions) stay <= 1.
* Architecture: when both `N_EMBD` and `N_HEAD` are present, a change to either must keep
  `N_EMBD % N_HEAD == 0` with an even head dim (rotary embeddings split it in halves); candidates
  that break this are skipped rather than repaired.
* Only the value text of that assignment is rewritten: the trailing comment, the alignment of
  everything else and every other byte of the file are left as they were.

The choice is a pure function of `(seed, ctx.experiment_index, sha256(ctx.train_source))`:
`random.Random(f"{seed}:{experiment_index}:{sha}")` picks a constant (uniformly among those that
have a fresh candidate), then a step. A `(constant, value)` pair already named in a history
description (`NAME old -> new`) is avoided while any fresh candidate remains.
"""

from __future__ import annotations

import ast
import hashlib
import math
import random
import re
from dataclasses import dataclass

from agent.proposal import Proposal, ProposalContext, ProposalFailed, Usage

STEPS: tuple[float, ...] = (0.5, 0.7, 1.4, 2.0)
ZERO_STEPS: tuple[float, ...] = (0.01, 0.1)
_UPPER = re.compile(r"^[A-Z][A-Z0-9_]*$")
_HISTORY_CHANGE = re.compile(r"\b([A-Z][A-Z0-9_]*)\s+(-?[0-9][0-9.eE+_-]*)\s*->\s*(-?[0-9][0-9.eE+_-]*)")


@dataclass(frozen=True)
class Constant:
    """A numeric module-level constant and where its value text lies (1-based line, byte columns)."""

    name: str
    value: int | float
    lineno: int
    col: int       # UTF-8 byte offset of the value's first character in its line
    end_col: int   # UTF-8 byte offset just past the value
    text: str      # the value's source text


def numeric_constants(source: str) -> list[Constant]:
    """The numeric UPPER_CASE module-level constants of `source`, in file order."""
    tree = ast.parse(source)
    lines = source.split("\n")
    found: list[Constant] = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value_node = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None and node.simple:
            target, value_node = node.target, node.value
        else:
            continue
        if not isinstance(target, ast.Name) or not _UPPER.match(target.id):
            continue
        value = _number(value_node)
        if value is None or value_node.lineno != value_node.end_lineno:
            continue
        line = lines[value_node.lineno - 1].encode("utf-8")
        text = line[value_node.col_offset:value_node.end_col_offset].decode("utf-8")
        found.append(Constant(target.id, value, value_node.lineno, value_node.col_offset,
                              value_node.end_col_offset, text))
    return found


def _number(node: ast.expr) -> int | float | None:
    negate = False
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        negate, node = True, node.operand
    if not isinstance(node, ast.Constant) or isinstance(node.value, bool):
        return None
    if not isinstance(node.value, (int, float)) or not math.isfinite(node.value):
        return None
    return -node.value if negate else node.value


def replace_value(source: str, const: Constant, new_text: str) -> str:
    """`source` with only `const`'s value text replaced by `new_text`."""
    lines = source.split("\n")
    line = lines[const.lineno - 1].encode("utf-8")
    lines[const.lineno - 1] = (line[:const.col] + new_text.encode("utf-8") + line[const.end_col:]).decode("utf-8")
    return "\n".join(lines)


def _format(value: int | float, as_int: bool) -> str:
    if as_int:
        return str(int(value))
    return repr(float(f"{value:.3g}"))


def candidate_values(const: Constant, others: dict[str, int | float]) -> list[str]:
    """The new value texts one step can give `const`, valid and different from the current one."""
    out: list[str] = []
    as_int = isinstance(const.value, int)
    if not as_int and const.value == 0:
        raw = list(ZERO_STEPS)
    else:
        raw = [const.value * s for s in STEPS]
    for v in raw:
        if as_int:
            v = max(1, int(round(v)))
            if not _arch_ok(const.name, v, others):
                continue
        else:
            v = float(f"{v:.3g}")
            if (const.name.endswith(("_RATIO", "_FRAC")) and 0 <= const.value <= 1) and v > 1:
                continue
        text = _format(v, as_int)
        if v == const.value or text in out:
            continue
        out.append(text)
    return out


def _arch_ok(name: str, value: int, others: dict[str, int | float]) -> bool:
    embd, head = others.get("N_EMBD"), others.get("N_HEAD")
    if name == "N_EMBD" and isinstance(head, int) and head > 0:
        embd = value
    elif name == "N_HEAD" and isinstance(embd, int):
        head = value
    else:
        return True
    return embd % head == 0 and (embd // head) % 2 == 0


def tried_pairs(history) -> set[tuple[str, float]]:
    """The `(constant, new value)` pairs named as `NAME old -> new` in history descriptions."""
    pairs: set[tuple[str, float]] = set()
    for row in history or ():
        for name, _old, new in _HISTORY_CHANGE.findall(str(row.get("description") or "")):
            try:
                pairs.add((name, float(new)))
            except ValueError:
                pass
    return pairs


class OfflineProposer:
    """Seeded one-constant search; see the module docstring for the rules."""

    name = "offline"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def propose(self, ctx: ProposalContext) -> Proposal:
        source = ctx.train_source
        try:
            constants = numeric_constants(source)
        except SyntaxError as exc:
            raise ProposalFailed(f"train.py does not parse: {exc.msg} (line {exc.lineno})") from None
        values = {c.name: c.value for c in constants}
        tried = tried_pairs(ctx.history)
        options = [(c, candidate_values(c, values)) for c in constants]
        options = [(c, vals) for c, vals in options if vals]
        if not options:
            raise ProposalFailed("train.py has no numeric UPPER_CASE constant that can be changed")
        fresh = [(c, [v for v in vals if (c.name, float(v)) not in tried]) for c, vals in options]
        fresh = [(c, vals) for c, vals in fresh if vals]
        pool = fresh or options

        sha = hashlib.sha256(source.encode("utf-8")).hexdigest()
        rng = random.Random(f"{self.seed}:{ctx.experiment_index}:{sha}")
        const, vals = rng.choice(pool)
        new_text = rng.choice(vals)
        new_source = replace_value(source, const, new_text)
        return Proposal(
            files={"train.py": new_source},
            description=f"{const.name} {const.text} -> {new_text}",
            proposer=self.name,
            usage=Usage(),
            prompt_digest=None,
        )
