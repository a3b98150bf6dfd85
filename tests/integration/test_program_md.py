"""The scaffold's program.md, followed literally: the ```sh commands of its "Running an experiment"
section, run with bash in a scaffolded workspace after an edit of train.py, give sealab's recorded
metric (the orchestrator scores the model after the train phase, so only sealab's summary at the end
of the log can hold it), never a number train.py printed, and nothing for a run that failed."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from executor.scored_summary import SCORED_HEADER
from executor.workspace import SCAFFOLD
from tests.conftest import SEALAB

pytestmark = pytest.mark.docker

FORGED = "val_bpb: 0.000001"
# printed at import and again at exit, after the harness's own summary: the last lines train.py can write
FORGE = f'\nimport atexit\nprint("{FORGED}", flush=True)\natexit.register(print, "{FORGED}", flush=True)\n'
CRASH = '\n\ndef train(h):\n    raise RuntimeError("a deliberate crash")\n'
MARK = "@@sealab-test: next command@@"  # echoed between the commands: their outputs told apart


def commands() -> list[str]:
    """The command lines of the ```sh blocks of program.md's "Running an experiment" section."""
    text = (SCAFFOLD / "program.md").read_text()
    section = text.split("\n## Running an experiment\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```sh\n(.*?)^```", section, re.M | re.S)
    assert blocks, "program.md's Running an experiment section has no ```sh block"
    lines = [line for block in blocks for line in block.splitlines() if line.strip()]
    assert not [line for line in lines if line.endswith("\\")]  # one command a line: each one's output is told apart
    return lines


def follow(root: Path, edit) -> tuple[str, dict, str]:
    """Edit train.py as an agent would, then run the documented commands literally, in one bash; returns
    what the last one (the grep) printed, the record they saved and the run's log."""
    train = root / "train.py"
    train.write_text(edit(train.read_text()))
    env = {**os.environ, "PATH": f"{Path(SEALAB).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "GIT_AUTHOR_NAME": "agent", "GIT_AUTHOR_EMAIL": "agent@example.com",
           "GIT_COMMITTER_NAME": "agent", "GIT_COMMITTER_EMAIL": "agent@example.com"}
    script = f"\necho '{MARK}'\n".join(commands())
    proc = subprocess.run(["bash", "-c", script], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    printed = proc.stdout.split(MARK + "\n")
    assert len(printed) == len(commands()), proc.stdout + proc.stderr
    saved = sorted(p for p in root.rglob("run.json") if ".git" not in p.parts)
    assert len(saved) == 1, saved
    record = json.loads(saved[0].read_text())
    assert not Path(record["log_path"]).is_absolute()  # relative to the workspace, where the commands run
    return printed[-1], record, (root / record["log_path"]).read_text(errors="replace")


def test_the_commands_give_sealabs_scored_value(make_workspace):
    """An edited constant, committed and run as program.md says: the grep prints exactly sealab's line,
    the record's metric with 6 decimals, and the run leaves no drift behind it."""
    root = make_workspace()
    grep, record, log = follow(root, lambda s: s.replace("SCALAR_LR = 0.5 ", "SCALAR_LR = 0.4 ", 1))
    assert record["status"] == "ok", record["reason"]
    assert record["description"] == "short description of the idea"  # the commit the commands made ran
    metrics = record["metrics"]
    assert metrics["hyperparameters"]["SCALAR_LR"] == 0.4 and metrics["metric_source"] == "evaluator"
    assert record["drift"] == []  # the saved record is not an untracked file of the work tree
    assert grep == f"val_bpb: {metrics['val_bpb']:.6f}\n"
    assert SCORED_HEADER in log and "\nval_bpb: n/a" not in log
    assert log.endswith(f"image: {record['image_id']}\n")


def test_a_forged_line_printed_by_train_py_is_not_what_the_commands_give(make_workspace):
    """train.py prints its own `val_bpb: 0.000001`, at import and after the harness's summary: the
    commands still give sealab's scored value."""
    root = make_workspace()
    grep, record, log = follow(root, lambda s: s + FORGE)
    assert record["status"] == "ok", record["reason"]
    assert log.count(FORGED) == 2
    assert grep == f"val_bpb: {record['metrics']['val_bpb']:.6f}\n" != f"{FORGED}\n"


@pytest.mark.parametrize("edit", [lambda s: s + CRASH, lambda s: s + FORGE + CRASH], ids=["crash", "forged-crash"])
def test_a_crash_gives_nothing_and_the_log_ends_with_its_status(make_workspace, edit):
    """A train.py that raises: the grep prints nothing, even after train.py printed a `val_bpb:` line,
    and the log ends with sealab's summary saying `status: crash` and why."""
    root = make_workspace()
    grep, record, log = follow(root, edit)
    assert record["status"] == "crash" and record["reason"].startswith("exit code 1: ")  # quotes the last line
    assert "RuntimeError: a deliberate crash" in log
    assert grep == ""
    tail = log.splitlines()[-6:]
    reason = "reason: " + " ".join(record["reason"].split())
    assert tail[0].startswith("--- sealab: ") and tail[1:3] == ["status: crash", reason]
    assert tail[3:5] == [f"experiment: {record['id']}", f"commit: {record['commit']}"]
