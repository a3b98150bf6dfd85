"""Drift summaries of a working tree against a commit (pure)."""

from executor.drift import change_line, describe, summarize

DIFF = """diff --git a/train.py b/train.py
index 1111111..2222222 100644
--- a/train.py
+++ b/train.py
@@ -3 +3 @@ DEPTH = 2
-SCALAR_LR = 0.5  # learning rate of the scalars
+SCALAR_LR = 0.3  # learning rate of the scalars
@@ -9,0 +10 @@ def f():
+import os
"""


def test_linter_change_reads_as_old_to_new():
    """The linter incident reads `train.py: SCALAR_LR = 0.5 -> 0.3`."""
    entries = summarize(DIFF, [])
    assert describe(entries) == ["train.py: SCALAR_LR = 0.5 -> 0.3", "train.py: + import os"]
    assert "+SCALAR_LR = 0.3" in entries[0]["patch"]


def test_untracked_files_are_drift():
    """A new file the commit does not have is reported too."""
    assert describe(summarize("", ["notes.txt"])) == ["notes.txt: untracked file"]


def test_clean_tree_has_no_drift():
    """No diff and no untracked files: no drift entries."""
    assert summarize("", []) == []


def test_change_line_keeps_context_minimal():
    """Only the differing tokens are shown after the shared prefix."""
    assert change_line("BATCH = 16", "BATCH = 32") == "BATCH = 16 -> 32"
    assert change_line("x = f(a)", "y = f(a)") == "x -> y"
