"""The common interface of proposers: what the research loop asks for and what it gets back.

A proposer turns a `ProposalContext` (the research program, the best commit's `train.py`, the
results so far, the last run's log tail) into a `Proposal` (new file contents plus a one-line
description). The loop commits the proposal, seals and runs it; the policy layer decides which
files a proposal may touch (normally only `train.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol, Sequence
from executor.errors import SealabError


@dataclass(frozen=True)
class Usage:
    """Tokens and an estimated dollar cost, summed over the API calls of one proposal."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cost_usd: float = 0.0

    def __add__(self, other: "Usage") -> "Usage":
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_read_input_tokens=self.cache_read_input_tokens + other.cache_read_input_tokens,
            cache_creation_input_tokens=self.cache_creation_input_tokens + other.cache_creation_input_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
        )


@dataclass(frozen=True)
class Proposal:
    """One proposed experiment: full new contents of the files it changes, and why."""

    files: Mapping[str, str]          # path -> full new content (normally only "train.py")
    description: str                  # one line
    proposer: str                     # "offline" | "claude:<model>"
    usage: Usage = field(default_factory=Usage)
    prompt_digest: str | None = None  # sha256 of the stable prompt prefix (provenance)


@dataclass(frozen=True)
class ProposalContext:
    """Everything a proposer may look at. `last_log_tail` is untrusted text from the last run."""

    program: str
    train_source: str
    read_file: Callable[[str], str | None]  # a file of the BEST commit (None if absent)
    history: Sequence[Mapping] = ()        # rows: {"commit","description","status","decision","metric"}
    last_log_tail: str = ""
    metric: str = "val_bpb"
    direction: str = "minimize"
    experiment_index: int = 0
    siblings: Sequence[str] = ()  # --workers: what the other proposals of this round already try


class ProposalFailed(Exception):
    """The proposer produced nothing usable (malformed reply, no submit...): record it and go on."""

    def __init__(self, reason: str, usage: Usage | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.usage = usage if usage is not None else Usage()


class ModelUnavailable(SealabError):
    """The model API failed after the SDK's own retries (the message is one line, never the key).

    `usage` is what the proposal had spent on earlier turns before the failure (zero if none).
    """

    exit_code = 3

    def __init__(self, message: str, usage: Usage | None = None) -> None:
        super().__init__(message)
        self.usage = usage if usage is not None else Usage()


class Proposer(Protocol):
    name: str

    def propose(self, ctx: ProposalContext) -> Proposal: ...


def one_line(text: str, limit: int = 200) -> str:
    """Collapse whitespace to one line and cap its length."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
