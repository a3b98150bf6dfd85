"""The replication gate, measured: the same research run with and without `[acceptance] confirm_runs`, and
how many of each run's keeps hold up when the kept commit and the commit it beat are run again.

For each arm (`confirm_runs` 0, and `--confirm` N), the real CLI runs `sealab run --experiments E --proposer
offline --seed S` in a fresh workspace (`sealab init`, the scaffold's train.py on a short clock budget, so
that run-to-run noise is real; the default policy's acceptance, 3 baseline runs, with
`confirm_runs` set, and `--z` 0 by default: a keep needs only to beat the best by min_delta, as plain
autoresearch keeps any improvement) on the one offline base. Both arms get the same seed, so the offline proposer starts
from the same proposals. Then every kept change is checked: its commit and the best commit it was judged
against (its parent) are each run `--checks` more times, alternately (`sealab exec COMMIT`), and the keep
*held* if the mean of the kept commit's checks beats the mean of its parent's by more than the run's
threshold. Printed: per arm, the experiments, confirmation runs, keeps, keeps that held, wall time.

Usage: .venv/bin/python bench/replication.py [--experiments 20] [--budget 5] [--confirm 2] [--checks 2]
                                             [--seed 0] [--markdown] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import policies  # noqa: E402
from agent.create import init  # noqa: E402
from agent.gitops import commit_file, set_constant  # noqa: E402
from executor.docker_engine import Engine  # noqa: E402
from executor.image.base import build_base  # noqa: E402
from executor.ledger import Ledger  # noqa: E402

SEALAB = [sys.executable, "-m", "agent.cli"]  # this tree's sealab (PYTHONPATH decides which tree)


def sealab(*args: str, cwd: Path, timeout: float = 7200) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([*SEALAB, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def workspace(parent: Path, name: str, base: Any, budget: float, confirm: int, z: float) -> Path:
    policy = parent / f"{name}-policy.toml"
    shipped = Path(policies.policy_path("default")).read_text()
    text = re.sub(r"(?m)^confirm_runs = 0 ", f"confirm_runs = {confirm} ", shipped, count=1)
    text = re.sub(r"(?m)^z = [0-9.]+ ", f"z = {z:g} ", text, count=1)
    assert f"confirm_runs = {confirm} " in text and f"z = {z:g} " in text
    policy.write_text(text)
    ws = init(parent / name)
    ledger = Ledger(ws.ledger_path)
    ledger.set_base(base)
    ledger.close()
    toml = (ws.root / "sealab.toml").read_text()
    toml = set_constant(toml, "train_seconds", f"{budget:g}")
    toml = toml.replace('name = "default"', f'name = "{policy}"')
    commit_file(ws.git, "sealab.toml", toml, f"{budget:g} s budget, confirm_runs = {confirm}")
    return ws.root


def metric(record: dict) -> float | None:
    value = (record.get("metrics") or {}).get("val_bpb")
    return float(value) if record.get("status") == "ok" and isinstance(value, (int, float)) else None


def check(root: Path, kept: dict, parent: str, threshold: float, checks: int) -> dict[str, Any]:
    """The kept commit and its parent run `checks` more times each, alternately: did the gain hold?"""
    mine, theirs = [], []
    for _ in range(checks):
        for commit, into in ((kept["commit"], mine), (parent, theirs)):
            proc = sealab("exec", commit, "--json", cwd=root)
            value = metric(json.loads(proc.stdout)) if proc.stdout.strip() else None
            if value is not None:
                into.append(value)
    gain = statistics.fmean(theirs) - statistics.fmean(mine) if mine and theirs else None
    return {"id": kept["id"], "recorded": metric(kept), "checks": mine, "parent_checks": theirs,
            "gain": gain, "held": gain is not None and gain > threshold}


def arm(parent: Path, base: Any, *, confirm: int, experiments: int, budget: float, seed: int,
        checks: int, z: float) -> dict[str, Any]:
    root = workspace(parent, f"confirm{confirm}", base, budget, confirm, z)
    started = time.monotonic()
    proc = sealab("run", "--experiments", str(experiments), "--proposer", "offline", "--seed", str(seed),
                  "--tag", "bench", cwd=root)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"sealab run (confirm_runs {confirm}) exited {proc.returncode}: {proc.stderr[-2000:]}")
    ledger = Ledger(root / ".sealab" / "ledger.db")
    state = ledger.run_state("bench") or {}
    records = [r for r in ledger.records() if r.get("run_tag") == "bench"]
    ledger.close()
    keeps = [r for r in records if r.get("decision") == "keep"]
    threshold = float(state.get("threshold") or 0.0)
    held = [check(root, k, k["parent"], threshold, checks) for k in keeps]
    return {"confirm_runs": confirm, "experiments": state.get("experiments"), "runs": len(records),
            "confirmations": state.get("confirmations", 0), "keeps": len(keeps), "held": sum(h["held"] for h in held),
            "threshold": threshold, "baseline": state.get("baseline"), "best": state.get("best_value"),
            "wall_s": round(wall, 1), "checked": held}


def machine() -> str:
    return (f"{platform.node()} · {platform.platform()} · {os.cpu_count()} CPUs · Python {platform.python_version()}"
            f"; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=20)
    parser.add_argument("--budget", type=float, default=5.0, help="training seconds per run (a clock budget)")
    parser.add_argument("--confirm", type=int, default=2, help="confirm_runs of the gated arm")
    parser.add_argument("--checks", type=int, default=2, help="reruns of each kept commit and of its parent")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--z", type=float, default=0.0,
                        help="the acceptance's z (default 0: keep what beats the best by min_delta, as plain "
                             "autoresearch keeps any improvement; the default policy's 2 makes keeps rare)")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    base = build_base(source=None, wheels_dir=Path(os.environ.get("SEALAB_WHEELS", "/opt/wheels")),
                      engine_client=Engine.connect())
    with tempfile.TemporaryDirectory(prefix="sealab-bench-replication-") as tmp:
        arms = [arm(Path(tmp), base, confirm=c, experiments=args.experiments, budget=args.budget, seed=args.seed,
                    checks=args.checks, z=args.z) for c in (0, args.confirm)]
    if args.json:
        print(json.dumps({"machine": machine(), "args": vars(args), "arms": arms}, indent=2))
        return
    print(f"Machine: {machine()}. {args.experiments} experiments per run after 3 baseline runs, the offline "
          f"proposer (seed {args.seed}), a {args.budget:g} s clock budget, acceptance z = {args.z:g} "
          f"(threshold max(min_delta, z·σ)); each keep checked by {args.checks} more runs of it and of the commit "
          "it beat, alternately.\n")
    print("| confirm_runs | experiments | confirmation runs | keeps | keeps that held | threshold | wall s |")
    print("|---|---|---|---|---|---|---|")
    for a in arms:
        print(f"| {a['confirm_runs']} | {a['experiments']} | {a['confirmations']} | {a['keeps']} | {a['held']} | "
              f"{a['threshold']:.4f} | {a['wall_s']:.0f} |")
    print()
    for a in arms:
        for c in a["checked"]:
            gain = "-" if c["gain"] is None else f"{c['gain']:+.4f}"
            print(f"- confirm_runs {a['confirm_runs']}: keep {c['id']} recorded {c['recorded']:.4f}; checks "
                  f"{', '.join(f'{v:.4f}' for v in c['checks'])} vs its parent's "
                  f"{', '.join(f'{v:.4f}' for v in c['parent_checks'])}: gain {gain} → "
                  f"{'held' if c['held'] else 'did not hold'}")


if __name__ == "__main__":
    main()
