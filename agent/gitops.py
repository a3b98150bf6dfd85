"""Write-side git of the agent: make repositories and commits, move refs by compare-and-swap, restore the tree.

The write half of sealab's git seam: everything that changes a repository (its refs, objects, index,
work tree or info/exclude) is a function here, and with executor/git_source.py (the read half, whose
`Repository` handle these functions take) it is one of the only two modules that import `git`. The
executor only reads git. Every ref update here is a compare-and-swap (`git update-ref NEW OLD`): it
moves only if the ref still points where the decision was made.
"""

from __future__ import annotations

import io
import re
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import git
from git.index.typ import BaseIndexEntry
from gitdb import IStream

from executor import git_source
from executor.errors import SealabError
from executor.git_source import Repository

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


def init_repo(path: Path) -> Repository:
    """`git init` at `path`, its first branch `main`."""
    return Repository(git.Repo.init(path, initial_branch="main"))


def exclude(repo: Repository, pattern: str, comment: str) -> None:
    """Add `pattern` (under a `# comment` line) to the repository's info/exclude, unless it is there already."""
    path = repo.git_dir / "info" / "exclude"
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = path.read_text() if path.exists() else ""
    if pattern not in existing.splitlines():
        separator = "" if not existing or existing.endswith("\n") else "\n"
        with path.open("a") as fh:
            fh.write(f"{separator}# {comment}\n{pattern}\n")


def commit_paths(repo: Repository, paths: Sequence[str], message: str) -> str:
    """Stage `paths` as they are in the work tree and commit the index on HEAD; the new commit's sha."""
    index = repo._repo.index
    index.add(list(paths))
    actor = _actor(repo)
    return index.commit(message, author=actor, committer=actor).hexsha


def commit_file(repo: Repository, path: str, content: str, message: str) -> str:
    """Write `content` to `path` in the work tree, commit exactly that file on HEAD, return the sha."""
    (Path(repo._repo.working_tree_dir) / path).write_text(content)
    return commit_paths(repo, [path], message)


def commit_beside_index(repo: Repository, head: str | None, paths: Sequence[str], message: str, *,
                        reflog: str | None = None) -> str:
    """Commit `paths` as they are in the work tree on top of `head` (None: a root commit), leaving the
    user's index alone, and move HEAD (its branch) there from `head`; the new commit's sha.

    The commit's tree is `head`'s with `paths` added (forced past .gitignore), written through a
    private index file, so whatever else is staged stays staged and uncommitted. Then HEAD moves by
    compare-and-swap (`reflog`, default `message`, is the reflog's line for it), and the real index
    takes exactly `paths`, which now equal the new HEAD.

    Raises:
        RefMoved: HEAD was no longer at `head`; no ref moved (the commit object is left unreferenced).
    """
    run = repo._repo.git
    actor = _actor(repo)
    with tempfile.TemporaryDirectory(prefix="sealab-index-") as tmp:
        with run.custom_environment(GIT_INDEX_FILE=str(Path(tmp) / "index")):
            if head is not None:
                run.read_tree(head)
            run.add("-f", "--", *paths)
            tree = run.write_tree()
    identity = {"GIT_AUTHOR_NAME": actor.name, "GIT_AUTHOR_EMAIL": actor.email,
                "GIT_COMMITTER_NAME": actor.name, "GIT_COMMITTER_EMAIL": actor.email}
    with run.custom_environment(**identity):
        commit = run.commit_tree(tree, *(["-p", head] if head is not None else []), "-m", message)
    cas(repo, "HEAD", commit, head or ZERO, reason=reflog or message)
    run.add("-f", "--", *paths)
    return commit


def cas(repo: Repository, ref: str, new: str, old: str, *, reason: str | None = None) -> None:
    """Point `ref` at `new` only if it points at `old` now (`old` = ZERO: only if it does not exist).
    `reason` is the reflog's message for the move.

    Raises:
        RefMoved: it pointed elsewhere; nothing changed.
    """
    try:
        repo._repo.git.update_ref(*(["-m", reason] if reason else []), ref, new, old)
    except git.GitCommandError:
        raise RefMoved(ref, old, git_source.ref_value(repo, ref)) from None


def make_commit(repo: Repository, parent: str, files: Mapping[str, str], message: str) -> str:
    """A commit of `files` on top of `parent`, moving no ref.

    It is built from git objects alone (blobs written to the object store, an in-memory index of the
    parent's tree), so whatever happens to the work tree meanwhile cannot leak into it.
    """
    raw = repo._repo
    base = raw.commit(parent)
    index = git.IndexFile.new(raw, base.tree)  # in memory: the repository's index (and its lock) is never touched
    entries = []
    for path, content in sorted(files.items()):
        data = content.encode()
        stored = raw.odb.store(IStream(git.Blob.type, len(data), io.BytesIO(data)))
        try:
            mode = (base.tree / path).mode
        except KeyError:
            mode = 0o100644
        entries.append(BaseIndexEntry((mode, stored.binsha, 0, path)))
    index.add(entries, write=False)
    actor = _actor(repo)
    commit = git.Commit.create_from_tree(raw, index.write_tree(), message, parent_commits=[base], head=False,
                                         author=actor, committer=actor)
    return commit.hexsha


def rebase(repo: Repository, commit: str, onto: str) -> str | None:
    """`commit`'s change carried onto `onto` by git's three-way merge (their merge base is `commit`'s
    parent): a new commit with `commit`'s message and the merged tree, parent `onto`, moving no ref.
    None when the two changes conflict (nothing is written but unreachable objects).

    Raises:
        git.GitCommandError: git failed otherwise (a missing object).
    """
    raw = repo._repo
    status, out, err = raw.git.merge_tree("--write-tree", "--no-messages", onto, commit,
                                          with_extended_output=True, with_exceptions=False)
    if status == 1:
        return None
    if status != 0:
        raise git.GitCommandError(["git", "merge-tree", onto, commit], status, err)
    tree = out.splitlines()[0].strip()
    actor = _actor(repo)
    merged = git.Commit.create_from_tree(raw, raw.tree(tree), raw.commit(commit).message, parent_commits=[raw.commit(onto)],
                                         head=False, author=actor, committer=actor)
    return merged.hexsha


def move(repo: Repository, branch: str, old: str, new: str) -> bool:
    """Take the checked-out work tree and index from `old` to `new` (`branch` must point at `new` and be
    checked out) without overwriting a local change: a two-tree merge, `git read-tree -m -u OLD NEW`.

    False when git refuses (a local change in a file that differs between the two, or HEAD elsewhere):
    nothing was touched, and the caller reports the drift before forcing the tree (see `restore`).
    """
    actual = git_source.ref_value(repo, f"refs/heads/{branch}")
    if actual != new:
        raise RefMoved(f"refs/heads/{branch}", new, actual)
    run = repo._repo.git
    try:
        if run.symbolic_ref("-q", "HEAD") != f"refs/heads/{branch}":
            return False
        run.update_index("-q", "--refresh", with_exceptions=False)
        run.read_tree("-m", "-u", old, new)
        return True
    except git.GitCommandError:
        return False


def restore(repo: Repository, branch: str, commit: str) -> None:
    """Check out `branch` (which must point at `commit`) with index and work tree equal to it."""
    actual = git_source.ref_value(repo, f"refs/heads/{branch}")
    if actual != commit:
        raise RefMoved(f"refs/heads/{branch}", commit, actual)
    repo._repo.git.checkout("-q", "-f", branch)
    repo._repo.git.reset("-q", "--hard", commit)


def _actor(repo: Repository) -> git.Actor:
    """The configured git identity, or a neutral one so that init works on a fresh machine."""
    reader = repo._repo.config_reader()
    name = reader.get_value("user", "name", default="") or "sealab"
    email = reader.get_value("user", "email", default="") or "sealab@localhost"
    return git.Actor(name, email)
