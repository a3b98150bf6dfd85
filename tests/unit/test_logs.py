"""One renderer for every line on stderr: the loop's progress and the executor's events alike."""

from __future__ import annotations

import json
from types import SimpleNamespace

import structlog
from rich.console import Console

from agent.progress import LoopDisplay
from executor import logs


def test_loop_progress_and_executor_events_print_as_the_same_logfmt_lines(capsys, tmp_path):
    """Off a terminal every stderr line is logfmt (`timestamp=… level=… event=…`), whoever logged it;
    the log file gets every event (the quiet ones too) as one JSON line."""
    log_file = tmp_path / "sealab.log"
    logs.configure(log_file)
    try:
        state = SimpleNamespace(experiments=2, best_value=3.25, best_commit="a" * 40)
        with LoopDisplay(Console(stderr=True, force_terminal=False), total=4) as display:
            display.event("keep: LR 0.01 -> 0.02", state)
        structlog.get_logger().warning("drift", path="train.py")
        structlog.get_logger().info("quiet off a terminal")  # the file only
    finally:
        structlog.reset_defaults()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all(line.startswith("timestamp=") for line in lines), lines
    assert "level=info event=\"keep: LR 0.01 -> 0.02\"" in lines[0] and "experiment=2 of=4" in lines[0]
    assert "level=warning event=drift" in lines[1] and "path=train.py" in lines[1]
    events = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [e["event"] for e in events] == ["keep: LR 0.01 -> 0.02", "drift", "quiet off a terminal"]
    assert events[0]["progress"] is True and events[0]["best"] == 3.25
