"""Stopping a round (`--workers N`, SIGTERM): a run whose container the stop removed is not retried as
`infra_error`, and a record begun while the stop runs is marked `interrupted` before its container goes
(a real SQLite ledger; the executor and the backend are replaced by recorders)."""

import threading
import time

import pytest

import agent.attempts as attempts_module
from agent.loop import Loop, RunState
from executor.errors import EngineUnavailable
from executor.ledger import Ledger, now
from policies import load_policy
from tests.conftest import begin


class Backend:
    name = "local"

    def __init__(self, ledger):
        self.ledger, self.cleaned = ledger, []

    def cleanup(self, experiment_id):  # what the stop sees of the record when it removes the container
        self.cleaned.append((experiment_id, self.ledger.get(experiment_id)["status"]))
        return []


class Engine:
    def ping(self):
        return True


def make_loop(tmp_path):
    ledger = Ledger(tmp_path / "ledger.db")
    loop = Loop(ws=None, engine=Engine(), ledger=ledger, policy=load_policy("default"), proposer=None,
                backend=Backend(ledger))
    return loop, ledger


def lost_run(ledger, calls):
    """An execute whose container disappears under it: a new `running` record, then EngineUnavailable."""
    def execute(ws, commit, engine, run_ledger, *, on_record, **_):
        eid = f"e{len(calls)}"
        calls.append(eid)
        begin(run_ledger, id=eid, commit=commit, created_at=now(), run_spec={})
        on_record(eid)
        raise EngineUnavailable(f"No such container: sealab-{eid}")
    return execute


@pytest.mark.parametrize("stopping, runs", [(False, 3), (True, 1)])
def test_a_stopping_round_does_not_retry_what_it_removed(tmp_path, monkeypatch, stopping, runs):
    loop, ledger = make_loop(tmp_path)
    calls: list[str] = []
    monkeypatch.setattr(attempts_module, "execute", lost_run(ledger, calls))
    if stopping:
        loop.stopping.set()
    with pytest.raises(EngineUnavailable):
        state = RunState(tag="t", branch="b", start_commit="c" * 40, best_commit="c" * 40)
        loop._run_commit(state, None, ledger, "c" * 40, lambda eid: None, None, editable=False)
    assert len(calls) == runs == 1 + (0 if stopping else loop.policy.retry.infra_error)


def test_a_record_begun_during_the_stop_is_interrupted_before_its_container_goes(tmp_path):
    loop, ledger = make_loop(tmp_path)
    begin(ledger, id="a", commit="a" * 40, created_at=now(), run_spec={})
    entries = [{"commit": "a" * 40, "experiment": "a"}, {"commit": "b" * 40, "experiment": None}]
    release = threading.Event()

    def late_worker():  # its record appears only after the stop began
        release.wait(5)
        ledger_b = Ledger(tmp_path / "ledger.db")
        begin(ledger_b, id="b", commit="b" * 40, created_at=now(), run_spec={})
        entries[1]["experiment"] = "b"
        ledger_b.close()
        while not any(eid == "b" for eid, _ in loop.backend.cleaned):
            time.sleep(0.05)

    worker = threading.Thread(target=late_worker, daemon=True)
    worker.start()
    threading.Timer(0.3, release.set).start()
    loop._stop_round(entries, [worker], wait_s=20)
    assert not worker.is_alive() and loop.stopping.is_set()
    assert {ledger.get(e)["status"] for e in "ab"} == {"interrupted"}
    assert all(status == "interrupted" for _, status in loop.backend.cleaned)
    assert {eid for eid, _ in loop.backend.cleaned} == {"a", "b"}
