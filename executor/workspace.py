"""A research workspace: its git repository, its sealab.toml, and the `.sealab/` state directory."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import git

from executor import config, git_source
from executor.errors import WorkspaceError

SCAFFOLD = Path(__file__).with_name("scaffold")
SCAFFOLD_FILES = ("train.py", "prepare.py", "program.md")
STATE_DIR = ".sealab"


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def open(cls, path: Path) -> Workspace:
        """The workspace containing `path`.

        Raises:
            WorkspaceError: not a git repository, or no sealab.toml at its top.
        """
        repo = git_source.open_repo(path)
        if repo.bare or repo.working_tree_dir is None:
            raise WorkspaceError(f"{path} is a bare git repository; a workspace needs a work tree")
        root = Path(repo.working_tree_dir)
        if not (root / config.CONFIG_NAME).is_file():
            raise WorkspaceError(f"{root} has no {config.CONFIG_NAME}: not a sealab workspace (run `sealab init DIR`)")
        return cls(root)

    @cached_property
    def repo(self) -> git.Repo:
        return git.Repo(self.root)

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
        return config.load(self.root / config.CONFIG_NAME)


def init(path: Path) -> Workspace:
    """Scaffold a new workspace at `path`: a git repository whose first commit holds the research files.

    Raises:
        WorkspaceError: `path` exists and is not an empty directory.
    """
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise WorkspaceError(f"{path} already exists and is not empty; choose a new directory")
    path.mkdir(parents=True, exist_ok=True)
    for name in SCAFFOLD_FILES:
        shutil.copyfile(SCAFFOLD / name, path / name)
    (path / config.CONFIG_NAME).write_text(config.DEFAULT_TOML)
    repo = git.Repo.init(path, initial_branch="main")
    exclude = path / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    with exclude.open("a") as fh:
        fh.write(f"\n# sealab state: ledger, logs, outputs\n/{STATE_DIR}/\n")
    for sub in ("logs", "outputs"):
        (path / STATE_DIR / sub).mkdir(parents=True, exist_ok=True)
    repo.index.add([*SCAFFOLD_FILES, config.CONFIG_NAME])
    actor = _actor(repo)
    repo.index.commit("sealab: initial workspace", author=actor, committer=actor)
    return Workspace(path)


def _actor(repo: git.Repo) -> git.Actor:
    """The configured git identity, or a neutral one so that init works on a fresh machine."""
    reader = repo.config_reader()
    name = reader.get_value("user", "name", default="") or "sealab"
    email = reader.get_value("user", "email", default="") or "sealab@localhost"
    return git.Actor(name, email)
