"""A research workspace: its git repository, its sealab.toml, and the `.sealab/` state directory."""

from __future__ import annotations

import shutil
import tempfile
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


ADOPT_HARNESS_TOML = """
[harness]
# The metric is read from the `---` / `key: value` summary block that train.py prints (autoresearch's
# own harness). That block is REPORTED BY EDITABLE CODE: the agent can change what it prints, so the
# number is less trustworthy than a result.json written by a protected harness ("result.json").
metric_source = "summary"
"""


def adopt(path: Path) -> Workspace:
    """Turn an existing karpathy/autoresearch checkout at `path` into a workspace, destroying nothing.

    `path` must hold train.py, prepare.py and program.md and no sealab.toml. A plain directory is
    git-initialised (branch main) and its first commit holds the three research files and sealab.toml;
    nothing else in it is added. In an existing repository history and branch are kept and the one new
    commit adds only sealab.toml on top of HEAD: it is built in a private index, so the user's staged
    and unstaged changes to other files stay exactly as they were. The three research files must be
    committed and clean there, because a run seals the committed version, not the working tree.

    Raises:
        WorkspaceError: a research file is missing, sealab.toml already exists, `path` is not the top
            of its repository, or a research file is untracked or has uncommitted changes.
    """
    if not path.is_dir():
        raise WorkspaceError(f"{path} is not a directory; adopt needs an autoresearch checkout")
    missing = [name for name in SCAFFOLD_FILES if not (path / name).is_file()]
    if missing:
        raise WorkspaceError(f"{path} lacks {', '.join(missing)}: not an autoresearch checkout "
                             f"(adopt needs {', '.join(SCAFFOLD_FILES)})")
    if (path / config.CONFIG_NAME).exists():
        raise WorkspaceError(f"{path} already has {config.CONFIG_NAME}: it is already a sealab workspace")
    repo = _adoptable_repo(path)
    head = repo.head.commit.hexsha if repo.head.is_valid() else None
    if head is not None:
        _require_committed(repo, path)
    (path / config.CONFIG_NAME).write_text(config.DEFAULT_TOML + ADOPT_HARNESS_TOML)
    _exclude_state(Path(repo.common_dir))
    for sub in ("logs", "outputs"):
        (path / STATE_DIR / sub).mkdir(parents=True, exist_ok=True)
    paths = [config.CONFIG_NAME] if head is not None else [*SCAFFOLD_FILES, config.CONFIG_NAME]
    actor = _actor(repo)
    with tempfile.TemporaryDirectory(prefix="sealab-adopt-") as tmp:
        with repo.git.custom_environment(GIT_INDEX_FILE=str(Path(tmp) / "index")):
            if head is not None:
                repo.git.read_tree(head)
            repo.git.add("-f", "--", *paths)
            tree = repo.git.write_tree()
        identity = {"GIT_AUTHOR_NAME": actor.name, "GIT_AUTHOR_EMAIL": actor.email,
                    "GIT_COMMITTER_NAME": actor.name, "GIT_COMMITTER_EMAIL": actor.email}
        with repo.git.custom_environment(**identity):
            parents = ["-p", head] if head is not None else []
            commit = repo.git.commit_tree(tree, *parents, "-m", "sealab: adopt autoresearch checkout")
    repo.git.update_ref("-m", "sealab: adopt", "HEAD", commit, head or "0" * 40)
    repo.git.add("-f", "--", *paths)  # the real index: only these paths, now equal to the new HEAD
    return Workspace(path)


def _adoptable_repo(path: Path) -> git.Repo:
    """The repository whose top is `path`, `git init`-ed (branch main) when there is none."""
    try:
        repo = git.Repo(path, search_parent_directories=True)
    except git.InvalidGitRepositoryError:
        return git.Repo.init(path, initial_branch="main")
    if repo.bare or repo.working_tree_dir is None:
        raise WorkspaceError(f"{path} is inside a bare git repository; adopt needs a work tree")
    top = Path(repo.working_tree_dir).resolve()
    if top != path.resolve():
        raise WorkspaceError(f"{path} is inside the git repository {top}; adopt the repository's top directory")
    return repo


def _require_committed(repo: git.Repo, path: Path) -> None:
    """Refuse when a research file is untracked or differs from HEAD (a run seals the commit)."""
    tree = repo.head.commit.tree
    untracked = [name for name in SCAFFOLD_FILES if name not in tree]
    if untracked:
        raise WorkspaceError(f"{path}: {', '.join(untracked)} not committed; commit them first "
                             "(a run seals the committed version)")
    dirty = sorted({line[3:] for line in repo.git.status("--porcelain", "--", *SCAFFOLD_FILES).splitlines()})
    if dirty:
        raise WorkspaceError(f"{path}: {', '.join(dirty)} has uncommitted changes; commit or stash them first "
                             "(a run seals the committed version)")


def _exclude_state(git_dir: Path) -> None:
    """Keep `.sealab/` out of git through .git/info/exclude (once)."""
    exclude = git_dir / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    existing = exclude.read_text() if exclude.exists() else ""
    if f"/{STATE_DIR}/" not in existing.splitlines():
        separator = "" if not existing or existing.endswith("\n") else "\n"
        with exclude.open("a") as fh:
            fh.write(f"{separator}# sealab state: ledger, logs, outputs\n/{STATE_DIR}/\n")


def _actor(repo: git.Repo) -> git.Actor:
    """The configured git identity, or a neutral one so that init works on a fresh machine."""
    reader = repo.config_reader()
    name = reader.get_value("user", "name", default="") or "sealab"
    email = reader.get_value("user", "email", default="") or "sealab@localhost"
    return git.Actor(name, email)
