"""Does watching slow the night down? The loop's per-experiment overhead with the dashboard open vs not.

One `sealab run` (offline proposer, 2 s of training per experiment) while `sealab serve` runs all along
and one headless Chromium alternates, in blocks of experiments, between the dashboard (polling every
--interval ms, four times the page's default rate) and about:blank. For each experiment:
  work              = the containers' own time: durations.run, plus durations.eval (or eval_run) where
                      the executor runs the evaluation as a container phase of its own
  executor overhead = durations.total - work   (seal, load, verify, create, teardown, scoring, ledger)
  loop overhead     = start of the next experiment - start of this one - work
                      (the above plus the loop's drift guards, proposal, commit, decision and saves)
Each experiment counts for the mode that was on during its whole cycle (the browser switches when the
next one begins). Prints medians per mode and the ratio page-open / page-closed.

Usage: .venv/bin/python bench/serve.py [--experiments 8] [--block 2] [--interval 500] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.create import init  # noqa: E402
from agent.gitops import commit_file, set_constant  # noqa: E402
from executor.image.base import build_base  # noqa: E402
from executor.docker_engine import Engine  # noqa: E402
from executor.ledger import Ledger  # noqa: E402
from tests.browser import Chromium, find_chromium  # noqa: E402

SEALAB = str(Path(sys.executable).with_name("sealab"))
FAST_ACCEPTANCE = """[acceptance]
min_delta = 0.0001
noise_runs = 2
z = 1.0
reason = "benchmark: a short baseline"

"""


def workspace(tmp: Path, engine: Engine) -> Path:
    """A workspace on the offline base: 2 s of training, a two-run baseline."""
    import policies

    ws = init(tmp / "ws")
    Ledger(ws.ledger_path).set_base(build_base(source=None, engine_client=engine))
    policy = tmp / "policy.toml"
    shipped = Path(policies.policy_path("default")).read_text()
    policy.write_text(re.sub(r"\[acceptance\][^\[]*", FAST_ACCEPTANCE, shipped, count=1))
    toml = (ws.root / "sealab.toml").read_text()
    toml = set_constant(set_constant(toml, "train_seconds", "2"), "grace_seconds", "120")
    commit_file(ws.git, "sealab.toml", toml.replace('name = "default"', f'name = "{policy}"'), "benchmark settings")
    return ws.root


def count(db: Path) -> int:
    if not db.exists():
        return 0
    con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return con.execute("SELECT count(*) FROM experiments").fetchone()[0]
    except sqlite3.Error:
        return 0
    finally:
        con.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=8)
    parser.add_argument("--block", type=int, default=2, help="experiments per block of one mode")
    parser.add_argument("--interval", type=int, default=500, help="the page's polling interval, ms")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    browser_binary = find_chromium()
    if browser_binary is None:
        sys.exit("bench/serve.py needs Chromium")

    engine = Engine.connect()
    tmp = Path(tempfile.mkdtemp(prefix="sealab-bench-serve-"))
    root = workspace(tmp, engine)
    db = root / ".sealab" / "ledger.db"
    port = free_port()
    url = f"http://127.0.0.1:{port}/?interval={args.interval}"
    server = subprocess.Popen([SEALAB, "serve", "--port", str(port)], cwd=root, stderr=subprocess.PIPE, text=True)
    server.stderr.readline()  # "sealab serve: http://…": listening
    browser = Chromium(browser_binary, tmp / "profile")
    modes: dict[int, bool] = {}  # record index -> page open during its cycle
    started = time.monotonic()
    with open(tmp / "run.log", "w") as log:
        run = subprocess.Popen([SEALAB, "run", "--experiments", str(args.experiments), "--tag", "bench",
                                "--proposer", "offline"], cwd=root, stdout=log, stderr=subprocess.STDOUT)
    serve_cpu_before = cpu_seconds(server.pid)
    seen, page_open = 0, False
    while run.poll() is None:
        now = count(db)
        if now != seen:  # record `now - 1` has just begun: its whole cycle runs in the mode set here
            seen = now
            want = ((now - 1) // args.block) % 2 == 1
            if want != page_open:
                browser.navigate(url if want else "about:blank")
                page_open = want
            modes[now - 1] = page_open
        time.sleep(0.1)
    elapsed = time.monotonic() - started
    serve_cpu = cpu_seconds(server.pid) - serve_cpu_before
    browser.close()
    server.terminate()
    server.wait(timeout=30)
    if run.returncode != 0:
        sys.exit(f"sealab run failed ({run.returncode}); see {tmp / 'run.log'}")

    records = Ledger(db).records()
    executor: dict[bool, list[float]] = {False: [], True: []}
    loop: dict[bool, list[float]] = {False: [], True: []}
    for i, rec in enumerate(records[:-1]):  # the last one has no next start
        if i not in modes or rec["status"] != "ok":
            continue
        d = rec["durations"]
        work = d["run"] + d.get("eval", d.get("eval_run", 0))  # inside the experiment's containers
        executor[modes[i]].append(d["total"] - work)
        loop[modes[i]].append(stamp(records[i + 1]["created_at"]) - stamp(rec["created_at"]) - work)
    med = {name: {m: statistics.median(v[m]) for m in (False, True)} for name, v in (("executor", executor),
                                                                                      ("loop", loop))}
    machine = f"{platform.node()} · {os.cpu_count()} CPUs · {platform.machine()} · Docker " \
              f"{engine.client.version()['Version']}"
    requests = elapsed / (args.interval / 1000) * 5 * sum(modes.values()) / max(1, len(modes))
    if args.markdown:
        print(f"Machine: {machine}; {len(records)} experiments in {elapsed:.0f} s; page polling every "
              f"{args.interval} ms in blocks of {args.block}.\n")
        print("| per-experiment overhead | page closed: median s (n, range) | page open: median s (n, range) | ratio |")
        print("|---|---|---|---|")
        for name, values in (("executor (total − work)", executor), ("loop (start to start − work)", loop)):
            cells = [f"{statistics.median(v):.3f} ({len(v)}, {min(v):.2f}–{max(v):.2f})"
                     for v in (values[False], values[True])]
            closed, opened = statistics.median(values[False]), statistics.median(values[True])
            print(f"| {name} | {cells[0]} | {cells[1]} | {opened / closed:.2f} ({opened - closed:+.3f} s) |")
        print(f"\n`sealab serve` used {serve_cpu:.1f} CPU s over the run (~{requests:.0f} API requests).")
    else:
        print(f"machine: {machine}; {len(records)} experiments in {elapsed:.0f} s; interval {args.interval} ms")
        for name in ("executor", "loop"):
            values = executor if name == "executor" else loop
            print(f"{name:>9}: closed median {med[name][False]:.3f} s (n={len(values[False])}), open median "
                  f"{med[name][True]:.3f} s (n={len(values[True])}), ratio {med[name][True] / med[name][False]:.2f}")
        print(f"sealab serve CPU: {serve_cpu:.1f} s; ~{requests:.0f} API requests")


if __name__ == "__main__":
    main()
