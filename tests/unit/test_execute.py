"""run.execute's orchestration paths, fast: the real executor, scorer and ledger over tests/fakes.py's
in-memory engine and backend (the same paths against the real engine: tests/integration/test_exec.py)."""

from __future__ import annotations

import git
import pytest

from executor.errors import EngineUnavailable, WorkspaceError
from executor.ledger import Ledger
from executor.run import execute
from agent.create import init
from tests.fakes import Run, fake_setup, git_blob, train_py_of


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """(workspace, ledger, engine, backend, commit(train_py_tail) -> sha)."""
    engine, backend = fake_setup(tmp_path, monkeypatch)
    ws = init(tmp_path / "ws")
    ledger = Ledger(ws.ledger_path)
    ledger.set_base(engine.base)
    repo = git.Repo(ws.root)
    original = (ws.root / "train.py").read_text()

    def commit(tail: str, path: str = "train.py") -> str:
        target = ws.root / path
        target.write_text((original if path == "train.py" else "") + tail)
        repo.index.add([path])
        return repo.index.commit(f"change {path}").hexsha

    return ws, ledger, engine, backend, commit


def test_a_better_model_gets_a_lower_metric_from_the_real_scorer(setup):
    """The eval phase's logits go through the trusted scorer: the record's val_bpb is the scorer's, and a
    better fake model (scale 5 against 1) gets a lower one; the image ran the committed train.py."""
    ws, ledger, engine, backend, commit = setup
    values = {}
    for scale in (1.0, 5.0):
        sha = commit(f"\nSCALE = {scale}\n")
        record = execute(ws, sha, engine, ledger, backend=backend)
        assert record.status.value == "ok", record.reason
        assert record.metrics["metric_source"] == "evaluator"
        values[scale] = record.metrics["val_bpb"]
        assert train_py_of(backend.jobs[-1]).endswith(f"SCALE = {scale}\n".encode())
    assert [j.phase for j in backend.jobs] == ["train", "eval", "train", "eval"]
    assert 4.5 < values[5.0] < values[1.0] < 8.0
    assert ledger.chain_problems() == []


@pytest.mark.parametrize("run, status, reason", [
    (Run(exit_code=1, output=b"step 1\nValueError: bad shape\n"), "crash", "exit code 1: ValueError: bad shape"),
    (Run(exit_code=137, oom=True), "oom", "killed by the memory limit"),
    (Run(timed_out=True), "timeout", "killed at the deadline"),
    (Run(write_result=False), "crash", "the harness wrote no result.json"),
])
def test_how_the_train_phase_ended_is_the_status(setup, run, status, reason):
    """A crash quotes the last line, an OOM and a timeout say which limit, a run without result.json
    is a crash; none of them reaches the eval phase."""
    ws, ledger, engine, backend, commit = setup
    backend.outcome = lambda source: run
    record = execute(ws, commit("\nSCALE = 2.0\n"), engine, ledger, backend=backend)
    assert record.status.value == status
    assert reason in record.reason
    assert [j.phase for j in backend.jobs] == ["train"]
    assert ledger.get(record.id)["status"] == status


def test_a_result_for_another_train_py_is_rejected(setup):
    """A result.json naming a train.py blob other than the commit's is `rejected`, whatever its metric."""
    ws, ledger, engine, backend, commit = setup
    sha = commit("\nSCALE = 2.0\n")
    real_run = backend.run

    def lying(job):
        end = real_run(job)
        if job.phase == "train":
            result = job.out_dir / "result.json"
            result.write_text(result.read_text().replace(git_blob(train_py_of(job)), git_blob(b"other")))
        return end

    backend.run = lying
    record = execute(ws, sha, engine, ledger, backend=backend)
    assert record.status.value == "rejected"
    assert git_blob(b"other") in record.reason


def test_a_change_outside_the_editable_paths_starts_nothing(setup):
    """With `editable`, a commit that changes another path is `rejected` before anything runs."""
    ws, ledger, engine, backend, commit = setup
    sha = commit("print('hi')\n", path="prepare_more.py")
    record = execute(ws, sha, engine, ledger, backend=backend, editable=["train.py"])
    assert record.status.value == "rejected"
    assert "prepare_more.py" in record.reason and "nothing was started" in record.reason
    assert backend.jobs == []


def test_an_engine_lost_mid_run_is_recorded_and_raised(setup):
    """EngineUnavailable from the backend: the record says `infra_error` with the cause, and the error
    reaches the caller (the loop retries it)."""
    ws, ledger, engine, backend, commit = setup
    backend.fail_next = 1
    seen = []
    with pytest.raises(EngineUnavailable):
        execute(ws, commit("\nSCALE = 2.0\n"), engine, ledger, backend=backend, on_record=seen.append)
    record = ledger.get(seen[0])
    assert record["status"] == "infra_error"
    assert "went away" in record["reason"]


def test_an_interrupt_is_recorded_then_raised(setup):
    """KeyboardInterrupt during the run: `interrupted`, then re-raised so the caller stops."""
    ws, ledger, engine, backend, commit = setup

    def interrupted(source):
        raise KeyboardInterrupt

    backend.outcome = interrupted
    seen = []
    with pytest.raises(KeyboardInterrupt):
        execute(ws, commit("\nSCALE = 2.0\n"), engine, ledger, backend=backend, on_record=seen.append)
    assert ledger.get(seen[0])["status"] == "interrupted"


def test_working_tree_edits_are_reported_never_run(setup):
    """An uncommitted edit of train.py (the linter of the story) is in the record's drift, and the
    image ran the committed bytes."""
    ws, ledger, engine, backend, commit = setup
    sha = commit("\nSCALE = 5.0\n")
    (ws.root / "train.py").write_text((ws.root / "train.py").read_text().replace("SCALE = 5.0", "SCALE = 3.0"))
    record = execute(ws, sha, engine, ledger, backend=backend)
    assert record.status.value == "ok"
    assert [d["path"] for d in record.drift] == ["train.py"]
    assert b"SCALE = 5.0" in train_py_of(backend.jobs[0]) and b"SCALE = 3.0" not in train_py_of(backend.jobs[0])


def test_no_base_recorded_is_an_error_before_any_record(tmp_path, monkeypatch):
    """Without a recorded base nothing is recorded and nothing runs."""
    engine, backend = fake_setup(tmp_path, monkeypatch)
    ws = init(tmp_path / "ws")
    ledger = Ledger(ws.ledger_path)
    with pytest.raises(Exception, match="no base image recorded"):
        execute(ws, "HEAD", engine, ledger, backend=backend)
    assert ledger.records() == [] and backend.jobs == []


def test_a_commit_without_sealab_toml_is_a_workspace_error(setup):
    """A commit whose tree has no sealab.toml is refused with WorkspaceError, nothing recorded."""
    ws, ledger, engine, backend, commit = setup
    repo = git.Repo(ws.root)
    repo.index.remove(["sealab.toml"])
    sha = repo.index.commit("drop settings").hexsha
    with pytest.raises(WorkspaceError, match="has no sealab.toml"):
        execute(ws, sha, engine, ledger, backend=backend)
    assert ledger.records() == []


def test_a_gpu_run_on_a_cpu_torch_base_is_warned_about(setup):
    """gpus = 1 on a base whose torch is a CPU build: the GPU would sit idle, so the run says so (and runs)."""
    import dataclasses

    from structlog.testing import capture_logs

    from agent.gitops import commit_file, set_constant

    ws, ledger, engine, backend, commit = setup
    ledger.set_base(dataclasses.replace(engine.base, torch="2.13.0+cpu"))
    commit_file(ws.git, "sealab.toml", set_constant((ws.root / "sealab.toml").read_text(), "gpus", "1"),
                "one GPU")
    with capture_logs() as logs:
        execute(ws, commit("\nX = 1\n"), engine, ledger, backend=backend)
    warned = [e for e in logs if e["event"] == "cpu_torch"]
    assert len(warned) == 1 and warned[0]["torch"] == "2.13.0+cpu" and "--torch cuda" in warned[0]["note"]
    ledger.set_base(dataclasses.replace(engine.base, torch="2.13.0"))
    with capture_logs() as logs:
        execute(ws, commit("\nX = 2\n"), engine, ledger, backend=backend)
    assert not [e for e in logs if e["event"] == "cpu_torch"]


def test_the_log_ends_with_sealabs_summary_of_the_record(setup):
    """After the record is finished, the run's log ends with sealab's block: the scored metric for an `ok`
    run, the status and reason for a crash, and, for a run rejected before anything started, a log made
    to hold it."""
    from executor.scored_summary import render

    ws, ledger, engine, backend, commit = setup
    ok = execute(ws, commit("\nSCALE = 2.0\n"), engine, ledger, backend=backend)
    log = (ws.root / ok.log_path).read_text()
    assert log.startswith("step 1\n") and log.endswith(render(ok))
    assert [line for line in log.splitlines() if line.startswith("val_bpb:")] == [f"val_bpb: {ok.value:.6f}"]
    backend.outcome = lambda source: Run(exit_code=1, output=b"step 1\nValueError: bad shape")
    crashed = execute(ws, commit("\nSCALE = 3.0\n"), engine, ledger, backend=backend)
    log = (ws.root / crashed.log_path).read_text()
    assert log.endswith("ValueError: bad shape\n" + render(crashed)) and "\nstatus: crash\n" in log
    assert "val_bpb:" not in log
    rejected = execute(ws, commit("print('hi')\n", path="other.py"), engine, ledger, backend=backend,
                       editable=["train.py"])
    assert (ws.root / rejected.log_path).read_text() == render(rejected)


def test_a_log_that_cannot_be_written_loses_no_record(setup, monkeypatch):
    """An OSError appending sealab's summary is a warning: the record is finished and returned."""
    from structlog.testing import capture_logs

    from executor import scored_summary

    def broken(path, block):
        raise OSError(28, "No space left on device")

    ws, ledger, engine, backend, commit = setup
    monkeypatch.setattr(scored_summary, "append", broken)
    with capture_logs() as logs:
        record = execute(ws, commit("\nSCALE = 2.0\n"), engine, ledger, backend=backend)
    assert record.status.value == "ok" and ledger.get(record.id)["status"] == "ok"
    assert [e["error"] for e in logs if e["event"] == "log.summary_failed"] == ["[Errno 28] No space left on device"]
