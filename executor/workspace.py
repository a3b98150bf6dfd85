"""A research workspace: a git work tree with sealab.toml at its top and the `.sealab/` state directory.

A linked work tree of the repository (`git worktree add`, how parallel agents are usually set up) is
the same workspace: `root` is the main work tree, whose `.sealab/` (ledger, base, runs, logs) every
linked one shares, and `tree` the linked one, whose HEAD and files its commands read.

The executor opens a workspace and reads its git through `Workspace.git`, a `git_source.Repository`
handle: it never writes git. Making a workspace (`sealab init`, `sealab init --adopt`) commits and
moves HEAD, so agent/create.py does it through agent/gitops.py; what is not git stays here, and so
does what adoption must check first (`check_adoptable`, reads only), because what a checkout must be
to become a workspace is the executor's to say: a run seals the committed research files.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from executor import git_source
from executor.errors import WorkspaceError
from executor.types import CONFIG_NAME

if TYPE_CHECKING:
    from executor import config

SCAFFOLD = Path(__file__).with_name("scaffold")
SCAFFOLD_FILES = ("train.py", "prepare.py", "program.md")
SCAFFOLD_EXTRA = ("program-mcp.md",)  # program.md for an agent on `sealab mcp`'s tools (no shell); not adopted
STATE_DIR = ".sealab"
STATE_EXCLUDE = f"/{STATE_DIR}/"  # the info/exclude line that keeps the state out of git
STATE_COMMENT = "sealab state: ledger, logs, outputs"


@dataclass(frozen=True)
class Workspace:
    root: Path  # the main work tree: `.sealab/` is here, and the paths records name are relative to it
    tree: Path | None = None  # a linked work tree of the same repository, where the command runs

    @classmethod
    def open(cls, path: Path) -> Workspace:
        """The workspace containing `path` (in a linked work tree: the main work tree's, shared).

        Raises:
            WorkspaceError: not a git repository, or no sealab.toml at its top.
        """
        repo = git_source.open_repo(path)
        top = repo.root
        if top is None:
            raise WorkspaceError(f"{path} is a bare git repository; a workspace needs a work tree")
        if not (top / CONFIG_NAME).is_file():
            raise WorkspaceError(f"{top} has no {CONFIG_NAME}: not a sealab workspace (run `sealab init DIR`)")
        main = git_source.main_work_tree(repo)
        if main is None:
            raise WorkspaceError(f"{top} is a linked work tree of a bare repository ({repo.git_dir}): sealab keeps "
                                 "its state in the main work tree; run it from a clone with a work tree")
        if main.resolve() == top.resolve():
            return cls(top)
        if not (main / STATE_DIR).is_dir():
            raise WorkspaceError(f"{top} is a linked work tree of {main}, which has no {STATE_DIR}/: run "
                                 f"`sealab init` or `sealab init --adopt` there first")
        return cls(main, top)

    @property
    def here(self) -> Path:
        """The work tree this workspace was opened in (the linked one, else the main one)."""
        return self.tree or self.root

    def again(self) -> Workspace:
        """The same workspace with its own git handle (for another thread)."""
        return Workspace(self.root, self.tree)

    @cached_property
    def git(self) -> git_source.Repository:
        """The repository as seen from `here` (its HEAD), opened once per Workspace (a worker thread makes
        its own: `again`)."""
        return git_source.open_repo(self.here)

    @property
    def state(self) -> Path:
        return self.root / STATE_DIR

    @property
    def ledger_path(self) -> Path:
        return self.state / "ledger.db"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def outputs(self) -> Path:
        return self.state / "outputs"

    def config(self) -> config.Config:
        """The working tree's sealab.toml (runs use the committed one, see run.execute)."""
        from executor import config  # (pydantic's models: loaded by the commands that read the settings)

        return config.load(self.here / CONFIG_NAME)



def scaffold(path: Path) -> None:
    """The files of a new workspace at `path`: the research files, sealab.toml and `.sealab/` (no git
    yet; agent/create.init makes the repository and its first commit).

    Raises:
        WorkspaceError: `path` exists and is not an empty directory.
    """
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise WorkspaceError(f"{path} already exists and is not empty; choose a new directory")
    path.mkdir(parents=True, exist_ok=True)
    for name in (*SCAFFOLD_FILES, *SCAFFOLD_EXTRA):
        shutil.copyfile(SCAFFOLD / name, path / name)
    from executor import config

    (path / CONFIG_NAME).write_text(config.DEFAULT_TOML)
    make_state(path)


def make_state(path: Path) -> None:
    """The `.sealab/` state directories of the workspace at `path`."""
    for sub in ("logs", "outputs"):
        (path / STATE_DIR / sub).mkdir(parents=True, exist_ok=True)


ADOPT_REQUIRED = "train.py"  # of SCAFFOLD_FILES, the one an adopted checkout must have (the run's command runs it)


@dataclass(frozen=True)
class Adoptable:
    """A checkout that passed `check_adoptable`: its repository (None: a plain directory, to be
    git-initialised), the HEAD commit the checks were made on (None: no commit yet) and the research
    files it has, in SCAFFOLD_FILES order (train.py always; prepare.py and program.md where present)."""

    repo: git_source.Repository | None
    head: str | None
    files: tuple[str, ...] = SCAFFOLD_FILES


def check_adoptable(path: Path) -> Adoptable:
    """Whether the karpathy/autoresearch-like checkout at `path` can become a workspace; reads only.

    `path` must hold train.py (prepare.py and program.md too where the repository has them) and no
    sealab.toml, and be a plain directory or the top of a git work tree. Once that repository has a
    commit, the research files it has must be committed and clean in it, because a run seals the
    committed version, not the working tree.

    Raises:
        WorkspaceError: train.py is missing, sealab.toml already exists, `path` is not the top
            of its repository, or a research file is untracked or has uncommitted changes.
    """
    if not path.is_dir():
        raise WorkspaceError(f"{path} is not a directory; adopt needs an autoresearch checkout")
    if not (path / ADOPT_REQUIRED).is_file():
        raise WorkspaceError(f"{path} lacks {ADOPT_REQUIRED}: not an autoresearch-like checkout (adopt needs "
                             f"{ADOPT_REQUIRED}, which the run's command runs; prepare.py and program.md are optional)")
    files = tuple(name for name in SCAFFOLD_FILES if (path / name).is_file())
    if (path / CONFIG_NAME).exists():
        raise WorkspaceError(f"{path} already has {CONFIG_NAME}: it is already a sealab workspace")
    repo = git_source.find_repo(path)
    if repo is None:
        return Adoptable(None, None, files)
    if repo.root is None:
        raise WorkspaceError(f"{path} is inside a bare git repository; adopt needs a work tree")
    top = repo.root.resolve()
    if top != path.resolve():
        raise WorkspaceError(f"{path} is inside the git repository {top}; adopt the repository's top directory")
    head = git_source.head_commit(repo)
    if head is not None:  # one committed and deleted since is an uncommitted change, refused as such
        files = tuple(name for name in SCAFFOLD_FILES
                      if name in files or git_source.file_at(repo, head, name) is not None)
        _require_committed(repo, head, path, files)
    return Adoptable(repo, head, files)


def _require_committed(repo: git_source.Repository, head: str, path: Path, files: tuple[str, ...]) -> None:
    """Refuse when a research file is untracked or differs from HEAD (a run seals the commit)."""
    untracked = [name for name in files if git_source.file_at(repo, head, name) is None]
    if untracked:
        raise WorkspaceError(f"{path}: {', '.join(untracked)} not committed; commit them first "
                             "(a run seals the committed version)")
    dirty = git_source.uncommitted(repo, files)
    if dirty:
        raise WorkspaceError(f"{path}: {', '.join(dirty)} has uncommitted changes; commit or stash them first "
                             "(a run seals the committed version)")
