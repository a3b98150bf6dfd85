"""Making a workspace: `sealab init` scaffolds a new one, `sealab init --adopt` turns an existing
karpathy/autoresearch checkout into one.

Both write git (a repository, a commit, HEAD), which the executor never does, so they live on the
agent side: the files and the checks come from executor/workspace.py, every git write goes through
agent/gitops.py.
"""

from __future__ import annotations

from pathlib import Path

from agent import gitops
from executor import config
from executor.workspace import (ADOPTED_TOML, SCAFFOLD_FILES, STATE_COMMENT, STATE_EXCLUDE, Workspace,
                                check_adoptable, make_state, scaffold)

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
    gitops.commit_paths(repo, [*SCAFFOLD_FILES, config.CONFIG_NAME], INIT_MESSAGE)
    return Workspace(path)


def adopt(path: Path) -> Workspace:
    """Turn an existing karpathy/autoresearch checkout at `path` into a workspace, destroying nothing.

    What the checkout must be is `check_adoptable`'s to say. A plain directory is git-initialised
    (branch main) and its first commit holds the three research files and sealab.toml; nothing else
    in it is added. In an existing repository history and branch are kept and the one new commit adds
    only sealab.toml on top of HEAD, built beside the user's index (`gitops.commit_beside_index`), so
    their staged and unstaged changes to other files stay exactly as they were.

    Raises:
        WorkspaceError: the checkout cannot be adopted (see `check_adoptable`); nothing was written.
        RefMoved: HEAD moved between the checks and the commit; sealab.toml is written but not committed.
    """
    checked = check_adoptable(path)
    head = checked.head  # HEAD moves from the commit the checks were made on, or not at all
    (path / config.CONFIG_NAME).write_text(ADOPTED_TOML)
    repo = checked.repo if checked.repo is not None else gitops.init_repo(path)
    gitops.exclude(repo, STATE_EXCLUDE, STATE_COMMENT)
    make_state(path)
    paths = [config.CONFIG_NAME] if head is not None else [*SCAFFOLD_FILES, config.CONFIG_NAME]
    gitops.commit_beside_index(repo, head, paths, ADOPT_MESSAGE, reflog="sealab: adopt")
    return Workspace(path)
