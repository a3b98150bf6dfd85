"""results.tsv rendering (pure)."""

from agent.report import COLUMNS, results_tsv
from executor.types import RunSpec


def rec(status, value, **extra):
    return {"id": "e1", "commit": "abcdef1234567890", "status": status, "metrics": {"val_bpb": value} if value else {},
            "peak_memory_mb": 2048.0, "description": "tab\there", "image_id": "sha256:i", "base_image_id": "sha256:b",
            "tree": "t", "data_digest": "sha256:d", "run_spec": RunSpec().to_dict(), **extra}


def test_columns_and_rows():
    """autoresearch's five columns come first, then provenance; a crash reads 0.000000 and 0.0."""
    lines = results_tsv([rec("ok", 1.2345678), rec("crash", None)]).splitlines()
    assert lines[0].split("\t") == list(COLUMNS)
    ok, crash = (dict(zip(COLUMNS, line.split("\t"))) for line in lines[1:])
    assert ok["commit"] == "abcdef1" and ok["val_bpb"] == "1.234568" and ok["memory_gb"] == "2.0"
    assert ok["description"] == "tab here" and ok["run_spec"] == RunSpec().digest()
    assert crash["val_bpb"] == "0.000000" and crash["memory_gb"] == "0.0" and crash["status"] == "crash"


def test_a_record_of_an_older_shape_is_a_row_not_an_error():
    """Metrics that are not a table, or a run spec an older sealab wrote otherwise, give a row of dashes
    and zeros for what cannot be read, not a traceback."""
    lines = results_tsv([rec("ok", None, metrics="1.5", run_spec={"budget_s": "sixty"}),
                         rec("ok", None, metrics={"val_bpb": True})]).splitlines()
    rows = [dict(zip(COLUMNS, line.split("\t"))) for line in lines[1:]]
    assert [(r["val_bpb"], r["status"], r["run_spec"]) for r in rows] == [("0.000000", "ok", ""), ("0.000000", "ok", RunSpec().digest())]
