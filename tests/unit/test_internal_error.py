"""The CLI's last line of defence: a bug of ours is one line on stderr and exit 70, wherever HOME is."""

import os
import tempfile
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from agent.cli import SealabGroup


@pytest.fixture
def broken():
    """A sealab-style group whose one command fails with an unexpected exception."""
    @click.group(cls=SealabGroup)
    def group():
        pass

    @group.command()
    def boom():
        raise RuntimeError("a bug of ours")

    return group


def test_an_internal_error_keeps_its_trace_in_the_cache(broken, tmp_path, monkeypatch):
    """The trace goes to ~/.cache/sealab/last-error.txt and stderr says so in one line."""
    monkeypatch.setenv("HOME", str(tmp_path))
    result = CliRunner().invoke(broken, ["boom"])
    crash = tmp_path / ".cache" / "sealab" / "last-error.txt"
    assert result.exit_code == 70
    assert result.output.strip() == f"sealab: internal error: RuntimeError: a bug of ours (trace in {crash})"
    assert "RuntimeError: a bug of ours" in crash.read_text()


def test_an_unwritable_cache_does_not_raise(broken, tmp_path, monkeypatch):
    """With HOME under a regular file (~/.cache cannot be made, even as root) the trace goes to the temporary
    directory instead, and the exit is still one line and 70."""
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("HOME", str(tmp_path / "file" / "home"))
    result = CliRunner().invoke(broken, ["boom"])
    fallback = Path(tempfile.gettempdir()) / f"sealab-last-error-{os.getuid()}.txt"
    assert result.exit_code == 70 and len(result.output.strip().splitlines()) == 1
    assert result.output.strip().endswith(f"(trace in {fallback})")
    assert "RuntimeError: a bug of ours" in fallback.read_text()
    assert result.exception is None or isinstance(result.exception, SystemExit)
