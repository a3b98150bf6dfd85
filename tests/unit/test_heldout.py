"""The held-out test split, fast: the validation split's last TEST_BYTES are cut off from what decisions are
scored on; the loop scores the baseline runs and every keep on them after deciding (the real loop, policy,
scorer and ledger over tests/fakes.py's in-memory engine), and the report and dashboard show both."""

from __future__ import annotations

import hashlib
import random

import pytest

from agent.create import init
from agent.dashboard import Dashboard
from executor.ledger import reading
from agent.html_report import heldout_rows, kept_values, metric_of, render_html, collect, held_out_value
from agent.loop import Loop
from agent.offline import OfflineProposer
from executor import evaluate, heldout
from executor.ledger import Ledger
from executor.record import ExperimentRecord
from policies import load_policy
from tests.fakes import fake_base, fake_setup


def test_the_test_split_is_the_validation_split_s_end_and_the_decision_windows_do_not_change():
    val = random.Random(0).randbytes(256_000)
    decisions, test = evaluate.split_test(val)
    assert test == val[-evaluate.TEST_BYTES:] and decisions + test == val
    span = evaluate.EVAL_BYTES // evaluate.EVAL_SEQ_LEN * (evaluate.EVAL_SEQ_LEN + 1)
    assert decisions[:span] == val[:span]  # the scored validation windows are the same bytes as before
    a, b = evaluate.build(decisions, 42), evaluate.build(test, 42)
    assert a.targets != b.targets and a.windows != b.windows
    assert evaluate.split_test(val[:150_000]) == (val[:150_000], None)  # too short: no test split


def _quality(source: bytes) -> float:
    return 1.0 + int(hashlib.sha256(source).hexdigest()[:6], 16) % 400 / 100


def test_the_loop_scores_the_baseline_and_every_keep_on_the_test_split_and_nothing_else(tmp_path, monkeypatch):
    engine, backend = fake_setup(tmp_path, monkeypatch, quality=_quality)
    ws = init(tmp_path / "ws")
    ledger = Ledger(ws.ledger_path)
    ledger.set_base(engine.base)
    loop = Loop(ws, engine, ledger, load_policy("default"), OfflineProposer(seed=0), backend=backend)
    state = loop.run(loop.start("t"), experiments=8, hours=None)
    records = [r for r in ledger.records() if r.get("run_tag") == "t"]
    for r in records:
        scored = r.get("decision") in ("baseline", "keep")
        assert (held_out_value(r) is not None) == scored, (r["id"], r.get("decision"), r.get("test"))
        assert "test" not in (r.get("decision_reason") or "")  # no decision names it
        if scored:
            assert r["test"]["eval_windows"] != r["metrics"]["eval_windows"]  # other windows than validation
            assert r["test"]["eval_causal"] is True
    assert [j.phase for j in backend.jobs].count("test") == sum(1 for r in records if held_out_value(r) is not None)
    assert {r.get("decision") for r in records} >= {"baseline", "keep"}
    rows = heldout_rows(records)
    assert rows[0]["id"] == "baseline" and [row["id"] for row in rows[1:]] == \
        [r["id"] for r in records if r.get("decision") == "keep"]
    assert all(row["gap"] == pytest.approx(row["test"] - row["val"]) for row in rows)
    assert rows[-1]["val"] == pytest.approx(state.best_value)
    page = render_html(collect(ledger, tag="t"))
    assert "Held-out test split" in page and f"{rows[-1]['test']:.6f}" in page and "gap (test − val)" in page
    with reading(ws.ledger_path) as reader:  # the dashboard's held-out row is the report's latest, with the first gap
        shown = Dashboard(alive=lambda holder: True, check_chain=lambda ledger: [], chain_interval_s=3600).state(
            reader, "t")["heldout"]
    assert shown["first_gap"] == pytest.approx(rows[0]["gap"]) and shown["test"] == pytest.approx(rows[-1]["test"])
    assert kept_values(records) and metric_of(records[0]) is not None


def test_a_self_scoring_harness_has_no_test_split_and_says_so(tmp_path):
    adopted = ExperimentRecord.from_dict({"id": "0123456789", "commit": "c" * 40, "status": "ok",
                                          "metrics": {"val_bpb": 2.0, "metric_source": "summary"},
                                          "image_id": "sha256:" + "a" * 64})
    assert "scores itself" in heldout.why_not(adopted)
    assert heldout.score(None, adopted, None, None) is None  # nothing is run, nothing recorded
    base, _ = fake_base()
    assert base.data_digest.startswith("sha256:")


def test_the_report_says_when_a_self_scoring_harness_has_no_test_split():
    from agent.html_report import ReportData, _heldout as section

    adopted = [{"id": "0123456789", "status": "ok", "decision": d, "metrics": {"val_bpb": 2.0, "metric_source": "summary"}}
               for d in ("baseline", "keep")]
    events = {k: [] for k in ("rejected", "parked", "proposal_failed", "drift", "retry")}
    page = section(ReportData("t", None, adopted, events, "val_bpb", "minimize"))
    assert "scores itself" in page and "no held-out test split" in page
    page = section(ReportData("t", None, [{**adopted[0], "metrics": {"val_bpb": 2.0}}], events, "val_bpb", "minimize"))
    assert "has been scored on it yet" in page
