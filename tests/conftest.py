"""Shared fixtures: the real Docker engine, the offline base image, and scaffolded workspaces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[1]
SEALAB = str(Path(sys.executable).with_name("sealab"))
IN_CI = os.environ.get("CI", "").lower() == "true"

# A bigram table trained for `[budget] steps` SGD steps: deterministic on a CPU, a few seconds a run.
TINY_TRAIN = '''"""A tiny deterministic train.py: a bigram table, a fixed number of SGD steps."""
import torch
import torch.nn as nn
import torch.nn.functional as F

LR = 0.5            # SGD learning rate
BATCH_SIZE = 8      # sequences per step
SEQ_LEN = 64        # bytes per sequence
MARK = 0            # a constant the attacks and the soak mutate


class Bigram(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.table = nn.Embedding(vocab, vocab)

    def forward(self, idx):
        return self.table(idx)


def train(h):
    model = Bigram(h.vocab_size).to(h.device)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    while h.time_left() > 0:
        x, y = h.get_batch(BATCH_SIZE, SEQ_LEN)
        loss = F.cross_entropy(model(x).view(-1, h.vocab_size), y.view(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        h.step(x.numel(), loss.detach())
    return model
'''


def pytest_collection_modifyitems(config, items):
    """Tests marked `slow` (gigabytes of downloads, minutes of assembly: the CUDA base) run only with
    SEALAB_SLOW=1; CI's time does not hold them (their command and output are in docs/benchmarks.md)."""
    if os.environ.get("SEALAB_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with SEALAB_SLOW=1 (see the test module's docstring)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def unavailable(why: str) -> NoReturn:
    """Skip for lack of `why`, except in CI, where every integration test must run: fail there."""
    if IN_CI:
        pytest.fail(f"CI=true but {why}")
    pytest.skip(why)


def chromium() -> str:
    """The headless browser's binary (skip without one, fail under CI=true)."""
    from tests.browser import find_chromium

    return find_chromium() or unavailable("Chromium is not installed (apt-get install chromium)")


@pytest.fixture(scope="session")
def engine():
    """The real Docker engine; in CI its absence fails the run instead of skipping tests."""
    from executor.docker_engine import Engine
    from executor.errors import EngineUnavailable

    try:
        return Engine.connect()
    except EngineUnavailable as exc:
        if IN_CI:
            pytest.fail(f"CI=true but no Docker engine: {exc}")
        pytest.skip(f"no Docker engine: {exc}")


@pytest.fixture(scope="session")
def base_image(engine):
    """The offline base image (built once; reused while its recipe is unchanged)."""
    from executor.image.base import build_base

    return build_base(source=None, wheels_dir=Path(os.environ.get("SEALAB_WHEELS", "/opt/wheels")), engine_client=engine)


def sealab(*args: str, cwd: Path | None = None, env: dict | None = None, check: bool = False,
           timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the installed `sealab` console script."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([SEALAB, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"sealab {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def sealab_json(*args: str, cwd: Path, env: dict | None = None, ok_codes=(0,)):
    proc = sealab(*args, "--json", cwd=cwd, env=env)
    assert proc.returncode in ok_codes, f"exit {proc.returncode}: {proc.stderr}"
    return json.loads(proc.stdout)


@pytest.fixture
def make_workspace(tmp_path, base_image):
    """A factory for scaffolded workspaces using the session's base, with a short training budget."""
    from agent.gitops import commit_file, set_constant
    from executor.ledger import Ledger
    from agent.create import init

    def make(name: str = "ws", budget: float = 2, grace: float = 40, **resources) -> Path:
        ws = init(tmp_path / name)
        Ledger(ws.ledger_path).set_base(base_image)
        toml = (ws.root / "sealab.toml").read_text()
        toml = set_constant(toml, "train_seconds", f"{budget:g}")
        toml = set_constant(toml, "grace_seconds", f"{grace:g}")
        for key, value in resources.items():
            toml = set_constant(toml, key, str(value))
        commit_file(ws.git, "sealab.toml", toml, "test settings")
        return ws.root

    return make


def commit_train(root: Path, source: str, message: str = "change train.py") -> str:
    """Commit a new train.py in the workspace at `root`."""
    from agent.gitops import commit_file
    from executor.git_source import open_repo

    return commit_file(open_repo(root), "train.py", source, message)


def begin(ledger, owner: str = "test", **fields):
    """`ledger.begin` of a record given as its stored keys (checked by the codec on the way in)."""
    from executor.record import ExperimentRecord

    return ledger.begin(ExperimentRecord.from_dict({"status": "running", **fields}), owner)


def write_stored(ledger, record: dict, status: str | None = None) -> None:
    """Store `record` exactly as given, with its hash-chain link, as an older or another sealab may have
    written it: the typed writes (begin, finish, the annotations) cannot write an odd record any more."""
    text = json.dumps(record)
    with ledger._tx():
        ledger.db.execute(
            "INSERT INTO experiments (id, status, owner, record, created_at, updated_at) VALUES (?, ?, NULL, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET status = excluded.status, owner = NULL, record = excluded.record, "
            "updated_at = excluded.updated_at",
            (record["id"], status or str(record.get("status")), text, str(record.get("created_at")), "t"))
        ledger._link(record["id"], record)
