"""Throughput of `sealab run --workers 2` against one worker, for CPU-light experiments.

A GPU-bound experiment leaves the host's CPUs idle while it waits on the device; here that is a
train.py that waits out its budget (`time.sleep`) and then fits a tiny bigram model in a few steps.
The same number of experiments runs with `--workers 1` and `--workers 2` in two workspaces on the same
base, with the offline proposer, in this one process run. Throughput = experiments / seconds from the
first proposal's start to the last one's end (the baseline runs are left out). Prints both and the ratio.

Usage: .venv/bin/python bench/workers.py [--experiments 6] [--budget 6] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.create import init  # noqa: E402
from agent.gitops import commit_file, set_constant  # noqa: E402
from executor.image.base import build_base  # noqa: E402
from executor.docker_engine import Engine  # noqa: E402
from executor.ledger import Ledger  # noqa: E402

SEALAB = str(Path(sys.executable).with_name("sealab"))

LIGHT = '''"""A CPU-light experiment: waits out its budget as a GPU-bound run would, then fits a bigram model."""
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

LEARNING_RATE = 0.01
EMBED_DIM = 32
BATCH_SIZE = 16
STEPS = 10


def train(h):
    time.sleep(h.budget_s * 0.9)  # the device is busy; the host waits
    torch.manual_seed(h.seed)
    model = nn.Sequential(nn.Embedding(256, EMBED_DIM), nn.Linear(EMBED_DIM, 256)).to(h.device)
    opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    for _ in range(STEPS):
        x, y = h.get_batch(BATCH_SIZE, 64)
        loss = F.cross_entropy(model(x).view(-1, 256), y.view(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        h.step(x.numel(), loss.item())
    return model


if __name__ == "__main__":
    import prepare

    prepare.main()
'''

POLICY = """
[acceptance]
min_delta = 0.0001
noise_runs = 1
z = 1.0
reason = "benchmark: one baseline run"
"""


def workspace(parent: Path, name: str, base, budget: float) -> Path:
    ws = init(parent / name)
    Ledger(ws.ledger_path).set_base(base)
    shipped = (ROOT / "policies" / "default.toml").read_text()
    policy = parent / f"{name}-policy.toml"
    policy.write_text(re.sub(r"\[acceptance\][^\[]*", POLICY.strip() + "\n\n", shipped, count=1))
    toml = (ws.root / "sealab.toml").read_text().replace('name = "default"', f'name = "{policy}"')
    toml = set_constant(set_constant(toml, "train_seconds", f"{budget:g}"), "grace_seconds", "120")
    toml = set_constant(toml, "cpus", "1")
    repo = ws.git
    commit_file(repo, "sealab.toml", toml, "benchmark settings")
    commit_file(repo, "train.py", LIGHT, "CPU-light train.py")
    return ws.root


def stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def measure(root: Path, workers: int, experiments: int) -> dict:
    proc = subprocess.run([SEALAB, "run", "--workers", str(workers), "--experiments", str(experiments),
                           "--proposer", "offline", "--tag", "bench"], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"sealab run --workers {workers} failed: {proc.stderr[-2000:]}")
    records = json.loads(subprocess.run([SEALAB, "status", "--json"], cwd=root, capture_output=True, text=True,
                                        check=True).stdout)
    runs = [r for r in records if r.get("proposal") and r.get("finished_at")]
    start = min(stamp(r["created_at"]) for r in runs)
    end = max(stamp(r["finished_at"]) for r in runs)
    return {"workers": workers, "experiments": len(runs), "seconds": end - start,
            "per_hour": len(runs) / (end - start) * 3600, "ok": sum(r["status"] == "ok" for r in runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=6)
    parser.add_argument("--budget", type=float, default=6.0)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    engine = Engine.connect()
    base = build_base(source=None, wheels_dir=Path(os.environ.get("SEALAB_WHEELS", "/opt/wheels")), engine_client=engine)
    with tempfile.TemporaryDirectory(prefix="sealab-bench-workers-") as tmp:
        one = measure(workspace(Path(tmp), "one", base, args.budget), 1, args.experiments)
        two = measure(workspace(Path(tmp), "two", base, args.budget), 2, args.experiments)
    ratio = two["per_hour"] / one["per_hour"]
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    if args.markdown:
        print("| workers | experiments | seconds | experiments/hour |\n|---|---|---|---|")
        for row in (one, two):
            print(f"| {row['workers']} | {row['experiments']} | {row['seconds']:.1f} | {row['per_hour']:.0f} |")
        print(f"\nthroughput ratio (2 workers / 1): **{ratio:.2f}×** ({machine}; budget {args.budget:g} s)")
    else:
        for row in (one, two):
            print(f"workers={row['workers']}: {row['experiments']} experiments ({row['ok']} ok) in "
                  f"{row['seconds']:.1f} s = {row['per_hour']:.0f}/hour")
        print(f"ratio {ratio:.2f}x  ({machine})")


if __name__ == "__main__":
    main()
