"""Making a workspace: `sealab init` scaffolds a new one, `sealab init --adopt` turns an existing
karpathy/autoresearch checkout into one.

Both write git (a repository, a commit, HEAD), which the executor never does, so they live on the
agent side: the files and the checks come from executor/workspace.py, an adopted checkout's
sealab.toml from executor/survey.py, and every git write goes through agent/gitops.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent import gitops
from executor import config
from executor.survey import Survey, render_toml, survey
from executor.workspace import (SCAFFOLD_EXTRA, SCAFFOLD_FILES, STATE_COMMENT, STATE_EXCLUDE, Workspace,
                                check_adoptable, make_state,
                                scaffold)

INIT_MESSAGE = "sealab: initial workspace"
ADOPT_MESSAGE = "sealab: adopt autoresearch checkout"


def init(path: Path) -> Workspace:
    """Scaffold a new workspace at `path`: a git repository (branch main) whose first commit holds the
    research files and sealab.toml, with `.sealab/` excluded.

    Raises:
        WorkspaceError: `path` exists and is not an empty directory.
    """
    scaffold(path)
    repo = gitops.init_repo(path)
    gitops.exclude(repo, STATE_EXCLUDE, STATE_COMMENT)
    gitops.commit_paths(repo, [*SCAFFOLD_FILES, *SCAFFOLD_EXTRA, config.CONFIG_NAME], INIT_MESSAGE)
    return Workspace(path)


@dataclass(frozen=True)
class Adopted:
    """An adopted checkout: the workspace, what the survey found (sealab.toml was written from it) and
    the paths the adoption commit added."""

    workspace: Workspace
    survey: Survey
    committed: tuple[str, ...]


def adopt(path: Path) -> Adopted:
    """Turn an existing karpathy/autoresearch-like checkout at `path` into a workspace, destroying nothing.

    What the checkout must be is `check_adoptable`'s to say; sealab.toml is rendered from what
    executor/survey.py finds in it (the metric, its direction, the data directories). A plain
    directory is git-initialised (branch main) and its first commit holds the research files it has
    (train.py, and prepare.py and program.md where present) and sealab.toml; nothing else in it is
    added. In an existing repository history and branch are kept and the one new commit adds
    only sealab.toml on top of HEAD, built beside the user's index (`gitops.commit_beside_index`), so
    their staged and unstaged changes to other files stay exactly as they were.

    Raises:
        WorkspaceError: the checkout cannot be adopted (see `check_adoptable`); nothing was written.
        RefMoved: HEAD moved between the checks and the commit; sealab.toml is written but not committed.
    """
    checked = check_adoptable(path)
    head = checked.head  # HEAD moves from the commit the checks were made on, or not at all
    found = survey(path)
    (path / config.CONFIG_NAME).write_text(render_toml(found))
    repo = checked.repo if checked.repo is not None else gitops.init_repo(path)
    gitops.exclude(repo, STATE_EXCLUDE, STATE_COMMENT)
    make_state(path)
    paths = (config.CONFIG_NAME,) if head is not None else (*checked.files, config.CONFIG_NAME)
    gitops.commit_beside_index(repo, head, list(paths), ADOPT_MESSAGE, reflog="sealab: adopt")
    return Adopted(Workspace(path), found, paths)
