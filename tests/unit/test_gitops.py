"""Write-side git helpers: commits from git objects only, compare-and-swap ref moves (real git, no Docker)."""

import git
import pytest

from agent import gitops
from executor.workspace import init


@pytest.fixture
def repo(tmp_path):
    return init(tmp_path / "ws").repo


def test_make_commit_ignores_the_work_tree(repo, tmp_path):
    """A concurrent edit of the work tree never leaks into the commit being made."""
    head = repo.head.commit.hexsha
    (tmp_path / "ws" / "train.py").write_text("SCALAR_LR = 0.3  # a linter\n")
    sha = gitops.make_commit(repo, head, {"train.py": "NEW = 1\n"}, "change")
    commit = repo.commit(sha)
    assert (commit.tree / "train.py").data_stream.read() == b"NEW = 1\n"
    assert commit.parents[0].hexsha == head and repo.head.commit.hexsha == head  # no ref moved
    assert (commit.tree / "prepare.py").hexsha == (repo.commit(head).tree / "prepare.py").hexsha


def test_cas_moves_only_from_the_expected_value(repo):
    """A ref moves only if it still points where the decision was made; else RefMoved and nothing changes."""
    head = repo.head.commit.hexsha
    other = gitops.make_commit(repo, head, {"train.py": "X = 1\n"}, "other")
    gitops.cas(repo, "refs/heads/sealab/t", head, gitops.ZERO)
    with pytest.raises(gitops.RefMoved):
        gitops.cas(repo, "refs/heads/sealab/t", other, gitops.ZERO)  # exists already
    with pytest.raises(gitops.RefMoved, match="expected"):
        gitops.cas(repo, "refs/heads/sealab/t", head, other)  # not at `other`
    assert gitops.ref_value(repo, "refs/heads/sealab/t") == head
    gitops.cas(repo, "refs/heads/sealab/t", other, head)
    assert gitops.ref_value(repo, "refs/heads/sealab/t") == other


def test_restore_checks_out_the_branch_clean(repo, tmp_path):
    """restore puts HEAD on the branch with index and work tree equal to its commit."""
    head = repo.head.commit.hexsha
    gitops.cas(repo, "refs/heads/sealab/t", head, gitops.ZERO)
    (tmp_path / "ws" / "train.py").write_text("drifted\n")
    gitops.restore(repo, "sealab/t", head)
    assert repo.active_branch.name == "sealab/t" and not repo.is_dirty()
    assert git.Repo(tmp_path / "ws").git.rev_parse("main") == head  # the user's branch did not move


def test_set_constant_keeps_the_comment():
    """Only the value of the named constant changes."""
    text = "A = 1  # a\nSCALAR_LR = 0.5   # lr\n"
    assert gitops.set_constant(text, "SCALAR_LR", "0.3") == "A = 1  # a\nSCALAR_LR = 0.3   # lr\n"
    with pytest.raises(ValueError):
        gitops.set_constant(text, "MISSING", "1")


def test_move_never_overwrites_a_local_change(repo, tmp_path):
    """`move` takes the tree from one commit to the next (a two-tree merge); a local edit of a file the
    move would change makes it refuse and touch nothing, so the loop can report it before forcing."""
    head = repo.head.commit.hexsha
    nxt = gitops.make_commit(repo, head, {"train.py": "NEXT = 1\n"}, "next")
    gitops.cas(repo, "refs/heads/sealab/m", head, gitops.ZERO)
    gitops.restore(repo, "sealab/m", head)
    train = tmp_path / "ws" / "train.py"
    train.write_text("SCALAR_LR = 0.3  # a linter, between the check and the move\n")
    gitops.cas(repo, "refs/heads/sealab/m", nxt, head)
    assert gitops.move(repo, "sealab/m", head, nxt) is False
    assert train.read_text() == "SCALAR_LR = 0.3  # a linter, between the check and the move\n"  # not erased
    gitops.restore(repo, "sealab/m", nxt)
    back = gitops.make_commit(repo, nxt, {"train.py": "BACK = 1\n"}, "back")
    gitops.cas(repo, "refs/heads/sealab/m", back, nxt)
    assert gitops.move(repo, "sealab/m", nxt, back) is True
    assert train.read_text() == "BACK = 1\n" and not repo.is_dirty(untracked_files=False)
    with pytest.raises(gitops.RefMoved):
        gitops.move(repo, "sealab/m", back, nxt)  # the branch is not at `nxt`
