"""`sealab report`: the HTML page and progress chart, rendered in headless Chromium (no Docker needed).

The ledger is built directly (real commits, synthetic records and events) with agent-written text
that tries to inject HTML; the page must show it as text.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.html_report import CHART_SIZE_PX, running_best
from executor.record import ExperimentRecord, Finish
from executor.types import Status
from tests.conftest import chromium, sealab

SCRIPT = "<script>alert(1)</script>"
BOLD = "<b>x</b>"
WINDOW = (1200, 2000)
GREEN = (0x2C, 0xA0, 0x2C)


# -- running_best (pure) ----------------------------------------------------------------------------
def test_running_best_is_the_loops_bar():
    """The running best is the mean of the baseline runs, then each kept value; discards and crashes
    never move it."""
    values = [1.0, 0.8, 0.95, None, 0.85, 0.7]
    decisions = ["baseline", "baseline", "discard", "discard", "keep", "keep"]
    assert running_best(values, decisions) == [1.0, 0.9, 0.9, 0.9, 0.85, 0.7]


def test_running_best_leading_none_and_maximize():
    """The series is None until the first baseline value; a kept value replaces the bar in either direction."""
    values = [None, 0.5, 0.7, 0.9, 0.6]
    decisions = ["discard", "discard", "baseline", "keep", "discard"]
    assert running_best(values, decisions) == [None, None, 0.7, 0.9, 0.9]


def test_running_best_empty():
    """No experiments give an empty series."""
    assert running_best([], []) == []


# -- a workspace with a synthetic run -----------------------------------------------------------------
def _record(eid: str, commit: str, parent: str | None, description: str, value: float | None, decision: str,
            status: str = "ok", proposal: dict | None = None) -> dict:
    return {
        "id": eid, "commit": commit, "parent": parent, "description": description, "status": status,
        "image_id": "sha256:" + eid.encode().hex().ljust(64, "0"),
        "run_spec": {"metric": "val_bpb", "direction": "minimize", "budget_s": 2.0, "grace_s": 40.0, "seed": 42,
                     "resources": {}},
        "metrics": {"val_bpb": value} if value is not None else {},
        "reason": None if status == "ok" else "exit code 1", "created_at": "2024-01-01T00:00:00.000Z",
        "run_tag": "t1", "decision": decision, "decision_reason": f"{decision} because {BOLD}",
        "proposal": proposal,
    }


@pytest.fixture
def report_ws(tmp_path) -> dict:
    """A workspace whose ledger holds one run `t1`: baseline, two kept, one discarded, one crash, and events."""
    from agent.gitops import ZERO, cas, make_commit
    from executor import git_source
    from executor.ledger import Ledger
    from agent.create import init

    ws = init(tmp_path / "ws")
    repo = ws.git
    start = git_source.head_commit(repo)
    cas(repo, "refs/heads/sealab/t1", start, ZERO)
    train = (ws.root / "train.py").read_text()
    c1 = make_commit(repo, start, {"train.py": train + f"\n# {SCRIPT}\nNEW_CONSTANT = 1\n"}, f"lower lr {SCRIPT}")
    c2 = make_commit(repo, c1, {"train.py": train + "\nNEW_CONSTANT = 2\n"}, f"bold {BOLD}")
    c3 = make_commit(repo, c1, {"train.py": train + "\nNEW_CONSTANT = 3\n"}, "crashes")
    c4 = make_commit(repo, c1, {"train.py": train + f"\n# {SCRIPT}\nNEW_CONSTANT = 4\n"}, "deeper")
    cas(repo, "refs/heads/sealab/t1", c4, start)

    usage = {"cost_usd": 0.01, "input_tokens": 100, "output_tokens": 10}
    prop = lambda d: {"proposer": "offline", "description": d, "usage": usage, "prompt_digest": "sha256:00"}  # noqa: E731
    records = [
        _record("e0001", start, None, "sealab: initial workspace", 1.0, "baseline"),
        _record("e0002", c1, start, f"lower lr {SCRIPT}", 0.98, "keep", proposal=prop(f"lower lr {SCRIPT}")),
        _record("e0003", c2, c1, f"bold {BOLD}", 0.99, "discard", proposal=prop(f"bold {BOLD}")),
        _record("e0004", c3, c1, "crashes", None, "discard", status="crash", proposal=prop("crashes")),
        _record("e0005", c4, c1, "deeper", 0.95, "keep", proposal=prop("deeper")),
    ]
    ledger = Ledger(ws.ledger_path)
    for rec in records:  # as `sealab import` adds a whole record: begun with all it holds, then its status
        ledger.begin(ExperimentRecord.from_dict(rec), owner="test")
        ledger.finish(rec["id"], Finish(Status(rec["status"]), rec["reason"]))
    patch = ws.state / "drift" / "t1-0001.patch"
    patch.parent.mkdir(parents=True, exist_ok=True)
    patch.write_text(f"--- a/train.py\n+++ b/train.py\n+{SCRIPT}\n")
    ledger.add_event("t1", "drift", {"where": "after run", "commit": c1, "changes": [f"train.py: +1 line {BOLD}"],
                                     "patch_path": ".sealab/drift/t1-0001.patch", "action": "restore"})
    ledger.add_event("t1", "rejected", {"description": f"rejected {SCRIPT}", "rule": "forbidden_code",
                                        "reason": "no network <i>access</i>", "proposer": "claude",
                                        "best_commit": c1, "patch": f"+import socket  # {SCRIPT}\n", "usage": usage})
    ledger.add_event("t1", "parked", {"description": "raise the budget", "rule": "limits.budget",
                                      "reason": "budget changes need review", "proposer": "claude",
                                      "best_commit": c1, "patch": "-train_seconds = 2\n+train_seconds = 999\n",
                                      "usage": usage})
    ledger.add_event("t1", "proposal_failed", {"reason": f"no submit {BOLD}", "best_commit": c4})
    ledger.add_event("other", "proposal_failed", {"reason": "belongs to another run", "best_commit": c4})
    ledger.save_run("t1", {"tag": "t1", "branch": "sealab/t1", "start_commit": start, "best_commit": c4,
                           "best_value": 0.95, "threshold": 0.001, "baseline": [1.0], "experiments": 7,
                           "cost_usd": 0.1234, "drift_events": 1, "stop_reason": "max experiments"})
    ledger.close()
    return {"root": ws.root, "commits": [start, c1, c2, c3, c4]}


def _report(root: Path, *args: str) -> tuple[Path, Path]:
    proc = sealab("report", *args, cwd=root, check=True, timeout=120)
    page, chart = (Path(line) for line in proc.stdout.split())
    return (page if page.is_absolute() else root / page), (chart if chart.is_absolute() else root / chart)


def test_report_writes_page_and_chart(report_ws):
    """`sealab report` writes report.html and a chart of the fixed size under .sealab/report/ and prints both."""
    from PIL import Image

    root = report_ws["root"]
    page, chart = _report(root)
    assert page == root / ".sealab" / "report" / "report.html"
    assert chart == root / ".sealab" / "report" / "progress.png"
    with Image.open(chart) as img:
        assert img.format == "PNG" and img.size == CHART_SIZE_PX
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 20  # drawn, not blank
    text = page.read_text()
    for section in ("summary", "chart", "experiments", "kept", "drift", "review", "failures"):
        assert f'id="{section}"' in text
    assert 'src="progress.png"' in text
    assert "<script" not in text.lower() and BOLD not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "&lt;b&gt;x&lt;/b&gt;" in text
    assert "$0.1234" in text and "sealab/t1" in text and report_ws["commits"][4][:12] in text
    assert "NEW_CONSTANT = 4" in text and "NEW_CONSTANT = 1" in text  # both kept diffs
    assert "NEW_CONSTANT = 2" not in text  # the discarded change's diff is not shown
    assert "belongs to another run" not in text  # events of other runs are left out
    assert "budget changes need review" in text and "forbidden_code" in text


def test_report_out_and_unknown_tag(report_ws, tmp_path):
    """--out chooses the directory, --tag picks the run, and an unknown tag is a usage error."""
    out = tmp_path / "elsewhere"
    page, chart = _report(report_ws["root"], "--out", str(out), "--tag", "t1")
    assert page == out / "report.html" and chart == out / "progress.png" and chart.is_file()
    proc = sealab("report", "--tag", "nope", cwd=report_ws["root"])
    assert proc.returncode == 2 and "nope" in proc.stderr


# -- rendered in a real browser ---------------------------------------------------------------------
def _browse(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}"]
    if os.geteuid() == 0:
        flags.append("--no-sandbox")
    return subprocess.run([browser, *flags, *args], capture_output=True, text=True, timeout=120)


def test_report_renders_in_chromium(report_ws, tmp_path):
    """Headless Chromium shows every section, the chart image, and the ledger's HTML only as text."""
    from PIL import Image

    browser = chromium()
    page, _ = _report(report_ws["root"])
    url = page.resolve().as_uri()

    dom = _browse(browser, tmp_path / "profile-dom", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr
    html = dom.stdout
    for section in ("summary", "chart", "experiments", "kept", "drift", "review", "failures"):
        assert f'id="{section}"' in html, section
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;b&gt;x&lt;/b&gt;" in html
    assert "<script" not in html.lower(), "a script element reached the page"
    assert "<b>" not in html.lower() and "<i>" not in html.lower()

    shot = tmp_path / "shot.png"
    run = _browse(browser, tmp_path / "profile-shot", f"--screenshot={shot}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                  "--hide-scrollbars", url)
    assert run.returncode == 0 and shot.is_file(), run.stderr
    with Image.open(shot) as img:
        assert img.format == "PNG" and img.size == WINDOW
        pixels = img.convert("RGB")
        colours = pixels.getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50, "the screenshot is blank"
        # The chart loaded: its green kept points are visible in the page.
        near_green = sum(n for n, c in colours if all(abs(a - b) <= 24 for a, b in zip(c, GREEN)))
        assert near_green > 50, "the progress chart did not render"
    if os.environ.get("SEALAB_KEEP_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["SEALAB_KEEP_SCREENSHOT"])
