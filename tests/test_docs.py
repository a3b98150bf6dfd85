"""The README documents the CLI contract and the record format."""

from pathlib import Path

from agent.cli import main
from executor.ledger import RECORD_KEYS
from executor.types import Status

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_starts_with_the_two_commands():
    """The first code block holds the demo command and the test command."""
    first_block = README.split("```")[1]
    assert "./dev demo" in first_block and "./dev test" in first_block


def test_every_command_record_key_and_status_is_documented():
    """Each CLI subcommand, ledger record key and status appears in the README."""
    for name in main.commands:
        assert f"sealab {name}" in README, name
    for key in RECORD_KEYS:
        assert f"`{key}`" in README, key
    for status in Status:
        assert f"`{status.value}`" in README, status
