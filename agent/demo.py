"""`sealab demo`: the whole story on the embedded offline default, in a few minutes on a CPU.

Scaffold a workspace, build the base offline, then commit and run three variants of one
hyperparameter through the sealed executor. Before the last run a "linter" rewrites SCALAR_LR in
the working tree: the run still uses the commit, and the drift is recorded and shown.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from agent.gitops import commit_file, set_constant
from agent.progress import build_base_with_progress
from agent.report import results_tsv
from executor import logs
from executor.docker_engine import Engine
from executor.drift import describe
from executor.ledger import Ledger
from executor.run import execute, recover
from executor.workspace import Workspace, init

VARIANTS = (("MATRIX_LR", "0.004"), ("MATRIX_LR", "0.002"), ("MATRIX_LR", "0.008"))  # baseline first


def run_demo(directory: Path, budget: float, console: Console) -> None:
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

    repo = ws.repo
    toml = (ws.root / "sealab.toml").read_text()
    budgeted = set_constant(toml, "train_seconds", f"{budget:g}")
    if budgeted != toml:
        commit_file(repo, "sealab.toml", budgeted, f"demo: training budget {budget:g} s")
    console.print(f"[bold]3.[/] three sealed experiments, {budget:g} s of training each")
    records = []
    for i, (name, value) in enumerate(VARIANTS):
        train = (ws.root / "train.py").read_text()
        changed = set_constant(train, name, value)
        if changed != train:
            commit_file(repo, "train.py", changed, f"{name} = {value}")
        if i == len(VARIANTS) - 1:  # the incident: a linter edits the working tree after the commit
            linted = set_constant((ws.root / "train.py").read_text(), "SCALAR_LR", "0.3")
            (ws.root / "train.py").write_text(linted)
            console.print("   [yellow]a linter rewrote SCALAR_LR = 0.5 -> 0.3 in the working tree (not committed)[/]")
        with console.status(f"running {repo.head.commit.hexsha[:12]} ({repo.head.commit.summary})"):
            record = execute(ws, "HEAD", engine, ledger)
        records.append(record)
        val = (record.get("metrics") or {}).get("val_bpb")
        console.print(f"   {record['status']:<8} {record['commit'][:12]}  {record['description']:<28} "
                      f"val_bpb {'-' if val is None else f'{val:.4f}'}")
    repo.git.checkout("--", "train.py")  # undo the "linter"
    console.print("[bold]4.[/] results")
    table = Table("experiment", "commit", "description", "status", "val_bpb", "image", "drift", "SCALAR_LR ran")
    for r in records:
        metrics = r.get("metrics") or {}
        table.add_row(r["id"], r["commit"][:12], r["description"], r["status"],
                      f"{metrics['val_bpb']:.4f}" if "val_bpb" in metrics else "-", str(r["image_id"])[:19],
                      "; ".join(describe(r["drift"])) or "-", str(metrics.get("hyperparameters", {}).get("SCALAR_LR")))
    console.print(table)
    console.print(f"results.tsv (`sealab -C {directory} results`):")
    print(results_tsv(ledger.records()), end="")
    failed = [r for r in records if r["status"] != "ok"]
    if failed:
        raise SystemExit(f"demo: {len(failed)} experiment(s) did not finish ok: " +
                         ", ".join(f"{r['id']} {r['status']} ({r['reason']})" for r in failed))
