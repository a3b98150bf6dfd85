"""How an adopted repository's run is judged (pure): its printed metric line, a reach for the network,
and the kill deadline measured from its baseline runs (executor/summary.py, judge.py, deadline.py)."""

from executor import deadline
from executor.judge import classify, network_note, summary_result
from executor.types import RunSpec, Status

SPEC = RunSpec(budget_s=60, metric="solve_rate", direction="maximize", command=("python3", "train.py"))


def test_the_metric_is_read_from_the_last_name_value_line_without_a_summary_block():
    out = b"epoch 1\nsolve_rate: 0.25\nnoise solve_rate: 9\nsolve_rate:   0.8125\nnum_steps: 20\ndone\n"
    assert summary_result(out, "solve_rate") == {"solve_rate": 0.8125, "steps": 20, "metric_source": "summary"}
    assert summary_result(b"solve_rate = 0.5\n", "solve_rate")["solve_rate"] == 0.5
    assert summary_result(b"solve_rate: n/a\nloss: 1.0\n", "solve_rate") is None
    # a --- block, when there is one, is what counts
    assert summary_result(b"solve_rate: 0.1\n---\nsolve_rate: 0.3\n", "solve_rate")["solve_rate"] == 0.3
    crash = classify(0, False, False, None, SPEC, None, "d", trusted=False)
    assert crash.reason == ("the harness wrote no result.json and printed no --- summary or `solve_rate: <number>` "
                            "line")


REQUESTS_TRACE = b"""Traceback (most recent call last):
  File "/usr/lib/python3/dist-packages/urllib3/connection.py", line 203, in _new_conn
socket.gaierror: [Errno -3] Temporary failure in name resolution
urllib3.exceptions.MaxRetryError: HTTPSConnectionPool(host='huggingface.co', port=443): Max retries exceeded
requests.exceptions.ConnectionError: HTTPSConnectionPool(host='huggingface.co', port=443): Max retries exceeded
"""
HUB_TRACE = b"""Traceback (most recent call last):
  File "/workspace/train.py", line 12, in <module>
huggingface_hub.errors.LocalEntryNotFoundError: Cannot find the requested files in the disk cache and outgoing traffic has been disabled.
"""


def test_a_run_that_reached_for_the_network_is_told_how_to_capture_what_it_wanted():
    for trace in (REQUESTS_TRACE, HUB_TRACE, b"urllib.error.URLError: <urlopen error [Errno -2] Name or service not known>\n"):
        note = network_note(trace)
        assert note.startswith("; sealed runs have no network, and it tried to reach one (")
        assert "[data] dirs" in note and "~/.cache/huggingface" in note and "sealab base" in note
        crash = classify(1, False, False, None, SPEC, None, "d", trace.decode().splitlines()[-1], False, note)
        assert crash.status == Status.CRASH and crash.reason.startswith("exit code 1: ") and note in crash.reason
    assert network_note(b'Traceback (most recent call last):\nValueError: shapes do not match\n') == ""


def test_the_first_run_gets_a_generous_deadline_and_later_ones_the_measured_one():
    first = deadline.measured(SPEC, [])
    assert first.seconds == 660 and first.reason() == \
        "660 s = budget 60 s + 600 s for a first run, before any was measured"
    later = deadline.measured(SPEC, [150.0, 240.0])  # a repository training on its own 4-minute clock
    assert later.seconds == 60 + 2 * 180 + 30
    assert "2 × the 180 s of start-up and evaluation" in later.reason()
    assert deadline.measured(SPEC, [61.0]).seconds == 120  # never under budget + 60 s
    timeout = classify(None, False, True, None, SPEC, None, "d", deadline=later.reason())
    assert timeout.reason == f"killed at the deadline ({later.reason()})"


def test_only_earlier_ok_runs_of_the_same_command_and_budget_are_measured():
    spec = SPEC.to_dict()
    records = [{"status": "ok", "run_spec": spec, "durations": {"run": 100.0}},
               {"status": "crash", "run_spec": spec, "durations": {"run": 900.0}},
               {"status": "ok", "run_spec": {**spec, "budget_s": 30.0}, "durations": {"run": 800.0}},
               {"status": "ok", "run_spec": {**spec, "command": ["python3", "other.py"]}, "durations": {"run": 700.0}},
               {"status": "ok", "run_spec": spec, "durations": {}}, "not a record"]
    assert deadline.earlier_run_times(records, SPEC) == [100.0]
