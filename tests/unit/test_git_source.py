"""executor/git_source.py's commit_diff: the one "diff with a fallback" of the dashboard and the report."""

import git

from executor.git_source import commit_diff


def test_a_diff_its_missing_parent_and_a_commit_git_does_not_have(tmp_path):
    repo = git.Repo.init(tmp_path)
    (tmp_path / "train.py").write_text("LR = 0.5\n")
    repo.index.add(["train.py"])
    first = repo.index.commit("first").hexsha
    (tmp_path / "train.py").write_text("LR = 0.3\n")
    repo.index.add(["train.py"])
    second = repo.index.commit("second").hexsha
    diff = commit_diff(repo, first, second)
    assert "-LR = 0.5" in diff and "+LR = 0.3" in diff
    assert commit_diff(repo, None, second) == "(no parent recorded)" == commit_diff(None, first, second)
    gone = commit_diff(repo, "f" * 40, second)
    assert gone.startswith(f"(cannot diff {'f' * 12} {second[:12]}: ") and "\n" not in gone
