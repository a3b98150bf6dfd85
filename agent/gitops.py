"""Write-side git helpers of the agent: commit files, move refs by compare-and-swap, restore the tree.

The executor only reads git. Every ref update here is a compare-and-swap (`git update-ref NEW OLD`):
it moves only if the ref still points where the decision was made.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Mapping

import git
from git.index.typ import BaseIndexEntry
from gitdb import IStream

from executor.errors import SealabError
from executor.workspace import _actor

ZERO = "0" * 40


class RefMoved(SealabError):
    """A ref was not where the decision was made; nothing was moved."""

    exit_code = 4

    def __init__(self, ref: str, expected: str, actual: str | None) -> None:
        self.ref, self.expected, self.actual = ref, expected, actual
        super().__init__(f"{ref} moved: expected {expected[:12]}, found {(actual or 'nothing')[:12]}; "
                         "another process changed it, so sealab stopped instead of overwriting it")


def set_constant(text: str, name: str, value: str) -> str:
    """Replace the value of the top-level constant `NAME = …`, keeping its trailing comment."""
    pattern = re.compile(rf"^({re.escape(name)}\s*=\s*)([^#\n]*?)(\s*(#.*)?)$", re.MULTILINE)
    new, count = pattern.subn(lambda m: f"{m.group(1)}{value}{m.group(3)}", text, count=1)
    if count != 1:
        raise ValueError(f"no top-level constant {name} to change")
    return new


def commit_file(repo: git.Repo, path: str, content: str, message: str) -> str:
    """Write `content` to `path` in the work tree, commit exactly that file on HEAD, return the sha."""
    (Path(repo.working_tree_dir) / path).write_text(content)
    repo.index.add([path])
    actor = _actor(repo)
    return repo.index.commit(message, author=actor, committer=actor).hexsha


def ref_value(repo: git.Repo, ref: str) -> str | None:
    try:
        return repo.git.rev_parse("--verify", "-q", ref + "^{commit}")
    except git.GitCommandError:
        return None


def cas(repo: git.Repo, ref: str, new: str, old: str) -> None:
    """Point `ref` at `new` only if it points at `old` now (`old` = ZERO: only if it does not exist).

    Raises:
        RefMoved: it pointed elsewhere; nothing changed.
    """
    try:
        repo.git.update_ref(ref, new, old)
    except git.GitCommandError:
        raise RefMoved(ref, old, ref_value(repo, ref)) from None


def make_commit(repo: git.Repo, parent: str, files: Mapping[str, str], message: str) -> str:
    """A commit of `files` on top of `parent`, moving no ref.

    It is built from git objects alone (blobs written to the object store, an in-memory index of the
    parent's tree), so whatever happens to the work tree meanwhile cannot leak into it.
    """
    base = repo.commit(parent)
    index = git.IndexFile.from_tree(repo, base)
    entries = []
    for path, content in sorted(files.items()):
        data = content.encode()
        stored = repo.odb.store(IStream(git.Blob.type, len(data), io.BytesIO(data)))
        try:
            mode = (base.tree / path).mode
        except KeyError:
            mode = 0o100644
        entries.append(BaseIndexEntry((mode, stored.binsha, 0, path)))
    index.add(entries, write=False)
    actor = _actor(repo)
    commit = git.Commit.create_from_tree(repo, index.write_tree(), message, parent_commits=[base], head=False,
                                         author=actor, committer=actor)
    return commit.hexsha


def move(repo: git.Repo, branch: str, old: str, new: str) -> bool:
    """Take the checked-out work tree and index from `old` to `new` (`branch` must point at `new` and be
    checked out) without overwriting a local change: a two-tree merge, `git read-tree -m -u OLD NEW`.

    False when git refuses (a local change in a file that differs between the two, or HEAD elsewhere):
    nothing was touched, and the caller reports the drift before forcing the tree (see `restore`).
    """
    actual = ref_value(repo, f"refs/heads/{branch}")
    if actual != new:
        raise RefMoved(f"refs/heads/{branch}", new, actual)
    try:
        if repo.git.symbolic_ref("-q", "HEAD") != f"refs/heads/{branch}":
            return False
        repo.git.update_index("-q", "--refresh", with_exceptions=False)
        repo.git.read_tree("-m", "-u", old, new)
        return True
    except git.GitCommandError:
        return False


def restore(repo: git.Repo, branch: str, commit: str) -> None:
    """Check out `branch` (which must point at `commit`) with index and work tree equal to it."""
    actual = ref_value(repo, f"refs/heads/{branch}")
    if actual != commit:
        raise RefMoved(f"refs/heads/{branch}", commit, actual)
    repo.git.checkout("-q", "-f", branch)
    repo.git.reset("-q", "--hard", commit)
