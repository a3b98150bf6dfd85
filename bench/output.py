"""Peak memory of `sealab exec` against what the run prints: the same experiment printing a little and a
flood (default 1 MB against 1 GB of stdout), each on its own fresh workspace on the offline base.

The orchestrator streams a run's output into its log under `[resources] log_mb` (executor/capped_log.py),
so its peak resident memory should not depend on the output's size. Each `sealab exec` is one child of
this process; its peak RSS is what `wait4` reports for it (ru_maxrss). Prints one line per size and the
difference; `--markdown` prints the table for docs/benchmarks.md.

Usage: PYTHONPATH=$PWD .venv/bin/python bench/output.py [--small-mb 1] [--large-mb 1024] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.create import init  # noqa: E402
from agent.gitops import commit_file, set_constant  # noqa: E402
from executor.git_source import open_repo  # noqa: E402
from executor.ledger import Ledger  # noqa: E402
from bench.peak import run_measured, start  # noqa: E402



def flood(megabytes: int) -> str:
    """Python that prints `megabytes` MB of lines before train.py's own code."""
    return ("import sys as _sys\n"
            f"for _i in range({megabytes}):\n"
            "    _sys.stdout.write(('step 0 loss 3.14159 ' * 51 + '\\n') * 1024)\n")


def workspace(where: Path, base, megabytes: int) -> Path:
    ws = init(where)
    Ledger(ws.ledger_path).set_base(base)
    toml = set_constant((ws.root / "sealab.toml").read_text(), "train_seconds", "1")
    commit_file(ws.git, "sealab.toml", toml, "a 1 s budget")
    commit_file(open_repo(ws.root), "train.py", flood(megabytes) + (ws.root / "train.py").read_text(),
                f"print {megabytes} MB first")
    return ws.root


def measure(sealab: list[str], root: Path) -> dict:
    """`sealab exec --json` in `root`: its peak RSS (MB), wall time, status and stored log size."""
    run = run_measured([*sealab, "exec", "--json"], root)
    out = run["out"]
    record = json.loads(out) if out.strip() else {"status": f"exit {run['code']}: {run['err'].decode()[-300:]}"}
    log = root / record["log_path"] if record.get("log_path") else None
    return {"peak_mb": run["peak_mb"], "wall_s": run["wall_s"], "status": record["status"],
            "log_mb": log.stat().st_size / 2**20 if log and log.exists() else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small-mb", type=int, default=1)
    parser.add_argument("--large-mb", type=int, default=1024)
    args, sealab, base = start(parser)
    rows = []
    with tempfile.TemporaryDirectory(prefix="sealab-bench-output-") as tmp:
        for megabytes in (args.small_mb, args.large_mb):
            row = {"printed_mb": megabytes, **measure(sealab, workspace(Path(tmp) / f"ws{megabytes}", base, megabytes))}
            rows.append(row)
            print(f"printed {megabytes:>5} MB: sealab exec peak {row['peak_mb']:.0f} MB, log {row['log_mb']:.1f} MB, "
                  f"{row['status']}, {row['wall_s']:.0f} s", flush=True)
    delta = rows[1]["peak_mb"] - rows[0]["peak_mb"]
    print(f"difference: {delta:+.0f} MB (target: within 50 MB)")
    if args.markdown:
        print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs\n")
        print("| printed | `sealab exec` peak RSS | stored log | status | wall |\n|---|---|---|---|---|")
        for row in rows:
            print(f"| {row['printed_mb']} MB | {row['peak_mb']:.0f} MB | {row['log_mb']:.1f} MB | {row['status']} | "
                  f"{row['wall_s']:.0f} s |")
    sys.exit(0 if abs(delta) <= 50 else 1)


if __name__ == "__main__":
    main()
