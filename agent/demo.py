"""`sealab demo`: the overnight loop on the embedded offline default, in a few minutes on a CPU.

Scaffold a workspace, build the base offline, then `sealab run` with the offline proposer for a few
experiments while a simulated linter keeps rewriting `SCALAR_LR = 0.5` to `0.3` in the working tree
(the incident sealab exists for). Every run uses its commit; each linter edit becomes a drift event,
is undone, and shows in the report.
"""

from __future__ import annotations

import random
import re
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from agent.create import init
from agent.gitops import commit_file, set_constant
from agent.loop import Loop
from agent.offline import OfflineProposer
from agent.progress import LoopDisplay, build_base_with_progress
from executor import logs
from executor.docker_engine import Engine
from executor.ledger import Ledger
from executor.record import Decision
from executor.run import recover
from executor.types import Status
from executor.workspace import Workspace
from policies import load_policy


def linter(root: Path, stop: threading.Event, seed: int = 1) -> None:
    """Every few seconds, 'format' train.py the way the incident's linter did."""
    rng = random.Random(seed)
    while not stop.wait(rng.uniform(20, 45)):
        path = root / "train.py"
        text = path.read_text()
        linted = re.sub(r"^SCALAR_LR = [^\s#]+", "SCALAR_LR = 0.3", text, count=1, flags=re.MULTILINE)
        if linted != text:
            path.write_text(linted)


def run_demo(directory: Path, budget: float, experiments: int, console: Console) -> None:
    if not (directory / "sealab.toml").exists():
        init(directory)
        console.print(f"[bold]1.[/] scaffolded workspace {directory}")
    ws = Workspace.open(directory)
    logs.configure(ws.logs / "sealab.jsonl")
    engine, ledger = Engine.connect(), Ledger(ws.ledger_path)
    recover(ledger, engine)
    cfg = ws.config()
    console.print("[bold]2.[/] base environment (offline: Debian rootfs + torch wheel + embedded data)")
    ledger.set_base(build_base_with_progress(engine, source=cfg.base_from, wheels=Path(cfg.wheels), console=console))

    toml = (ws.root / "sealab.toml").read_text()
    budgeted = set_constant(toml, "train_seconds", f"{budget:g}")
    if budgeted != toml:
        commit_file(ws.git, "sealab.toml", budgeted, f"demo: training budget {budget:g} s")
    policy = load_policy(cfg.policy)
    tag = "demo-" + time.strftime("%Y%m%d-%H%M%S")
    console.print(f"[bold]3.[/] sealab run --experiments {experiments} --tag {tag} (offline proposer, "
                  f"{budget:g} s of training each, baseline ×{policy.acceptance.noise_runs}); "
                  "a simulated linter keeps rewriting SCALAR_LR in the working tree")
    stop = threading.Event()
    thread = threading.Thread(target=linter, args=(ws.root, stop), daemon=True)
    with LoopDisplay(console, total=experiments) as display:
        loop = Loop(ws, engine, ledger, policy, OfflineProposer(seed=0), drift_action=policy.drift.action,
                    on_event=display.event)
        state = loop.start(tag)
        thread.start()
        try:
            state = loop.run(state, experiments=experiments, hours=None)
        finally:
            stop.set()
            thread.join()
            loop.check_drift(state, "end")  # the linter's last edit, if any, is recorded too

    records = ledger.experiments(tag)
    table = Table("experiment", "commit", "description", "status", "decision", "val_bpb", "image", "SCALAR_LR ran")
    for r in records:
        metrics = r.metrics or {}
        table.add_row(r.id, r.commit[:12], r.description, r.status.value, r.decision.value if r.decision else "-",
                      f"{metrics['val_bpb']:.4f}" if "val_bpb" in metrics else "-", str(r.image_id)[:19],
                      str(metrics.get("hyperparameters", {}).get("SCALAR_LR")))
    console.print("[bold]4.[/] results")
    console.print(table)
    drift = [e for e in ledger.events("drift") if e["run_tag"] == tag]
    for event in drift:
        console.print(f"   drift ({event['where']}, {event['action']}): {'; '.join(event['changes'])}")
    from agent.html_report import write_report

    page, chart = write_report(ledger, ws.state / "report", tag=tag, repo=ws.git, root=ws.root)
    kept = sum(1 for r in records if r.decision == Decision.KEEP)
    console.print(f"[bold]5.[/] best val_bpb {state.best_value:.4f} at {state.best_commit[:12]} on branch "
                  f"{state.branch}; {kept} kept beyond the noise floor ({state.threshold:.4f}); "
                  f"{len(drift)} drift event(s) recorded and undone")
    console.print(f"   report: {page}\n   chart:  {chart}")
    if not records or any(r.status == Status.INFRA_ERROR for r in records):
        raise SystemExit("demo: the run did not complete")
