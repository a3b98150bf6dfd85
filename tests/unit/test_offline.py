"""The offline proposer: a seeded one-constant search over train.py's numeric hyperparameters."""

from __future__ import annotations

import ast
from pathlib import Path

from agent.offline import OfflineProposer, numeric_constants
from agent.proposal import ProposalContext, Usage

SCAFFOLD = (Path(__file__).resolve().parents[2] / "executor" / "scaffold" / "train.py").read_text()

SMALL = '''"""A docstring with ünïcode."""
import torch

DEPTH = 3                   # blocks
N_EMBD = 128                # width
N_HEAD = 4                  # heads
LR = 0.01  # lr
NEG = -0.5
USE_X = True                # a bool, never touched
NAME = "gpt"                # a string
BETAS = (0.9, 0.95)         # a tuple
lower_case = 7              # not UPPER_CASE


def f():
    INNER = 3
    return INNER
'''


def ctx(source: str = SCAFFOLD, index: int = 0, history=()) -> ProposalContext:
    return ProposalContext(program="", train_source=source, read_file=lambda p: None, history=history,
                           last_log_tail="", metric="val_bpb", direction="minimize", experiment_index=index)


def changed_lines(old: str, new: str) -> list[tuple[str, str]]:
    a, b = old.split("\n"), new.split("\n")
    assert len(a) == len(b)
    return [(x, y) for x, y in zip(a, b) if x != y]


def test_same_inputs_same_proposal():
    """The same seed, index and train.py give the same proposal, byte for byte."""
    p1 = OfflineProposer(seed=3).propose(ctx(index=5))
    p2 = OfflineProposer(seed=3).propose(ctx(index=5))
    assert p1 == p2
    assert p1.proposer == "offline" and p1.usage == Usage() and p1.prompt_digest is None


def test_different_indices_give_different_proposals():
    """Different experiment indices explore different (constant, value) pairs."""
    descs = {OfflineProposer().propose(ctx(index=i)).description for i in range(12)}
    assert len(descs) >= 6
    names = {d.split()[0] for d in descs}
    assert len(names) >= 3


def test_one_value_changes_and_file_still_parses():
    """Exactly one line changes, only in its value text; the comment and the rest stay identical."""
    consts = {c.name: c for c in numeric_constants(SCAFFOLD)}
    for i in range(40):
        p = OfflineProposer(seed=1).propose(ctx(index=i))
        assert set(p.files) == {"train.py"}
        new = p.files["train.py"]
        ast.parse(new)
        [(old_line, new_line)] = changed_lines(SCAFFOLD, new)
        name, old_text, arrow, new_text = p.description.split()
        assert arrow == "->" and name in consts and old_text == consts[name].text
        assert old_line.startswith(f"{name} = ")
        c = consts[name]
        assert new_line == old_line[:c.col] + new_text + old_line[c.end_col:]
        if "#" in old_line:
            assert new_line.endswith(old_line[old_line.index("#"):])


def test_ints_stay_ints_at_least_one_and_heads_divide_width():
    """Int constants stay ints >= 1, and N_EMBD stays divisible by N_HEAD with an even head dim."""
    for i in range(60):
        p = OfflineProposer(seed=2).propose(ctx(SMALL, index=i))
        new_consts = {c.name: c.value for c in numeric_constants(p.files["train.py"])}
        for name in ("DEPTH", "N_EMBD", "N_HEAD"):
            assert isinstance(new_consts[name], int) and new_consts[name] >= 1
        assert new_consts["N_EMBD"] % new_consts["N_HEAD"] == 0
        assert (new_consts["N_EMBD"] // new_consts["N_HEAD"]) % 2 == 0
        assert isinstance(new_consts["LR"], float) and isinstance(new_consts["NEG"], float)


def test_never_touches_non_numeric_constants():
    """Bools, strings, tuples, lower-case names and function locals are never changed."""
    touched = set()
    for i in range(80):
        p = OfflineProposer(seed=4).propose(ctx(SMALL, index=i))
        for old_line, _ in changed_lines(SMALL, p.files["train.py"]):
            touched.add(old_line.split()[0])
    assert touched <= {"DEPTH", "N_EMBD", "N_HEAD", "LR", "NEG"}
    assert {"LR", "DEPTH"} <= touched
    assert {c.name for c in numeric_constants(SMALL)} == {"DEPTH", "N_EMBD", "N_HEAD", "LR", "NEG"}


def test_history_pairs_are_avoided():
    """A (constant, value) already named in the history is not proposed again while others remain."""
    source = "LR = 0.01  # only knob\n"
    first = OfflineProposer().propose(ctx(source, index=0))
    seen = [first.description]
    for i in range(1, 4):
        history = [{"commit": "c", "description": d, "status": "ok", "decision": "discard", "metric": 1.0}
                   for d in seen]
        seen.append(OfflineProposer().propose(ctx(source, index=i, history=history)).description)
    assert sorted(seen) == sorted(["LR 0.01 -> 0.005", "LR 0.01 -> 0.007", "LR 0.01 -> 0.014", "LR 0.01 -> 0.02"])


def test_zero_float_and_fraction_limits():
    """A 0.0 float can move off zero, and a *_RATIO fraction never exceeds 1."""
    source = "WEIGHT_DECAY = 0.0\nWARMDOWN_RATIO = 0.9\n"
    values = {"WEIGHT_DECAY": set(), "WARMDOWN_RATIO": set()}
    for i in range(40):
        name, _, _, new = OfflineProposer().propose(ctx(source, index=i)).description.split()
        values[name].add(float(new))
    assert values["WEIGHT_DECAY"] and all(v > 0 for v in values["WEIGHT_DECAY"])
    assert values["WARMDOWN_RATIO"] and all(v <= 1 for v in values["WARMDOWN_RATIO"])
