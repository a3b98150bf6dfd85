"""`sealab exec` against the real engine: the linter case, identity, deadlines, kill -9 (image forgery and the
sandbox's hardening are in tests/attacks/test_tampering.py and test_container.py)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time

import git
import pytest

from tests.conftest import SEALAB, commit_train, sealab, sealab_json

pytestmark = pytest.mark.docker

SECRET = "sk-ant-test-secret-should-never-be-seen"


def record_of(root, experiment_id):
    return next(r for r in sealab_json("status", cwd=root) if r["id"] == experiment_id)


def test_linter_drift_runs_the_commit(make_workspace):
    """A working-tree edit after the commit is reported as drift; the container runs the committed value."""
    root = make_workspace()
    head = git.Repo(root).head.commit.hexsha
    train = (root / "train.py").read_text()
    assert "SCALAR_LR = 0.5" in train
    (root / "train.py").write_text(train.replace("SCALAR_LR = 0.5", "SCALAR_LR = 0.3"))
    proc = sealab("exec", "--json", cwd=root, env={"ANTHROPIC_API_KEY": SECRET})
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["status"] == "ok" and record["commit"] == head
    assert record["metrics"]["hyperparameters"]["SCALAR_LR"] == 0.5
    assert 0 < record["metrics"]["val_bpb"] < 20
    changes = [c for d in record["drift"] for c in d["changes"]]
    assert "SCALAR_LR = 0.5 -> 0.3" in changes and record["drift"][0]["path"] == "train.py"
    assert "drift" in proc.stderr and "SCALAR_LR = 0.5 -> 0.3" in proc.stderr
    assert set(record["durations"]) == {"seal", "load", "verify", "eval_ahead", "run", "eval", "score", "total"}
    assert record["metrics"]["metric_source"] == "evaluator" and record["metrics"]["eval_causal"] is True
    # One canonical JSON log line for the experiment, bound to its id, commit and image.
    events = [json.loads(line) for line in (root / ".sealab" / "logs" / "sealab.jsonl").read_text().splitlines()]
    finished = [e for e in events if e["event"] == "experiment.finished"]
    assert len(finished) == 1 and finished[0]["experiment_id"] == record["id"]
    assert finished[0]["commit"] == head[:12] and record["image_id"].startswith(finished[0]["image"])
    assert finished[0]["status"] == "ok" and finished[0]["metric"] == record["metrics"]["val_bpb"]
    # The API key of the orchestrator reaches neither the ledger nor the logs.
    state = root / ".sealab"
    for path in state.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_same_commit_same_image_id(make_workspace, engine):
    """Sealing a commit twice, and again after deleting the image, gives one ID; a changed byte another."""
    root = make_workspace()
    first = sealab_json("seal", cwd=root)
    assert sealab_json("seal", cwd=root)["image_id"] == first["image_id"]
    engine.remove_image(first["tag"])
    assert engine.image_id(first["image_id"]) is None
    again = sealab_json("seal", cwd=root)
    assert again["image_id"] == first["image_id"] and engine.image_id(first["image_id"]) == first["image_id"]
    assert again["labels"]["org.opencontainers.image.revision"] == git.Repo(root).head.commit.hexsha
    train = (root / "train.py").read_text()
    commit_train(root, train + "\n")
    assert sealab_json("seal", cwd=root)["image_id"] != first["image_id"]


FORK_BOMB = '''
import json, os, time
children, error = 0, None
try:
    while True:
        if os.fork() == 0:
            time.sleep(600)
            os._exit(0)
        children += 1
except OSError as exc:
    error = str(exc)
json.dump({"children": children, "error": error}, open("/out/fork.json", "w"))
time.sleep(600)

def train(h):
    pass
'''


def test_a_commit_without_sealab_toml_is_refused_alike_by_seal_and_exec(make_workspace, engine):
    """The work tree keeps its sealab.toml, the commit has none: seal and exec both refuse in one line, exit 2
    (a run uses the commit's settings, never the work tree's), and nothing is sealed or recorded."""
    root = make_workspace()
    repo = git.Repo(root)
    repo.index.remove(["sealab.toml"])
    repo.index.commit("drop the config from the commit only")
    for command in ("seal", "exec"):
        proc = sealab(command, cwd=root)
        assert proc.returncode == 2, (command, proc.stderr)
        assert proc.stderr.strip().splitlines() == [
            f"sealab: error: commit {repo.head.commit.hexsha[:12]} has no sealab.toml: a run uses the commit's "
            "own settings; commit one (git add sealab.toml && git commit)"], command
    assert (root / "sealab.toml").exists() and sealab_json("status", cwd=root) == []
    tags = [t for i in engine.api.images(name="sealab/exp") for t in i.get("RepoTags") or []]
    assert not [t for t in tags if t.startswith(f"sealab/exp:{repo.head.commit.hexsha[:12]}-")]


def test_fork_bomb_is_stopped(make_workspace, engine):
    """A fork bomb hits the pids limit, is killed at the deadline, and leaves no container behind."""
    root = make_workspace(budget=1, grace=8, pids=64)
    commit_train(root, FORK_BOMB, "fork bomb")
    record = sealab_json("exec", cwd=root, ok_codes=(1,))
    assert record["status"] == "timeout"
    fork = json.loads((root / ".sealab" / "outputs" / record["id"] / "fork.json").read_text())
    assert fork["children"] < 64 and "Resource temporarily unavailable" in fork["error"]
    assert engine.api.containers(all=True, filters={"label": f"sealab.experiment={record['id']}"}) == []


def test_memory_hog_is_oom(make_workspace):
    """Allocating past the memory limit ends as `oom`."""
    root = make_workspace(memory_mb=400)
    commit_train(root, "hog = b'x' * (2 * 1024 ** 3)\n\ndef train(h):\n    pass\n", "memory hog")
    record = sealab_json("exec", cwd=root, ok_codes=(1,))
    assert record["status"] == "oom", record["reason"]


def test_endless_loop_times_out_at_budget_plus_grace(make_workspace):
    """An endless loop is killed from outside at budget + grace and recorded as `timeout`."""
    root = make_workspace(budget=1, grace=4)
    commit_train(root, "while True:\n    pass\n", "endless loop")
    record = sealab_json("exec", cwd=root, ok_codes=(1,))
    assert record["status"] == "timeout"
    assert 5.0 <= record["durations"]["run"] < 12.0


def as_from_a_terminal() -> None:
    """SIGINT as a command started at a terminal has it: a background job of a non-interactive shell (how CI
    may run the suite) ignores it, and a process that starts with SIGINT ignored never sees Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_sleeping_exec(root, engine, *command: str):
    """Start `sealab exec` (or `command`) on a train.py that sleeps; return the process once its container runs."""
    commit_train(root, "import time\ntime.sleep(600)\n\ndef train(h):\n    pass\n", "sleeps")
    head = git.Repo(root).head.commit.hexsha
    proc = subprocess.Popen([SEALAB, *(command or ("exec",))], cwd=root, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, preexec_fn=as_from_a_terminal)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        running = [c for c in engine.api.containers(filters={"label": "sealab.experiment"})
                   if c["Labels"].get("sealab.commit") == head]
        if running:
            return proc, running[0]["Id"]
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the experiment container never started")


def test_kill_9_leaves_an_interrupted_record(make_workspace, engine):
    """kill -9 of `sealab exec` mid-run: the next command shows the record `interrupted`, its container gone."""
    root = make_workspace(budget=1, grace=300)
    proc, container = start_sleeping_exec(root, engine)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    rows = sqlite3.connect(root / ".sealab" / "ledger.db").execute("SELECT status FROM experiments").fetchall()
    assert rows == [("running",)]
    records = sealab_json("status", cwd=root)
    assert [r["status"] for r in records] == ["interrupted"] and "died" in records[0]["reason"]
    assert engine.api.containers(all=True, filters={"id": container}) == []
    assert [r["status"] for r in sealab_json("status", cwd=root)] == ["interrupted"]  # not duplicated


RUN_ONE = ("run", "--experiments", "1", "--proposer", "offline")


@pytest.mark.parametrize("command, sig", [(("exec",), signal.SIGTERM), (("exec",), signal.SIGINT),
                                          (RUN_ONE, signal.SIGTERM), (RUN_ONE, signal.SIGINT)],
                         ids=["exec-SIGTERM", "exec-Ctrl-C", "run-SIGTERM", "run-Ctrl-C"])
def test_a_stop_signal_ends_it_within_2_s_leaving_nothing_behind(make_workspace, engine, command, sig):
    """SIGTERM or Ctrl-C to `sealab exec` or `sealab run` while its container runs: exit 130 within 2 s,
    the container gone, the record `interrupted` (none left `running`), no half-written file."""
    root = make_workspace(budget=1, grace=300)
    proc, container = start_sleeping_exec(root, engine, *command)
    started = time.monotonic()
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == 130, proc.stderr.read()
    took = time.monotonic() - started
    assert took < 2.0, took
    rows = sqlite3.connect(root / ".sealab" / "ledger.db").execute("SELECT status FROM experiments").fetchall()
    assert rows == [("interrupted",)]
    assert engine.api.containers(all=True, filters={"id": container}) == []
    assert [p for p in (root / ".sealab").rglob("*") if p.name.endswith((".tmp", ".part", ".tail"))] == []


def test_results_and_verify(make_workspace):
    """results prints autoresearch's columns then provenance; verify passes, and catches an edited record."""
    root = make_workspace()
    record = sealab_json("exec", cwd=root)
    tsv = sealab("results", cwd=root, check=True).stdout.splitlines()
    assert tsv[0].split("\t")[:5] == ["commit", "val_bpb", "memory_gb", "status", "description"]
    row = dict(zip(tsv[0].split("\t"), tsv[1].split("\t")))
    assert row["commit"] == record["commit"][:7] and row["image_id"] == record["image_id"]
    assert float(row["val_bpb"]) == pytest.approx(record["metrics"]["val_bpb"], abs=1e-6)
    first = sealab_json("verify", "--all", cwd=root)
    assert (first["checked"], first["mismatches"], first["rederived"], first["cached"]) == (1, [], 1, 0)
    again = sealab_json("verify", "--all", cwd=root)  # what the first proved is kept: nothing derived again
    assert (again["checked"], again["mismatches"], again["rederived"], again["cached"]) == (1, [], 0, 1)
    db = sqlite3.connect(root / ".sealab" / "ledger.db")
    forged = {**record, "image_id": "sha256:" + "0" * 64}
    db.execute("UPDATE experiments SET record = ? WHERE id = ?", (json.dumps(forged), record["id"]))
    db.commit()
    report = sealab_json("verify", record["id"], cwd=root, ok_codes=(1,))
    assert report["checked"] == 1 and report["mismatches"][0]["field"] == "image_id"
    assert report["mismatches"][0]["expected"] == record["image_id"]
    # the edit is also caught by the hash chain, with its row, and shown in one line per mismatch
    everything = sealab_json("verify", "--all", cwd=root, ok_codes=(1,))
    assert {"id": record["id"], "row": 1, "field": "record"}.items() <= next(
        m for m in everything["mismatches"] if m["field"] == "record").items()
    lines = sealab("verify", "--all", cwd=root).stdout.splitlines()
    assert any(line.startswith(f"MISMATCH {record['id']} (row 1) record") for line in lines)


def test_image_deleted_between_verify_and_start(make_workspace, engine):
    """If the verified image disappears before the container is created, nothing runs: `rejected`."""
    from executor.docker_engine import Engine
    from executor.ledger import Ledger
    from executor.run import execute
    from executor.workspace import Workspace

    class DeletesFirst(Engine):
        def create(self, image_id, **kwargs):
            self.remove_image(image_id)
            return super().create(image_id, **kwargs)

    root = make_workspace()
    ws = Workspace.open(root)
    record = execute(ws, "HEAD", DeletesFirst(engine.client), Ledger(ws.ledger_path)).to_dict()
    assert record["status"] == "rejected" and "gone from the engine" in record["reason"]
    assert "run" not in record["durations"]
    assert engine.api.containers(all=True, filters={"label": f"sealab.experiment={record['id']}"}) == []


def test_broken_train_py_is_a_crash_with_its_error(make_workspace):
    """A train.py that does not parse is recorded as a crash naming the error; exit 1, one readable line."""
    root = make_workspace()
    commit_train(root, "def train(h)\n    return None\n", "syntax error")
    proc = sealab("exec", cwd=root)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    record = sealab_json("status", cwd=root)[-1]
    assert record["status"] == "crash" and "SyntaxError" in record["reason"]
    assert "SyntaxError" in (root / record["log_path"]).read_text()


def test_the_eval_phase_started_ahead_is_unseen_by_training_and_removed_when_it_fails(make_workspace, engine):
    """The eval phase's container is started before training (its windows lie beside the train phase's
    /out, never inside it): a train.py that looks for them finds an empty /out and no /in, and when it
    fails, the waiting eval container and its directories are gone with it."""
    root = make_workspace()
    commit_train(root, "import os, sys\n\ndef train(h):\n"
                       "    print('out:', sorted(os.listdir('/out')), 'in:', os.path.exists('/in'), flush=True)\n"
                       "    sys.exit(3)\n", "looks around, then fails")
    proc = sealab("exec", "--json", cwd=root)
    record = json.loads(proc.stdout)
    assert proc.returncode == 1 and record["status"] == "crash"
    assert "eval_ahead" in record["durations"]  # it was started ahead
    assert "out: [] in: False" in (root / record["log_path"]).read_text()
    assert engine.remove_experiment_containers(record["id"]) == []  # nothing was left running
    outputs = root / ".sealab" / "outputs"
    assert not [p.name for p in outputs.iterdir() if ".eval-" in p.name]


def test_adopted_summary_metric_is_flagged(make_workspace):
    """A printed `---` summary is believed only when sealab.toml says metric_source = "summary", and flagged."""
    from agent.gitops import commit_file
    from executor.git_source import open_repo

    root = make_workspace()
    repo = open_repo(root)
    commit_file(repo, "prepare.py", "print('training...')\nprint('---')\nprint('val_bpb:          1.500000')\n"
                "print('peak_vram_mb:     12.5')\nprint('num_steps:        7')\n", "a harness that only prints")
    commit_train(root, "# train.py of an adopted checkout\n", "any train.py")
    # The default metric source: a printed number is never believed.
    record = sealab_json("exec", cwd=root, ok_codes=(1,))
    assert record["status"] == "crash" and "result.json" in record["reason"]
    toml = (root / "sealab.toml").read_text() + '\n[harness]\nmetric_source = "summary"\n'
    commit_file(repo, "sealab.toml", toml, "adopted: the metric is printed by train.py")
    record = sealab_json("exec", cwd=root)
    assert record["status"] == "ok" and record["metrics"]["val_bpb"] == 1.5
    assert record["metrics"]["metric_source"] == "summary" and record["metrics"]["steps"] == 7
    assert record["peak_memory_mb"] == 12.5


def test_executor_rechecks_the_scope_from_the_commit(make_workspace, engine):
    """Given the editable paths, the executor reads what a commit changed from git and refuses the rest:
    `rejected`, the image never loaded, nothing started."""
    from agent.gitops import commit_file
    from executor.ledger import Ledger
    from executor.run import execute
    from executor.workspace import Workspace

    root = make_workspace()
    repo = Workspace.open(root).git
    harness = (root / "prepare.py").read_text()
    commit_file(repo, "prepare.py", harness.replace("EVAL_BYTES = 65536", "EVAL_BYTES = 1024"), "sneaky eval")
    ws = Workspace.open(root)
    record = execute(ws, "HEAD", engine, Ledger(ws.ledger_path), editable=["train.py"]).to_dict()
    assert record["status"] == "rejected" and "prepare.py" in record["reason"]
    assert engine.image_id(record["image_id"]) is None and "run" not in record["durations"]
    commit_train(root, (root / "train.py").read_text() + "\n", "a train.py change")
    assert execute(ws, "HEAD", engine, Ledger(ws.ledger_path), editable=["train.py"]).status == "ok"


def test_a_flood_of_output_is_stored_within_log_mb(make_workspace):
    """A train.py printing 24 MB with [resources] log_mb = 1: the run is `ok` with its metric (the summary
    is in the kept tail), and the stored log is the first and last half MB with the cut marked (then
    sealab's summary of the record, appended after the run, outside the cap)."""
    from agent.gitops import commit_file
    from executor.git_source import open_repo

    root = make_workspace()
    toml = (root / "sealab.toml").read_text().replace("[resources]\n", "[resources]\nlog_mb = 1\n", 1)
    commit_file(open_repo(root), "sealab.toml", toml, "a 1 MB log cap")
    flood = "import sys\nfor _i in range(24):\n    sys.stdout.write(('flood ' * 170 + '\\n') * 1024)\n"
    commit_train(root, flood + (root / "train.py").read_text(), "print 24 MB first")
    record = sealab_json("exec", cwd=root)
    assert record["status"] == "ok" and 0 < record["metrics"]["val_bpb"] < 20
    log = (root / record["log_path"]).read_bytes()
    assert (1 << 20) <= len(log) < (1 << 20) + 1024
    assert log.startswith(b"flood flood") and b"bytes of output dropped here" in log
    scored = f"\nval_bpb: {record['metrics']['val_bpb']:.6f}\nmetric_source: evaluator\nstatus: ok\n"
    assert scored.encode() in log[-512:]  # sealab's summary, appended after the run
    assert b"\nscored_by: sealab" in log[-4096:]  # the harness's summary, in the kept tail


def test_a_large_committed_file_is_streamed_into_its_image(make_workspace, engine):
    """A 20 MB file committed beside train.py: the commit is sealed by streaming (its image loaded through
    a pipe), runs `ok`, and the file inside the image is the committed one; past [resources] tree_mb
    the same commit is refused with exit 2 naming it, and nothing is recorded."""
    from agent.gitops import commit_file
    from executor.git_source import open_repo
    from executor.image.docker_build import read_file

    root = make_workspace()
    blob = bytes(range(256)) * (20 << 12)
    (root / "weights.bin").write_bytes(blob)
    repo = git.Repo(root)
    repo.index.add(["weights.bin"])
    repo.index.commit("commit a 20 MB file")
    record = sealab_json("exec", cwd=root)
    assert record["status"] == "ok", record["reason"]
    assert read_file(engine.api, record["image_id"], "/workspace/weights.bin") == blob
    toml = (root / "sealab.toml").read_text().replace("[resources]\n", "[resources]\ntree_mb = 16\n", 1)
    commit_file(open_repo(root), "sealab.toml", toml, "a 16 MB tree cap")
    before = len(sealab_json("status", cwd=root))
    proc = sealab("exec", cwd=root)
    assert proc.returncode == 2 and "tree_mb = 16" in proc.stderr and "weights.bin (21.0 MB)" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and len(sealab_json("status", cwd=root)) == before


def test_a_stop_signal_ends_reproduce_within_2_s_leaving_nothing_behind(make_workspace, engine):
    """SIGTERM to `sealab reproduce` while its rerun's container runs: exit 130 within 2 s, the container
    gone, the rerun `interrupted`, the original untouched. (The train.py sleeps only after a moment the
    original run finishes before, so that only the rerun hangs.)"""
    root = make_workspace(budget=1, grace=300)
    hang_after = time.time() + 30
    commit_train(root, f"import time as _t\nif _t.time() > {hang_after}:\n    _t.sleep(600)\n"
                 + (root / "train.py").read_text(), "hangs when rerun")
    original = sealab_json("exec", cwd=root)
    assert original["status"] == "ok", original["reason"]
    time.sleep(max(0.0, hang_after - time.time() + 0.5))
    head = git.Repo(root).head.commit.hexsha
    proc = subprocess.Popen([SEALAB, "reproduce", original["id"]], cwd=root, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (running := [c for c in engine.api.containers(filters={"label": "sealab.experiment"})
                           if c["Labels"].get("sealab.commit") == head]):
        assert time.monotonic() < deadline and proc.poll() is None, "the rerun's container never started"
        time.sleep(0.2)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130, proc.stderr.read()
    assert time.monotonic() - started < 2.0
    statuses = dict(sqlite3.connect(root / ".sealab" / "ledger.db").execute("SELECT id, status FROM experiments"))
    assert statuses.pop(original["id"]) == "ok" and list(statuses.values()) == ["interrupted"]
    assert engine.api.containers(all=True, filters={"id": running[0]["Id"]}) == []
