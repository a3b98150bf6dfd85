"""Peak memory of `sealab seal` against the size of the commit's tree: the scaffold alone, then the
scaffold with a large committed file (default 1 GB), each on a fresh workspace on the offline base.

Sealing streams the commit's large blobs from `git cat-file` into a layer file and the layer into the
engine through a pipe (executor/git_source.py, executor/image/seal.py, Engine.load_written), so the
orchestrator's peak resident memory should stay flat. Each `sealab seal` is one child of this process;
its peak RSS is what `wait4` reports (ru_maxrss). Target: under 200 MB for the 1 GB tree.

Usage: PYTHONPATH=$PWD .venv/bin/python bench/seal.py [--mb 1024] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.create import init  # noqa: E402
from agent.gitops import commit_file  # noqa: E402
from executor.ledger import Ledger  # noqa: E402
from bench.peak import run_measured, start  # noqa: E402



def workspace(where: Path, base, megabytes: int, cap: bool = True) -> Path:
    """A scaffolded workspace; with `megabytes`, a file of that size committed (and tree_mb raised)."""
    ws = init(where)
    Ledger(ws.ledger_path).set_base(base)
    if megabytes:
        pattern = os.urandom(1 << 20)  # incompressible, so git stores (and streams) every byte
        with (ws.root / "checkpoint.bin").open("wb") as f:
            for _ in range(megabytes):
                f.write(pattern)
        subprocess.run(["git", "add", "checkpoint.bin"], cwd=ws.root, check=True)
        subprocess.run(["git", "commit", "-q", "-m", f"a {megabytes} MB checkpoint"], cwd=ws.root, check=True)
        if cap:  # (a sealab before tree_mb refuses the key)
            toml = (ws.root / "sealab.toml").read_text().replace("[resources]\n", f"[resources]\ntree_mb = {megabytes + 64}\n", 1)
            commit_file(ws.git, "sealab.toml", toml, "room for the checkpoint")
    return ws.root


def measure(sealab: list[str], root: Path) -> dict:
    run = run_measured([*sealab, "seal", "--json"], root)
    return {"peak_mb": run["peak_mb"], "wall_s": run["wall_s"], "ok": run["code"] == 0,
            "said": (run["out"] if run["code"] == 0 else run["err"]).decode()[-300:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1024, help="size of the committed file")
    args, sealab, base = start(parser)
    rows = []
    with tempfile.TemporaryDirectory(prefix="sealab-bench-seal-") as tmp:
        for megabytes in (0, args.mb):
            root = workspace(Path(tmp) / f"ws{megabytes}", base, megabytes, cap=args.sealab_src is None)
            row = {"tree_mb": megabytes, **measure(sealab, root)}
            rows.append(row)
            print(f"committed file {megabytes:>5} MB: sealab seal peak {row['peak_mb']:.0f} MB, "
                  f"{'ok' if row['ok'] else 'FAILED: ' + row['said']}, {row['wall_s']:.0f} s", flush=True)
    print(f"difference: {rows[1]['peak_mb'] - rows[0]['peak_mb']:+.0f} MB (target: {args.mb} MB sealed under 200 MB peak)")
    if args.markdown:
        print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs\n")
        print("| committed file | `sealab seal` peak RSS | wall |\n|---|---|---|")
        for row in rows:
            print(f"| {row['tree_mb']} MB | {row['peak_mb']:.0f} MB | {row['wall_s']:.0f} s |")
    sys.exit(0 if rows[1]["ok"] and rows[1]["peak_mb"] < 200 else 1)


if __name__ == "__main__":
    main()
