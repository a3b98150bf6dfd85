"""`sealab mcp` driven by the official MCP SDK's own client over stdio (the real protocol, the real engine):
a session of three experiments with a keep and a discard while a linter rewrites the work tree, a bad
edit and a policy-rejected edit as tool errors, malformed calls that do not end the server, two clients
on one run, and a linked git work tree sharing the workspace."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import git
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

from tests.conftest import SEALAB, TINY_TRAIN, sealab_json
from tests.faults.kit import fast_workspace, ledger_rows

pytestmark = pytest.mark.docker

TOOLS = {"read_file", "edit_train_py", "run_experiment", "results", "status", "log_tail"}
CRASH = 'def train(h):\n    raise RuntimeError("boom in train")\n'


@asynccontextmanager
async def client(root: Path, *args: str, errlog=None):
    """A connected, initialised SDK client session of `sealab mcp ARGS` started in `root`."""
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    params = StdioServerParameters(command=SEALAB, args=["mcp", *args], cwd=str(root), env=env)
    with open(os.devnull, "w") if errlog is None else errlog as log:
        async with stdio_client(params, errlog=log) as (read, write, *_):
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield session


def one_experiment(root: Path, tag: str, change: tuple[str, str], description: str) -> dict:
    """One client session on run `tag`: one edit, one experiment; its record as run_experiment returns it."""
    async def session():
        async with client(root, "--tag", tag) as s:
            await ok(s, "edit_train_py", {"old": change[0], "new": change[1]})
            return json.loads(await ok(s, "run_experiment", {"description": description}))

    return anyio.run(session)


def text(result) -> str:
    return "".join(c.text for c in result.content if getattr(c, "type", "") == "text")


async def ok(session, tool: str, args: dict | None = None, progress=None) -> str:
    result = await session.call_tool(tool, args or {}, progress_callback=progress)
    assert not result.is_error, f"{tool} failed: {text(result)}"
    return text(result)


async def error(session, tool: str, args: dict | None = None) -> str:
    result = await session.call_tool(tool, args or {})
    assert result.is_error, f"{tool} should have failed: {text(result)}"
    message = text(result)
    assert "\n" not in message and message.strip(), message
    return message


def image_train(engine, image_id: str) -> str:
    from executor.image.docker_build import read_file

    return read_file(engine.api, image_id, "/workspace/train.py").decode()


def outward_address() -> str | None:
    """This machine's address on its default route (None: it has none but loopback)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        try:
            udp.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the route
            address = udp.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


class Linter(threading.Thread):
    """Rewrites train.py in the work tree every 50 ms (the incident: SCALAR_LR 0.5 -> 0.3), as a formatter
    on save would; remembers what it wrote last."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.stop, self.last, self.writes = path, threading.Event(), "", 0

    def run(self) -> None:
        while not self.stop.is_set():
            self.last = TINY_TRAIN.replace("LR = 0.5", "LR = 0.3") + f"# linted {self.writes}\n"
            self.path.write_text(self.last)
            self.writes += 1
            time.sleep(0.05)


def test_a_session_of_three_experiments_over_stdio_keeps_discards_and_never_touches_the_work_tree(
        tmp_path, base_image, engine):
    root = fast_workspace(tmp_path, base_image, steps=4, noise_runs=1)
    repo = git.Repo(root)
    head, branch = repo.head.commit.hexsha, repo.active_branch.name
    linter = Linter(root / "train.py")
    linter.start()
    progress: list[str] = []

    async def on_progress(value, total, message):
        progress.append(message or "")

    async def session_run():
        async with client(root, "--tag", "s") as s:
            assert {t.name for t in (await s.list_tools()).tools} == TOOLS
            assert json.loads(await ok(s, "status"))["started"] is False
            assert await ok(s, "read_file", {"path": "train.py"}) == TINY_TRAIN  # the commit, not the linted file
            assert "sealab harness" in await ok(s, "read_file", {"path": "./prepare.py"})
            assert "not found" in await error(s, "edit_train_py", {"old": "LR = 0.25", "new": "LR = 1.0"})
            assert "no such file" in await error(s, "read_file", {"path": "nothing/here.py"})
            assert "edit it with edit_train_py first" in await error(s, "run_experiment", {"description": "no change"})

            # a policy-rejected draft: a tool error naming the rule, nothing run, the draft kept
            await ok(s, "edit_train_py", {"old": "import torch\n", "new": "import socket\nimport torch\n"})
            refused = await error(s, "run_experiment", {"description": "open a socket"})
            assert "rejected by the policy" in refused and "forbidden" in refused, refused
            assert "import socket" in await ok(s, "read_file", {"path": "train.py"})
            await ok(s, "edit_train_py", {"discard": True})
            assert await ok(s, "read_file", {"path": "train.py"}) == TINY_TRAIN

            # 1: a better learning rate (the first call measures the baseline first): kept
            await ok(s, "edit_train_py", {"old": "LR = 0.5 ", "new": "LR = 20.0 "})
            first = json.loads(await ok(s, "run_experiment", {"description": "LR 0.5 -> 20"}, on_progress))
            # 2: a crash: discarded
            await ok(s, "edit_train_py", {"old": "def train(h):\n", "new": CRASH})
            second = json.loads(await ok(s, "run_experiment", {"description": "crash on purpose"}, on_progress))
            # 3: a worse learning rate: discarded
            await ok(s, "edit_train_py", {"old": "LR = 20.0 ", "new": "LR = 0.001 "})
            third = json.loads(await ok(s, "run_experiment", {"description": "LR 20 -> 0.001"}, on_progress))
            table = await ok(s, "results")
            state = json.loads(await ok(s, "status"))
            crash_log = await ok(s, "log_tail", {"experiment_id": second["experiment_id"], "lines": 40})
            kept_log = await ok(s, "log_tail", {"experiment_id": first["experiment_id"]})
            assert "no experiment" in await error(s, "log_tail", {"experiment_id": "0123456789"})
            return first, second, third, table, state, crash_log, kept_log

    try:
        first, second, third, table, state, crash_log, kept_log = anyio.run(session_run)
    finally:
        linter.stop.set()
        linter.join()

    assert first["status"] == "ok" and first["decision"] == "keep", first
    assert second["status"] == "crash" and second["decision"] == "discard", second
    assert third["status"] == "ok" and third["decision"] == "discard", third
    assert third["metric"] > first["metric"] and state["best"] == first["metric"] == third["best"]
    for record in (first, second, third):
        assert set(record) >= {"experiment_id", "commit", "image_id", "status", "metric", "decision", "best", "reason"}
    assert any("baseline" in line for line in progress), progress
    assert any("running" in line for line in progress), progress

    # what ran is exactly what the agent drafted, never the linter's file
    assert "LR = 20.0 " in image_train(engine, first["image_id"])
    assert "raise RuntimeError" in image_train(engine, second["image_id"])
    assert "LR = 0.001 " in image_train(engine, third["image_id"])
    for record in (first, second, third):
        assert "LR = 0.3" not in image_train(engine, record["image_id"])
        assert "# linted" not in image_train(engine, record["image_id"])
    # the work tree is the linter's, untouched by sealab: same branch, same HEAD, its last write intact
    assert repo.active_branch.name == branch and repo.head.commit.hexsha == head
    assert (root / "train.py").read_text() == linter.last and linter.writes > 20
    assert repo.git.rev_parse("sealab/s") == first["commit"] == state["best_commit"]
    for record in (second, third):
        assert repo.git.rev_parse(f"refs/sealab/discarded/{record['experiment_id']}") == record["commit"]
        assert repo.commit(record["commit"]).parents[0].hexsha == first["commit"]

    rows = table.strip().splitlines()
    assert len(rows) == 1 + 4 and all(r["experiment_id"] in table for r in (first, second, third))
    assert "<untrusted_log>" in crash_log and "boom in train" in crash_log and "untrusted DATA" in crash_log
    assert "val_bpb:" in kept_log
    assert state["experiments"] == 4 and len(state["baseline"]) == 1  # the rejected draft counts, as in the loop
    rejected = ledger_rows(root, "SELECT record FROM events WHERE kind = 'rejected'")
    assert len(rejected) == 1 and "import socket" in rejected[0]["patch"] and rejected[0]["proposer"].startswith("mcp")
    records = [r for r in sealab_json("status", cwd=root) if r.get("run_tag") == "s"]
    assert [r.get("decision") for r in records] == ["baseline", "keep", "discard", "discard"]
    assert all((r.get("proposal") or {}).get("proposer", "").startswith("mcp") for r in records[1:])
    assert sealab_json("verify", "--all", cwd=root)["mismatches"] == []


def test_malformed_requests_and_calls_never_end_the_server(tmp_path, base_image):
    root = fast_workspace(tmp_path, base_image, steps=4, noise_runs=1)
    proc = subprocess.Popen([SEALAB, "mcp"], cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)

    def send(obj) -> None:
        proc.stdin.write((obj if isinstance(obj, str) else json.dumps(obj)) + "\n")
        proc.stdin.flush()

    def answer(request_id) -> dict:
        while True:
            line = proc.stdout.readline()
            assert line, "the server ended"
            message = json.loads(line)
            if message.get("id") == request_id:
                return message

    try:
        send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}})
        assert "result" in answer(1)
        send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        send("this is not JSON at all {")
        send({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": "not an object"})  # (dropped by the SDK)
        send({"jsonrpc": "2.0", "id": 3, "method": "no/such/method", "params": {}})
        assert "error" in answer(3)
        send({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
              "params": {"name": "run_experiment", "arguments": {"description": ["not", "a", "string"]}}})
        bad = answer(4)["result"]
        assert bad["isError"] and "\n" not in bad["content"][0]["text"], bad
        assert "bad arguments" in bad["content"][0]["text"] and "description" in bad["content"][0]["text"]
        send({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
              "params": {"name": "log_tail", "arguments": {"experiment_id": "../../etc/passwd", "lines": 3}}})
        assert answer(5)["result"]["isError"]
        send({"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {"name": "rm_rf", "arguments": {}}})
        assert answer(6)["result"]["isError"]
        send({"jsonrpc": "2.0", "id": 7, "method": "tools/list", "params": {}})
        assert {t["name"] for t in answer(7)["result"]["tools"]} == TOOLS
        send({"jsonrpc": "2.0", "id": 8, "method": "tools/call",
              "params": {"name": "read_file", "arguments": {"path": "train.py"}}})
        assert answer(8)["result"]["content"][0]["text"] == TINY_TRAIN
        assert proc.poll() is None
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=20) == 0  # the client closed stdin: a clean end


def test_two_clients_on_one_run_take_turns_and_merge_their_drafts(tmp_path, base_image, engine):
    """Two agents (two server processes) on one run, both drafting on the same best commit: the second's
    run_experiment waits for the first's (it says so), and its draft is carried onto the commit the first
    kept, so both changes run together; the baseline is measured once."""
    root = fast_workspace(tmp_path, base_image, steps=4, noise_runs=1)
    repo = git.Repo(root)
    waits: list[str] = []

    async def both():
        a_drafted, b_drafted, a_running, out = anyio.Event(), anyio.Event(), anyio.Event(), {}

        async def first():
            async def on_progress(value, total, message):
                a_running.set()

            async with client(root, "--tag", "pair") as s:
                await ok(s, "edit_train_py", {"old": "LR = 0.5 ", "new": "LR = 20.0 "})
                a_drafted.set()
                await b_drafted.wait()
                out["lr"] = json.loads(await ok(s, "run_experiment", {"description": "LR 0.5 -> 20"}, on_progress))

        async def second():
            async def on_progress(value, total, message):
                if message and message.startswith("waiting"):
                    waits.append(message)

            async with client(root, "--tag", "pair") as s:
                await ok(s, "edit_train_py", {"old": "MARK = 0 ", "new": "MARK = 1 "})
                b_drafted.set()
                await a_drafted.wait()
                await a_running.wait()  # the first holds the run now
                out["mark"] = json.loads(await ok(s, "run_experiment", {"description": "MARK 0 -> 1"}, on_progress))

        async with anyio.create_task_group() as group:
            group.start_soon(first)
            group.start_soon(second)
        return out

    out = anyio.run(both)
    lr, mark = out["lr"], out["mark"]
    assert lr["status"] == mark["status"] == "ok" and lr["decision"] == "keep", out
    assert waits and "another client" in waits[0], waits
    records = [r for r in sealab_json("status", cwd=root) if r.get("run_tag") == "pair"]
    assert [r.get("decision") for r in records] == ["baseline", "keep", "discard"]  # measured once
    spans = {r["id"]: (r["created_at"], r["finished_at"]) for r in records}
    assert spans[lr["experiment_id"]][1] <= spans[mark["experiment_id"]][0], "the two runs overlapped"
    # the second draft, made on the start commit, was carried onto the kept one: both changes ran
    assert repo.commit(mark["commit"]).parents[0].hexsha == lr["commit"]
    source = image_train(engine, mark["image_id"])
    assert "LR = 20.0 " in source and "MARK = 1 " in source
    rebased = ledger_rows(root, "SELECT record FROM events WHERE kind = 'rebased'")
    assert [e["commit"] for e in rebased] == [mark["commit"]] and rebased[0]["onto"] == lr["commit"]
    assert sealab_json("verify", "--all", cwd=root)["mismatches"] == []


def test_a_linked_work_tree_shares_the_workspace(tmp_path, base_image):
    root = fast_workspace(tmp_path, base_image, steps=4, noise_runs=1)
    repo = git.Repo(root)
    linked = tmp_path / "agent-2"
    repo.git.worktree("add", "-b", "agent-2", str(linked))
    assert not (linked / ".sealab").exists()
    record = sealab_json("exec", cwd=linked)  # the base of the main work tree's ledger, no `sealab base` here
    assert record["status"] == "ok" and record["commit"] == repo.commit("agent-2").hexsha
    assert record["id"] in {r["id"] for r in sealab_json("status", cwd=root)}
    assert (root / record["log_path"]).is_file() and not (linked / ".sealab").exists()

    async def status():
        async with client(linked) as s:
            return json.loads(await ok(s, "status")), await ok(s, "read_file", {"path": "train.py"})

    state, train = anyio.run(status)
    assert state["run"] == "mcp-agent-2" and state["workspace"] == str(root) and state["work_tree"] == str(linked)
    assert train == TINY_TRAIN


def test_streamable_http_serves_each_client_its_own_draft_and_stops_on_sigterm(tmp_path):
    """`sealab mcp --http`: 127.0.0.1 only; two SDK clients over streamable HTTP, each with its own draft."""
    import signal
    import socket

    from mcp.client.streamable_http import streamable_http_client

    from agent.create import init

    root = init(tmp_path / "ws").root
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([SEALAB, "mcp", "--http", "--port", str(port)], cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/mcp"

    @asynccontextmanager
    async def http_client():
        async with streamable_http_client(url) as (read, write, *_):
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield session

    async def two():
        async with http_client() as a, http_client() as b:
            await ok(a, "edit_train_py", {"old": "SCALAR_LR = 0.5", "new": "SCALAR_LR = 0.4"})
            mine, theirs = await ok(a, "read_file", {"path": "train.py"}), await ok(b, "read_file", {"path": "train.py"})
            prompt = await a.get_prompt("program")
            return mine, theirs, json.loads(await ok(b, "status")), prompt

    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
                time.sleep(0.2)
        mine, theirs, state, prompt = anyio.run(two)
        assert "SCALAR_LR = 0.4" in mine and "SCALAR_LR = 0.5" in theirs
        assert state["draft"]["changed"] is False and state["run"] == "mcp-ws"
        assert "no shell" in prompt.messages[0].content.text
        address = outward_address()
        if address is not None:  # loopback only: this machine's other address is refused
            with pytest.raises(OSError):
                socket.create_connection((address, port), timeout=2).close()
    finally:
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        proc.wait(timeout=20)
    assert time.monotonic() - started < 10
    assert "Traceback" not in proc.stderr.read()


def _server_pid(root: Path, tag: str) -> int:
    """The pid of the `sealab mcp --tag TAG` process serving `root`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if b"mcp" in argv and tag.encode() in argv and cwd == str(root):
            return int(entry.name)
    raise AssertionError(f"no sealab mcp --tag {tag} process in {root}")


def test_a_server_killed_mid_experiment_loses_nothing_and_the_next_one_goes_on(tmp_path, base_image, engine):
    """kill -9 of the server while an experiment trains: the next server marks it `interrupted`, removes its
    container, keeps its commit under refs/sealab/discarded/, moves the branch back, and runs the next one."""
    import signal

    from executor.docker_engine import LABEL_EXPERIMENT

    root = fast_workspace(tmp_path, base_image, steps=4, noise_runs=1)
    repo = git.Repo(root)

    async def killed():
        async with client(root, "--tag", "k") as s:
            await ok(s, "edit_train_py", {"old": "LR = 0.5 ", "new": "LR = 20.0 "})
            await ok(s, "run_experiment", {"description": "kept before the kill"})
            await ok(s, "edit_train_py", {"old": "def train(h):\n",
                                          "new": "def train(h):\n    import time\n    time.sleep(60)\n"})
            pid = _server_pid(root, "k")

            async def on_progress(value, total, message):
                if message and message.startswith("running") and value > 3:
                    os.kill(pid, signal.SIGKILL)

            await s.call_tool("run_experiment", {"description": "killed while it trains"},
                              progress_callback=on_progress)

    try:
        anyio.run(killed)
    except BaseException:  # noqa: BLE001 - the transport ends with the server's death, one way or another
        pass
    records = [r for r in sealab_json("status", cwd=root) if r.get("run_tag") == "k"]
    lost = records[-1]
    assert lost["description"] == "killed while it trains"

    after = one_experiment(root, "k", ("MARK = 0 ", "MARK = 1 "), "after the kill")
    records = {r["id"]: r for r in sealab_json("status", cwd=root) if r.get("run_tag") == "k"}
    assert records[lost["id"]]["status"] == "interrupted"
    assert repo.git.rev_parse(f"refs/sealab/discarded/{lost['id']}") == lost["commit"]
    kept = [r for r in records.values() if r.get("decision") == "keep"]
    assert [r["description"] for r in kept] == ["kept before the kill"]
    assert after["status"] == "ok" and repo.commit(after["commit"]).parents[0].hexsha == kept[0]["commit"]
    assert repo.git.rev_parse("sealab/k") == after["best_commit"] == kept[0]["commit"]  # MARK changes nothing
    assert engine.api.containers(all=True, filters={"label": f"{LABEL_EXPERIMENT}={lost['id']}"}) == []
    assert sealab_json("verify", "--all", cwd=root)["mismatches"] == []


def test_with_the_replication_gate_a_keep_is_confirmed_from_its_image_and_scored_on_the_test_split(
        tmp_path, base_image, engine):
    """[acceptance] confirm_runs = 1 through sealab mcp: the better learning rate is rerun once from the same
    image before it is kept (a linked `confirm` record), then scored on the held-out test split."""
    root = fast_workspace(tmp_path, base_image, steps=4, noise_runs=1)
    policy = tmp_path / "ws-policy.toml"
    policy.write_text(policy.read_text().replace("[acceptance]\n", "[acceptance]\nconfirm_runs = 1\n", 1))

    kept = one_experiment(root, "g", ("LR = 0.5 ", "LR = 20.0 "), "LR 0.5 -> 20")
    records = {r["id"]: r for r in sealab_json("status", cwd=root) if r.get("run_tag") == "g"}
    confirms = [r for r in records.values() if r.get("decision") == "confirm"]
    assert kept["decision"] == "keep" and len(confirms) == 1, kept
    assert confirms[0]["reproduces"] == kept["experiment_id"] and confirms[0]["image_id"] == kept["image_id"]
    reason = records[kept["experiment_id"]]["decision_reason"]
    assert reason.startswith("confirmed: 1 confirmation run(s)") and confirms[0]["id"] in reason
    assert kept["best"] == (kept["metric"] + confirms[0]["metrics"]["val_bpb"]) / 2  # kept at the mean
    test = records[kept["experiment_id"]]["test"]
    assert isinstance(test["val_bpb"], float) and test["eval_windows"] != records[kept["experiment_id"]]["metrics"]["eval_windows"]
    state = [r for r in records.values() if r.get("decision") == "baseline"]
    assert len(state) == 1 and state[0]["test"]["val_bpb"] is not None
