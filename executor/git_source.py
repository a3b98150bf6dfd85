"""Read-only git adapter: commits, their trees and refs, read from git objects (never the working tree).

The executor's one git module, and the read half of sealab's git seam: with agent/gitops.py (the
write half) it is one of the only two modules that import `git` (tests/unit/test_layering.py holds
them to it). A repository travels as a `Repository`, a handle whose GitPython object only these two
modules touch, so everywhere else a read of git is one of the named functions below. Nothing here
writes to the repository: refs, commits, the index and the work tree are gitops's. The working tree
is read only to report drift against a commit, and whether it is clean.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator, Sequence

import git
from gitdb.exc import BadName, BadObject

from executor.errors import SourceError, WorkspaceError

# git modes → (entry kind, file mode in the image)
_MODES = {0o100644: ("file", 0o644), 0o100755: ("file", 0o755), 0o120000: ("symlink", 0o777)}


class Repository:
    """An open git repository: what the functions here and in agent/gitops.py take.

    Its GitPython object (`_repo`) is read by those two modules only. One handle is for one thread:
    GitPython keeps `git cat-file` processes per repository object, so a worker thread opens its own.
    """

    __slots__ = ("_repo",)

    def __init__(self, repo: git.Repo) -> None:
        self._repo = repo

    @property
    def root(self) -> Path | None:
        """The top of the work tree (None: a bare repository)."""
        return None if self._repo.bare or self._repo.working_tree_dir is None else Path(self._repo.working_tree_dir)

    @property
    def git_dir(self) -> Path:
        """The repository's common git directory (`.git`; the main one for a linked work tree)."""
        return Path(self._repo.common_dir)

    @property
    def linked(self) -> bool:
        """Whether this is a linked work tree (`git worktree add`) of a repository."""
        return Path(self._repo.git_dir).resolve() != Path(self._repo.common_dir).resolve()

    def __repr__(self) -> str:
        return f"Repository({self._repo.git_dir!s})"


def main_work_tree(repo: Repository) -> Path | None:
    """The main work tree of the repository: `repo.root` itself unless `repo` is a linked work tree, whose
    main one holds the common `.git` (None: that is a bare repository, with no main work tree)."""
    if not repo.linked:
        return repo.root
    common = repo.git_dir.resolve()
    return common.parent if common.name == ".git" else None


INLINE_MAX = 8 << 20  # blobs up to this size are read with the tree; larger ones are streamed when used


@dataclass(frozen=True, slots=True)
class TreeFile:
    path: str  # relative POSIX path
    kind: str  # "file" | "symlink"
    mode: int
    data: bytes  # file content, or the link target; b"" for a large blob (`git_dir` set): see read()/open()
    blob: str  # git blob sha1
    size: int | None = None  # the content's size (None: len(data))
    git_dir: Path | None = None  # set for a large blob, streamed from this repository when used

    @property
    def length(self) -> int:
        return len(self.data) if self.size is None else self.size

    def read(self) -> bytes:
        """The whole content (a large blob is read from git now: for the few files that are parsed)."""
        if self.git_dir is None:
            return self.data
        with self.open() as stream:
            return stream.read()

    @contextlib.contextmanager
    def open(self) -> Iterator[IO[bytes]]:
        """The content as a stream: a large blob straight from `git cat-file`, never whole in memory.

        Raises:
            SourceError: git could not produce the blob.
        """
        if self.git_dir is None:
            yield io.BytesIO(self.data)
            return
        # `cat-file -p` streams a blob (git's stream_blob; `cat-file blob` reads it whole), through pack
        # windows of 16 MB (git maps 1 GB of a pack at once by default: a 1 GB blob would be 1 GB of RSS)
        proc = git.Repo(self.git_dir).git.execute(
            ["git", "-c", "core.packedGitWindowSize=16m", "-c", "core.packedGitLimit=64m", "cat-file", "-p", self.blob],
            as_process=True)
        failed = True
        try:
            yield proc.stdout
            failed = False
        finally:
            proc.stdout.close()
            try:
                proc.wait()
            except git.GitCommandError as exc:
                if not failed:  # (a failure of the reader's own goes on as it is)
                    raise SourceError(self.blob, f"git could not read {self.path}: "
                                                 f"{' '.join(str(exc.stderr).split())[:200]}") from exc


@dataclass(frozen=True, slots=True)
class CommitFacts:
    sha: str
    parent: str | None
    tree: str
    subject: str
    files: tuple[TreeFile, ...]

    def blob_of(self, path: str) -> str | None:
        return next((f.blob for f in self.files if f.path == path), None)

    def top_level(self, names: Sequence[str]) -> dict[str, bytes]:
        """The contents of the top-level files among `names` that the commit has (path → bytes)."""
        return {f.path: f.read() for f in self.files if f.path in names and f.kind == "file"}


def blob_sha(data: bytes) -> str:
    """The git blob ID of some bytes (what `git hash-object` prints)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def find_repo(path: Path) -> Repository | None:
    """The git repository whose work tree (or git directory) contains `path`, or None when there is none."""
    try:
        return Repository(git.Repo(path, search_parent_directories=True))
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return None


def open_repo(path: Path) -> Repository:
    """The git repository whose work tree contains `path`.

    Raises:
        WorkspaceError: `path` is not inside a git work tree.
    """
    repo = find_repo(path)
    if repo is None:
        raise WorkspaceError(f"{path} is not a git repository (run `sealab init DIR` to make a workspace)")
    return repo


def ref_value(repo: Repository, ref: str) -> str | None:
    """The commit `ref` names (a ref, `HEAD`, `SHA^`…), or None when it names none."""
    try:
        return repo._repo.git.rev_parse("--verify", "-q", ref + "^{commit}")
    except git.GitCommandError:
        return None


def head_commit(repo: Repository) -> str | None:
    """The commit HEAD points at; None while HEAD's branch has no commit yet."""
    head = repo._repo.head
    return head.commit.hexsha if head.is_valid() else None


def current_branch(repo: Repository) -> str | None:
    """The name of the branch HEAD is on; None for a detached HEAD."""
    try:
        return repo._repo.active_branch.name
    except TypeError:  # GitPython's answer for a detached HEAD
        return None


def is_dirty(repo: Repository) -> bool:
    """Whether the index or a tracked file of the work tree differs from HEAD (untracked files aside)."""
    return repo._repo.is_dirty()


def uncommitted(repo: Repository, paths: Sequence[str]) -> list[str]:
    """Those of `paths` that are untracked or differ from HEAD in the index or the work tree, sorted."""
    return sorted({line[3:] for line in repo._repo.git.status("--porcelain", "--", *paths).splitlines()})


def tree_of(repo: Repository, commit: str) -> str:
    """The ID of `commit`'s tree: two commits with the same one hold the same files."""
    return repo._repo.commit(commit).tree.hexsha


def file_at(repo: Repository, commit: str, path: str) -> bytes | None:
    """The content of `path` in `commit`, from git objects (never the work tree); None when it has no such path."""
    try:
        return (repo._repo.commit(commit).tree / path).data_stream.read()
    except KeyError:
        return None


def resolve(repo: Repository, ref: str) -> CommitFacts:
    """The facts of commit `ref` with every file of its tree, read from git objects.

    Raises:
        SourceError: `ref` names no commit.
    """
    try:
        commit = repo._repo.commit(ref)
    except (BadName, BadObject, ValueError, git.GitCommandError):
        raise SourceError(ref, "no such commit in this repository") from None
    files = []
    for item in commit.tree.traverse():
        if item.type != "blob":
            continue  # trees are implied by paths; submodules ("commit") are not part of an experiment
        kind, mode = _MODES.get(item.mode, ("file", 0o644))
        if kind == "file" and item.size > INLINE_MAX:  # a checkpoint committed by mistake: read when sealed
            files.append(TreeFile(item.path, kind, mode, b"", item.hexsha, item.size, Path(repo._repo.common_dir)))
        else:
            files.append(TreeFile(item.path, kind, mode, item.data_stream.read(), item.hexsha))
    parent = commit.parents[0].hexsha if commit.parents else None
    subject = commit.message.strip().splitlines()[0] if commit.message.strip() else ""
    return CommitFacts(commit.hexsha, parent, commit.tree.hexsha, subject, tuple(sorted(files, key=lambda f: f.path)))


def changed_paths(repo: Repository, facts: CommitFacts) -> list[str]:
    """The paths a commit changes against its first parent (every path for a root commit)."""
    if facts.parent is None:
        return [f.path for f in facts.files]
    return repo._repo.git.diff("--name-only", "--no-renames", facts.parent, facts.sha).splitlines()


def working_diff(repo: Repository, sha: str) -> tuple[str, list[str]]:
    """The unified diff of the working tree and index against `sha`, and the untracked files.

    `git diff SHA` compares only the work tree, so a file staged with other content while the work
    tree still matches (`git update-index`, or `git add` then an undo) would go unseen: the index's
    own diff is added for every file whose staged content differs from both `sha` and the work tree.
    """
    options = ("--no-color", "--no-ext-diff", "--unified=0", "--src-prefix=a/", "--dst-prefix=b/")
    try:
        diff = repo._repo.git.diff(sha, *options)
        staged = repo._repo.git.diff("--cached", sha, *options)
        untracked = list(repo._repo.untracked_files)
    except git.GitCommandError as exc:  # e.g. a full disk: git cannot refresh the index
        said = " ".join(str(exc.stderr or exc).split())[:200]
        raise WorkspaceError(f"{repo.root}: git cannot compare the work tree with {sha[:12]}: {said}") from exc
    shown = set(_sections(diff))
    extra = [section for section in _sections(staged) if section not in shown]
    return "\n".join(filter(None, [diff, *extra])), untracked


def commit_diff(repo: Repository | None, parent: str | None, commit: str | None) -> str:
    """The diff from `parent` to `commit` as text, or a line saying why there is none (no parent
    recorded, or git cannot diff them: a commit gone from the repository, say)."""
    if repo is None or not parent or not commit:
        return "(no parent recorded)"
    try:
        return repo._repo.git.diff(parent, commit)
    except git.GitCommandError as exc:
        return f"(cannot diff {parent[:12]} {commit[:12]}: {(exc.stderr or str(exc)).strip()})"


def _sections(diff: str) -> list[str]:
    """A multi-file diff split into one text per file (each starting with `diff --git`)."""
    parts = ("\n" + diff).split("\ndiff --git ")[1:]
    return ["diff --git " + part for part in parts]


BATCH_FROM = 16  # more refs than this are resolved by one `git cat-file --batch`, fewer one by one


def commit_trees(repo: Repository, refs: Sequence[str]) -> dict[str, tuple[str, str] | None]:
    """(commit sha, tree sha) of each of `refs` that names a commit, None for one that does not: what
    `resolve` would find for it, without reading any file. Many refs take one git process (a ledger's
    worth of commits in well under a second)."""
    wanted = list(dict.fromkeys(refs))
    found: dict[str, tuple[str, str] | None] = {}
    batch = [r for r in wanted if r and r.isprintable() and not any(c.isspace() for c in r)]
    batched = set(batch)
    one_by_one = wanted if len(batch) <= BATCH_FROM else [r for r in wanted if r not in batched]
    for ref in one_by_one:
        try:
            commit = repo._repo.commit(ref)
            found[ref] = (commit.hexsha, commit.tree.hexsha)
        except (BadName, BadObject, ValueError, git.GitCommandError):
            found[ref] = None
    if len(batch) <= BATCH_FROM:
        return found
    import tempfile

    with tempfile.TemporaryFile() as stdin:
        stdin.write("".join(f"{ref}^{{commit}}\n" for ref in batch).encode())
        stdin.seek(0)
        try:
            out = repo._repo.git.cat_file("--batch", istream=stdin, stdout_as_string=False,
                                          strip_newline_in_stdout=False)
        except git.GitCommandError as exc:
            said = " ".join(str(exc.stderr).split())[:200]
            raise SourceError("cat-file", f"git could not read commits: {said}") from exc
    pos = 0
    for ref in batch:
        end = out.index(b"\n", pos)
        header = out[pos:end].split(b" ")
        pos = end + 1
        if len(header) != 3 or not header[2].isdigit():  # "<ref> missing", "<ref> ambiguous"
            found[ref] = None
            continue
        size = int(header[2])
        body = out[pos:pos + size]
        pos += size + 1
        tree = body.split(b"\n", 1)[0][5:].decode() if header[1] == b"commit" and body.startswith(b"tree ") else None
        found[ref] = (header[0].decode(), tree) if tree else None
    return found
