"""The record codec (executor.record): exact both ways for every shape sealab has written (the hash
chain covers the stored bytes), strict about what a known key holds, with typed statuses and decisions."""

from __future__ import annotations

import copy
import json

import pytest

from executor.errors import RecordError, SealabError
from executor.ledger import RECORD_KEYS, Ledger
from executor.record import (RECORD_VERSION, Decision, ExperimentRecord, Finish, Results, RunLabels,
                             metrics as tolerant_metrics)
from executor.types import RunSpec, Status

SPEC = RunSpec().to_dict()
IMAGE, BASE, DATA = "sha256:" + "a" * 64, "sha256:" + "b" * 64, "sha256:" + "d" * 64
OLD_KEYS = tuple(k for k in RECORD_KEYS if k != "record_version")  # every record key before record_version

# A record as the first sealab wrote it (5561cf5): the original keys only, finished in place.
FIRST = {
    "id": "0a1b2c3d4e", "commit": "c" * 40, "parent": "p" * 40, "tree": "t" * 40, "description": "baseline",
    "image_id": IMAGE, "base_image_id": BASE, "data_digest": DATA, "run_spec": SPEC, "status": "ok",
    "reason": None, "metrics": {"val_bpb": 1.25, "steps": 40, "hyperparameters": {"LR": 0.5}},
    "peak_memory_mb": 512.5, "exit_code": 0, "durations": {"seal": 0.1, "run": 3.0, "total": 3.2},
    "drift": [{"path": "train.py", "changes": ["LR = 0.5 -> 0.3"], "patch": "@@ ...\n"}],
    "log_path": ".sealab/logs/0a1b2c3d4e.log", "created_at": "2026-11-26T10:00:00.000Z",
}
OLDER_SHAPES = {
    "first sealab": FIRST,
    # a loop record before backends: run tag, proposal and decision, no backend/placement/finished_at/cpu
    "loop, before backends": {**FIRST, "run_tag": "night1", "decision": "keep", "decision_reason": "better by 0.1",
                              "proposal": {"proposer": "claude", "description": "lower LR", "usage": {"cost_usd": 0.5},
                                           "prompt_digest": "sha256:" + "3" * 64}},
    # drift as plain "path: change" strings, no durations key at all (what record.py's readers tolerate)
    "string drift, no durations": {k: v for k, v in {**FIRST, "drift": ["train.py: LR 0.5 -> 0.3"]}.items()
                                   if k != "durations"},
    # interrupted by recover: status and reason only, never sealed (image null), nothing measured
    "interrupted before sealing": {**{k: None for k in OLD_KEYS}, "id": "dead000001", "commit": "c" * 40,
                                   "run_spec": SPEC, "drift": [], "durations": {}, "created_at": "t",
                                   "backend": "slurm", "status": "interrupted",
                                   "reason": "the sealab process that ran it (h:1:2) died before it finished"},
    # the engine failed mid-way: durations, backend and end time, but no placement, metrics or cpu
    "infra error": {**FIRST, "status": "infra_error", "reason": "Docker engine unavailable: gone",
                    "metrics": None, "backend": "local", "finished_at": "2026-12-01T00:00:00.000Z"},
    # a rerun and a pushed record, with keys in another order than sealab writes them today
    "rerun, pushed, reordered": dict(reversed(list({**FIRST, "reproduces": "0a1b2c3d4e", "cpu": None,
                                                    "registry_digest": "r.example/x@sha256:" + "4" * 64}.items()))),
}


@pytest.mark.parametrize("shape", OLDER_SHAPES, ids=list(OLDER_SHAPES))
def test_every_older_shape_round_trips_to_the_same_bytes(shape):
    """from_dict then to_dict gives back the record an older sealab wrote: the same keys, in the same
    order, with the same values, so the same JSON text (absent stays absent, null stays null)."""
    stored = copy.deepcopy(OLDER_SHAPES[shape])
    record = ExperimentRecord.from_dict(stored)
    assert record.to_dict() == stored and json.dumps(record.to_dict()) == json.dumps(stored)
    assert record.record_version is None and "record_version" not in record.to_dict()


def test_a_record_written_now_round_trips_and_keeps_the_key_order_sealab_writes(tmp_path):
    """A record begun and finished as `exec` does it is stored in the order sealab has always written
    (the record keys, then backend and the loop's labels, then what finish adds), plus record_version,
    and decodes to exactly that JSON again."""
    ledger = Ledger(tmp_path / "l.db")
    labels = RunLabels("night1", Decision.BASELINE, {"proposer": "offline", "description": "d", "usage": {}})
    ledger.begin(ExperimentRecord(id="e1", commit="c" * 40, status=Status.RUNNING, parent="p" * 40, tree="t" * 40,
                                  description="baseline", base_image_id=BASE, data_digest=DATA, run_spec=SPEC,
                                  drift=[], log_path=".sealab/logs/e1.log", created_at="t", durations={},
                                  backend="local", **labels.record_fields()), "owner")
    ledger.finish("e1", Finish(Status.OK, None, image_id=IMAGE, durations={"total": 1.0}, backend="local",
                               finished_at="t2", results=Results(metrics={"val_bpb": 1.5}, drift=[], placement="here",
                                                                 peak_memory_mb=None, exit_code=0, cpu=None)))
    stored = ledger.get("e1")
    assert list(stored) == [*RECORD_KEYS, "backend", "run_tag", "decision", "proposal", "placement", "finished_at",
                            "cpu"]
    assert stored["record_version"] == RECORD_VERSION and stored["cpu"] is None and stored["status"] == "ok"
    assert json.dumps(ExperimentRecord.from_dict(stored).to_dict()) == json.dumps(stored)
    assert ledger.chain_problems() == []


def test_unknown_keys_are_kept_where_they_were():
    """Keys this sealab does not know (a newer sealab's, a provenance field) are kept as they are, in
    place, and leave the known fields alone."""
    stored = {"id": "e1", "harness": "sha256:" + "e" * 64, "commit": "c" * 40, "status": "ok",
              "future": {"nested": [1, 2, {"x": None}]}, "metrics": {"val_bpb": 1.0}}
    record = ExperimentRecord.from_dict(stored)
    assert record.unknown == {"harness": "sha256:" + "e" * 64, "future": {"nested": [1, 2, {"x": None}]}}
    assert list(record.to_dict()) == list(stored) and record.to_dict() == stored
    assert record.metrics == {"val_bpb": 1.0} and record.value == 1.0


@pytest.mark.parametrize("change, field, expected, said", [
    ({"metrics": "x"}, "metrics", "a table", "metrics: expected a table, got 'x'"),
    ({"status": "exploded"}, "status", "one of running, ok, crash", "status: expected one of running"),
    ({"id": 7}, "id", "a string", "id: expected a string, got 7"),
    ({"commit": None}, "commit", "a string", "commit: expected a string, got None"),
    ({"exit_code": True}, "exit_code", "an integer", "exit_code: expected an integer, got True"),
    ({"peak_memory_mb": "big"}, "peak_memory_mb", "a number", "got 'big'"),
    ({"drift": "train.py: LR"}, "drift", "a list of drift entries", "drift: expected a list"),
    ({"drift": [3]}, "drift", "a list of drift entries", "got [3]"),
    ({"run_spec": ["fast"]}, "run_spec", "a table", "run_spec: expected a table"),
    ({"decision": "maybe"}, "decision", "one of baseline, keep, discard", "got 'maybe'"),
    ({"record_version": 99}, "record_version", f"at most {RECORD_VERSION}", "upgrade sealab"),
    ({"record_version": "1"}, "record_version", "a positive integer", "got '1'"),
])
def test_a_malformed_record_is_one_error_naming_field_expected_and_actual(change, field, expected, said):
    """A known key that holds what it cannot is a RecordError (a SealabError) with the field, what it
    should hold and what it holds, in one line that names the record."""
    with pytest.raises(RecordError) as refused:
        ExperimentRecord.from_dict({**FIRST, **change})
    error = refused.value
    assert isinstance(error, SealabError) and error.field == field and error.expected.startswith(expected)
    assert error.actual == change[field]
    assert said in str(error) and "\n" not in str(error)
    assert str(error).startswith("record 0a1b2c3d4e: ") or field == "id"


def test_what_is_not_a_record_at_all_is_refused():
    """Not a table, or a table without a required key, is refused too; a missing key reads as None."""
    for data, field in (("e1", "record"), ([FIRST], "record"), ({"commit": "c", "status": "ok"}, "id"),
                        ({"id": "e1", "commit": "c"}, "status")):
        with pytest.raises(RecordError) as refused:
            ExperimentRecord.from_dict(data)
        assert refused.value.field == field and "\n" not in str(refused.value)
        assert refused.value.actual == (data if field == "record" else None)


def test_status_and_decision_are_enums_and_are_written_as_plain_strings():
    """Decoded, status and decision are Status and Decision members; encoded, plain strings again."""
    record = ExperimentRecord.from_dict(OLDER_SHAPES["loop, before backends"])
    assert record.status is Status.OK and record.decision is Decision.KEEP
    out = record.to_dict()
    assert type(out["status"]) is str and type(out["decision"]) is str and out["decision"] == "keep"
    assert [d.value for d in Decision] == ["baseline", "keep", "discard", "confirm"]
    for status in Status:
        assert ExperimentRecord.from_dict({**FIRST, "status": status.value}).status is status


def test_a_record_made_here_is_of_the_current_version_and_its_output_is_a_copy():
    """A record built in code carries RECORD_VERSION and writes only the fields it sets; changing what
    to_dict returned changes nothing in the record (it is a value)."""
    record = ExperimentRecord(id="e1", commit="c" * 40, status=Status.OK, metrics={"val_bpb": 2.0}, run_spec=SPEC)
    out = record.to_dict()
    assert out == {"id": "e1", "commit": "c" * 40, "run_spec": SPEC, "status": "ok", "metrics": {"val_bpb": 2.0},
                   "record_version": RECORD_VERSION}
    out["metrics"]["val_bpb"] = 0.1
    assert record.metrics == {"val_bpb": 2.0} and record.to_dict()["metrics"] == {"val_bpb": 2.0}
    assert ExperimentRecord.from_dict(record.to_dict()).to_dict() == record.to_dict()
    with pytest.raises(AttributeError):
        record.status = Status.CRASH  # type: ignore[misc]


def test_the_metric_value_and_the_run_spec_as_readers_use_them():
    """`value` is the record's own metric when it ended ok (a number, never a boolean); `spec` is its
    RunSpec, or a RecordError when the stored spec is not one."""
    ok = ExperimentRecord.from_dict(FIRST)
    assert ok.metric == "val_bpb" and ok.value == 1.25 and ok.spec == RunSpec()
    assert ExperimentRecord.from_dict({**FIRST, "status": "crash"}).value is None
    assert ExperimentRecord.from_dict({**FIRST, "metrics": {"val_bpb": True}}).value is None
    assert ExperimentRecord.from_dict({**FIRST, "run_spec": {"metric": "loss"}, "metrics": {"loss": 3}}).value == 3.0
    with pytest.raises(RecordError, match="run_spec: expected a run spec"):
        _ = ExperimentRecord.from_dict({**FIRST, "run_spec": {"budget_s": "sixty"}}).spec
    strings = ExperimentRecord.from_dict(OLDER_SHAPES["string drift, no durations"])
    assert strings.drift_entries() == [{"path": "train.py", "changes": ["LR 0.5 -> 0.3"]}]


def test_finish_writes_what_the_run_reported_together_or_not_at_all():
    """A run cut short writes its status, reason and what is known (no metrics, no cpu key); a run that
    reached its end writes every result, `cpu: null` included. No Finish can leave a record running."""
    cut = Finish(Status.INFRA_ERROR, "engine gone", image_id=None, durations={"seal": 0.1}, backend="local",
                 finished_at="t")
    assert list(cut.changes()) == ["status", "reason", "backend", "finished_at", "durations"]
    ended = Finish(Status.OK, None, image_id=IMAGE, durations={}, backend="local", finished_at="t",
                   results=Results(metrics={"val_bpb": 1.0}, drift=[], placement="", cpu=None))
    assert list(ended.changes()) == ["status", "reason", "image_id", "metrics", "backend", "placement", "finished_at",
                                     "drift", "peak_memory_mb", "exit_code", "durations", "cpu"]
    assert ended.changes()["cpu"] is None and ended.changes()["status"] == "ok"
    with pytest.raises(RecordError, match="status"):
        Finish(Status.RUNNING)


def test_tolerant_readers_still_read_what_the_codec_refuses():
    """The readers that list whatever the ledger holds keep reading a record the codec refuses."""
    odd = {**FIRST, "metrics": "0.9"}
    with pytest.raises(RecordError):
        ExperimentRecord.from_dict(odd)
    assert tolerant_metrics(odd) == {}
