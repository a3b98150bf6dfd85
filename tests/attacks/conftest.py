"""Helpers of the attack suite: a tiny deterministic train.py, workspaces that run it in ~3 s, and
probes of the engine (containers by label) and of git (constants of a commit's train.py)."""

from __future__ import annotations

import ast
import re
import time
from pathlib import Path

import git
import pytest

from tests.conftest import TINY_TRAIN

# Put before TINY_TRAIN's imports: the run signals /out/started and waits (at most 60 s) for the host
# to create /out/go (in the training phase), so a test can change things at a known point in the middle of a run.
GATE = '''import os as _os, time as _time
if not _os.path.isdir("/in"):  # the training phase only (an eval phase, with /in, imports train.py again)
    open("/out/started", "w").close()
    _t0 = _time.monotonic()
    while not _os.path.exists("/out/go") and _time.monotonic() - _t0 < 60:
        _time.sleep(0.05)
'''

FAST_POLICY = """
[acceptance]
min_delta = 0.0001
noise_runs = 1
z = 1.0
reason = "attacks: one baseline run"
"""


def set_steps(toml: str, steps: int) -> str:
    """sealab.toml with a fixed `[budget] steps` (the scaffold has it commented out)."""
    return re.sub(r"^#?\s*steps = \d+", f"steps = {steps}", toml, count=1, flags=re.M)


@pytest.fixture
def tiny_workspace(make_workspace):
    """A factory: a workspace whose HEAD runs TINY_TRAIN (optionally gated) for a few steps."""
    from agent.gitops import commit_file
    from executor.git_source import open_repo

    def make(name: str = "ws", *, gate: bool = False, steps: int = 5, policy: bool = False, **resources) -> Path:
        root = make_workspace(name, budget=2, grace=40, **resources)
        repo = open_repo(root)
        toml = set_steps((root / "sealab.toml").read_text(), steps)
        if policy:
            path = root.parent / f"{name}-policy.toml"
            shipped = Path(__import__("policies").policy_path("default")).read_text()
            path.write_text(re.sub(r"\[acceptance\][^\[]*", FAST_POLICY.strip() + "\n\n", shipped, count=1))
            toml = toml.replace('name = "default"', f'name = "{path}"')
        commit_file(repo, "sealab.toml", toml, "attacks: step budget")
        commit_file(repo, "train.py", (GATE if gate else "") + TINY_TRAIN, "attacks: tiny train.py")
        return root

    return make


def constants(source: str) -> dict:
    """The UPPER_CASE constants of a train.py source (what the harness reports as hyperparameters)."""
    tree = ast.parse(source)
    return {t.id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name) and t.id.isupper()}


def committed_train(root: Path, commit: str) -> str:
    with git.Repo(root) as repo:  # held until read: a collected Repo kills the cat-file process mid-stream
        return (repo.commit(commit).tree / "train.py").data_stream.read().decode()


def containers_of(engine, experiment_id: str) -> list:
    """`docker ps -a --filter label=sealab.experiment=<id>`."""
    return engine.api.containers(all=True, filters={"label": f"sealab.experiment={experiment_id}"})


def wait_for(predicate, timeout: float = 60, every: float = 0.05, what: str = "condition"):
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def started_output(root: Path, known: set[str] | None = None) -> Path | None:
    """The outputs directory of a gated run that has signalled /out/started (not one in `known`)."""
    outputs = root / ".sealab" / "outputs"
    if not outputs.is_dir():
        return None
    for path in outputs.iterdir():
        if (known is None or path.name not in known) and (path / "started").exists():
            return path
    return None
