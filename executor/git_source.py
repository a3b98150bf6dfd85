"""Read-only git adapter: a commit's facts and its tree, read from git objects (never the working tree).

The only module of the executor that imports `git`. It writes nothing to the repository; the
working tree is read only to report drift against a commit.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import git
from gitdb.exc import BadName, BadObject

from executor.errors import SourceError, WorkspaceError

# git modes → (entry kind, file mode in the image)
_MODES = {0o100644: ("file", 0o644), 0o100755: ("file", 0o755), 0o120000: ("symlink", 0o777)}


@dataclass(frozen=True, slots=True)
class TreeFile:
    path: str  # relative POSIX path
    kind: str  # "file" | "symlink"
    mode: int
    data: bytes  # file content, or the link target
    blob: str  # git blob sha1


@dataclass(frozen=True, slots=True)
class CommitFacts:
    sha: str
    parent: str | None
    tree: str
    subject: str
    files: tuple[TreeFile, ...]

    def blob_of(self, path: str) -> str | None:
        return next((f.blob for f in self.files if f.path == path), None)


def blob_sha(data: bytes) -> str:
    """The git blob ID of some bytes (what `git hash-object` prints)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def open_repo(path: Path) -> git.Repo:
    """The git repository whose work tree contains `path`.

    Raises:
        WorkspaceError: `path` is not inside a git work tree.
    """
    try:
        return git.Repo(path, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise WorkspaceError(f"{path} is not a git repository (run `sealab init DIR` to make a workspace)") from None


def resolve(repo: git.Repo, ref: str) -> CommitFacts:
    """The facts of commit `ref` with every file of its tree, read from git objects.

    Raises:
        SourceError: `ref` names no commit.
    """
    try:
        commit = repo.commit(ref)
    except (BadName, BadObject, ValueError, git.GitCommandError):
        raise SourceError(ref, "no such commit in this repository") from None
    files = []
    for item in commit.tree.traverse():
        if item.type != "blob":
            continue  # trees are implied by paths; submodules ("commit") are not part of an experiment
        kind, mode = _MODES.get(item.mode, ("file", 0o644))
        files.append(TreeFile(item.path, kind, mode, item.data_stream.read(), item.hexsha))
    parent = commit.parents[0].hexsha if commit.parents else None
    subject = commit.message.strip().splitlines()[0] if commit.message.strip() else ""
    return CommitFacts(commit.hexsha, parent, commit.tree.hexsha, subject, tuple(sorted(files, key=lambda f: f.path)))


def changed_paths(repo: git.Repo, facts: CommitFacts) -> list[str]:
    """The paths a commit changes against its first parent (every path for a root commit)."""
    if facts.parent is None:
        return [f.path for f in facts.files]
    return repo.git.diff("--name-only", "--no-renames", facts.parent, facts.sha).splitlines()


def working_diff(repo: git.Repo, sha: str) -> tuple[str, list[str]]:
    """The unified diff of the working tree and index against `sha`, and the untracked files.

    `git diff SHA` compares only the work tree, so a file staged with other content while the work
    tree still matches (`git update-index`, or `git add` then an undo) would go unseen: the index's
    own diff is added for every file whose staged content differs from both `sha` and the work tree.
    """
    options = ("--no-color", "--no-ext-diff", "--unified=0", "--src-prefix=a/", "--dst-prefix=b/")
    try:
        diff = repo.git.diff(sha, *options)
        staged = repo.git.diff("--cached", sha, *options)
        untracked = list(repo.untracked_files)
    except git.GitCommandError as exc:  # e.g. a full disk: git cannot refresh the index
        said = " ".join(str(exc.stderr or exc).split())[:200]
        raise WorkspaceError(f"{repo.working_tree_dir}: git cannot compare the work tree with {sha[:12]}: {said}") from exc
    shown = set(_sections(diff))
    extra = [section for section in _sections(staged) if section not in shown]
    return "\n".join(filter(None, [diff, *extra])), untracked


def commit_diff(repo: git.Repo | None, parent: str | None, commit: str | None) -> str:
    """The diff from `parent` to `commit` as text, or a line saying why there is none (no parent
    recorded, or git cannot diff them: a commit gone from the repository, say)."""
    if repo is None or not parent or not commit:
        return "(no parent recorded)"
    try:
        return repo.git.diff(parent, commit)
    except git.GitCommandError as exc:
        return f"(cannot diff {parent[:12]} {commit[:12]}: {(exc.stderr or str(exc)).strip()})"


def _sections(diff: str) -> list[str]:
    """A multi-file diff split into one text per file (each starting with `diff --git`)."""
    parts = ("\n" + diff).split("\ndiff --git ")[1:]
    return ["diff --git " + part for part in parts]
