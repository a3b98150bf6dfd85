"""Write-side git helpers of the agent: change one file and commit it. The executor only reads git."""

from __future__ import annotations

import re
from pathlib import Path

import git

from executor.workspace import _actor


def set_constant(text: str, name: str, value: str) -> str:
    """Replace the value of the top-level constant `NAME = …`, keeping its trailing comment."""
    pattern = re.compile(rf"^({re.escape(name)}\s*=\s*)([^#\n]*?)(\s*(#.*)?)$", re.MULTILINE)
    new, count = pattern.subn(lambda m: f"{m.group(1)}{value}{m.group(3)}", text, count=1)
    if count != 1:
        raise ValueError(f"no top-level constant {name} to change")
    return new


def commit_file(repo: git.Repo, path: str, content: str, message: str) -> str:
    """Write `content` to `path` in the work tree, commit exactly that file, return the commit sha."""
    (Path(repo.working_tree_dir) / path).write_text(content)
    repo.index.add([path])
    actor = _actor(repo)
    return repo.index.commit(message, author=actor, committer=actor).hexsha
