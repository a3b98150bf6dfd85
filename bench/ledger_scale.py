"""Years of nights: how `sealab status`, `results`, `verify --all`, `report` and the dashboard grow with the
ledger (issue 19), at 1k, 10k and 100k records.

Build: one real workspace per size (`agent.create.init`, a base recorded without Docker: a well-formed
BaseImage whose deps and data digest agree with the commits), 20 commits of train.py that each change one
constant, then research runs of 500 records each (`night-0001`, ...) written through the real write path:
`Ledger.begin` (with the run's labels), `finish`, `label`, `record_decision`, `record_cycle`, `record_test`
(baselines and keeps), `save_run`, and `add_event` for drift, rejected and parked proposals, 1000 records
to a `Ledger.batch()` transaction. Each run starts with three baselines, then proposals (ok ~86%, crash,
timeout, oom, rejected, infra_error, interrupted), keeps that beat the best (some after `confirm` runs),
discards. Every record's image ID is the real `seal(resolve(commit), base, run spec)` of its commit, so
`sealab verify --all` must find no mismatch. Built workspaces are kept under --dir by size and reused
(--rebuild builds again).

Timing: each size's workspace is copied afresh (with its own XDG_CACHE_HOME), so whatever a command
caches starts cold; then each command runs as a user runs it (the `sealab` console script, in the
workspace), one child at a time, with its wall time and its own peak RSS (`os.wait4`'s ru_maxrss):
  status --json --limit 50 · status --json · status (table) · results · verify --all --json twice (the first
  cold, the second incremental) · verify --all --full --json · report
(an option this sealab does not have yet is shown n/a; a command past --timeout is shown timeout). Then
`sealab serve --port 0`: each API route's first answer and the median of 5 repeated polls, and the time
from SIGTERM to the process's exit while a /api/experiments request is in flight. Prints one table over
the sizes with the growth between the two largest (10k→100k), and the issue's goals at the largest size
with PASS/FAIL (the goals are stated for 100k).

Usage: .venv/bin/python bench/ledger_scale.py [--sizes 1000,10000,100000] [--dir /tmp/sealab-ledger-scale]
                                             [--rebuild] [--build-only] [--timeout 300] [--markdown]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.create import init  # noqa: E402
from agent.cycle import account  # noqa: E402
from agent.gitops import ZERO, cas, commit_file, set_constant  # noqa: E402
from agent.proposal import Usage  # noqa: E402
from agent.run_state import RunState  # noqa: E402
from executor import config, git_source  # noqa: E402
from executor.image import deps  # noqa: E402
from executor.image.seal import seal  # noqa: E402
from executor.ledger import Ledger  # noqa: E402
from executor.record import Decision, ExperimentRecord, Finish, Results, RunLabels  # noqa: E402
from executor.types import BaseImage, RunSpec, Status  # noqa: E402

SEALAB = str(Path(sys.executable).with_name("sealab"))  # this tree's console script (an editable install)
RUN_SIZE = 500  # records per research run
CHUNK = 1000  # records per Ledger.batch() transaction
COMMITS = 20
BUILDER = 1  # the shape of what build() writes; a cached workspace of another shape is built again
EPOCH = datetime(2025, 1, 6, 20, 0, tzinfo=timezone.utc)  # the first night
# train.py constants the commits change, one each, with the values they step through
KNOBS = [("MATRIX_LR", "{:.4f}", 0.01, 0.0007), ("EMBEDDING_LR", "{:.4f}", 0.03, -0.0011),
         ("WARMDOWN_RATIO", "{:.2f}", 0.4, 0.03), ("WEIGHT_DECAY", "{:.3f}", 0.0, 0.005),
         ("SCALAR_LR", "{:.3f}", 0.5, -0.02)]
STATUSES = [(Status.OK, 0.86), (Status.CRASH, 0.07), (Status.TIMEOUT, 0.03), (Status.OOM, 0.01),
            (Status.REJECTED, 0.015), (Status.INFRA_ERROR, 0.01), (Status.INTERRUPTED, 0.005)]
REASONS = {Status.CRASH: "exit code 1: RuntimeError: shape mismatch in attention (see the log)",
           Status.TIMEOUT: "killed at budget + grace (120 s)",
           Status.OOM: "killed by the kernel: out of memory (4096 MB)",
           Status.REJECTED: "paths changed by the commit: expected only train.py, found prepare.py; "
                            "nothing was started",
           Status.INFRA_ERROR: "the Docker engine stopped answering: connection refused",
           Status.INTERRUPTED: "stopped by the user"}
GOALS_AT = 100_000


def stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def human_count(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- building a ledger --------------------------------------------------------------------------------
class Sealer:
    """The facts of each commit and the image ID of each (commit, run spec), computed once."""

    def __init__(self, repo: git_source.Repository, base: BaseImage) -> None:
        self.repo, self.base = repo, base
        self.facts: dict[str, git_source.CommitFacts] = {}
        self.images: dict[tuple[str, str], str] = {}

    def of(self, commit: str) -> git_source.CommitFacts:
        if commit not in self.facts:
            self.facts[commit] = git_source.resolve(self.repo, commit)
        return self.facts[commit]

    def spec(self, commit: str) -> RunSpec:
        return config.of_commit(self.of(commit).files, commit).run_spec

    def image(self, commit: str, spec: RunSpec) -> str:
        key = (commit, spec.digest())
        if key not in self.images:
            self.images[key] = seal(self.of(commit), self.base, spec).image_id
        return self.images[key]


def synthetic_base(repo: git_source.Repository, head: str) -> BaseImage:
    """A base as `sealab base` records one, without Docker: its deps are those the commits lock (none for
    the scaffold), so `verify` finds the record's packages its commit's."""
    facts = git_source.resolve(repo, head)
    return BaseImage(
        image_id=digest("bench base image"), diff_ids=(digest("bench layer 1"), digest("bench layer 2")),
        env=("PATH=/usr/local/bin:/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE=1"), cmd=("python3",),
        recipe=digest("bench recipe")[7:], data_digest=digest("bench data manifest"), source="offline:bookworm",
        deps=deps.lock_digest(facts.top_level(deps.LOCK_FILES)), torch="2.13.0+cpu")


def make_commits(ws_root: Path, repo: git_source.Repository) -> list[str]:
    """COMMITS commits of train.py on main, each changing one constant (a chain: each one's parent is the last)."""
    train = (ws_root / "train.py").read_text()
    commits = []
    for i in range(COMMITS):
        name, fmt, start, step = KNOBS[i % len(KNOBS)]
        value = fmt.format(start + step * (i // len(KNOBS) + 1))
        train = set_constant(train, name, value)
        commits.append(commit_file(repo, "train.py", train, f"{name.lower().replace('_', ' ')} {value}"))
    return commits


class Builder:
    """Writes the records of one ledger, run after run."""

    def __init__(self, ws: Any, ledger: Ledger, sealer: Sealer, commits: list[str], seed: int) -> None:
        self.ws, self.ledger, self.sealer, self.commits = ws, ledger, sealer, commits
        self.rng = random.Random(seed)
        self.ids: set[str] = set()
        self.events = 0

    def new_id(self) -> str:
        while True:
            eid = "%010x" % self.rng.getrandbits(40)
            if eid not in self.ids:
                self.ids.add(eid)
                return eid

    def status(self) -> Status:
        x, total = self.rng.random(), 0.0
        for status, share in STATUSES:
            total += share
            if x < total:
                return status
        return Status.OK

    def usage(self) -> dict[str, Any]:
        tokens_in, tokens_out = self.rng.randint(8000, 30000), self.rng.randint(300, 2500)
        cached = self.rng.randint(0, tokens_in)
        cost = round((tokens_in - cached) * 3e-6 + cached * 3e-7 + tokens_out * 1.5e-5, 6)
        return asdict(Usage(input_tokens=tokens_in, output_tokens=tokens_out, cache_read_input_tokens=cached,
                            cache_creation_input_tokens=0, cost_usd=cost))

    def one(self, tag: str, at: datetime, commit: str, status: Status, value: float | None,
            decision: Decision | None, why: str, proposal: dict[str, Any] | None, best: str) -> tuple[str, datetime]:
        """One experiment, written as the loop writes it; (its id, when its cycle ended)."""
        rng, ledger = self.rng, self.ledger
        facts = self.sealer.of(commit)
        spec = self.sealer.spec(commit)
        eid = self.new_id()
        drift: list[dict[str, Any]] = []
        if rng.random() < 0.01:
            drift = [{"path": "train.py", "changes": ["MATRIX_LR = 0.01 -> 0.02"],
                      "patch": "diff --git a/train.py b/train.py\n@@ -37 +37 @@\n"
                               "-MATRIX_LR = 0.01\n+MATRIX_LR = 0.02\n"}]
        labels = RunLabels(tag, decision if decision == Decision.BASELINE else None, proposal)
        base = self.sealer.base
        ledger.begin(ExperimentRecord(
            id=eid, commit=commit, status=Status.RUNNING, parent=facts.parent, tree=facts.tree,
            description=facts.subject, base_image_id=base.image_id, data_digest=base.data_digest,
            run_spec=spec.to_dict(), drift=drift, log_path=f".sealab/logs/{eid}.log", created_at=stamp(at),
            durations={}, backend="local", **labels.record_fields()), "bench")
        budget = spec.budget_s
        durations = {"seal": round(rng.uniform(0.03, 0.09), 4)}
        if status != Status.REJECTED:  # (a commit out of scope is refused before anything is loaded)
            durations.update(load=round(rng.uniform(0.2, 0.6), 4), verify=round(rng.uniform(0.005, 0.02), 4))
        if status == Status.TIMEOUT:
            durations["run"] = round(budget + spec.grace_s, 4)
        elif status in (Status.OK,):
            durations["run"] = round(budget + rng.uniform(2.0, 6.0), 4)
            durations["eval_ahead"] = round(rng.uniform(0.3, 0.9), 4)
            durations["score"] = round(rng.uniform(0.2, 0.4), 4)
            durations["eval"] = round(durations["score"] + rng.uniform(2.0, 4.0), 4)
        elif status in (Status.CRASH, Status.OOM, Status.INTERRUPTED):
            durations["run"] = round(rng.uniform(3.0, budget), 4)
        durations["total"] = round(sum(durations.values()) + 0.05, 4)
        finished = at + timedelta(seconds=durations["total"])
        image = self.sealer.image(commit, spec)
        results = None
        if status not in (Status.INFRA_ERROR, Status.INTERRUPTED):
            metrics: dict[str, Any] = {}
            if status == Status.OK:
                steps = rng.randint(900, 1100)
                metrics = {"val_bpb": value, "training_seconds": round(budget + rng.uniform(-0.2, 0.2), 3),
                           "total_seconds": durations["run"], "steps": steps, "tokens": steps * 2048,
                           "tokens_per_s": round(steps * 2048 / budget, 1), "num_params": 612_480,
                           "mfu_percent": round(rng.uniform(1.0, 3.0), 2), "device": "cpu",
                           "hyperparameters": {"DEPTH": 3, "N_EMBD": 128, "BATCH_SIZE": 8, "SEQ_LEN": 256,
                                               "MATRIX_LR": 0.01, "WARMDOWN_RATIO": 0.4}}
            results = Results(metrics=metrics, drift=drift, placement="local",
                              peak_memory_mb=round(rng.uniform(300, 900), 1) if status != Status.REJECTED else None,
                              exit_code={Status.OK: 0, Status.CRASH: 1, Status.TIMEOUT: 137, Status.OOM: 137,
                                         Status.REJECTED: None}[status],
                              cpu={"model": "AMD EPYC 9654 96-Core Processor", "isa": "x86-64-v4",
                                   "torch": "2.13.0+cpu", "threads": 4})
        ledger.finish(eid, Finish(status, None if status == Status.OK else REASONS[status], image_id=image,
                                  durations=durations, backend="local", finished_at=stamp(finished), results=results))
        if status == Status.INTERRUPTED:
            return eid, finished  # the loop stopped under it: no decision, no time account
        ledger.label(eid, labels)
        if decision is not None:
            ledger.record_decision(eid, decision, why)
        proposal_s = 0.0 if proposal is None else rng.uniform(8.0, 40.0)
        wall = durations["total"] + proposal_s + 0.3
        ledger.record_cycle(eid, account(
            wall_s=wall, training_s=budget if status == Status.OK else 0.0, durations=durations,
            proposal_s=proposal_s, decision_s=0.25, pipelined=True, proposed_on=best, best_at_decision=best))
        if decision in (Decision.BASELINE, Decision.KEEP) and value is not None:
            ledger.record_test(eid, {"val_bpb": round(value + rng.uniform(0.01, 0.03), 6),
                                     "eval_windows": digest("test windows"), "eval_causal": True,
                                     "eval_model": digest(eid), "seconds": round(rng.uniform(2.0, 5.0), 3)})
        if status != Status.OK and rng.random() < 0.5:  # a log to tail, as a failed run leaves one
            log = self.ws.logs / f"{eid}.log"
            log.write_text("".join(f"step {i:05d} | loss {2.5 - i * 1e-3:.4f}\n" for i in range(30))
                           + f"Traceback (most recent call last):\n  ...\n{REASONS[status]}\n")
        return eid, at + timedelta(seconds=wall)

    def run(self, index: int, size: int, repo: git_source.Repository, progress) -> None:
        """Research run `night-NNNN`: `size` records (three baselines first)."""
        rng, ledger = self.rng, self.ledger
        tag = f"night-{index + 1:04d}"
        at = EPOCH + timedelta(days=index)
        start = self.commits[(index * 7) % len(self.commits)]
        best, best_value = start, 1.05 - 0.0004 * index
        state = RunState(tag=tag, branch=f"sealab/{tag}", start_commit=start, best_commit=start)
        cas(repo, f"refs/heads/{state.branch}", start, ZERO)
        ledger.save_run(tag, asdict(state))
        baseline: list[float] = []
        threshold = 0.002
        written = 0
        while written < size:
            if written < min(3, size):
                value = round(best_value + rng.gauss(0, 0.001), 6)
                eid, at = self.one(tag, at, start, Status.OK, value, Decision.BASELINE, "a run of the start commit",
                                   None, best)
                baseline.append(value)
                state.baseline, state.baseline_ids = baseline, [*(state.baseline_ids or []), eid]
                if len(baseline) == 3:
                    best_value = round(statistics.mean(baseline), 6)
                    state.best_value, state.threshold = best_value, threshold
            else:
                commit = self.commits[rng.randrange(len(self.commits))]
                facts = self.sealer.of(commit)
                proposal = {"proposer": "claude", "description": facts.subject, "usage": self.usage(),
                            "prompt_digest": digest(f"{tag}-{written}")}
                state.cost_usd = round(state.cost_usd + proposal["usage"]["cost_usd"], 6)
                status = self.status()
                value = round(best_value + rng.gauss(0.006, 0.006), 6) if status == Status.OK else None
                if value is not None and value < best_value - threshold and written + 2 < size:
                    for _ in range(2):  # the replication gate's confirmation runs, then the keep
                        again = round(value + rng.gauss(0, 0.0005), 6)
                        self.one(tag, at, commit, Status.OK, again, Decision.CONFIRM,
                                 "confirmation run of the candidate", proposal, best)
                        written += 1
                        state.confirmations += 1
                        progress(1)
                    _, at = self.one(tag, at, commit, status, value, Decision.KEEP,
                                     f"{value:.6f} beats {best_value:.6f} by more than {threshold}", proposal, best)
                    best, best_value = commit, value
                    state.best_commit, state.best_value, state.since_improvement = best, best_value, 0
                else:
                    why = (f"{value:.6f} does not beat {best_value:.6f} by {threshold}" if value is not None
                           else f"{status.value}: not a result")
                    _, at = self.one(tag, at, commit, status, value,
                                     Decision.DISCARD if status != Status.INTERRUPTED else None, why, proposal, best)
                    state.since_improvement += 1
                    state.consecutive_crashes = state.consecutive_crashes + 1 if status == Status.CRASH else 0
                if rng.random() < 0.02:
                    kind = "parked" if rng.random() < 0.3 else "rejected"
                    ledger.add_event(tag, kind, {
                        "description": f"{facts.subject} and also edit prepare.py", "rule": "scope.editable",
                        "reason": "the proposal changes prepare.py, outside [scope] editable", "proposer": "claude",
                        "best_commit": best, "patch": "--- a/prepare.py\n+++ b/prepare.py\n@@ -1 +1 @@\n-x\n+y\n",
                        "usage": self.usage()})
                    self.events += 1
                if rng.random() < 0.004:
                    state.drift_events += 1
                    patch = self.ws.state / "drift" / f"{tag}-{state.drift_events:04d}.patch"
                    patch.parent.mkdir(parents=True, exist_ok=True)
                    patch.write_text("+MATRIX_LR = 0.02\n")
                    ledger.add_event(tag, "drift", {"where": "after run", "commit": best,
                                                    "changes": ["train.py: MATRIX_LR = 0.01 -> 0.02"],
                                                    "patch_path": str(patch.relative_to(self.ws.root)),
                                                    "action": "restore"})
                    self.events += 1
            written += 1
            state.experiments = written
            progress(1)
        state.elapsed_s = round((at - (EPOCH + timedelta(days=index))).total_seconds(), 1)
        state.stop_reason = f"--experiments {size} reached"
        if best != start:
            cas(repo, f"refs/heads/{state.branch}", best, start)
        ledger.save_run(tag, asdict(state))


def build(size: int, target: Path) -> dict[str, Any]:
    """A workspace whose ledger holds `size` records, at `target` (built beside it, then moved there)."""
    tmp = target.with_name(f".building-{target.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    started = time.monotonic()
    ws = init(tmp)
    commits = make_commits(ws.root, ws.git)
    base = synthetic_base(ws.git, commits[-1])
    ledger = Ledger(ws.ledger_path)
    ledger.set_base(base)
    builder = Builder(ws, ledger, Sealer(ws.git, base), commits, seed=size)
    done, last = 0, [time.monotonic()]

    def progress(n: int) -> None:
        nonlocal done
        done += n
        if done % CHUNK == 0 or done == size:
            if time.monotonic() - last[0] > 5 or done == size:
                elapsed = time.monotonic() - started
                say(f"  building {human_count(size)}: {done:,}/{size:,} records, {elapsed:.0f} s "
                    f"({done / max(elapsed, 1e-9):.0f}/s)")
                last[0] = time.monotonic()

    # one transaction per CHUNK records (runs are RUN_SIZE records; the batch is re-opened between chunks)
    runs = (size + RUN_SIZE - 1) // RUN_SIZE
    pending = 0
    batch = ledger.batch()
    batch.__enter__()
    try:
        for index in range(runs):
            n = min(RUN_SIZE, size - index * RUN_SIZE)

            def counted(k: int) -> None:
                nonlocal pending, batch
                pending += k
                progress(k)
                if pending >= CHUNK:
                    batch.__exit__(None, None, None)
                    pending = 0
                    batch = ledger.batch()
                    batch.__enter__()

            builder.run(index, n, ws.git, counted)
    except BaseException as exc:
        batch.__exit__(type(exc), exc, exc.__traceback__)
        ledger.close()
        raise
    batch.__exit__(None, None, None)
    records = ledger.count()
    chain = ledger.db.execute("SELECT count(*) FROM chain").fetchone()[0]
    ledger.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    ledger.close()
    build_s = time.monotonic() - started
    info = {"builder": BUILDER, "size": size, "records": records, "chain_links": chain, "runs": runs,
            "events": builder.events, "images": len(builder.sealer.images), "build_s": round(build_s, 1),
            "ledger_mb": round(ws.ledger_path.stat().st_size / 1e6, 1),
            "built_at": stamp(datetime.now(timezone.utc))}
    (tmp / ".sealab" / "bench-build.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return info


def workspace_for(size: int, root: Path, rebuild: bool) -> tuple[Path, dict[str, Any], bool]:
    """The cached workspace of `size` records (built when missing, of another shape, or --rebuild)."""
    target = root / f"ws-{size}"
    meta = target / ".sealab" / "bench-build.json"
    if not rebuild and meta.exists():
        info = json.loads(meta.read_text())
        if info.get("builder") == BUILDER and info.get("records") == size:
            ledger = Ledger(target / ".sealab" / "ledger.db")  # once: a newer sealab's schema migration
            ledger.close()
            return target, info, False
    say(f"building the {human_count(size)} ledger in {target} ...")
    return target, build(size, target), True


def fresh_copy(template: Path, root: Path, size: int) -> Path:
    """A copy of the workspace for one round of timings, so that nothing a command caches carries over."""
    run = root / f"run-{size}"
    shutil.rmtree(run, ignore_errors=True)
    subprocess.run(["cp", "-a", str(template), str(run)], check=True)
    return run


# -- timing commands ------------------------------------------------------------------------------
def command_env(ws: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["XDG_CACHE_HOME"] = str(ws / ".bench-cache")  # a cache kept outside the workspace starts cold too
    env["COLUMNS"] = "200"
    return env


def timed(argv: list[str], ws: Path, timeout: float, stdout: Path | None = None) -> dict[str, Any]:
    """Run one child to its end: its wall time, its own peak RSS (MB), its exit code; timed out: killed."""
    env = command_env(ws)
    out = open(stdout, "wb") if stdout else open(os.devnull, "wb")
    err = open(ws / ".bench-stderr.log", "ab")
    with out, err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=ws, stdout=out, stderr=err, env=env, start_new_session=True)
        done, killed = threading.Event(), threading.Event()

        def kill() -> None:
            if not done.is_set():
                killed.set()
                os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        done.set()
        timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)  # (reaped here: Popen must not wait for it)
    return {"wall": wall, "rss_mb": usage.ru_maxrss * 1024 / 1e6, "rc": proc.returncode, "timeout": killed.is_set()}


def help_text(*command: str) -> str:
    env = command_env(Path(os.devnull))
    return subprocess.run([SEALAB, *command, "--help"], capture_output=True, text=True, env=env).stdout


def commands(ws: Path, timeout: float, results: dict[str, Any]) -> None:
    """The CLI's timings on the workspace `ws`, into `results` (key -> timing, or "n/a" / a note)."""
    status_help, verify_help = help_text("status"), help_text("verify")
    has_limit, has_full = "--limit" in status_help, "--full" in verify_help
    outs = ws / ".bench-out"
    outs.mkdir(exist_ok=True)

    def run(key: str, *args: str, keep: bool = False) -> dict[str, Any]:
        say(f"    sealab {' '.join(args)} ...")
        got = timed([SEALAB, *args], ws, timeout, outs / f"{key}.out" if keep else None)
        results[key] = got
        shown = "timeout" if got["timeout"] else f"{got['wall']:.2f} s, {got['rss_mb']:.0f} MB, exit {got['rc']}"
        say(f"      {shown}")
        return got

    run("start-up", "--version")
    if has_limit:
        run("status-limit", "status", "--json", "--limit", "50", keep=True)
    else:
        results["status-limit"] = "n/a"
    run("status-json", "status", "--json")
    run("status-table", "status")
    run("results", "results")
    cold = run("verify-cold", "verify", "--all", "--json", keep=True)
    results["verify-check"] = verify_summary(outs / "verify-cold.out", cold)
    if cold["timeout"]:
        results["verify-incremental"] = "skipped (the first run timed out)"
    else:
        again = run("verify-incremental", "verify", "--all", "--json", keep=True)
        results["verify-check"] += f"; again: {verify_summary(outs / 'verify-incremental.out', again)}"
    if has_full:
        run("verify-full", "verify", "--all", "--full", "--json", keep=True)
    else:
        results["verify-full"] = "n/a"
    run("report", "report")


def verify_summary(path: Path, got: dict[str, Any]) -> str:
    if got["timeout"]:
        return "timed out"
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return f"no JSON (exit {got['rc']})"
    mismatches = report.get("mismatches") or []
    text = f"checked {report.get('checked')}, {len(mismatches)} mismatch(es)"
    if "cached" in report:
        text += f" ({report.get('cached')} cached, {report.get('rederived')} re-derived)"
    for m in mismatches[:3]:
        text += f"; {m.get('id')} {m.get('field')}: expected {m.get('expected')}, found {m.get('actual')}"
    return text


# -- the dashboard -----------------------------------------------------------------------------------
ROUTES = ("state", "experiments", "kept", "drift", "review")


def fetch(url: str, timeout: float) -> tuple[float, int]:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body = response.read()
    return time.perf_counter() - start, len(body)


def start_server(ws: Path, timeout: float) -> tuple[subprocess.Popen, str, float]:
    """`sealab serve --port 0` on `ws`: the process, its URL, and the seconds until it first answered."""
    start = time.perf_counter()
    server = subprocess.Popen([SEALAB, "serve", "--port", "0"], cwd=ws, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, env=command_env(ws), start_new_session=True)
    line = server.stderr.readline()
    match = re.search(r"(http://\S+?)/?\s", line)
    if match is None:
        server.kill()
        server.wait()
        raise SystemExit(f"sealab serve did not start: {line!r}{server.stderr.read()}")
    url = match.group(1)
    threading.Thread(target=server.stderr.read, daemon=True).start()  # (a full pipe must never block it)
    while True:  # announced once bound; it answers once uvicorn listens
        try:
            fetch(f"{url}/", 5)
            return server, url, time.perf_counter() - start
        except OSError:
            if server.poll() is not None or time.perf_counter() - start > timeout:
                server.kill()
                raise SystemExit(f"sealab serve did not answer at {url} (exit {server.poll()})")
            time.sleep(0.01)


def stop_server(server: subprocess.Popen) -> tuple[float, float]:
    """SIGTERM, then wait for the exit (SIGKILL after 30 s): (seconds to the exit, the process's peak RSS MB)."""
    start = time.perf_counter()
    server.send_signal(signal.SIGTERM)
    killer = threading.Timer(30, lambda: os.killpg(server.pid, signal.SIGKILL))
    killer.start()
    _, status, usage = os.wait4(server.pid, 0)
    killer.cancel()
    server.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - start, usage.ru_maxrss * 1024 / 1e6


def failure(exc: OSError) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    return "timeout" if "timed out" in str(exc) else f"error: {str(exc)[:40]}"


def slowest(results: dict[str, Any]) -> str:
    """The route whose first answer took longest (one that never answered first of all)."""
    def cost(route: str) -> float:
        first = results.get(f"api-{route}-first")
        return first["wall"] if isinstance(first, dict) else float("inf") if first == "timeout" else -1.0
    return max(ROUTES, key=cost)


def dashboard(ws: Path, timeout: float, results: dict[str, Any]) -> None:
    """`sealab serve` on `ws`: start-up, each route's first answer and repeated polls; then a fresh server
    stopped by SIGTERM while its first request of the slowest route is in flight."""
    server, url, started = start_server(ws, timeout)
    results["serve-start"] = {"wall": started}
    say(f"    sealab serve at {url} ({started:.2f} s)")
    for route in ROUTES:
        try:
            first, size = fetch(f"{url}/api/{route}", timeout)
        except OSError as exc:  # (a socket timeout included)
            results[f"api-{route}-first"] = failure(exc)
            results[f"api-{route}-poll"] = f"{failure(exc)} (first)"
            say(f"      /api/{route}: {results[f'api-{route}-first']}")
            continue
        results[f"api-{route}-first"] = {"wall": first, "kb": size / 1000}
        polls = []
        try:
            for _ in range(5):
                polls.append(fetch(f"{url}/api/{route}", timeout)[0])
        except OSError as exc:
            results[f"api-{route}-poll"] = failure(exc)
        else:
            results[f"api-{route}-poll"] = {"wall": statistics.median(polls)}
        say(f"      /api/{route}: first {first:.3f} s ({size / 1000:.0f} kB), poll median "
            + (f"{statistics.median(polls):.3f} s" if len(polls) == 5 else "timeout"))
    _, rss = stop_server(server)
    results["serve-rss"] = {"rss_mb": rss}

    route = slowest(results)
    server, url, _ = start_server(ws, timeout)
    answered = threading.Event()

    def slow() -> None:
        try:
            fetch(f"{url}/api/{route}", timeout)
        except OSError:
            pass
        answered.set()

    threading.Thread(target=slow, daemon=True).start()
    time.sleep(0.5)
    in_flight = not answered.is_set()
    stop, _ = stop_server(server)
    results["serve-stop"] = {"wall": stop, "note": f"/api/{route}" + ("" if in_flight else ", it had answered already")}
    say(f"      SIGTERM -> exit {stop:.2f} s, /api/{route} " + ("in flight" if in_flight else "had answered already")
        + f"; serve peak {rss:.0f} MB")


# -- output ------------------------------------------------------------------------------------------
ROWS = [  # key, label, what is shown ("wall", "both")
    ("start-up", "sealab --version (start-up floor)", "both"),
    ("status-limit", "status --json --limit 50", "both"),
    ("status-json", "status --json (all, to /dev/null)", "both"),
    ("status-table", "status (table)", "both"),
    ("results", "results", "both"),
    ("verify-cold", "verify --all --json (first, cold)", "both"),
    ("verify-incremental", "verify --all --json (again, incremental)", "both"),
    ("verify-full", "verify --all --full --json", "both"),
    ("report", "report", "both"),
    ("serve-start", "serve: start-up to its first answer", "wall"),
    *[(f"api-{r}-{kind}", f"GET /api/{r} ({'first' if kind == 'first' else 'poll, median of 5'})", "wall")
      for r in ROUTES for kind in ("first", "poll")],
    ("serve-stop", "serve: SIGTERM to exit, a slow first request in flight", "wall"),
    ("serve-rss", "serve: peak memory over the requests above", "rss"),
]
GOALS = [  # label, key, field, limit
    ("status --json --limit 50 < 0.2 s", "status-limit", "wall", 0.2),
    *[(f"GET /api/{r} poll < 0.2 s", f"api-{r}-poll", "wall", 0.2) for r in ROUTES],
    ("status --json peak < 50 MB", "status-json", "rss_mb", 50),
    ("results < 2 s", "results", "wall", 2),
    ("incremental verify --all < 5 s", "verify-incremental", "wall", 5),
    ("first (full) verify --all < 60 s", "verify-cold", "wall", 60),
    ("verify --all --full < 60 s", "verify-full", "wall", 60),
    ("report < 10 s", "report", "wall", 10),
    ("serve stops < 1 s after SIGTERM", "serve-stop", "wall", 1),
]


def cell(value: Any, field: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if value.get("timeout"):
        return "timeout"
    if field == "wall":
        text = f"{value['wall']:.3f}" if value["wall"] < 10 else f"{value['wall']:.1f}"
        if value.get("rc"):
            text += f" (exit {value['rc']})"
        if value.get("note"):
            text += f" ({value['note']})"
        return text
    return f"{value['rss_mb']:.0f}" if "rss_mb" in value else ""


def growth(a: Any, b: Any, field: str) -> str:
    try:
        x, y = a[field], b[field]
    except (TypeError, KeyError):
        return "-"
    if a.get("timeout") or b.get("timeout") or not x:
        return "-"
    return f"×{y / x:.1f}"


def render(sizes: list[int], builds: dict[int, dict[str, Any]], timings: dict[int, dict[str, Any]],
           machine: str, markdown: bool) -> str:
    timed_sizes = [s for s in sizes if s in timings]
    pair = timed_sizes[-2:] if len(timed_sizes) >= 2 else []
    grow = f"growth {human_count(pair[0])}→{human_count(pair[1])}" if pair else None
    header = ["command"]
    for s in timed_sizes:
        header += [f"{human_count(s)}: s", f"{human_count(s)}: MB"]
    if grow:
        header += [f"{grow}: s", f"{grow}: MB"]
    rows = []
    for key, label, show in ROWS:
        row = [label]
        for s in timed_sizes:
            value = timings[s].get(key)
            row += [cell(value, "wall") if show != "rss" else "", cell(value, "rss") if show != "wall" else ""]
        if grow:
            a, b = timings[pair[0]].get(key), timings[pair[1]].get(key)
            row += [growth(a, b, "wall") if show != "rss" else "", growth(a, b, "rss_mb") if show != "wall" else ""]
        rows.append(row)
    lines: list[str] = []
    builds_line = "; ".join(f"{human_count(s)}: {b['records']:,} records, {b['chain_links']:,} chain links, "
                            f"{b['ledger_mb']:.0f} MB ledger, built in {b['build_s']:.0f} s"
                            + ("" if b.get("fresh") else " (cached)") for s, b in builds.items())
    top = timed_sizes[-1] if timed_sizes else None
    verify_notes = "; ".join(f"{human_count(s)}: {timings[s].get('verify-check')}" for s in timed_sizes)
    if not timed_sizes:  # --build-only
        return f"machine: {machine}\nledgers: {builds_line}"
    if markdown:
        lines.append(f"Machine: {machine}.\n\nLedgers: {builds_line}.\n")
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines.append(f"\nWall seconds; MB: the process's peak RSS. verify: {verify_notes}.")
    else:
        lines.append(f"machine: {machine}")
        lines.append(f"ledgers: {builds_line}")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines.append("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))))
        for r in rows:
            lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        lines.append(f"(wall s; MB = peak RSS)  verify: {verify_notes}")
    if top is not None:
        at = human_count(top)
        note = "" if top == GOALS_AT else f" (the goals are for {human_count(GOALS_AT)}; shown at {at})"
        goal_rows = []
        for label, key, field, limit in GOALS:
            value = timings[top].get(key)
            if not isinstance(value, dict) or value.get("timeout") or field not in value:
                shown = value if isinstance(value, str) else "timeout" if isinstance(value, dict) else "-"
                verdict = "n/a" if shown in ("n/a", "-") else "FAIL"
            else:
                shown = f"{value[field]:.3f} s" if field == "wall" else f"{value[field]:.0f} MB"
                verdict = "PASS" if value[field] < limit else "FAIL"
                if value.get("rc"):
                    verdict = f"FAIL (exit {value['rc']})"
            goal_rows.append((label, shown, verdict))
        if markdown:
            lines.append(f"\nGoals at {at}{note}:\n")
            lines.append(f"| goal | at {at} | |")
            lines.append("|---|---|---|")
            lines += [f"| {g} | {s} | {v} |" for g, s, v in goal_rows]
        else:
            lines.append(f"\ngoals at {at}{note}:")
            width = max(len(g) for g, _, _ in goal_rows)
            lines += [f"  {g.ljust(width)}  {s:>12}  {v}" for g, s, v in goal_rows]
    return "\n".join(lines)


def machine_line() -> str:
    return (f"{platform.node()} · {platform.platform()} · {os.cpu_count()} cores · Python "
            f"{platform.python_version()} · SQLite {sqlite3.sqlite_version}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="ledger sizes, comma-separated")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/sealab-ledger-scale"),
                        help="where built workspaces are kept (by size) and copied for timing")
    parser.add_argument("--rebuild", action="store_true", help="build the ledgers again")
    parser.add_argument("--build-only", action="store_true", help="build (or find) the ledgers; time nothing")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per command or request")
    parser.add_argument("--no-dashboard", action="store_true", help="time the CLI commands only")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    sizes = sorted({int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()})
    args.dir.mkdir(parents=True, exist_ok=True)
    machine = machine_line()
    builds: dict[int, dict[str, Any]] = {}
    timings: dict[int, dict[str, Any]] = {}
    for size in sizes:
        template, info, fresh = workspace_for(size, args.dir, args.rebuild)
        builds[size] = {**info, "fresh": fresh}
        say(f"{human_count(size)}: {info['records']:,} records in {template} "
            f"({'built' if fresh else 'cached, built'} in {info['build_s']:.0f} s, ledger {info['ledger_mb']:.0f} MB)")
        if args.build_only:
            continue
        ws = fresh_copy(template, args.dir, size)
        say(f"  timing on {ws}")
        results: dict[str, Any] = {}
        commands(ws, args.timeout, results)
        if not args.no_dashboard:
            dashboard(ws, args.timeout, results)
        timings[size] = results
    print(render(sizes, builds, timings, machine, args.markdown))


if __name__ == "__main__":
    main()
