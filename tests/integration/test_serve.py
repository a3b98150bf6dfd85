"""`sealab serve` against a workspace while `sealab run` adds experiments, watched in headless Chromium
over the DevTools protocol: one page load sees new experiments arrive, agent markup stays text."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from executor.git_source import open_repo
from tests.browser import Chromium
from tests.conftest import SEALAB, chromium, sealab, sealab_json
from tests.integration.test_exec import as_from_a_terminal
from tests.integration.test_loop import fast_workspace

MARKUP = "<script>window.__pwned=1</script><img src=x onerror=\"window.__pwned=2\">"
GREEN = (0x2C, 0xA0, 0x2C)
ROWS = "document.querySelectorAll('#experiments-body tr').length"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`sealab serve --port P` in `root`, ready once /api/state answers; stopped with SIGTERM."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}/"

    def __enter__(self) -> Server:
        self.proc = subprocess.Popen([SEALAB, "serve", "--port", str(self.port)], cwd=self.root,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     preexec_fn=as_from_a_terminal)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.get("api/state")
                return self
            except (urllib.error.URLError, ConnectionError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"serve did not come up: {self.proc.communicate(timeout=10)}") from None
                time.sleep(0.2)

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=30)
        self.stderr = err
        assert self.proc.returncode == 0 and "Traceback" not in err, err


# -- errors ------------------------------------------------------------------------------------------------
def test_outside_a_workspace_is_one_line(tmp_path):
    """Outside a workspace: exit 2 and one line on stderr, no traceback."""
    proc = sealab("serve", "--port", str(free_port()), cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "not a git repository" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_port_in_use_is_one_line(tmp_path):
    """A port someone else listens on: exit 2 and one line naming the port, no traceback."""
    from agent.create import init

    root = init(tmp_path / "ws").root
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = sealab("serve", "--port", str(port), cwd=root, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (f"sealab: error: port {port} on 127.0.0.1 is already in use; "
                                   "choose another with --port")


def test_serves_a_workspace_without_experiments(tmp_path):
    """A fresh workspace (no ledger yet) is served, stays without a ledger, and SIGTERM stops it with 0."""
    from agent.create import init

    root = init(tmp_path / "ws").root
    with Server(root) as server:
        assert server.get("api/state")["run"]["phase"] == "no run"
        assert server.get("api/experiments")["experiments"] == []
        request = urllib.request.Request(server.url + "api/state", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 405
    assert not (root / ".sealab" / "ledger.db").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_sigterm_stops_within_2_s_while_a_request_waits(tmp_path, sig):
    """A request stuck on a ledger another process holds locked (SQLite waits 5 s for it) does not hold
    `serve` up: SIGTERM or Ctrl-C ends it within 2 s, exit 0, no traceback."""
    import sqlite3
    import threading

    from agent.create import init
    from executor.ledger import Ledger

    root = init(tmp_path / "ws").root
    Ledger(root / ".sealab" / "ledger.db").close()
    with Server(root) as server:
        holder = sqlite3.connect(root / ".sealab" / "ledger.db", isolation_level=None)
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        holder.execute("PRAGMA user_version = 0")  # a write: the exclusive lock is taken now
        answered: list[object] = []
        slow = threading.Thread(target=lambda: answered.append(_status_of(server.url + "api/state")), daemon=True)
        slow.start()
        time.sleep(1.0)  # the request is in flight, its reader waiting for the lock
        assert not answered
        started = time.monotonic()
        server.proc.send_signal(sig)
        server.proc.communicate(timeout=30)
        took = time.monotonic() - started
        holder.execute("ROLLBACK")
        holder.close()
        server.proc.send_signal = lambda _sig: None  # stopped already: __exit__ only checks how
    assert took < 2.0, took
    assert "Traceback" not in server.stderr and "sealab serve: stopped" in server.stderr, server.stderr


def _status_of(url: str) -> object:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except (urllib.error.URLError, ConnectionError, OSError) as exc:
        return exc


# -- live, in the browser ------------------------------------------------------------------------------------
@pytest.mark.docker
def test_live_page_during_a_run(make_workspace, tmp_path):
    """While `sealab run` works, one page load shows the run running, then new experiments, the drift a
    linter caused and the final state without reloading; a description with markup is text and never
    runs; the screenshot shows chart, table and drift list."""
    from agent.gitops import commit_file
    from PIL import Image

    browser_binary = chromium()
    # a generous grace: on a loaded machine a 2 s experiment's start-up and evaluation can take a while
    root = fast_workspace(lambda **kw: make_workspace(**{**kw, "grace": 180}))
    # The start commit's subject is what the baseline records show as their description.
    commit_file(open_repo(root), "program.md", (root / "program.md").read_text() + "\n", MARKUP)

    with Server(root) as server, Chromium(browser_binary, tmp_path / "profile") as browser:
        browser.navigate(server.url + "?interval=500")
        browser.wait_for("document.getElementById('phase').textContent === 'no run'", 60)
        browser.evaluate("window.__firstLoad = 'yes'")
        log = tmp_path / "run.log"
        with log.open("w") as sink:
            run = subprocess.Popen([SEALAB, "run", "--experiments", "3", "--tag", "live", "--proposer", "offline"],
                                   cwd=root, stdout=sink, stderr=subprocess.STDOUT, text=True)

        def run_ended() -> str | None:
            if run.poll() is None:
                return None
            return f"sealab run exited {run.returncode}: {log.read_text()[-3000:]}"

        try:
            browser.wait_for("document.getElementById('phase').textContent === 'running' && "
                             "!document.getElementById('current').hidden && /elapsed of a 2 s training budget/"
                             ".test(document.getElementById('current-time').textContent)", 300, give_up=run_ended)
            first = browser.wait_for(ROWS, 300, give_up=run_ended)
            # a linter's edit while the first experiment runs: the loop records it as drift and undoes it
            train = root / "train.py"
            train.write_text(train.read_text().replace("SCALAR_LR = 0.5", "SCALAR_LR = 0.123"))
            browser.wait_for(f"{ROWS} > {first}", 300, give_up=run_ended)  # a new experiment appeared in the same page
            assert browser.evaluate("window.__firstLoad") == "yes"
            run.wait(timeout=900)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
        assert run.returncode == 0, log.read_text()
        records = [r for r in sealab_json("status", cwd=root) if r.get("run_tag") == "live"]
        browser.wait_for(f"{ROWS} === {len(records)} && "
                         "document.getElementById('phase').textContent === 'stopped' && "
                         "document.querySelectorAll('#drift-list article.event').length > 0", 60)
        assert browser.evaluate("window.__firstLoad") == "yes", "the page was reloaded"

        # markup in a description is text, and nothing of it ran
        assert browser.evaluate("window.__pwned") is None
        shown = browser.evaluate(
            f"document.querySelector('#experiments-body tr[data-id=\"{records[0]['id']}\"] td.description')"
            ".firstChild.textContent")
        assert shown == MARKUP
        assert browser.evaluate("document.querySelectorAll('#experiments img, #experiments script').length") == 0

        # the page agrees with the ledger
        ids = browser.evaluate("[...document.querySelectorAll('#experiments-body tr')].map(tr => tr.dataset.id)")
        assert ids == [r["id"] for r in records]
        verified = browser.evaluate("[...document.querySelectorAll('#experiments-body tr td:nth-child(8)')]"
                                    ".map(td => td.textContent)")
        assert verified == ["ok"] * len(records)
        drift = browser.evaluate("document.getElementById('drift-list').textContent")
        assert "SCALAR_LR = 0.5 -> 0.123" in drift
        ok = sum(r["status"] == "ok" for r in records)
        assert browser.evaluate("document.querySelectorAll('#chart-box svg circle').length") == ok
        assert browser.evaluate("document.querySelectorAll('#chart-box svg path.best').length") == 1
        assert server.get("api/state")["counts"]["experiments"] == len(records)

        shot = browser.screenshot(tmp_path / "dashboard.png")
    if os.environ.get("SEALAB_KEEP_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["SEALAB_KEEP_SCREENSHOT"])
    with Image.open(shot) as img:
        assert img.format == "PNG" and img.size[0] == 1280 and img.size[1] > 1000
        colours = img.convert("RGB").getcolors(maxcolors=1 << 22)
        assert colours is not None and len(colours) > 50, "the screenshot is blank"
        near_green = sum(n for n, c in colours if all(abs(a - b) <= 24 for a, b in zip(c, GREEN)))
        assert near_green > 50, "the chart's running best is not visible"
