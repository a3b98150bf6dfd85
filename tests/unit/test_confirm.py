"""The replication gate ([acceptance] confirm_runs), fast: the real loop, policy and ledger over the in-memory
engine of tests/fakes.py, whose model quality is a function of train.py plus run-to-run noise. A candidate
that would be kept on its one run is rerun from the same image before it is decided, and kept only if the
mean of its runs beats the best; the confirmations are linked records and counted as cost."""

from __future__ import annotations

import hashlib
import random
import re
import statistics
from pathlib import Path

import pytest

import policies
from agent.html_report import kept_values, metric_of, running_best
from agent.loop import Loop
from agent.offline import OfflineProposer
from agent.create import init
from executor.ledger import Ledger
from policies import decide, load_policy, noise_floor
from tests.fakes import fake_setup


def noisy_quality(seed: int):
    """The fake model's scale: a fixed function of train.py's bytes, plus noise drawn anew on every call."""
    rng = random.Random(seed)

    def quality(source: bytes) -> float:
        return 1.0 + int(hashlib.sha256(source).hexdigest()[:6], 16) % 400 / 100 + rng.gauss(0, 0.25)
    return quality


def gate_policy(tmp_path: Path, confirm_runs: int) -> Path:
    shipped = Path(policies.policy_path("default")).read_text()
    text = re.sub(r"(?m)^confirm_runs = 0 ", f"confirm_runs = {confirm_runs} ", shipped, count=1)
    assert f"confirm_runs = {confirm_runs} " in text
    path = tmp_path / f"confirm-{confirm_runs}.toml"
    path.write_text(text)
    return path


def _loop(tmp_path, monkeypatch, confirm_runs: int, workers: int = 1):
    engine, backend = fake_setup(tmp_path, monkeypatch, quality=noisy_quality(3))
    ws = init(tmp_path / "ws")
    ledger = Ledger(ws.ledger_path)
    ledger.set_base(engine.base)
    policy = load_policy(str(gate_policy(tmp_path, confirm_runs)))
    assert policy.acceptance.confirm_runs == confirm_runs
    return Loop(ws, engine, ledger, policy, OfflineProposer(seed=1), backend=backend, workers=workers), ledger, policy


@pytest.mark.parametrize("workers", [1, 2])
def test_a_keep_is_confirmed_by_reruns_of_its_image_and_judged_on_the_mean(tmp_path, monkeypatch, workers):
    loop, ledger, policy = _loop(tmp_path, monkeypatch, confirm_runs=2, workers=workers)
    state = loop.run(loop.start("gate"), experiments=10, hours=None)
    records = [r for r in ledger.records() if r.get("run_tag") == "gate"]
    confirms = [r for r in records if r.get("decision") == "confirm"]
    by_candidate: dict[str, list[dict]] = {}
    for c in confirms:
        by_candidate.setdefault(c["reproduces"], []).append(c)
    assert confirms and state.confirmations == len(confirms)
    assert state.experiments == 10  # confirmations are cost, not experiments
    baseline = [r["metrics"]["val_bpb"] for r in records if r.get("decision") == "baseline"]
    threshold = noise_floor(policy, baseline)
    best = statistics.fmean(baseline)
    checked = not_confirmed = 0
    for candidate in (r for r in records if r["id"] in by_candidate):
        runs = by_candidate[candidate["id"]]
        assert len(runs) == 2 and {r["image_id"] for r in runs} == {candidate["image_id"]}
        assert {r["commit"] for r in runs} == {candidate["commit"]}
        assert all(r["proposal"] == candidate["proposal"] for r in runs)
        mean = statistics.fmean([metric_of(candidate), *(metric_of(r) for r in runs)])
        reason = candidate["decision_reason"]
        assert all(r["id"] in reason for r in runs) and f"mean {mean:.6f}" in reason
        if workers == 1:  # its time account holds its confirmations: their training is training
            assert candidate["cycle"]["confirmations"] == 2
            assert candidate["cycle"]["training_s"] >= sum(r["metrics"]["training_seconds"] for r in runs)
        if candidate["decision"] == "keep":
            assert reason.startswith("confirmed:")
            checked += 1
        else:
            assert reason.startswith(("not confirmed:", "after confirmation:"))
            not_confirmed += 1
    assert checked >= 1 and checked + not_confirmed == len(by_candidate)
    if workers == 1:  # one at a time: every decision is the policy on the mean, against the best so far
        for r in records:
            if r.get("decision") not in ("keep", "discard"):
                continue
            value = metric_of(r)
            alone = value is not None and decide(policy, direction="minimize", best=best, candidate=value,
                                                 threshold=threshold)[0] == "keep"
            assert alone == (r["id"] in by_candidate), r["id"]
            if alone:
                mean = statistics.fmean([value, *(metric_of(c) for c in by_candidate[r["id"]])])
                assert r["decision"] == decide(policy, direction="minimize", best=best, candidate=mean,
                                               threshold=threshold)[0]
                if r["decision"] == "keep":
                    best = mean
        assert state.best_value == pytest.approx(best)
    # the report's running best follows the kept means, not the lucky single runs
    values = [metric_of(r) for r in records]
    assert running_best(values, [r.get("decision") for r in records], kept_values(records))[-1] == \
        pytest.approx(state.best_value)


def test_without_the_gate_nothing_is_rerun(tmp_path, monkeypatch):
    loop, ledger, _ = _loop(tmp_path, monkeypatch, confirm_runs=0)
    state = loop.run(loop.start("plain"), experiments=6, hours=None)
    assert state.confirmations == 0
    assert not [r for r in ledger.records() if r.get("decision") == "confirm"]


def test_the_strict_policy_confirms_and_the_default_does_not():
    assert load_policy("strict").acceptance.confirm_runs >= 1
    assert load_policy("default").acceptance.confirm_runs == 0
