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

from agent import dashboard as dash
from agent import chain_watch, run_view
from agent.dashboard import Dashboard
from agent.html_report import collect, heldout_rows, kept_values, metric_of, running_best
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
    return Dashboard(root=ws["ws"].root, repo=ws["ws"].git, alive=alive, chain_interval_s=0)


def checked(b: Dashboard, path) -> Dashboard:
    """`b` once its background chain check of the ledger at `path` has run (a poll starts it)."""
    with reading(path) as ledger:
        b.state(ledger)
    b.chain.wait()
    return b


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
        rows = {r["id"]: r["verification"] for r in checked(board(ws), path).experiments(ledger)["experiments"]}
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
        live = checked(board(ws), path).state(ledger, now=NOW)
        dead = board(ws, alive=lambda owner: False).state(ledger, now=NOW)
    assert live["run"]["phase"] == "running" and live["tag"] == "t1" and live["branch"] == "sealab/t1"
    assert live["current"]["id"] == "e0006" and live["current"]["elapsed_s"] == pytest.approx(30)
    assert live["current"]["budget_s"] == 2.0 and live["current"]["grace_s"] == 40.0
    assert live["best"] == {"value": 0.95, "commit": ws["commits"][1]}
    assert live["cost_usd"] == 1.75 and live["chain"]["problems"] == 0 and live["chain"]["checked_at"]
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


# -- at scale: incremental views, windows, downsampling, the chain in the background ---------------------------
C40 = "c" * 40


def write(ledger, eid: str, *, tag: str | None = "t1", status: str = "ok", value: float | None = None,
          decision: str | None = None, reproduces: str | None = None, test: float | None = None,
          account: tuple[float, float] | None = None, at: int = 0, finish: bool = True, owner: str = "test") -> None:
    """One experiment as the loop writes it: begun, finished, tagged, decided, annotated."""
    begin(ledger, owner, id=eid, commit=C40, run_spec=SPEC, description=f"change {eid}",
          created_at=stamp(NOW + timedelta(seconds=at)))
    if not finish:
        return
    ledger.finish(eid, Finish(Status(status), None if status == "ok" else "exit code 1",
                              results=Results(metrics={"val_bpb": value} if value is not None else {}, drift=[])))
    if tag is not None:
        ledger.label(eid, RunLabels(tag, proposal={"description": f"proposal {eid}", "usage": {"cost_usd": 0.125}}))
    if decision is not None:
        ledger.record_decision(eid, Decision(decision), f"{decision} because")
    if reproduces is not None:
        ledger.record_rerun(eid, reproduces)
    if test is not None:
        ledger.record_test(eid, {"val_bpb": test})
    if account is not None:
        from agent import cycle

        ledger.record_cycle(eid, cycle.account(wall_s=account[0], training_s=account[1], durations={"seal": 0.5},
                                               proposal_s=2.25, decision_s=0.125, pipelined=True))


class Counting:
    """A ledger that counts what is read through it: record reads and SQL statements."""

    def __init__(self, ledger) -> None:
        self.ledger, self.reads, self.sql = ledger, 0, []
        outer = self

        class DB:
            def execute(self, sql, params=()):
                outer.sql.append(sql)
                return ledger.db.execute(sql, params)

            def __getattr__(self, name):
                return getattr(ledger.db, name)

        self.db = DB()

    def select(self, *args, **kwargs):
        for item in self.ledger.select(*args, **kwargs):
            self.reads += 1
            yield item

    def __getattr__(self, name):
        if name in ("records", "experiments", "get", "experiment", "chain_problems", "events"):
            self.reads += 1000  # never in a poll
        return getattr(self.ledger, name)


def steady(payload: dict) -> dict:
    """A payload without what differs between two dashboards reading the same ledger."""
    return {k: v for k, v in payload.items() if k not in ("server_time", "chain", "cursor")}


def fresh(path, tag=None, **kwargs) -> tuple[dict, dict]:
    """What a new dashboard computes from the whole ledger: (state, experiments with every row)."""
    b = Dashboard(chain_interval_s=3600, check_chain=lambda ledger: [], alive=lambda owner: True)
    with reading(path) as ledger:
        return b.state(ledger, tag, now=NOW), b.experiments(ledger, tag, limit=dash.PAGE_MAX, **kwargs)


@pytest.mark.parametrize("small", [False, True], ids=["full chart", "downsampled chart"])
def test_incremental_polls_equal_a_fresh_computation(tmp_path, monkeypatch, small):
    """A dashboard polled after every write (begin, finish, tag, decision, annotations, another run's
    record, a record still running, one moved to another run) answers what a new dashboard computes from
    the whole ledger, which is what `sealab report` computes (running best, held-out rows, duty cycle,
    counts); a client that merges the `since` answers holds the same rows as a full window."""
    if small:
        monkeypatch.setattr(run_view, "CHART_FULL", 4)
        monkeypatch.setattr(run_view, "BUCKET_ROWS", 2)
        monkeypatch.setattr(run_view, "CHART_BUCKETS", 3)
    path = tmp_path / "ledger.db"
    ledger = Ledger(path)
    ledger.save_run("t1", {"tag": "t1", "branch": "sealab/t1"})
    live = Dashboard(chain_interval_s=3600, check_chain=lambda ledger: [], alive=lambda owner: True)
    client: dict[int, dict] = {}
    cursor = chain = None
    steps = [
        lambda: write(ledger, "e01", value=1.0, decision="baseline", test=1.1, account=(100.0, 80.0), at=1),
        lambda: write(ledger, "e02", value=0.98, decision="baseline", test=1.05, account=(50.0, 40.0), at=2),
        lambda: write(ledger, "e03", finish=False, at=3),  # running, not tagged yet
        lambda: ledger.finish("e03", Finish(Status.OK, results=Results(metrics={"val_bpb": 0.94}, drift=[]))),
        lambda: ledger.label("e03", RunLabels("t1")),
        lambda: write(ledger, "x01", tag="other", value=0.5, decision="keep", at=4),  # another run's
        lambda: write(ledger, "e04", value=0.95, decision="confirm", reproduces="e03", at=5),
        lambda: ledger.record_decision("e03", Decision.KEEP, "beats the best"),  # the keep, after its confirmation
        lambda: ledger.record_test("e03", {"val_bpb": 1.0}),
        lambda: write(ledger, "e05", status="crash", decision="discard", at=6),
        lambda: write(ledger, "e06", value=0.99, decision="discard", account=(30.0, 12.5), at=7),
        lambda: ledger.record_decision("e06", Decision.CONFIRM, "reclassified"),  # an annotation of an older row
        lambda: ledger.record_rerun("e06", "e03"),  # ... which now moves e03's kept value
        lambda: write(ledger, "e07", value=0.9, decision="keep", test=0.97, at=8),
        lambda: write(ledger, "e08", finish=False, at=9, owner="host:1:1"),
        lambda: ledger.record_push("e01", "registry.example/x@sha256:" + "a" * 64),
        lambda: write(ledger, "e09", value=1.2, decision="discard", at=10),
        lambda: ledger.label("e09", RunLabels("other")),  # ... and it leaves the run: rows renumbered
    ]
    for n, step in enumerate(steps):
        step()
        with reading(path) as reader:
            state = live.state(reader, now=NOW)
            full = live.experiments(reader, limit=dash.PAGE_MAX)
            polled = live.experiments(reader, since=cursor, chain=chain) if cursor is not None else full
        want_state, want = fresh(path)
        assert steady(state) == steady(want_state), n
        assert steady(full) == steady(want), n
        if cursor is None or polled["reset"]:
            client = {}
        client.update({r["seq"]: r for r in polled["experiments"]})
        cursor, chain = polled["cursor"], polled["chain"]["version"]
        no_best = lambda rows: [{k: v for k, v in r.items() if k != "best"} for r in rows]  # noqa: E731
        assert no_best(sorted(client.values(), key=lambda r: r["n"])) == no_best(want["experiments"]), n
        if polled["chart"] is not None:
            chart = polled["chart"]
        assert chart == want["chart"], n
    # ... and what the report computes
    records = ledger.records("t1")
    values, decisions = [metric_of(r) for r in records], [r.get("decision") for r in records]
    rows = want["experiments"]
    assert [r["id"] for r in rows] == [r["id"] for r in records] + ["e08"]  # the running one last
    assert [r["best"] for r in rows[:-1]] == running_best(values, decisions, kept_values(records))
    assert want_state["heldout"] == {**heldout_rows(records)[-1], "first_gap": heldout_rows(records)[0]["gap"],
                                     "rows": len(heldout_rows(records))}
    assert want_state["duty"] == dash.duty_of(records) and want_state["duty"]["experiments"] == 3
    assert want_state["counts"] == {"experiments": 7, "baseline": 2, "keep": 2, "discard": 1, "confirm": 2,
                                    "failed": 1, "drift": 0, "rejected": 0, "parked": 0, "proposal_failed": 0}
    assert want_state["cost_usd"] == 0.125 * 6 and want_state["current"]["id"] == "e08"
    ledger.close()


def test_pages_return_every_row_exactly_once(tmp_path):
    """The latest window, then `before` the oldest row shown, page after page: every row of the run once,
    in order, numbered from 1; `more` is false on the last page. `since` answers only what was written."""
    path = tmp_path / "ledger.db"
    ledger = Ledger(path)
    ledger.save_run("t1", {"tag": "t1"})
    with ledger.batch():
        for i in range(1, 260):
            write(ledger, f"e{i:04d}", value=1.0 + i / 1000, decision="discard", at=i)
            if i % 50 == 0:
                write(ledger, f"x{i:04d}", tag="other", value=1.0, at=i)
    b = Dashboard(check_chain=lambda ledger: [])
    seen = []
    with reading(path) as reader:
        page = b.experiments(reader, limit=37)
        assert page["total"] == 259 and page["window"]["more"]
        while True:
            seen = page["experiments"] + seen
            if not page["window"]["more"]:
                break
            page = b.experiments(reader, limit=37, before=page["window"]["first"])
            assert page["chart"] is None  # (a page of older rows: the chart came with the latest window)
        cursor = b.experiments(reader)["cursor"]
    assert [r["n"] for r in seen] == list(range(1, 260))
    assert [r["id"] for r in seen] == [f"e{i:04d}" for i in range(1, 260)]
    assert len({r["seq"] for r in seen}) == 259
    ledger.record_decision("e0007", Decision.CONFIRM, "again")
    write(ledger, "e0260", value=0.5, decision="keep", at=300)
    write(ledger, "x0260", tag="other", value=0.5, at=301)
    with reading(path) as reader:
        since = b.experiments(reader, since=cursor)
        assert not since["reset"]
        assert [(r["id"], r["n"]) for r in since["experiments"]] == [("e0007", 7), ("e0260", 260)]
        again = b.experiments(reader, since=since["cursor"])
    assert again["experiments"] == [] and again["chart"] is None and not again["reset"]
    ledger.close()


def view_of(n: int, keep_every: int = 97, fail_every: int = 13) -> run_view.RunView:
    """A run's view of `n` records fed directly (no ledger): baselines first, a keep every
    `keep_every`, a crash every `fail_every`, discards otherwise."""
    view = run_view.RunView("t1")
    for i in range(1, n + 1):
        decision = "baseline" if i <= 3 else "keep" if i % keep_every == 0 else "discard"
        status = "crash" if decision == "discard" and i % fail_every == 0 else "ok"
        record = {"id": f"e{i:06d}", "run_tag": "t1", "status": status, "decision": decision, "run_spec": SPEC,
                  "metrics": {"val_bpb": 1.0 - i / (10 * n) + (i % 7) / 100} if status == "ok" else {}}
        text = json.dumps(record)
        view.put(i, text, record)
    view.cursor = view.changed_at = n
    return view


@pytest.mark.parametrize("n, buckets", [(12_000, None), (3_000, 40)], ids=["as served", "buckets merged"])
def test_the_chart_downsamples_beyond_a_few_thousand_points_and_keeps_every_keep(monkeypatch, n, buckets):
    """Beyond CHART_FULL experiments the chart holds every baseline and keep as a point and the others as
    at most CHART_BUCKETS min/max buckets that cover each of them; the running best is the report's."""
    if buckets:
        monkeypatch.setattr(run_view, "CHART_BUCKETS", buckets)
        monkeypatch.setattr(run_view, "CHART_FULL", 500)
    small = view_of(run_view.CHART_FULL)
    assert not small.chart()["downsampled"] and len(small.chart()["points"]) == run_view.CHART_FULL
    view = view_of(n)
    chart = view.chart()
    rows = [view.rows[s] for s in view.seqs]
    steps = [(n, r.id) for n, r in enumerate(rows, 1) if r.decision in ("keep", "baseline")]
    assert chart["downsampled"] and chart["total"] == n
    assert [(p[0], p[3]) for p in chart["points"]] == steps and len(steps) == 3 + n // 97
    assert len(chart["buckets"]) <= run_view.CHART_BUCKETS and len(chart["buckets"]) > run_view.CHART_BUCKETS // 2
    assert len(chart["points"]) + len(chart["buckets"]) + len(chart["best"]) <= 2 * len(steps) + run_view.CHART_BUCKETS
    others = [(n, r) for n, r in enumerate(rows, 1) if r.decision not in ("keep", "baseline")]
    assert sum(b[4] + b[5] for b in chart["buckets"]) == len(others)
    for n, row in others[::101]:  # each one inside its bucket's range
        bucket = next(b for b in chart["buckets"] if b[0] <= n <= b[1])
        assert row.value is None and bucket[5] or bucket[2] <= row.value <= bucket[3]
    values = [r.value for r in rows]
    best = running_best(values, [r.decision for r in rows])
    changes = [(n, b) for n, b in enumerate(best, 1) if n == 1 or b != best[n - 2]]
    assert chart["best"] == changes
    # a change in the middle touches its bucket only, and the chart follows it
    record = {"id": "e001000", "run_tag": "t1", "status": "ok", "decision": "discard", "run_spec": SPEC,
              "metrics": {"val_bpb": 7.0}}
    view.put(1000, json.dumps(record), record)
    view.changed_at += 1
    assert sum(b is None for b in view.buckets) == 1
    assert max(b[3] for b in view.chart()["buckets"]) == 7.0


def test_a_poll_after_no_change_reads_no_record(tmp_path):
    """Once the dashboard has answered, polls of every route read no record while nothing is written;
    after one write they read that one (and the running ones), not the ledger."""
    path = tmp_path / "ledger.db"
    ledger = Ledger(path)
    ledger.save_run("t1", {"tag": "t1"})
    with ledger.batch():
        for i in range(1, 301):
            write(ledger, f"e{i:04d}", value=1.0 + i / 1000, decision="baseline" if i < 3 else "discard", at=i)
    b = Dashboard(check_chain=lambda ledger: [])
    routes = [("state", {}), ("experiments", {}), ("kept", {}), ("drift", {}), ("review", {})]
    with reading(path) as reader:
        counting = Counting(reader)
        for name, kwargs in routes:
            getattr(b, name)(counting, **kwargs)
        first = counting.reads
        cursor = b.experiments(counting)["cursor"]
        counting.reads, counting.sql = 0, []
        for name, kwargs in routes + [("experiments", {"since": cursor})]:
            getattr(b, name)(counting, **kwargs)
    assert first >= 300
    assert counting.reads == 0
    assert not [sql for sql in counting.sql if re.search(r"\brecord\b.*FROM experiments", sql)], counting.sql
    write(ledger, "e0301", value=0.9, decision="keep", at=400)
    with reading(path) as reader:
        counting = Counting(reader)
        since = b.experiments(counting, since=cursor)
        b.state(counting)
    assert [r["id"] for r in since["experiments"]] == ["e0301"] and counting.reads <= 3
    ledger.close()


def test_the_chain_is_checked_in_the_background_and_an_edit_is_reported(tmp_path):
    """A poll never waits for the hash-chain check: the first says it is checking; once the background
    check has run, polls say when and what it found. A record edited in the file (no cursor moves) is
    found by the next check, shown on its row, and a client's window is reset."""
    import threading

    path = tmp_path / "ledger.db"
    ledger = Ledger(path)
    ledger.save_run("t1", {"tag": "t1"})
    for i in range(1, 4):
        write(ledger, f"e{i}", value=1.0 - i / 100, decision="discard", at=i)
    ledger.close()
    gate = threading.Event()

    def slow(reader):
        gate.wait(30)
        return chain_watch.chain_problems(reader)

    b = Dashboard(check_chain=slow, chain_interval_s=0)
    b.chain.idle_factor = 0  # (the first check waited for the gate: no pause after it here)
    with reading(path) as reader:
        started = time.monotonic()
        state = b.state(reader)
        client = b.experiments(reader)
    assert time.monotonic() - started < 5
    assert state["chain"]["problems"] is None and state["chain"]["checking"] and state["chain"]["checked_at"] is None
    gate.set()
    b.chain.wait()
    with reading(path) as reader:
        state = b.state(reader)
    assert state["chain"]["problems"] == 0 and state["chain"]["checked_at"] and not state["chain"]["checking"]
    con = sqlite3.connect(path)
    record = json.loads(con.execute("SELECT record FROM experiments WHERE id = 'e2'").fetchone()[0])
    record["metrics"]["val_bpb"] = 0.5
    con.execute("UPDATE experiments SET record = ? WHERE id = 'e2'", (json.dumps(record),))
    con.commit()
    con.close()
    with reading(path) as reader:
        b.state(reader)  # the ledger's files changed: a check starts
    b.chain.wait()
    with reading(path) as reader:
        state = b.state(reader)
        since = b.experiments(reader, since=client["cursor"], chain=client["chain"]["version"])
    assert state["chain"]["problems"] == 1
    assert since["reset"] and since["chain"]["version"] != client["chain"]["version"]
    rows = {r["id"]: r for r in since["experiments"]}
    assert rows["e2"]["verification"]["state"] == "mismatch"
    assert rows["e2"]["verification"]["problems"][0].startswith("record")
    assert rows["e2"]["value"] == 0.5  # the row as the file holds it now
    assert rows["e1"]["verification"]["state"] == "unchecked"  # (no git here: the chain only)


def test_experiments_query_parameters(app):
    """`/api/experiments` takes limit, before, since and chain as whole numbers; anything else is 400."""
    status, _, body = call(app, "GET", "/api/experiments?tag=t1&limit=2")
    data = json.loads(body)
    assert status == 200 and [r["id"] for r in data["experiments"]] == ["e0004", "e0005"] and data["total"] == 5
    older = json.loads(call(app, "GET", f"/api/experiments?tag=t1&limit=2&before={data['window']['first']}")[2])
    assert [r["id"] for r in older["experiments"]] == ["e0002", "e0003"] and older["window"]["more"]
    since = json.loads(call(app, "GET", f"/api/experiments?tag=t1&since={data['cursor']}")[2])
    assert since["experiments"] == [] and since["chart"] is None
    for bad in ("limit=x", "before=-1", "since=1e3", "limit=%C2%B2"):
        status, headers, body = call(app, "GET", f"/api/experiments?{bad}")
        assert status == 400 and headers["content-type"] == "application/json" and "whole number" in body.decode()


@pytest.mark.parametrize("where", ["thread", "child"])
def test_the_default_chain_check_runs_in_a_thread_for_a_small_ledger_and_in_a_child_beyond(tmp_path, monkeypatch, where):
    """The server's own check (no `check_chain` given): a ledger under IN_THREAD_BYTES is walked in the
    waiting thread, a larger one in a child Python; both find a clean chain, then an edit."""
    monkeypatch.setattr(chain_watch, "IN_THREAD_BYTES", 1 << 30 if where == "thread" else 0)
    started = []
    monkeypatch.setattr(chain_watch.ChainWatch, "_in_child",
                        lambda self, path, real=chain_watch.ChainWatch._in_child: started.append(path) or real(self, path))
    path = tmp_path / "ledger.db"
    ledger = Ledger(path)
    for i in range(1, 4):
        write(ledger, f"e{i}", value=1.0 - i / 100, decision="discard", at=i)
    board = Dashboard(alive=lambda holder: True, chain_interval_s=0)
    board.chain.idle_factor = 0
    with reading(path) as reader:
        board.state(reader)
    assert board.chain.wait().problems == ()
    con = sqlite3.connect(path)
    con.execute("UPDATE experiments SET record = replace(record, 'change e2', 'changed e2') WHERE id = 'e2'")
    con.commit()
    with reading(path) as reader:
        board.state(reader)
    found = board.chain.wait().problems
    assert [(p["id"], p["field"]) for p in found] == [("e2", "record")]
    assert bool(started) == (where == "child")
