"""agent/cycle.py: one experiment's time account (training, idle by cause) and a run's duty cycle."""

from __future__ import annotations

import pytest

from agent import cycle
from executor.record import ExperimentRecord

DURATIONS = {"seal": 1.0, "load": 0.5, "verify": 0.25, "run": 62.0, "eval": 4.0, "score": 1.0, "total": 70.0}


def test_causes_add_up_to_wall_minus_training():
    """Every cause is its share of the executor's phases or the loop's own timings; `other` is the rest."""
    a = cycle.account(wall_s=80.0, training_s=60.0, durations=DURATIONS, proposal_s=7.0, decision_s=0.5,
                      pipelined=False, proposed_on="c1", best_at_decision="c1")
    assert set(a["idle"]) == set(cycle.CAUSES)
    assert a["idle"] == {"proposal": 7.0, "seal_load": 1.5, "container": 2.25, "eval": 3.0, "scoring": 1.0,
                         "decision": 0.5, "other": 4.75}
    assert sum(a["idle"].values()) == pytest.approx(a["wall_s"] - a["training_s"])
    assert (a["pipelined"], a["proposed_on"], a["best_at_decision"], a["rebased_from"]) == (False, "c1", "c1", None)


def test_other_is_never_negative():
    """Phases that overlap (a pipelined proposal timed in full) cannot make `other` negative."""
    a = cycle.account(wall_s=10.0, training_s=5.0, durations=DURATIONS, proposal_s=30.0, decision_s=1.0,
                      pipelined=True)
    assert a["idle"]["other"] == 0.0 and all(v >= 0 for v in a["idle"].values())


def test_training_is_clipped_to_wall_and_odd_durations_count_as_zero():
    """A harness clock longer than the wall is clipped to it, a negative one to zero; a duration that is
    not a number (text, a boolean, NaN) counts as nothing."""
    a = cycle.account(wall_s=10.0, training_s=12.0, durations={"seal": "fast", "load": True, "score": float("nan")},
                      proposal_s=0.0, decision_s=0.0, pipelined=False)
    assert a["training_s"] == 10.0 and a["idle"]["other"] == 0.0
    assert a["idle"]["seal_load"] == 0.0 and a["idle"]["scoring"] == 0.0
    assert cycle.account(wall_s=10.0, training_s=-1.0, durations={}, proposal_s=0.0, decision_s=0.0,
                         pipelined=False)["training_s"] == 0.0


def accounted(wall: float, training: float, **kw) -> dict:
    return cycle.account(wall_s=wall, training_s=training, durations={}, proposal_s=kw.get("proposal", 0.0),
                         decision_s=kw.get("decision", 0.0), pipelined=kw.get("pipelined", False))


def test_duty_over_stored_dicts_and_records_leaving_out_those_without_a_cycle():
    """Stored dicts and ExperimentRecords alike; a record without a `cycle` (or with one that is not a
    table) is not counted."""
    first = {"id": "e0001", "commit": "a", "status": "ok", "cycle": accounted(100.0, 80.0, proposal=15.0)}
    second = ExperimentRecord.from_dict({"id": "e0002", "commit": "b", "status": "ok",
                                         "cycle": accounted(100.0, 90.0, decision=4.0)})
    older = {"id": "e0003", "commit": "c", "status": "ok"}
    odd = {"id": "e0004", "commit": "d", "status": "ok", "cycle": "fast"}
    duty = cycle.Duty.of([first, second, older, odd, ExperimentRecord.from_dict(older)])
    assert (duty.experiments, duty.training_s, duty.wall_s) == (2, 170.0, 200.0)
    assert duty.duty == pytest.approx(0.85) and duty.per_hour == pytest.approx(36.0)
    per = duty.idle_per_experiment()
    assert per["proposal"] == 7.5 and per["decision"] == 2.0 and per["other"] == pytest.approx(5.5)
    assert sum(per.values()) == pytest.approx((200.0 - 170.0) / 2)
    d = duty.to_dict()
    assert d["duty"] == 0.85 and d["per_hour"] == 36.0 and d["experiments"] == 2
    assert list(d["idle_per_experiment"]) == list(cycle.CAUSES)


def test_duty_without_accounts_is_none():
    duty = cycle.Duty.of([{"id": "e0001", "commit": "a", "status": "ok"}])
    assert duty.experiments == 0 and duty.duty is None and duty.per_hour is None
    assert duty.to_dict()["duty"] is None and duty.to_dict()["per_hour"] is None
    assert set(duty.idle_per_experiment().values()) == {0.0}


def test_line_says_the_duty_and_where_the_rest_went():
    duty = cycle.Duty.of([{"cycle": accounted(100.0, 80.0, proposal=15.0)},
                          {"cycle": accounted(100.0, 90.0, decision=4.0)}])
    assert duty.line() == ("duty cycle 0.85: 170 s training in 200 s over 2 experiment(s), 36/hour; "
                           "idle per experiment: proposal 7.5 s, decision 2.0 s, other 5.5 s")
    assert cycle.Duty.of([{"cycle": accounted(10.0, 10.0)}]).line().endswith("idle per experiment: none")
    assert cycle.Duty.of([]).line() == "duty cycle: no experiment of this run has a time account yet"
