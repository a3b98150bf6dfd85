"""Does starting the eval phase ahead of training change what the training budget buys?

`sealab exec` of one commit of a fresh scaffold workspace, alternately with the eval phase started
ahead (the default: its container loads torch and the windows while the train phase starts up, and
waits for the model) and after training (`SEALAB_EVAL_AHEAD=0`, as before), `--rounds` times each, in
this one run on this machine. Prints, for each way, the mean and spread of the training steps the
budget bought (the metric's input on a clock budget), the metric, the eval phase's seconds after
training, and the record's total seconds; then the ratios ahead/after.

Usage: .venv/bin/python bench/eval_ahead.py [--budget 20] [--rounds 4] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.create import init  # noqa: E402
from agent.gitops import commit_file  # noqa: E402

SEALAB = str(Path(sys.executable).with_name("sealab"))


def sealab(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([SEALAB, *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=900)
    if proc.returncode != 0:
        sys.exit(f"sealab {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sealab-eval-ahead-") as tmp:
        ws = init(Path(tmp) / "ws")
        text = (ws.root / "sealab.toml").read_text()
        commit_file(ws.git, "sealab.toml", text.replace("train_seconds = 60 ", f"train_seconds = {args.budget:g} "),
                    f"{args.budget:g} s budget")
        print("building or reusing the offline base ...", file=sys.stderr)
        sealab("base", cwd=ws.root)
        runs: dict[str, list[dict]] = {"ahead": [], "after": []}
        for i in range(args.rounds):
            for way in ("ahead", "after"):
                proc = sealab("exec", "--json", cwd=ws.root, env={"SEALAB_EVAL_AHEAD": "1" if way == "ahead" else "0"})
                record = json.loads(proc.stdout)
                runs[way].append(record)
                d = record["durations"]
                print(f"[{i + 1}/{args.rounds} {way}] steps {record['metrics'].get('steps')}, "
                      f"val_bpb {record['metrics'].get('val_bpb'):.4f}, eval {d.get('eval', 0):.2f} s, "
                      f"total {d.get('total', 0):.2f} s", file=sys.stderr)
    rows = []
    for way, records in runs.items():
        steps = [r["metrics"]["steps"] for r in records]
        rows.append((way, statistics.fmean(steps), statistics.pstdev(steps),
                     statistics.fmean(r["metrics"]["val_bpb"] for r in records),
                     statistics.fmean(r["durations"]["eval"] + r["durations"].get("eval_ahead", 0) for r in records),
                     statistics.fmean(r["durations"]["total"] for r in records)))
    ahead, after = rows
    header = "| eval phase | steps (mean ± sd) | val_bpb (mean) | eval s (after training + start ahead) | total s |"
    lines = [header, "|---|---|---|---|---|"]
    for way, steps, sd, bpb, ev, total in rows:
        lines.append(f"| {way} | {steps:.1f} ± {sd:.1f} | {bpb:.4f} | {ev:.2f} | {total:.2f} |")
    lines.append(f"| ahead/after | {ahead[1] / after[1]:.3f}× | {ahead[3] / after[3]:.3f}× | {ahead[4] / after[4]:.2f}× "
                 f"| {ahead[5] / after[5]:.3f}× |")
    machine = (f"{platform.node()} · {platform.platform()} · {os.cpu_count()} CPUs · "
               f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; budget {args.budget:g} s, {args.rounds} rounds, alternated")
    if args.markdown:
        print(f"{machine}\n\n" + "\n".join(lines))
    else:
        print(machine)
        print("\n".join(lines))


if __name__ == "__main__":
    main()
