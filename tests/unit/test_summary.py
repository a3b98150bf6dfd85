"""autoresearch's printed `---` summary, and how a result built from it is classified (pure)."""

import math

from executor.judge import classify, summary_result
from executor.summary import parse_summary
from executor.types import Resources, RunSpec, Status

BLOCK = """\
step 953 | loss 2.1
---
val_bpb:          0.997900
training_seconds: 300.1
total_seconds:    325.9
peak_vram_mb:     45060.2
mfu_percent:      39.80
total_tokens_M:   499.6
num_steps:        953
num_params_M:     50.3
depth:            8
"""
SPEC = RunSpec(budget_s=10, grace_s=5, resources=Resources(memory_mb=512))


def test_autoresearch_block_parses():
    """Every line of autoresearch's block is read, ints as ints and floats as floats."""
    block = parse_summary(BLOCK)
    assert block == {"val_bpb": 0.9979, "training_seconds": 300.1, "total_seconds": 325.9,
                     "peak_vram_mb": 45060.2, "mfu_percent": 39.8, "total_tokens_M": 499.6,
                     "num_steps": 953, "num_params_M": 50.3, "depth": 8}
    assert isinstance(block["num_steps"], int) and isinstance(block["val_bpb"], float)


def test_last_block_wins():
    """A second `---` block replaces the first."""
    assert parse_summary("---\nval_bpb: 9\n---\nval_bpb: 1.5\n") == {"val_bpb": 1.5}


def test_no_block_is_none():
    """No line that is exactly `---` means no summary; `----` or ` ---` is not one."""
    assert parse_summary("") is None
    assert parse_summary("val_bpb: 1.0\n") is None
    assert parse_summary("----\nval_bpb: 1.0\n ---\n") is None


def test_garbage_line_ends_the_block():
    """The block stops at the first line that is not `key: value`."""
    text = "---\nval_bpb: 1.5\nTraceback (most recent call last):\ndepth: 8\n"
    assert parse_summary(text) == {"val_bpb": 1.5}
    assert parse_summary("---\n\nval_bpb: 1.5\n") == {}
    assert parse_summary("---\n9lives: 3\n") == {}


def test_nan_and_strings():
    """`nan` and `inf` are floats; anything else that is not a number stays a string."""
    block = parse_summary("---\nval_bpb: nan\nbest: inf\ndevice: cuda:0\n")
    assert math.isnan(block["val_bpb"]) and block["best"] == math.inf and block["device"] == "cuda:0"


def test_summary_result_maps_autoresearch_names():
    """peak_vram_mb and num_steps become sealab's peak_memory_mb and steps, flagged as from the summary."""
    result = summary_result(BLOCK.encode(), "val_bpb")
    assert result == {"val_bpb": 0.9979, "peak_memory_mb": 45060.2, "training_seconds": 300.1,
                      "total_seconds": 325.9, "steps": 953, "mfu_percent": 39.8, "tokens": 499_600_000,
                      "tokens_per_s": 499.6e6 / 300.1, "metric_source": "summary"}
    odd = summary_result(b"---\nval_bpb: 1.0\nmfu_percent: nan\ntotal_tokens_M: lots\ntraining_seconds: 0\n", "val_bpb")
    assert odd == {"val_bpb": 1.0, "training_seconds": 0, "metric_source": "summary"}  # nothing made up
    assert summary_result(b"no summary here\n", "val_bpb") is None


def test_untrusted_result_without_blob_or_digest_is_ok_and_flagged():
    """A summary-derived result cannot carry the blob and digest checks; it is ok, marked as reported."""
    result = summary_result(BLOCK.encode(), "val_bpb")
    outcome = classify(0, False, False, result, SPEC, "t", "d", trusted=False)
    assert outcome.status is Status.OK and outcome.metrics["val_bpb"] == 0.9979
    assert outcome.metrics["metric_source"] == "summary" and outcome.metrics["steps"] == 953
    # The same result from sealab's own harness would be rejected: it names no train.py blob.
    assert classify(0, False, False, result, SPEC, "t", "d").status is Status.REJECTED


def test_untrusted_nan_or_missing_is_still_a_crash():
    """A printed NaN, a missing metric or no block at all is a crash, as with result.json."""
    nan = summary_result(b"---\nval_bpb: nan\n", "val_bpb")
    assert classify(0, False, False, nan, SPEC, "t", "d", trusted=False).status is Status.CRASH
    missing = summary_result(b"---\ndepth: 8\n", "val_bpb")
    assert classify(0, False, False, missing, SPEC, "t", "d", trusted=False).status is Status.CRASH
    none = classify(0, False, False, None, SPEC, "t", "d", trusted=False)
    assert none.status is Status.CRASH and "no --- summary" in none.reason
    assert classify(1, False, False, summary_result(BLOCK.encode(), "val_bpb"), SPEC, "t", "d",
                    trusted=False).status is Status.CRASH
