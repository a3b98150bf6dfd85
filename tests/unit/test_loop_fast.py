"""The research loop's orchestration, fast: the real Loop, policy, offline proposer, executor and ledger
over tests/fakes.py's in-memory engine and backend (the same loop against the real engine:
tests/integration/test_loop.py)."""

from __future__ import annotations

import hashlib
import statistics

import git
import pytest

from agent.loop import Loop
from agent.offline import OfflineProposer
from executor.ledger import Ledger
from agent.create import init
from policies import decide, load_policy, noise_floor
from tests.fakes import fake_setup


def hashed_quality(source: bytes) -> float:
    """A fake model whose quality is a fixed pseudo-random function of train.py's bytes (scale 1..5)."""
    return 1.0 + int(hashlib.sha256(source).hexdigest()[:6], 16) % 400 / 100


@pytest.fixture
def loop_on_fakes(tmp_path, monkeypatch):
    engine, backend = fake_setup(tmp_path, monkeypatch, quality=hashed_quality)
    ws = init(tmp_path / "ws")
    ledger = Ledger(ws.ledger_path)
    ledger.set_base(engine.base)
    policy = load_policy("default")
    loop = Loop(ws, engine, ledger, policy, OfflineProposer(seed=0), backend=backend)
    return loop, ws, ledger, engine, backend, policy


def test_every_decision_is_the_policy_applied_to_the_best_so_far(loop_on_fakes):
    """Replaying the ledger through the policy's own `decide` from the baseline mean gives each recorded
    decision, and the branch ends at the commit of the last keep (or the start, with none)."""
    loop, ws, ledger, engine, backend, policy = loop_on_fakes
    state = loop.start("fast")
    state = loop.run(state, experiments=8, hours=None)
    records = [r for r in ledger.records() if r.get("run_tag") == "fast"]
    baseline = [r["metrics"]["val_bpb"] for r in records if r.get("decision") == "baseline"]
    assert len(baseline) == policy.acceptance.noise_runs
    best, best_commit = statistics.fmean(baseline), state.start_commit
    threshold = noise_floor(policy, baseline)
    experiments = [r for r in records if r.get("decision") != "baseline"]
    assert len(experiments) == 8
    for r in experiments:
        value = r["metrics"].get("val_bpb")
        expected = decide(policy, direction="minimize", best=best, candidate=value,
                          threshold=threshold)[0] if r["status"] == "ok" else "discard"
        assert r["decision"] == expected, (r["id"], value, best)
        if expected == "keep":
            best, best_commit = value, r["commit"]
    assert state.best_commit == best_commit
    assert git.Repo(ws.root).commit(state.branch).hexsha == best_commit
    assert {r["decision"] for r in experiments} == {"keep", "discard"}  # the fake gives both here
    assert ledger.chain_problems() == []


def test_an_engine_lost_mid_run_is_retried_as_a_new_record(loop_on_fakes):
    """An infra_error (here: the first baseline run's engine went away) is retried once the engine
    answers: the next record is the same commit, the same role, and `ok`; the baseline still counts
    noise_runs good runs."""
    loop, ws, ledger, engine, backend, policy = loop_on_fakes
    state = loop.start("retry")
    backend.fail_next = 1
    state = loop.run(state, experiments=1, hours=None)
    records = [r for r in ledger.records() if r.get("run_tag") == "retry"]
    lost = [r for r in records if r["status"] == "infra_error"]
    assert len(lost) == 1 and engine.pings >= 1
    again = records[records.index(lost[0]) + 1]
    assert (again["commit"], again["decision"], again["status"]) == (lost[0]["commit"], "baseline", "ok")
    ok_baselines = [r for r in records if r.get("decision") == "baseline" and r["status"] == "ok"]
    assert len(ok_baselines) == policy.acceptance.noise_runs
    assert [e["kind"] for e in ledger.events("retry")] == ["retry"]


def test_a_crashing_train_py_is_discarded_and_the_branch_stays(loop_on_fakes):
    """Every proposal crashing: each is discarded, the branch never leaves the start commit, and the
    discarded commits stay reachable under refs/sealab/discarded/."""
    from tests.fakes import Run

    loop, ws, ledger, engine, backend, policy = loop_on_fakes
    state = loop.start("crash")
    baseline_done = []

    def outcome(source):
        return Run(exit_code=1, output=b"boom\n") if baseline_done else Run()

    backend.outcome = outcome
    loop.on_event = lambda line, s: baseline_done.append(1) if line.startswith("baseline") and \
        len(s.baseline) == policy.acceptance.noise_runs else None
    state = loop.run(state, experiments=3, hours=None)
    crashed = [r for r in ledger.records() if r.get("run_tag") == "crash" and r["status"] == "crash"]
    assert len(crashed) == 3 and {r["decision"] for r in crashed} == {"discard"}
    repo = git.Repo(ws.root)
    assert repo.commit(state.branch).hexsha == state.start_commit
    for r in crashed:
        assert repo.commit(f"refs/sealab/discarded/{r['id']}").hexsha == r["commit"]


class Killed(BaseException):
    """kill -9 in the middle of a step: nothing after it runs, nothing is cleaned up."""


def test_a_kill_after_a_round_winner_took_the_branch_resumes_with_the_winner_kept(loop_on_fakes, tmp_path):
    """--workers 2, killed after the round's winner took the branch (its compare-and-swap) but before the
    round's state was saved: `--resume` accepts the branch at a commit of the saved round, keeps the
    winner as if the state had been saved, discards the rest, and goes on; the ledger ends as that of the
    same run never killed."""
    loop, ws, ledger, engine, backend, policy = loop_on_fakes
    loop.workers = 2
    state = loop.start("kill")
    decide = ledger.record_decision

    def killed_once_the_branch_moved(experiment_id, decision, why):
        saved = ledger.run_state("kill")
        if saved["round"] and git.Repo(ws.root).commit("sealab/kill").hexsha != saved["best_commit"]:
            raise Killed()
        return decide(experiment_id, decision, why)

    ledger.record_decision = killed_once_the_branch_moved
    with pytest.raises(Killed):
        loop.run(state, experiments=4, hours=None)
    saved = ledger.run_state("kill")
    tip = git.Repo(ws.root).commit("sealab/kill").hexsha
    assert tip in {e["commit"] for e in saved["round"]} and tip != saved["best_commit"]

    again = Loop(ws, engine, Ledger(ws.ledger_path), policy, OfflineProposer(seed=0), backend=backend, workers=2)
    state = again.resume("kill")
    assert (state.best_commit, state.round) == (tip, None)
    round_records = [again.ledger.get(e["experiment"]) for e in saved["round"]]
    assert {r["commit"]: r["decision"] for r in round_records}[tip] == "keep"
    assert sorted(r["decision"] for r in round_records) == ["discard", "keep"]
    state = again.run(state, experiments=4, hours=None)
    assert again.ledger.chain_problems() == []

    other = init(tmp_path / "never-killed")
    other_ledger = Ledger(other.ledger_path)
    other_ledger.set_base(engine.base)
    reference = Loop(other, engine, other_ledger, policy, OfflineProposer(seed=0), backend=backend, workers=2)
    reference.run(reference.start("kill"), experiments=4, hours=None)

    def decided(lg):
        return sorted((r["description"], r["decision"], r["decision_reason"]) for r in lg.records()
                      if r.get("proposal"))
    assert decided(again.ledger) == decided(other_ledger) and len(decided(other_ledger)) == 4
    assert git.Repo(ws.root).commit("sealab/kill").tree == git.Repo(other.root).commit("sealab/kill").tree
