"""The ledger's indexed reads (Query, select, count, tally, cursor) select exactly what filtering a full load
would, on a ledger with every status and decision, several runs, untagged and odd records; and
`sealab status` reads through them (its defaults, --tag, --all, --limit, --since, streamed --json)."""

from __future__ import annotations

import itertools
import json
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

from executor import owner
from executor.ledger import Ledger, Query
from executor.record import Decision, Finish, Results, RunLabels
from executor.types import Status
from tests.conftest import begin, write_stored

START = datetime(2026, 11, 1, tzinfo=timezone.utc)
TAGS = ("night-1", "night-2", None)


def stamp(n: int) -> str:
    return (START + timedelta(hours=n)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build(ledger: Ledger, n: int = 60) -> None:
    """n records over three runs (one untagged), every ending status and every decision, some still
    running, one pushed, and two stored as an older sealab might have written them."""
    statuses = [s for s in Status if s != Status.RUNNING]
    decisions = [None, *Decision]
    with ledger.batch():
        for i in range(n):
            eid = f"e{i:04d}"
            tag = TAGS[i % 3]
            begin(ledger, owner.token(), id=eid, commit=f"{i:040x}", created_at=stamp(i),
                  **({"run_tag": tag} if tag and i % 2 else {}))
            if i % 11 == 10:
                continue  # still running
            status = statuses[i % len(statuses)]
            ledger.finish(eid, Finish(status, reason=None if status == Status.OK else "why",
                                      image_id=f"sha256:{i % 7:02x}{'e' * 62}",
                                      results=Results(metrics={"val_bpb": 1.0 + i / 100}, drift=[])))
            if tag:
                ledger.label(eid, RunLabels(run_tag=tag))
            decision = decisions[i % len(decisions)]
            if decision is not None:
                ledger.record_decision(eid, decision, "because")
    write_stored(ledger, {"id": "odd-1", "commit": "c", "status": "ok", "created_at": stamp(n), "run_tag": "night-1"})
    write_stored(ledger, {"id": "odd-2", "status": 3, "created_at": stamp(n + 1), "decision": ["not", "one"]})


def full_load(ledger: Ledger) -> list[tuple[int, dict]]:
    """Every row, read without the indexes: what the queries must agree with."""
    rows = sqlite3.connect(ledger.path).execute("SELECT seq, record FROM experiments ORDER BY seq").fetchall()
    return [(seq, json.loads(text)) for seq, text in rows]


def by_hand(rows: list[tuple[int, dict]], q: Query, changed: dict[str, int]) -> list[tuple[int, dict]]:
    def keep(seq: int, r: dict) -> bool:
        return all([
            q.run_tag is None or r.get("run_tag") == q.run_tag,
            q.status is None or r.get("status") == q.status,
            q.decision is None or r.get("decision") == q.decision,
            q.image_prefix is None or str(r.get("image_id") or "").startswith(q.image_prefix),
            q.after is None or seq > q.after,
            q.before is None or seq < q.before,
            q.since is None or str(r.get("created_at")) >= q.since,
            q.changed_after is None or changed[r["id"]] > q.changed_after,
        ])
    chosen = [(seq, r) for seq, r in rows if keep(seq, r)]
    if q.last is not None:
        chosen = chosen[-q.last:] if q.last else []
    return chosen[:q.limit] if q.limit is not None else chosen


@pytest.fixture
def ledger(tmp_path):
    ledger = Ledger(tmp_path / "ledger.db")
    build(ledger)
    yield ledger
    ledger.close()


def latest_links(ledger: Ledger) -> dict[str, int]:
    return dict(ledger.db.execute("SELECT experiment_id, max(seq) FROM chain GROUP BY experiment_id").fetchall())


QUERIES = [
    Query(), Query(run_tag="night-1"), Query(run_tag="night-2", status="ok"), Query(status="running"),
    Query(status="crash"), Query(decision="keep"), Query(decision="confirm", run_tag="night-1"),
    Query(image_prefix="sha256:03"), Query(after=20), Query(after=10, before=30), Query(since=stamp(45)),
    Query(last=7), Query(run_tag="night-1", last=3), Query(limit=5), Query(after=5, limit=4), Query(last=0),
    Query(run_tag="nobody"), Query(since=stamp(30), status="ok", last=2),
]


@pytest.mark.parametrize("query", QUERIES, ids=repr)
def test_a_query_selects_what_filtering_a_full_load_does(ledger, query):
    """Each query's records, in order, are those a full load filtered by hand gives; count and tally agree."""
    expected = by_hand(full_load(ledger), query, latest_links(ledger))
    assert list(ledger.select(query)) == expected
    assert [json.loads(text) for _, text in ledger.select(query, raw=True)] == [r for _, r in expected]
    unlimited = by_hand(full_load(ledger), Query(**{**query.__dict__, "limit": None, "last": None}), latest_links(ledger))
    assert ledger.count(query) == len(unlimited)
    for column in ("status", "run_tag"):
        tally = {}
        for _, r in unlimited:
            value = str(r.get(column)) if column == "status" else r.get(column)  # (the status column holds text)
            tally[value] = tally.get(value, 0) + 1
        assert ledger.tally(column, query) == tally


def test_records_and_experiments_of_a_run_are_the_full_load_filtered(ledger):
    rows = [r for _, r in full_load(ledger)]
    assert ledger.records() == rows
    for tag in TAGS:
        assert ledger.records(tag) == [r for r in rows if tag is None or r.get("run_tag") == tag]
    assert ledger.tally("decision", Query(status="ok"))  # SQL aggregates on the derived column


def test_the_cursor_selects_exactly_what_was_written_after_it(ledger):
    """begin, finish and every annotation move the cursor; a read of `changed_after` sees those records."""
    cursor = ledger.cursor()
    assert list(ledger.select(Query(changed_after=cursor))) == []
    begin(ledger, id="new", commit="d" * 40, created_at=stamp(99))
    ledger.record_decision("e0005", Decision.KEEP, "kept after all")
    ledger.record_test("e0006", {"val_bpb": 1.5})
    changed = [r["id"] for _, r in ledger.select(Query(changed_after=cursor))]
    assert changed == ["e0005", "e0006", "new"]
    assert ledger.cursor() > cursor
    assert [r["id"] for _, r in ledger.select(Query(changed_after=ledger.cursor()))] == []


def test_pages_by_cursor_return_every_record_once(ledger):
    seen, after = [], 0
    while True:
        page = list(ledger.select(Query(after=after, limit=7)))
        if not page:
            break
        seen += [r["id"] for _, r in page]
        after = page[-1][0]
    assert seen == [r["id"] for _, r in full_load(ledger)]


def test_reads_use_the_indexes(ledger):
    """The filters are index searches, not scans of the table (what keeps a read at what it returns)."""
    for query in (Query(run_tag="night-1"), Query(status="ok"), Query(decision="keep"), Query(changed_after=3),
                  Query(image_prefix="sha256:01"), Query(since=stamp(3))):
        sql, params = query.sql("seq, record")
        plan = " ".join(row[-1] for row in ledger.db.execute("EXPLAIN QUERY PLAN " + sql, params))
        assert "USING INDEX" in plan or "USING INTEGER PRIMARY KEY" in plan, (query, plan)


def test_a_schema_3_ledger_gains_the_columns_and_its_change_cursor(tmp_path):
    """An older ledger is migrated in place: every record keeps its place and gets its latest link as `changed`."""
    ledger = Ledger(tmp_path / "l.db")
    build(ledger, 12)
    links = latest_links(ledger)
    ledger.close()
    db = sqlite3.connect(tmp_path / "l.db")
    for index in [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")]:
        db.execute(f"DROP INDEX {index}")
    for column in ("run_tag", "decision", "image_id", "changed"):
        db.execute(f"ALTER TABLE experiments DROP COLUMN {column}")
    db.execute("PRAGMA user_version = 3")
    db.commit()
    db.close()
    again = Ledger(tmp_path / "l.db")
    assert dict(again.db.execute("SELECT id, changed FROM experiments")) == links
    assert [r["id"] for _, r in again.select(Query(run_tag="night-1"))] == \
        [r["id"] for r in again.records() if r.get("run_tag") == "night-1"]
    assert again.chain_problems() == []


# -- sealab status -------------------------------------------------------------------------------------
@pytest.fixture
def workspace(tmp_path):
    from agent.create import init

    ws = init(tmp_path / "ws")
    ledger = Ledger(ws.ledger_path)
    build(ledger, 120)
    ledger.save_run("night-1", {"tag": "night-1"})
    ledger.save_run("night-2", {"tag": "night-2"})  # saved last: the latest run
    ledger.close()
    return ws.root


def sealab(root, *args):
    from agent.cli import main

    return CliRunner().invoke(main, ["-C", str(root), *args])


def rows_of(output: str) -> list[str]:
    return [line.split("│")[1].strip() for line in output.splitlines() if line.startswith("│ e")]


def test_status_shows_the_latest_run_and_says_how_to_see_all(workspace):
    ledger = Ledger(workspace / ".sealab" / "ledger.db")
    night2 = [r["id"] for r in ledger.records("night-2")]
    result = sealab(workspace, "status")
    assert result.exit_code == 0, result.output
    assert rows_of(result.output) == night2  # (fewer than 50)
    assert f"run night-2: {len(night2)} record(s); --all shows every run's ({ledger.count()} records)" in result.output
    every = sealab(workspace, "status", "--all", "--limit", "0")
    assert rows_of(every.output) == [r["id"] for r in ledger.records() if r["id"].startswith("e")]
    last = sealab(workspace, "status", "--all")
    assert rows_of(last.output) == [r["id"] for r in ledger.records()[-50:] if r["id"].startswith("e")]
    assert f"the last 50 of {ledger.count()} record(s) selected; --limit 0 shows them all" in last.output


def test_status_json_streams_every_record_or_the_selection(workspace):
    ledger = Ledger(workspace / ".sealab" / "ledger.db")
    assert json.loads(sealab(workspace, "status", "--json").output) == ledger.records()
    assert json.loads(sealab(workspace, "status", "--json", "--limit", "5").output) == ledger.records()[-5:]
    tagged = json.loads(sealab(workspace, "status", "--json", "--tag", "night-1", "--limit", "50").output)
    assert tagged == ledger.records("night-1")[-50:]
    after = json.loads(sealab(workspace, "status", "--json", "--since", "e0100").output)
    assert [r["id"] for r in after] == [r["id"] for r in ledger.records()][101:]
    since = json.loads(sealab(workspace, "status", "--json", "--since", stamp(110)[:16]).output)
    assert [r["id"] for r in since] == [r["id"] for r in ledger.records() if str(r.get("created_at")) >= stamp(110)]


@pytest.mark.parametrize("args, says", [
    (("--since", "yesterday-ish"), "no experiment 'yesterday-ish' in the ledger, and not an ISO-8601 time"),
    (("--tag", "nobody"), "no run tagged 'nobody' in the ledger"),
    (("--tag", "night-1", "--all"), "give --tag TAG or --all, not both"),
    (("--limit", "-1"), "--limit"),
])
def test_status_refuses_bad_selections_in_one_line(workspace, args, says):
    result = sealab(workspace, "status", *args)
    assert result.exit_code == 2 and says in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_every_combination_of_status_filters_runs(workspace):
    """No combination of the options fails (each is one Query)."""
    for tag, since, limit in itertools.product((None, "night-1"), (None, "e0010"), (None, "3")):
        args = [*(["--tag", tag] if tag else []), *(["--since", since] if since else []),
                *(["--limit", limit] if limit else [])]
        assert sealab(workspace, "status", "--json", *args).exit_code == 0, args


def test_picked_fields_give_the_results_a_full_load_gives(ledger):
    """`sealab results` reads only its columns' values (Ledger.pick): the same TSV as decoding every record,
    odd records (a number for a status, no commit) included; and what pick gives is what json.loads holds."""
    from agent.report import RESULTS_TEXTS, results_fields, results_lines, results_tsv, slim

    ledger.finish("e0010", Finish(Status.OK, results=Results(metrics={"val_bpb": True, "other": [1]}, drift=[])))
    picked = "\n".join(results_lines(slim(ledger.pick(results_fields(), texts=RESULTS_TEXTS)))) + "\n"
    assert picked == results_tsv(ledger.records())
    for (_, record), values in zip(ledger.select(), ledger.pick({"status": "$.status", "m": "$.metrics",
                                                                  "nothing": "$.nowhere", "d": "$.decision"},
                                                                 texts={"spec": "$.run_spec"})):
        assert {**values, "spec": json.loads(values["spec"])} == {
            "status": record.get("status"), "m": record.get("metrics"), "nothing": None, "d": record.get("decision"),
            "spec": record.get("run_spec")}
