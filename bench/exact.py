"""Exactness of reruns: one sealed `[budget] steps` CPU experiment, rerun many times, half under load.

The scaffold's own GPT, `[budget] steps = 5`, in a fresh workspace on the offline base. The experiment is
executed once; then `reproduce()` (what `sealab reproduce` runs: verify the identity, rerun the same image,
judge) reruns it `--reruns` times. Reruns alternate between an idle machine and one where `--load`
other processes (numpy matrix products, one thread each) keep every core busy, so that drift over time
is not mistaken for load. Each rerun counts as bit-identical when its val_bpb equals the recorded one to
the last bit and the verdict is `exact`. Prints one line per rerun and a summary; `--markdown` prints the
table for docs/reliability.md.

Usage: PYTHONPATH=$PWD .venv/bin/python bench/exact.py [--reruns 50] [--steps 5] [--load 2] [--markdown]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.create import init  # noqa: E402
from agent.gitops import commit_file  # noqa: E402
from executor.git_source import open_repo  # noqa: E402
from executor.image.base import build_base  # noqa: E402
from executor.docker_engine import Engine  # noqa: E402
from executor.ledger import Ledger  # noqa: E402
from executor.reproduce import reproduce  # noqa: E402
from executor.run import execute  # noqa: E402


def burn(stop: multiprocessing.Event) -> None:
    """Keep one core busy with float work (caches and memory bandwidth too) until `stop` is set."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import numpy as np

    a = np.random.default_rng(0).standard_normal((384, 384))
    while not stop.is_set():
        a = np.tanh(a @ a.T / 384.0)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return " ".join(line.split(":", 1)[1].split())
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reruns", type=int, default=50)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--load", type=int, default=os.cpu_count() or 2, help="busy processes in loaded reruns")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    engine = Engine.connect()
    base = build_base(source=None, engine_client=engine)
    ws = init(Path(tempfile.mkdtemp(prefix="sealab-exact-")) / "ws")
    ledger = Ledger(ws.ledger_path)
    ledger.set_base(base)
    toml = re.sub(r"(?m)^\[budget\]\n", f"[budget]\nsteps = {args.steps}\n", (ws.root / "sealab.toml").read_text(), 1)
    commit_file(open_repo(ws.root), "sealab.toml", toml, f"train {args.steps} steps")
    record = execute(ws, "HEAD", engine, ledger).to_dict()
    assert record["status"] == "ok", record["reason"]
    recorded = record["metrics"]["val_bpb"]
    print(f"recorded {record['id']}: val_bpb {recorded!r}, {record['metrics']['steps']} steps, "
          f"image {record['image_id'][:19]}, cpu {record.get('cpu')}", flush=True)

    counts = {"idle": [0, 0], "loaded": [0, 0]}  # [bit-identical, reruns]
    values: set[float] = {recorded}
    started = time.monotonic()
    for i in range(args.reruns):
        loaded = i % 2 == 1
        stop = multiprocessing.Event()
        burners = [multiprocessing.Process(target=burn, args=(stop,), daemon=True)
                   for _ in range(args.load if loaded else 0)]
        for p in burners:
            p.start()
        t = time.monotonic()
        try:
            report = reproduce(ws, engine, ledger, record["id"], runs=1, tolerance=0.0)
        finally:
            stop.set()
            for p in burners:
                p.join(10)
        value = report["values"][0]
        same = report["verdict"] == "exact" and value == recorded
        kind = "loaded" if loaded else "idle"
        counts[kind][0] += same
        counts[kind][1] += 1
        if value is not None:
            values.add(value)
        print(f"rerun {i + 1:3d} {kind:6s} {time.monotonic() - t:5.1f} s  val_bpb {value!r}  "
              f"{'bit-identical' if same else report['verdict'].upper()}", flush=True)

    identical = counts["idle"][0] + counts["loaded"][0]
    print(f"\n{identical}/{args.reruns} reruns bit-identical (idle {counts['idle'][0]}/{counts['idle'][1]}, "
          f"under {args.load} busy processes {counts['loaded'][0]}/{counts['loaded'][1]}); "
          f"{len(values)} distinct val_bpb; {(time.monotonic() - started) / 60:.1f} min; "
          f"{os.cpu_count()} cores, {cpu_model()}")
    if args.markdown:
        print("\n| reruns | machine | bit-identical | distinct val_bpb |\n|---|---|---|---|")
        for kind in ("idle", "loaded"):
            what = "idle" if kind == "idle" else f"{args.load} busy processes"
            print(f"| {counts[kind][1]} | {what} | {counts[kind][0]} | |")
        print(f"| {args.reruns} | all | {identical} | {len(values)} |")
    sys.exit(0 if identical == args.reruns else 1)


if __name__ == "__main__":
    main()
