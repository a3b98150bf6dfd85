"""What is committed: a commit's files read from git objects (never the work tree), its run spec, and
a proposal turned into a commit on top of the best one (the changes it makes, their size and patch)."""

from __future__ import annotations

import difflib
from typing import Mapping

from agent import gitops
from agent.proposal import Proposal
from executor import config, git_source
from executor.errors import SealabError
from executor.types import RunSpec
from policies import changed_lines

Changes = dict[str, tuple[str | None, str | None]]  # path -> (content at the best commit, proposed content)


def read(repo: git_source.Repository, commit: str, path: str) -> str | None:
    """A file of `commit`, from git objects (never the work tree)."""
    data = git_source.file_at(repo, commit, path)
    return None if data is None else data.decode(errors="replace")


def spec(repo: git_source.Repository, commit: str) -> RunSpec:
    """The run spec of the sealab.toml committed at `commit`."""
    return config.parse(read(repo, commit, config.CONFIG_NAME) or "", f"sealab.toml at {commit[:12]}").run_spec


def changes(repo: git_source.Repository, best: str, files: Mapping[str, str]) -> Changes:
    """What `files` change against the best commit (files left as they are omitted)."""
    both = {path: (read(repo, best, path), content) for path, content in files.items()}
    return {p: c for p, c in both.items() if c[0] != c[1]}


def proposed_spec(changes: Changes) -> RunSpec | None:
    """The run spec a proposal's sealab.toml would give (None: unchanged, deleted or unparsable)."""
    if config.CONFIG_NAME not in changes or changes[config.CONFIG_NAME][1] is None:
        return None
    try:
        return config.parse(changes[config.CONFIG_NAME][1]).run_spec
    except SealabError:
        return None


def patch(changes: Changes) -> str:
    """The changes as a unified diff."""
    return "".join("".join(difflib.unified_diff((old or "").splitlines(True), (new or "").splitlines(True),
                                                f"a/{path}", f"b/{path}")) for path, (old, new) in changes.items())


def size(repo: git_source.Repository, best: str, files: Mapping[str, str]) -> int:
    """Changed lines of `files` against the best commit, all files together (a round's tie-break)."""
    old = {p: read(repo, best, p) for p in files}
    return sum(changed_lines(old[p] or "", c or "") for p, c in files.items())


def commit(repo: git_source.Repository, best: str, proposal: Proposal) -> str:
    """The proposal as a child commit of `best`, moving no ref."""
    return gitops.make_commit(repo, best, proposal.files, proposal.description)
