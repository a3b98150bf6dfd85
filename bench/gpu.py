"""The scaffold's training on this machine's accelerator, outside containers: tokens/s, MFU, peak memory, start-up.

    python3 bench/gpu.py [--budget 300] [--set NAME=VALUE ...] [--preset NAME ...] [--markdown]

For a machine with a GPU and a CUDA torch but no Docker (the device machine lent to some sessions):
it builds the embedded dataset with the scaffold's prepare_data.py from this interpreter's standard
library, then runs the scaffold's harness (prepare.py, the same file sealed into every image) on the
scaffold's train.py, or on a copy whose UPPER_CASE constants are replaced (`--set DEPTH=8`; a preset
is a named set of them), once per configuration, each in a fresh process, and prints one row each:
device, parameters, steps, tokens/s, MFU (bf16, the harness's own formula and peak table), peak CUDA
memory, seconds outside training (interpreter start, imports, data check and the evaluation: an
upper bound on start-up) and val_bpb. Without a GPU it runs on the CPU, which checks the script itself. Nothing here is timed by a
test: numbers go to docs/benchmarks.md with the machine noted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCAFFOLD = Path(__file__).resolve().parents[1] / "executor" / "scaffold"

# Candidate defaults for one modern GPU (H100/H200 class): wider and deeper than the CPU scaffold, batches
# big enough to keep the tensor cores busy. Which one to adopt is decided by measuring, not here.
PRESETS = {
    "scaffold": {},
    "gpu-small": {"DEPTH": 6, "N_EMBD": 384, "N_HEAD": 6, "SEQ_LEN": 512, "BATCH_SIZE": 64},
    "gpu-medium": {"DEPTH": 8, "N_EMBD": 768, "N_HEAD": 12, "SEQ_LEN": 1024, "BATCH_SIZE": 32},
    "gpu-large": {"DEPTH": 12, "N_EMBD": 1024, "N_HEAD": 16, "SEQ_LEN": 1024, "BATCH_SIZE": 32},
}


def with_constants(source: str, values: dict[str, object]) -> str:
    """train.py with each `NAME = …` line's value replaced (the comment kept); every NAME must exist."""
    for name, value in values.items():
        pattern = re.compile(rf"^({re.escape(name)}\s*=\s*)([^#\n]*?)(\s*(#.*)?)$", re.MULTILINE)
        if not pattern.search(source):
            raise SystemExit(f"bench/gpu.py: train.py has no constant {name}")
        source = pattern.sub(lambda m: f"{m[1]}{value!r}{m[3]}", source, count=1)
    return source


def parse_set(items: list[str]) -> dict[str, object]:
    values: dict[str, object] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.isidentifier():
            raise SystemExit(f"bench/gpu.py: --set wants NAME=VALUE, got {item!r}")
        try:
            values[name] = json.loads(text)
        except ValueError:
            values[name] = text
    return values


def run_one(work: Path, data: Path, label: str, values: dict[str, object], budget: float, seed: int) -> dict:
    run_dir = work / label
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "out").mkdir(parents=True)
    shutil.copy(SCAFFOLD / "prepare.py", run_dir / "prepare.py")
    (run_dir / "train.py").write_text(with_constants((SCAFFOLD / "train.py").read_text(), values))
    spec = run_dir / "run_spec.json"
    spec.write_text(json.dumps({"budget_s": budget, "seed": seed, "cpus": os.cpu_count() or 1}))
    env = {**os.environ, "SEALAB_RUN_SPEC": str(spec), "SEALAB_DATA": str(data), "SEALAB_OUT": str(run_dir / "out")}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "prepare.py"], cwd=run_dir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    result_file = run_dir / "out" / "result.json"
    if proc.returncode != 0 or not result_file.is_file():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        return {"label": label, "error": " | ".join(tail)[:400], "wall_s": wall}
    r = json.loads(result_file.read_text())
    return {"label": label, "device": (r.get("gpu") or {}).get("name") or r["device"], "params_M": r["num_params"] / 1e6,
            "steps": r["steps"], "tokens_per_s": r["tokens_per_s"], "mfu_percent": r.get("mfu_percent"),
            "peak_memory_mb": r["peak_memory_mb"], "outside_wall_s": wall - r["training_seconds"], "wall_s": wall, "val_bpb": r.get("val_bpb"), "gpu": r.get("gpu"),
            "torch": r["cpu"]["torch"], "values": values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=300.0, help="training seconds per run (default 300)")
    parser.add_argument("--preset", action="append", choices=sorted(PRESETS), help="run these presets (repeatable)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME=VALUE",
                        help="one more run with these train.py constants replaced (repeatable, all in one run)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args()
    configs = [(name, PRESETS[name]) for name in (args.preset or ([] if args.sets else ["scaffold"]))]
    if args.sets:
        values = parse_set(args.sets)
        configs.append(("set:" + ",".join(f"{k}={v}" for k, v in values.items()), values))
    work = Path(tempfile.mkdtemp(prefix="sealab-bench-gpu-"))
    try:
        data = work / "data"
        made = subprocess.run([sys.executable, str(SCAFFOLD / "prepare_data.py"), str(data)], capture_output=True,
                              text=True)
        if made.returncode != 0:
            raise SystemExit(f"bench/gpu.py: prepare_data.py failed: {made.stderr.strip()[-300:]}")
        rows = []
        for i, (label, values) in enumerate(configs):
            print(f"[gpu] {label}: {args.budget:g} s budget", file=sys.stderr, flush=True)
            row = run_one(work, data, f"run{i}", values, args.budget, args.seed)
            row["label"] = label
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.markdown:
        print("| config | device | params M | steps | tokens/s | MFU % | peak MB | outside training s | val_bpb |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            if "error" in r:
                print(f"| {r['label']} | error: {r['error']} |||||||")
                continue
            mfu = "n/a" if r["mfu_percent"] is None else f"{r['mfu_percent']:.1f}"
            print(f"| {r['label']} | {r['device']} | {r['params_M']:.2f} | {r['steps']} | {r['tokens_per_s']:,.0f} | "
                  f"{mfu} | {r['peak_memory_mb']:,.0f} | {r['outside_wall_s']:.1f} | {r['val_bpb']:.4f} |")
    else:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
