"""executor/git_source.py, the read half of the git seam: commit_diff (the one "diff with a fallback" of
the dashboard and the report) and the named reads the agent side uses instead of a GitPython object."""

import git
import pytest

from executor import git_source
from executor.errors import WorkspaceError
from executor.git_source import commit_diff


def _two_commits(path) -> tuple[git.Repo, str, str]:
    """A repository with two commits of train.py (made with GitPython directly, not through the seam)."""
    repo = git.Repo.init(path, initial_branch="main")
    (path / "train.py").write_text("LR = 0.5\n")
    repo.index.add(["train.py"])
    first = repo.index.commit("first").hexsha
    (path / "train.py").write_text("LR = 0.3\n")
    repo.index.add(["train.py"])
    return repo, first, repo.index.commit("second").hexsha


def test_a_diff_its_missing_parent_and_a_commit_git_does_not_have(tmp_path):
    """A diff between two commits; a line saying why when there is no parent, no repository, or a commit git lacks."""
    _, first, second = _two_commits(tmp_path)
    repo = git_source.open_repo(tmp_path)
    diff = commit_diff(repo, first, second)
    assert "-LR = 0.5" in diff and "+LR = 0.3" in diff
    assert commit_diff(repo, None, second) == "(no parent recorded)" == commit_diff(None, first, second)
    gone = commit_diff(repo, "f" * 40, second)
    assert gone.startswith(f"(cannot diff {'f' * 12} {second[:12]}: ") and "\n" not in gone


def test_named_reads_of_refs_branch_and_files(tmp_path):
    """head_commit, ref_value (a parent too), current_branch, tree_of and file_at answer from git objects;
    None where there is nothing (no parent, detached HEAD, no such path)."""
    raw, first, second = _two_commits(tmp_path)
    repo = git_source.open_repo(tmp_path / "train.py")  # found from a path inside the work tree
    assert repo.root == tmp_path and repo.git_dir == tmp_path / ".git"
    assert git_source.head_commit(repo) == second == git_source.ref_value(repo, "refs/heads/main")
    assert git_source.ref_value(repo, f"{second}^") == first and git_source.ref_value(repo, f"{first}^") is None
    assert git_source.ref_value(repo, "refs/heads/nope") is None
    assert git_source.current_branch(repo) == "main"
    (tmp_path / "train.py").write_text("on disk only\n")
    assert git_source.file_at(repo, first, "train.py") == b"LR = 0.5\n" and git_source.file_at(repo, first, "x") is None
    assert git_source.is_dirty(repo) and git_source.uncommitted(repo, ["train.py", "x"]) == ["train.py"]
    assert git_source.tree_of(repo, first) != git_source.tree_of(repo, second)
    raw.git.checkout("-q", "-f", first)
    assert git_source.current_branch(repo) is None  # detached


def test_find_and_open_a_repository(tmp_path):
    """find_repo is None outside any repository, where open_repo is a one-line WorkspaceError; an
    unborn HEAD has no commit; a bare repository has no work tree root."""
    assert git_source.find_repo(tmp_path) is None
    with pytest.raises(WorkspaceError, match="is not a git repository"):
        git_source.open_repo(tmp_path)
    git.Repo.init(tmp_path / "new")
    assert git_source.head_commit(git_source.open_repo(tmp_path / "new")) is None
    git.Repo.init(tmp_path / "bare.git", bare=True)
    assert git_source.open_repo(tmp_path / "bare.git").root is None
