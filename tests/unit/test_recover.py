"""recover(): records of a dead sealab process become `interrupted`, and what they left running on a
cluster backend is stopped through that backend (a real SQLite ledger; the backend records its calls)."""

import socket

from executor.ledger import Ledger, now
from executor.run import recover
from tests.conftest import begin as started


class Recorder:
    name = "slurm"

    def __init__(self):
        self.cleaned = []

    def cleanup(self, experiment_id):
        self.cleaned.append(experiment_id)
        return []


def begin(ledger, eid, backend, holder):
    started(ledger, holder, id=eid, commit="c" * 40, created_at=now(), run_spec={}, backend=backend)


def test_dead_cluster_runs_are_cancelled_through_their_backend(tmp_path):
    ledger = Ledger(tmp_path / "ledger.db")
    dead = f"{socket.gethostname()}:999999999:0"  # no such process
    begin(ledger, "a1", "slurm", dead)
    begin(ledger, "b2", "kubernetes", dead)
    recorder = Recorder()
    asked = []

    def backend_for(name):
        asked.append(name)
        return recorder if name == "slurm" else None

    assert sorted(recover(ledger, None, backend_for)) == ["a1", "b2"]
    assert recorder.cleaned == ["a1"] and sorted(asked) == ["kubernetes", "slurm"]
    assert {ledger.get(e)["status"] for e in ("a1", "b2")} == {"interrupted"}


def test_live_runs_are_left_alone(tmp_path):
    from executor import owner

    ledger = Ledger(tmp_path / "ledger.db")
    begin(ledger, "c3", "slurm", owner.token())
    recorder = Recorder()
    assert recover(ledger, None, lambda name: recorder) == []
    assert recorder.cleaned == [] and ledger.get("c3")["status"] == "running"
