"""`sealab serve`'s data and app without a browser or Docker: payloads from a ledger filled directly,
verification, run state, escaping, GET-only routes and the read-only ledger."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
from datetime import datetime, timedelta, timezone
from importlib import resources

import pytest

from agent.dashboard import Dashboard
from agent.html_report import collect
from agent.serve import LOOPBACK_NAMES, StrictJSON, create_app, is_loopback
from executor.ledger import Ledger, ReadOnlyLedger, reading
from executor.record import Decision, Finish, Results, RunLabels
from executor.types import BaseImage, Status
from tests.conftest import begin, write_stored

SCRIPT = "<script>window.__pwned=1</script><img src=x onerror=\"window.__pwned=2\">"
SPEC = {"budget_s": 2.0, "grace_s": 40.0, "seed": 42, "metric": "val_bpb", "direction": "minimize",
        "resources": {}}
BASE = BaseImage(image_id="sha256:" + "b" * 64, diff_ids=("sha256:" + "d" * 64,), env=("PATH=/usr/bin",),
                 cmd=("python3",), recipe="r", data_digest="sha256:" + "e" * 64, source="test")
NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


def stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.fixture
def ws(tmp_path) -> dict:
    """A workspace with run `t1`: two baselines, a keep, a discard, a crash; a drift event, a parked and a
    rejected proposal. Image IDs are the real sealed IDs on a synthetic base, except where noted."""
    from agent.gitops import ZERO, cas, make_commit
    from executor import git_source
    from executor.image.seal import seal
    from executor.types import RunSpec
    from agent.create import init

    w = init(tmp_path / "ws")
    repo = w.git
    start = git_source.head_commit(repo)
    cas(repo, "refs/heads/sealab/t1", start, ZERO)
    train = (w.root / "train.py").read_text()
    c1 = make_commit(repo, start, {"train.py": train + "\nNEW_CONSTANT = 1\n"}, f"lower lr {SCRIPT}")
    c2 = make_commit(repo, c1, {"train.py": train + "\nNEW_CONSTANT = 2\n"}, "discarded")
    c3 = make_commit(repo, c1, {"train.py": train + "\nNEW_CONSTANT = 3\n"}, "crashes")

    def sealed(commit: str) -> str:
        return seal(git_source.resolve(repo, commit), BASE, RunSpec.from_dict(SPEC)).image_id

    log = w.logs / "e0005.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("".join(f"line {i}\n" for i in range(100)) + f"Traceback {SCRIPT}\n")
    rows = [("e0001", start, None, 1.0, "baseline", "ok"), ("e0002", start, None, 0.98, "baseline", "ok"),
            ("e0003", c1, start, 0.95, "keep", "ok"), ("e0004", c2, c1, 0.97, "discard", "ok"),
            ("e0005", c3, c1, None, "discard", "crash")]
    ledger = Ledger(w.ledger_path)
    ledger.set_base(BASE)
    for n, (eid, commit, parent, value, decision, status) in enumerate(rows):
        description = git_source.resolve(repo, commit).subject
        begin(ledger, id=eid, commit=commit, parent=parent, tree=git_source.tree_of(repo, commit),
              description=description, base_image_id=BASE.image_id, data_digest=BASE.data_digest, run_spec=SPEC,
              drift=[], log_path=f".sealab/logs/{eid}.log", created_at=stamp(NOW + timedelta(minutes=n)))
        ledger.finish(eid, Finish(Status(status), None if status == "ok" else "exit code 1", image_id=sealed(commit),
                                  durations={"total": 3.0},
                                  results=Results(metrics={"val_bpb": value} if value is not None else {}, drift=[])))
        ledger.label(eid, RunLabels("t1", proposal={"description": description, "usage": {"cost_usd": 0.5}}
                                    if parent else None))
        ledger.record_decision(eid, Decision(decision), f"{decision} {SCRIPT}")
    patch = w.state / "drift" / "t1-0001.patch"
    patch.parent.mkdir(parents=True, exist_ok=True)
    patch.write_text(f"+SCALAR_LR = 0.123  # {SCRIPT}\n")
    ledger.add_event("t1", "drift", {"where": "after run", "commit": c1, "changes": [f"train.py: {SCRIPT}"],
                                     "patch_path": ".sealab/drift/t1-0001.patch", "action": "restore"})
    ledger.add_event("t1", "drift", {"where": "before proposal", "commit": c1, "changes": ["x"],
                                     "patch_path": "../../../etc/passwd", "action": "restore"})
    for kind in ("parked", "rejected"):
        ledger.add_event("t1", kind, {"description": f"{kind} {SCRIPT}", "rule": "gates.x", "reason": "because",
                                      "proposer": "claude", "best_commit": c1, "patch": f"+{SCRIPT}\n",
                                      "usage": {"cost_usd": 0.25}})
    ledger.save_run("t1", {"tag": "t1", "branch": "sealab/t1", "best_commit": c1, "best_value": 0.95,
                           "threshold": 0.01, "cost_usd": 1.75, "stop_reason": None})
    ledger.close()
    return {"ws": w, "commits": [start, c1, c2, c3]}


def board(ws: dict, alive=lambda owner: True) -> Dashboard:
    return Dashboard(root=ws["ws"].root, repo=ws["ws"].git, alive=alive)


def test_experiments_rows_chart_series_and_verification(ws):
    """One row per record, in order, with its metric, the loop's running best and a verification that
    re-derives every image ID from git and the base: all `ok` here."""
    with reading(ws["ws"].ledger_path) as ledger:
        data = board(ws).experiments(ledger)
    rows = data["experiments"]
    assert [r["id"] for r in rows] == ["e0001", "e0002", "e0003", "e0004", "e0005"]
    assert [r["value"] for r in rows] == [1.0, 0.98, 0.95, 0.97, None]
    assert [r["best"] for r in rows] == [1.0, 0.99, 0.95, 0.95, 0.95]
    assert [r["verification"]["state"] for r in rows] == ["ok"] * 5
    assert rows[2]["description"] == f"lower lr {SCRIPT}"  # raw text: the page makes it a text node
    assert rows[4]["log_tail"].splitlines()[-1] == f"Traceback {SCRIPT}" and rows[0]["log_tail"] is None
    assert len(rows[4]["log_tail"].splitlines()) == 20
    assert data["metric"] == "val_bpb" and data["tag"] == "t1"


def test_verification_reports_a_wrong_image_id_and_an_edited_record(ws):
    """A record whose image ID is not its commit's is a mismatch naming image_id; a record edited in the
    SQLite file breaks the hash chain and says so on its row; a running record is listed, pending."""
    path = ws["ws"].ledger_path
    ledger = Ledger(path)
    ledger.finish("e0004", Finish(Status.OK, image_id="sha256:" + "f" * 64))  # through sealab: chained, but wrong
    begin(ledger, id="e0006", commit=ws["commits"][1], run_spec=SPEC, created_at=stamp(NOW), run_tag="t1")
    begin(ledger, id="e0007", commit=ws["commits"][1], run_spec=SPEC, created_at=stamp(NOW))
    ledger.close()
    con = sqlite3.connect(path)
    record = json.loads(con.execute("SELECT record FROM experiments WHERE id = 'e0003'").fetchone()[0])
    record["metrics"]["val_bpb"] = 0.5
    con.execute("UPDATE experiments SET record = ? WHERE id = 'e0003'", (json.dumps(record),))
    con.commit()
    con.close()
    with reading(path) as ledger:
        rows = {r["id"]: r["verification"] for r in board(ws).experiments(ledger)["experiments"]}
    assert rows["e0004"]["state"] == "mismatch" and rows["e0004"]["problems"][0].startswith("image_id")
    assert rows["e0003"]["state"] == "mismatch" and rows["e0003"]["problems"][0].startswith("record")
    assert rows["e0006"]["state"] == "pending"
    assert rows["e0007"]["state"] == "pending"  # running, not yet tagged with its run: listed all the same
    assert rows["e0001"]["state"] == "ok"


def test_state_phases_current_experiment_and_cost(ws):
    """A running record of a live process is the current experiment, with its elapsed time and budget;
    without one the loop is between experiments, stopped once it has a stop reason, and interrupted
    when the owner died or nothing happened for longer than an experiment can take."""
    path = ws["ws"].ledger_path
    ledger = Ledger(path)
    begin(ledger, "host:1:1", id="e0006", commit=ws["commits"][1], description="running one", run_spec=SPEC,
          created_at=stamp(NOW - timedelta(seconds=30)), run_tag="t1")
    ledger.close()
    with reading(path) as ledger:
        live = board(ws).state(ledger, now=NOW)
        dead = board(ws, alive=lambda owner: False).state(ledger, now=NOW)
    assert live["run"]["phase"] == "running" and live["tag"] == "t1" and live["branch"] == "sealab/t1"
    assert live["current"]["id"] == "e0006" and live["current"]["elapsed_s"] == pytest.approx(30)
    assert live["current"]["budget_s"] == 2.0 and live["current"]["grace_s"] == 40.0
    assert live["best"] == {"value": 0.95, "commit": ws["commits"][1]}
    assert live["cost_usd"] == 1.75 and live["chain"] == {"problems": 0}
    assert live["counts"]["experiments"] == 6 and live["counts"]["keep"] == 1 and live["counts"]["failed"] == 1
    assert live["counts"]["drift"] == 2 and live["counts"]["parked"] == 1 and live["counts"]["rejected"] == 1
    assert dead["run"]["phase"] == "interrupted" and dead["current"] is None

    ledger = Ledger(path)
    ledger.finish("e0006", Finish(Status.OK, results=Results(metrics={"val_bpb": 0.99}, drift=[])))
    ledger.close()
    with reading(path) as ledger:
        recent = datetime.now(timezone.utc)
        assert board(ws).state(ledger, now=recent)["run"]["phase"] == "between experiments"
        assert board(ws).state(ledger, now=recent + timedelta(hours=2))["run"]["phase"] == "interrupted"
    ledger = Ledger(path)
    ledger.save_run("t1", {**ledger.run_state("t1"), "stop_reason": "max experiments"})
    ledger.close()
    with reading(path) as ledger:
        stopped = board(ws).state(ledger)
    assert stopped["run"] == {**stopped["run"], "phase": "stopped", "stop_reason": "max experiments"}


def test_kept_drift_and_review(ws):
    """Kept changes carry their diff; drift events their patch (only from inside the workspace); parked
    and rejected proposals their rule, reason, cost and patch."""
    with reading(ws["ws"].ledger_path) as ledger:
        b = board(ws)
        kept, drift, review = b.kept(ledger)["kept"], b.drift(ledger)["drift"], b.review(ledger)
    assert [k["id"] for k in kept] == ["e0003"] and "+NEW_CONSTANT = 1" in kept[0]["diff"]
    assert drift[0]["patch"] == f"+SCALAR_LR = 0.123  # {SCRIPT}\n" and drift[0]["changes"] == [f"train.py: {SCRIPT}"]
    assert drift[1]["patch"] is None  # a patch path leading out of the workspace is not read
    assert [(p["kind"], p["cost_usd"]) for p in review["review"]] == [("parked", 0.25), ("rejected", 0.25)]
    assert review["review"][0]["patch"] == f"+{SCRIPT}\n" and review["proposal_failed"] == []


def test_duty_cycle_in_state_rows_and_report(ws):
    """Records with a time account (`cycle`) give the run's duty cycle in /api/state, each row's training
    and idle seconds, and a duty section in the report; the experiments without one are left out of it
    (and said to be), and the records still verify."""
    from agent import cycle
    from agent.html_report import render_html

    path = ws["ws"].ledger_path
    with reading(path) as ledger:
        assert board(ws).state(ledger, now=NOW)["duty"] is None  # an older ledger: no account, no duty
        rows = board(ws).experiments(ledger)["experiments"]
        page = render_html(collect(ledger, "t1"))
    assert {(r["training_s"], r["idle_s"]) for r in rows} == {(None, None)}
    assert "Duty cycle" not in page and 'id="duty"' not in page
    ledger = Ledger(path)
    for eid, pipelined in (("e0001", False), ("e0002", False), ("e0003", True)):
        ledger.record_cycle(eid, cycle.account(wall_s=100.0, training_s=80.0, durations={"seal": 2.0, "load": 1.0},
                                               proposal_s=10.0, decision_s=1.0, pipelined=pipelined))
    ledger.close()
    with reading(path) as ledger:
        duty = board(ws).state(ledger, now=NOW)["duty"]
        rows = {r["id"]: r for r in board(ws).experiments(ledger)["experiments"]}
        page = render_html(collect(ledger, "t1"))
    assert duty["experiments"] == 3 and duty["duty"] == 0.8 and duty["per_hour"] == 36.0 and duty["pipelined"]
    assert duty["idle_per_experiment"] == {"proposal": 10.0, "seal_load": 3.0, "container": 0.0, "eval": 0.0,
                                           "scoring": 0.0, "decision": 1.0, "other": 6.0}
    assert duty["labels"]["seal_load"] == "seal+load"
    assert (rows["e0003"]["training_s"], rows["e0003"]["idle_s"]) == (80.0, 20.0)
    assert (rows["e0004"]["training_s"], rows["e0004"]["idle_s"]) == (None, None)
    assert rows["e0003"]["verification"]["state"] == "ok"
    section = page[page.index('<div id="duty">'):]
    assert "<dd>0.80 (240 s training in 300 s, over 3 of 5 experiment(s) with a time account)</dd>" in section
    assert "<dd>36.0</dd>" in section and "<dd>pipelined" in section
    assert "<td>seal+load</td><td class=num>3.0</td><td class=num>3.0%</td>" in section
    assert "<td>proposal</td><td class=num>10.0</td><td class=num>10.0%</td>" in section


def test_empty_workspace_gives_empty_payloads(tmp_path):
    """Before the first experiment (no ledger file yet) every endpoint answers, with nothing in it."""
    missing = tmp_path / "ledger.db"
    with reading(missing) as ledger:
        b = Dashboard()
        assert b.experiments(ledger)["experiments"] == [] and b.kept(ledger)["kept"] == []
        assert b.state(ledger)["run"]["phase"] == "no run"
    assert not missing.exists()


# -- the app ---------------------------------------------------------------------------------------------
def call(app, method: str, target: str, host: str = "127.0.0.1:8765") -> tuple[int, dict, bytes]:
    """One request through the ASGI app, without a server."""
    path, _, query = target.partition("?")

    async def go() -> list[dict]:
        sent: list[dict] = []
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode(),
                 "root_path": "", "headers": [(b"host", host.encode())], "client": ("127.0.0.1", 1),
                 "server": ("127.0.0.1", 8765)}

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        await app(scope, receive, send)
        return sent

    sent = asyncio.run(go())
    headers = {k.decode().lower(): v.decode() for k, v in sent[0]["headers"]}
    return sent[0]["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])


@pytest.fixture
def app(ws):
    return create_app(ws["ws"].root, ledger_path=ws["ws"].ledger_path, allowed_hosts=LOOPBACK_NAMES)


def test_api_serves_json_with_safe_headers(app):
    """Every API route answers GET with JSON (never HTML) under a CSP without inline script."""
    for name in ("state", "experiments", "kept", "drift", "review"):
        status, headers, body = call(app, "GET", f"/api/{name}?tag=t1")
        assert status == 200, (name, body)
        assert headers["content-type"] == "application/json" and headers["x-content-type-options"] == "nosniff"
        assert "script-src 'self'" in headers["content-security-policy"]
        assert "unsafe-inline" not in headers["content-security-policy"]
        assert json.loads(body)["tag"] == "t1"
    status, headers, body = call(app, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html") and b'id="experiments"' in body


def test_non_finite_numbers_are_null():
    """A NaN or infinite number (which JSON.parse would reject) is sent as null."""
    body = StrictJSON({"a": float("nan"), "b": [float("inf"), 1.5], "c": {"d": -float("inf")}}).body
    assert json.loads(body) == {"a": None, "b": [None, 1.5], "c": {"d": None}}


def test_nothing_can_change_state(app, ws):
    """Only GET (and HEAD) exist: other methods are refused, and the ledger file is untouched by reads."""
    db = ws["ws"].ledger_path
    before = db.read_bytes()
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        for path in ("/", "/api/state", "/api/experiments"):
            assert call(app, method, path)[0] == 405, (method, path)
    assert call(app, "HEAD", "/api/state")[0] == 200
    for name in ("state", "experiments", "kept", "drift", "review"):
        call(app, "GET", f"/api/{name}")
    assert db.read_bytes() == before


def test_only_loopback_host_headers(app):
    """Bound to loopback, a request naming another host (DNS rebinding) is refused."""
    assert call(app, "GET", "/api/state", host="evil.example:8765")[0] == 400
    assert call(app, "GET", "/api/state", host="localhost:8765")[0] == 200
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")


def test_page_writes_ledger_text_only_as_text():
    """The page's script never parses data as HTML, and the page has no inline script or handler."""
    static = resources.files("agent").joinpath("dashboard_static")
    js = static.joinpath("dashboard.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                 "createContextualFragment", "DOMParser"):
        assert sink not in js, sink
    page = static.joinpath("index.html").read_text()
    assert re.findall(r"<script[^>]*>", page) == ['<script src="/static/dashboard.js" defer>']
    assert not re.search(r"\son[a-z]+=", page)


# -- the read-only ledger -----------------------------------------------------------------------------------
def test_read_only_ledger_neither_writes_nor_waits(ws):
    """A reader opened with mode=ro sees committed records at once while a writer holds its transaction
    open, and cannot write itself."""
    path = ws["ws"].ledger_path
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE meta SET value = 'x' WHERE key = 'current_base'")
    try:
        t = time.monotonic()
        reader = ReadOnlyLedger(path)
        assert len(reader.records()) == 5 and reader.current_base() == BASE
        assert time.monotonic() - t < 2
        with pytest.raises(sqlite3.OperationalError):
            reader.db.execute("DELETE FROM experiments")
        reader.close()
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_missing_ledger_is_not_created(tmp_path):
    """Serving a workspace without a ledger creates none."""
    with reading(tmp_path / ".sealab" / "ledger.db") as ledger:
        assert ledger.records() == []
    assert not (tmp_path / ".sealab").exists()


def test_a_record_of_an_older_shape_is_served_as_json(ws):
    """A record written by an older sealab (drift as plain strings, metrics not a table, no durations, a
    run spec without resources) is answered with JSON on every route, never a 500."""
    ledger = Ledger(ws["ws"].ledger_path)
    commit = ws["commits"][1]
    write_stored(ledger, {"id": "e0006", "commit": commit, "parent": ws["commits"][0], "tree": "t",
                          "description": "old shape", "image_id": None, "base_image_id": BASE.image_id,
                          "data_digest": BASE.data_digest, "run_spec": {"metric": "val_bpb"}, "status": "ok",
                          "reason": None, "metrics": "0.9", "durations": {"seal": "fast"},
                          "drift": ["train.py: SCALAR_LR 0.5 -> 0.3"], "log_path": None,
                          "created_at": stamp(NOW + timedelta(minutes=9)), "run_tag": "t1",
                          "cycle": {"wall_s": "long", "training_s": None, "idle": "none"}})
    ledger.close()
    app = create_app(ws["ws"].root, ledger_path=ws["ws"].ledger_path, allowed_hosts=LOOPBACK_NAMES)
    for name in ("state", "experiments", "kept", "drift", "review"):
        status, headers, body = call(app, "GET", f"/api/{name}?tag=t1")
        assert status == 200 and headers["content-type"] == "application/json", (name, status, body[:300])
    rows = json.loads(call(app, "GET", "/api/experiments?tag=t1")[2])["experiments"]
    old = next(r for r in rows if r["id"] == "e0006")
    assert old["value"] is None and old["drift"] == 1 and old["idle_s"] is None
    state = json.loads(call(app, "GET", "/api/state?tag=t1")[2])
    assert state["duty"]["experiments"] == 1 and state["duty"]["duty"] is None  # no wall time: no duty
    drift = json.loads(call(app, "GET", "/api/drift?tag=t1")[2])["drift"]
    assert [d["changes"] for d in drift if d["experiment"] == "e0006"] == [["train.py: SCALAR_LR 0.5 -> 0.3"]]
    from agent.html_report import render_html

    with reading(ws["ws"].ledger_path) as ledger:
        page = render_html(collect(ledger, "t1"), ws["ws"].git, ws["ws"].root)
    assert "e0006" in page and "Duty cycle" not in page
    from click.testing import CliRunner

    from agent.cli import main

    for command in (["status"], ["results"]):  # the terminal readers too
        listed = CliRunner().invoke(main, ["-C", str(ws["ws"].root), *command])
        assert listed.exit_code == 0 and "e0006" in listed.output, (command, listed.output)


def test_verify_reports_a_record_that_does_not_decode_and_checks_the_rest(ws):
    """`verify` takes records as stored: one the codec refuses is a mismatch naming its field, what it
    should hold and what it holds, and every other record is still re-derived (here: all of them fine)."""
    from executor.verify import verify

    ledger = Ledger(ws["ws"].ledger_path)
    write_stored(ledger, {**ledger.get("e0004"), "id": "e0009", "metrics": "0.9"})
    report = verify(ws["ws"].git, ledger, None, ledger.records(), whole_ledger=True)
    assert report["checked"] == 6
    assert report["mismatches"] == [{"id": "e0009", "field": "metrics", "expected": "a table", "actual": "0.9"}]
    with reading(ws["ws"].ledger_path) as read_only:
        rows = {r["id"]: r["verification"] for r in board(ws).experiments(read_only)["experiments"]}
    assert rows["e0009"] == {"state": "mismatch", "problems": ["metrics: expected a table, found 0.9"]}
    assert rows["e0004"]["state"] == "ok"


def test_a_request_read_in_its_daemon_thread_gives_its_result_or_its_error():
    """serve's API reads run in daemon threads: the awaiting request gets the value, or the exception."""
    import asyncio
    import threading

    from agent.serve import in_daemon_thread
    from executor.errors import LedgerError

    def fails():
        raise LedgerError("the ledger is locked")

    async def both():
        value = await in_daemon_thread(lambda: threading.current_thread().daemon)
        with pytest.raises(LedgerError, match="locked"):
            await in_daemon_thread(fails)
        return value

    assert asyncio.run(both()) is True
