"""The ledger's narrow writes: the executor begins, finishes and interrupts records; everyone else can
only add annotations (the loop's labels and decisions, a push's digest, a rerun's link), and none of
those can reach a record's metrics, identity or status."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from executor.errors import LedgerError, RecordError
from executor.ledger import Ledger
from executor.record import ANNOTATIONS, RUN_KEYS, Decision, ExperimentRecord, Finish, Results, RunLabels
from executor.types import Status

ROOT = Path(__file__).resolve().parents[2]
IDENTITY = ("id", "commit", "parent", "tree", "image_id", "base_image_id", "data_digest", "run_spec", "created_at")
ANNOTATING = ("label", "record_decision", "record_push", "record_rerun")  # what the agent side may call
EXECUTOR_ONLY = ("begin", "finish", "_merge", "_link", "_tx")


def finished(tmp_path) -> Ledger:
    ledger = Ledger(tmp_path / "l.db")
    ledger.begin(ExperimentRecord(id="e1", commit="c" * 40, status=Status.RUNNING, tree="t" * 40,
                                  run_spec={"metric": "val_bpb"}, created_at="t"), "owner")
    ledger.finish("e1", Finish(Status.OK, image_id="sha256:" + "a" * 64,
                               results=Results(metrics={"val_bpb": 1.5}, drift=[])))
    return ledger


def test_there_is_no_open_ended_annotate():
    """`annotate(**updates)` is gone: each annotation is a named method with typed arguments, and none
    of their parameters is named for what the run writes or for the record's identity."""
    assert not hasattr(Ledger, "annotate")
    for name in ANNOTATING:
        params = list(inspect.signature(getattr(Ledger, name)).parameters.values())
        assert params[1].name == "experiment_id", name
        assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params), name  # no **updates, no *args
        assert not {p.name for p in params[2:]} & (RUN_KEYS | set(IDENTITY)), name


def test_annotations_change_only_annotation_keys_whatever_they_carry(tmp_path):
    """Every annotation, even one whose proposal smuggles metrics and a status, leaves the run's keys and
    the identity as the run wrote them, changes only annotation keys, and keeps the chain whole."""
    ledger = finished(tmp_path)
    before = ledger.get("e1")
    forged = {"metrics": {"val_bpb": 0.1}, "status": "ok", "image_id": "sha256:" + "b" * 64}
    ledger.label("e1", RunLabels("night1", Decision.BASELINE, forged))
    ledger.record_decision("e1", Decision.KEEP, "better")
    ledger.record_push("e1", "r.example/x@sha256:" + "4" * 64)
    after = ledger.record_rerun("e1", "e0")
    stored = ledger.get("e1")
    assert {k for k in stored if stored.get(k) != before.get(k)} <= ANNOTATIONS
    assert all(stored[k] == before[k] for k in (*RUN_KEYS & set(before), *IDENTITY))
    assert after.metrics == {"val_bpb": 1.5} and after.status is Status.OK and after.decision is Decision.KEEP
    assert after.proposal == forged and after.reproduces == "e0"
    assert ledger.chain_problems() == []


def test_a_decision_is_one_the_loop_makes(tmp_path):
    """A decision that is not baseline, keep or discard is refused, and nothing is written."""
    ledger = finished(tmp_path)
    before = ledger.get("e1")
    with pytest.raises(RecordError, match="decision: expected one of baseline, keep, discard, confirm, got 'ok'"):
        ledger.record_decision("e1", "ok", "why not")  # type: ignore[arg-type]
    assert ledger.get("e1") == before
    with pytest.raises(LedgerError, match="no experiment nope"):
        ledger.record_decision("nope", Decision.KEEP, "x")


def test_interrupt_moves_only_a_running_record(tmp_path):
    """The stop of a round can mark a running record `interrupted` (releasing its owner); a record that
    has ended keeps its status, metrics and everything else, and an unknown one is no error. Annotating
    a running record keeps its owner."""
    ledger = finished(tmp_path)
    before = ledger.get("e1")
    assert ledger.interrupt("e1", "stopped by the user") is False and ledger.get("e1") == before
    assert ledger.interrupt("nope", "stopped by the user") is False  # a stop marks what it finds
    ledger.begin(ExperimentRecord(id="e2", commit="c" * 40, status=Status.RUNNING, created_at="t"), "owner")
    ledger.label("e2", RunLabels("night1"))
    assert ledger.running() == [("e2", "owner")]
    assert ledger.interrupt("e2", "stopped by the user") is True
    assert ledger.running() == [] and ledger.experiment("e2").status is Status.INTERRUPTED
    assert ledger.experiment("e2").reason == "stopped by the user" and ledger.chain_problems() == []


def test_the_agent_side_never_calls_the_executors_writes():
    """No module of agent/ calls begin, finish or the ledger's internals: the loop and the commands
    reach a record only through the annotations, `interrupt` and the executor's own functions."""
    calls = []
    for path in sorted((ROOT / "agent").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in EXECUTOR_ONLY:
                calls.append(f"{path.name}:{node.lineno} .{node.func.attr}()")
    assert calls == []
    assert (ROOT / "agent" / "loop.py").read_text().count(".finish(") == 0  # the walk reads the real files


def test_nothing_but_interrupt_writes_onto_a_record_that_does_not_decode(tmp_path):
    """A stored record the codec refuses (edited by hand) takes no annotation and no finish, and the
    chain stays as it was; a dead run's record is still recovered (`interrupt` writes onto any record)."""
    from tests.conftest import write_stored

    ledger = Ledger(tmp_path / "l.db")
    write_stored(ledger, {"id": "e1", "commit": "c" * 40, "status": "running", "metrics": "0.9", "created_at": "t"})
    links = ledger.db.execute("SELECT count(*) FROM chain").fetchone()[0]
    with pytest.raises(RecordError, match="metrics: expected a table, got '0.9'"):
        ledger.record_decision("e1", Decision.KEEP, "better")
    with pytest.raises(RecordError, match="metrics"):
        ledger.finish("e1", Finish(Status.OK))
    assert ledger.get("e1")["status"] == "running" and "decision" not in ledger.get("e1")
    assert ledger.db.execute("SELECT count(*) FROM chain").fetchone()[0] == links
    assert ledger.interrupt("e1", "its process died") is True and ledger.get("e1")["status"] == "interrupted"
    assert ledger.chain_problems() == []
