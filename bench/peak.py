"""What bench/output.py and bench/seal.py share: the `sealab` to measure (this checkout's, or another
checkout's code with this venv, for a baseline), one run of it with its peak RSS, and the offline base."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC_HELP = "measure the sealab of this checkout (e.g. a `git worktree` of an older commit) with this venv, for a baseline"


def sealab_command(src: Path | None) -> list[str]:
    """The argv prefix that runs `sealab`: the venv's console script, or `src`'s code through the venv's Python."""
    if src is None:
        return [str(Path(sys.executable).with_name("sealab"))]
    return ["env", f"PYTHONPATH={src.resolve()}", sys.executable, "-c",
            "import sys; from agent.cli import main; sys.argv[0] = 'sealab'; main()"]


def run_measured(argv: list[str], cwd: Path) -> dict:
    """Run `argv` in `cwd`: its exit code, stdout, stderr, wall seconds and peak RSS in MB (wait4's ru_maxrss:
    the process or any child it waited for, whichever peaked highest)."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    return {"code": os.waitstatus_to_exitcode(status), "out": out, "err": err,
            "wall_s": time.monotonic() - started, "peak_mb": usage.ru_maxrss / 1024}


def offline_base():
    """The offline base (built once, then reused), and the engine."""
    from executor.docker_engine import Engine
    from executor.image.base import build_base

    engine = Engine.connect()
    wheels = Path(os.environ.get("SEALAB_WHEELS", "/opt/wheels"))
    return build_base(source=None, wheels_dir=wheels, engine_client=engine)


def start(parser) -> tuple:
    """Add --markdown and --sealab-src to `parser`, parse; returns (args, the sealab argv prefix, the base)."""
    parser.add_argument("--markdown", action="store_true", help="also print the table for docs/benchmarks.md")
    parser.add_argument("--sealab-src", type=Path, help=SRC_HELP)
    args = parser.parse_args()
    return args, sealab_command(args.sealab_src), offline_base()
