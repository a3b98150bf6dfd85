"""Shared pieces of the fault suite and the kill -9 soak: a fast workspace, kill points, consistency checks.

`fast_workspace` scaffolds a workspace whose train.py is a tiny deterministic bigram model trained a
fixed number of steps (`[budget] steps`), and whose policy measures the baseline `noise_runs` times.

`launch` starts `sealab` under `tests/faults/pause.py`, which pauses the process at one named point
(see that module) so that a test can kill -9 it exactly there.

`audit` checks a workspace after a kill and a resume and returns every problem it finds, classified as
the soak table counts them: lost records, duplicated records, wrong attributions, other problems.
"""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import TINY_TRAIN

ROOT = Path(__file__).resolve().parents[2]
SEALAB = str(Path(sys.executable).with_name("sealab"))
PAUSE = str(Path(__file__).with_name("pause.py"))
FINISHED = ("ok", "crash", "timeout", "oom", "rejected")  # ran to an end the loop must decide on



def policy_text(noise_runs: int = 1, min_delta: float = 0.0001) -> str:
    """The shipped default policy with a short baseline (`noise_runs` repeats); a large `min_delta`
    makes every proposal a discard."""
    import policies

    shipped = Path(policies.policy_path("default")).read_text()
    acceptance = (f"[acceptance]\nmin_delta = {min_delta}\nnoise_runs = {noise_runs}\nz = 1.0\n"
                  'reason = "fault tests: a short baseline"\n\n')
    retry = ('[retry]\ninfra_error = 1\nwait_s = 20\n'
             'reason = "fault tests: one retry, after waiting at most 20 s for the engine"\n')
    text = re.sub(r"\[acceptance\][^\[]*", acceptance, shipped, count=1)
    return re.sub(r"\[retry\][^\[]*", retry, text, count=1)


def fast_workspace(parent: Path, base: Any, *, steps: int = 4, noise_runs: int = 1, name: str = "ws",
                   grace: float = 60, min_delta: float = 0.0001) -> Path:
    """A workspace at parent/name with the tiny train.py, a step budget and a short-baseline policy."""
    from agent.gitops import commit_file, set_constant
    from executor.ledger import Ledger
    from agent.create import init

    policy = parent / f"{name}-policy.toml"
    policy.write_text(policy_text(noise_runs, min_delta))
    ws = init(parent / name)
    ledger = Ledger(ws.ledger_path)
    ledger.set_base(base)
    ledger.close()
    toml = (ws.root / "sealab.toml").read_text()
    toml = set_constant(toml, "train_seconds", "2")
    toml = set_constant(toml, "grace_seconds", f"{grace:g}")
    toml = toml.replace("# steps = 200", f"steps = {steps}")
    toml = toml.replace('name = "default"', f'name = "{policy}"')
    assert f"steps = {steps}" in toml and str(policy) in toml
    (ws.root / "train.py").write_text(TINY_TRAIN)
    commit_file(ws.git, "sealab.toml", toml, "fault-test settings")
    commit_file(ws.git, "train.py", TINY_TRAIN, "tiny deterministic train.py")
    return ws.root


def run_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "SEALAB_FAULT_PAUSE",
                                                            "SEALAB_FAULT_CONTINUE")}
    env.update(extra or {})
    return env


def sealab(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([SEALAB, *args], cwd=cwd, env=run_env(env), capture_output=True, text=True,
                          timeout=timeout)


def launch(args: list[str], cwd: Path, *, pause: str | None = None, mark: Path | None = None,
           go_on: Path | None = None, env: dict | None = None) -> subprocess.Popen:
    """Start `sealab ARGS`; with `pause` ("point" or "point:n"), under pause.py, writing `mark` when paused
    and going on once `go_on` exists (never, without it)."""
    extra = dict(env or {})
    if pause:
        extra.update(SEALAB_FAULT_PAUSE=pause, SEALAB_FAULT_MARK=str(mark))
        if go_on is not None:
            extra["SEALAB_FAULT_CONTINUE"] = str(go_on)
        cmd = [sys.executable, PAUSE, *args]
    else:
        cmd = [SEALAB, *args]
    return subprocess.Popen(cmd, cwd=cwd, env=run_env(extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> bool:
    """Wait until `path` exists (True) or the process ends or time runs out (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def said(stderr: str) -> list[str]:
    """What a command said on stderr, without its log and progress lines (logfmt off a terminal:
    `timestamp=… level=… event=…`)."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("timestamp=")]


def kill9(proc: subprocess.Popen) -> None:
    """SIGKILL the sealab process only (its containers are left behind, as after a real kill -9)."""
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()


def ledger_rows(root: Path, sql: str = "SELECT record FROM experiments ORDER BY seq") -> list[dict]:
    """The records as committed now (or the JSON column `sql` selects), read without writing (for
    snapshots just before a kill)."""
    db = root / ".sealab" / "ledger.db"
    if not db.exists():
        return []
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            return [json.loads(r[0]) for r in con.execute(sql)]
        finally:
            con.close()
    except sqlite3.Error:
        return []


def integrity(db: Path) -> str:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


def constants(source: str) -> dict:
    tree = ast.parse(source)
    return {t.id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name) and t.id.isupper()}


@dataclass
class Audit:
    """What `audit` found; each list holds one-line descriptions."""

    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    wrong_attribution: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.lost or self.duplicated or self.wrong_attribution or self.other)

    def __str__(self) -> str:
        return "; ".join(f"{k}: {v}" for k, v in (("lost", self.lost), ("duplicated", self.duplicated),
                                                 ("wrong attribution", self.wrong_attribution),
                                                 ("other", self.other)) if v) or "clean"


def audit(root: Path, tag: str | None, *, before: list[dict] = (), noise_runs: int = 1, engine: Any = None,
          verify: bool = True) -> Audit:
    """Check a workspace after a kill -9 and a resume of run `tag` (None: only `sealab exec` was used).

    * lost: a record committed before the kill (`before`) is gone or its finished status changed; an
      experiment named by a ref, a log or an output directory has no record; a finished record of the
      run was never decided (no decision: its result counts nowhere).
    * duplicated: a proposal's commit ran to an end more than once; the start commit ran as a baseline
      more than `noise_runs` times; an experiment ID appears twice.
    * wrong attribution: a finished record without the run's tag; an ok record whose hyperparameters
      are not its commit's; a record whose image is labelled with another commit; a kept commit not on
      the branch or a discarded one not under refs/sealab/discarded/<id>.
    * other: the branch is not at the run's best commit, `sealab verify --all` or the SQLite
      integrity check is not clean, a record is still `running`, a container of the workspace is left.
    """
    import git

    from executor.ledger import Ledger

    found = Audit()
    repo = git.Repo(root)
    db = root / ".sealab" / "ledger.db"
    check = integrity(db)
    if check != "ok":
        found.other.append(f"integrity_check: {check}")
    ledger = Ledger(db)
    try:
        records = ledger.records()
        state = ledger.run_state(tag) if tag else None
        chain = ledger.chain_problems()
    finally:
        ledger.close()
    found.records = records
    if chain:
        found.other.append(f"chain: {chain[:3]}")
    by_id = {r["id"]: r for r in records}
    ids = [r["id"] for r in records]
    if len(ids) != len(set(ids)):
        found.duplicated.append("an experiment ID appears twice")
    for old in before:
        new = by_id.get(old["id"])
        if new is None:
            found.lost.append(f"{old['id']} ({old['status']}) is gone")
        elif old["status"] != "running" and new["status"] != old["status"]:
            found.lost.append(f"{old['id']} went from {old['status']} to {new['status']}")
    outputs = root / ".sealab" / "outputs"
    named = {p.name.split(".")[0] for p in outputs.iterdir()} if outputs.exists() else set()  # <id>[.<phase>]
    named |= {p.name.split(".")[0] for p in (root / ".sealab" / "logs").glob("*.log")}
    named |= {r.path.rsplit("/", 1)[1] for r in repo.refs if r.path.startswith("refs/sealab/discarded/")
              and not r.path.rsplit("/", 1)[1].startswith("unrun-")}
    for eid in sorted(named - set(by_id)):
        found.lost.append(f"experiment {eid} is named on disk or by a ref but has no record")
    if engine is not None:
        left = [c["Names"] for c in engine.api.containers(all=True, filters={"label": "sealab.experiment"})
                if c["Labels"].get("sealab.experiment") in by_id]
        if left:
            found.other.append(f"containers left: {left}")
    if verify:
        proc = sealab("verify", "--all", "--json", cwd=root)
        if proc.returncode != 0:
            found.other.append(f"verify --all exit {proc.returncode}: {proc.stdout[-300:]} {proc.stderr[-300:]}")
    if tag is None:  # `sealab exec` only: no run to check
        return found
    if state is None:
        found.other.append(f"no run state for {tag}")
        return found
    start = state["start_commit"]
    ran: dict[str, list[str]] = {}
    for r in records:
        if r["status"] == "running":
            found.other.append(f"{r['id']} is still running")
        if r["status"] not in FINISHED:
            continue
        ran.setdefault(r["commit"], []).append(r["id"])
        if r.get("run_tag") != tag:
            found.wrong_attribution.append(f"{r['id']} ({r['status']}) carries run_tag {r.get('run_tag')!r}")
        if not r.get("decision"):
            found.lost.append(f"{r['id']} ({r['status']}) was never decided")
    for commit, eids in ran.items():
        limit = noise_runs if commit == start else 1
        if len(eids) > limit:
            found.duplicated.append(f"commit {commit[:12]} ran {len(eids)} times: {eids}")
    tip = repo.git.rev_parse(state["branch"])
    kept = [r for r in records if r.get("decision") == "keep" and r.get("run_tag") == tag]
    best = kept[-1]["commit"] if kept else start
    if not (tip == state["best_commit"] == best):
        found.other.append(f"branch at {tip[:12]}, run state best {state['best_commit'][:12]}, last kept {best[:12]}")
    if state.get("pending"):
        found.other.append(f"run state still pending: {state['pending']}")
    for r in records:
        if r.get("decision") == "discard":
            ref = f"refs/sealab/discarded/{r['id']}"
            try:
                at = repo.git.rev_parse("--verify", "-q", ref)
            except git.GitCommandError:
                at = None
            if at != r["commit"]:
                found.wrong_attribution.append(f"{ref} is {at}, the record ran {r['commit'][:12]}")
        if r.get("decision") == "keep" and not repo.is_ancestor(r["commit"], tip):
            found.wrong_attribution.append(f"kept {r['commit'][:12]} is not on {state['branch']}")
        if r["status"] == "ok":
            source = (repo.commit(r["commit"]).tree / "train.py").data_stream.read().decode()
            ran_with = (r.get("metrics") or {}).get("hyperparameters", {})
            wanted = {k: v for k, v in constants(source).items() if k in ran_with}
            if wanted != ran_with:
                found.wrong_attribution.append(f"{r['id']} ran {ran_with}, its commit says {wanted}")
        if engine is not None and r.get("image_id"):
            label = engine.image_labels(r["image_id"]).get("org.opencontainers.image.revision") \
                if engine.image_id(r["image_id"]) else r["commit"]
            if label != r["commit"]:
                found.wrong_attribution.append(f"{r['id']} image is labelled {label}, the record says {r['commit']}")
    return found
