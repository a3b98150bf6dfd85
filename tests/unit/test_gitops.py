"""Write-side git helpers: commits from git objects only, compare-and-swap ref moves, the commits and
refs that making a workspace writes (real git, no Docker)."""

import git
import pytest

from agent import gitops
from agent.create import init
from executor import git_source


@pytest.fixture
def repo(tmp_path):
    return init(tmp_path / "ws").git


def _raw(tmp_path) -> git.Repo:
    """The test's own GitPython view of the workspace, to check what the helpers did."""
    return git.Repo(tmp_path / "ws")


def test_make_commit_ignores_the_work_tree(repo, tmp_path):
    """A concurrent edit of the work tree never leaks into the commit being made."""
    head = git_source.head_commit(repo)
    (tmp_path / "ws" / "train.py").write_text("SCALAR_LR = 0.3  # a linter\n")
    sha = gitops.make_commit(repo, head, {"train.py": "NEW = 1\n"}, "change")
    commit = _raw(tmp_path).commit(sha)
    assert (commit.tree / "train.py").data_stream.read() == b"NEW = 1\n"
    assert commit.parents[0].hexsha == head and git_source.head_commit(repo) == head  # no ref moved
    assert (commit.tree / "prepare.py").hexsha == (_raw(tmp_path).commit(head).tree / "prepare.py").hexsha


def test_cas_moves_only_from_the_expected_value(repo):
    """A ref moves only if it still points where the decision was made; else RefMoved and nothing changes."""
    head = git_source.head_commit(repo)
    other = gitops.make_commit(repo, head, {"train.py": "X = 1\n"}, "other")
    gitops.cas(repo, "refs/heads/sealab/t", head, gitops.ZERO)
    with pytest.raises(gitops.RefMoved):
        gitops.cas(repo, "refs/heads/sealab/t", other, gitops.ZERO)  # exists already
    with pytest.raises(gitops.RefMoved, match="expected") as info:
        gitops.cas(repo, "refs/heads/sealab/t", head, other)  # not at `other`
    assert (info.value.expected, info.value.actual) == (other, head)
    assert git_source.ref_value(repo, "refs/heads/sealab/t") == head
    gitops.cas(repo, "refs/heads/sealab/t", other, head)
    assert git_source.ref_value(repo, "refs/heads/sealab/t") == other


def test_cas_writes_its_reason_to_the_reflog(repo, tmp_path):
    """A move given a reason leaves that line in the ref's reflog."""
    head = git_source.head_commit(repo)
    gitops.cas(repo, "refs/heads/sealab/r", head, gitops.ZERO, reason="sealab: a reason")
    assert _raw(tmp_path).git.reflog("show", "--format=%gs", "refs/heads/sealab/r") == "sealab: a reason"


def test_restore_checks_out_the_branch_clean(repo, tmp_path):
    """restore puts HEAD on the branch with index and work tree equal to its commit."""
    head = git_source.head_commit(repo)
    gitops.cas(repo, "refs/heads/sealab/t", head, gitops.ZERO)
    (tmp_path / "ws" / "train.py").write_text("drifted\n")
    gitops.restore(repo, "sealab/t", head)
    assert git_source.current_branch(repo) == "sealab/t" and not git_source.is_dirty(repo)
    assert _raw(tmp_path).git.rev_parse("main") == head  # the user's branch did not move


def test_set_constant_keeps_the_comment():
    """Only the value of the named constant changes."""
    text = "A = 1  # a\nSCALAR_LR = 0.5   # lr\n"
    assert gitops.set_constant(text, "SCALAR_LR", "0.3") == "A = 1  # a\nSCALAR_LR = 0.3   # lr\n"
    with pytest.raises(ValueError):
        gitops.set_constant(text, "MISSING", "1")


def test_move_never_overwrites_a_local_change(repo, tmp_path):
    """`move` takes the tree from one commit to the next (a two-tree merge); a local edit of a file the
    move would change makes it refuse and touch nothing, so the loop can report it before forcing."""
    head = git_source.head_commit(repo)
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
    assert train.read_text() == "BACK = 1\n" and not _raw(tmp_path).is_dirty(untracked_files=False)
    with pytest.raises(gitops.RefMoved):
        gitops.move(repo, "sealab/m", back, nxt)  # the branch is not at `nxt`


# -- what making a workspace writes ---------------------------------------------------------------------
def test_init_repo_and_commit_paths_make_a_first_commit_on_main(tmp_path):
    """init_repo makes a repository on branch main; commit_paths commits exactly the paths given, as a
    root commit, leaving the others untracked."""
    (tmp_path / "a.txt").write_text("a\n")
    (tmp_path / "b.txt").write_text("b\n")
    repo = gitops.init_repo(tmp_path)
    assert git_source.head_commit(repo) is None and git_source.current_branch(repo) == "main"
    sha = gitops.commit_paths(repo, ["a.txt"], "first")
    facts = git_source.resolve(repo, "HEAD")
    assert facts.sha == sha and facts.parent is None and facts.subject == "first"
    assert [f.path for f in facts.files] == ["a.txt"] and git.Repo(tmp_path).untracked_files == ["b.txt"]


def test_exclude_adds_its_pattern_once(tmp_path):
    """exclude appends the pattern under its comment to info/exclude, keeps what was there (even without
    a final newline), and adds nothing when the pattern is there already."""
    repo = gitops.init_repo(tmp_path)
    path = tmp_path / ".git" / "info" / "exclude"
    path.write_text("*.log")
    gitops.exclude(repo, "/.sealab/", "sealab state")
    gitops.exclude(repo, "/.sealab/", "sealab state")
    assert path.read_text() == "*.log\n# sealab state\n/.sealab/\n"


def test_commit_beside_index_keeps_the_users_index(tmp_path):
    """The commit adds only the given path on top of HEAD and moves HEAD's branch there (with the reflog
    line given); a file the user staged stays staged and uncommitted, an unstaged edit stays unstaged."""
    raw = git.Repo.init(tmp_path, initial_branch="master")
    for name in ("train.py", "notes.txt"):
        (tmp_path / name).write_text(f"{name}\n")
    raw.index.add(["train.py", "notes.txt"])
    old = raw.index.commit("user's commit").hexsha
    (tmp_path / "staged.txt").write_text("staged\n")
    raw.index.add(["staged.txt"])
    (tmp_path / "notes.txt").write_text("edited, not staged\n")
    (tmp_path / "sealab.toml").write_text("# new\n")
    repo = git_source.open_repo(tmp_path)
    sha = gitops.commit_beside_index(repo, old, ["sealab.toml"], "add sealab.toml", reflog="sealab: test")
    raw = git.Repo(tmp_path)
    assert raw.active_branch.name == "master" and raw.head.commit.hexsha == sha
    assert [p.hexsha for p in raw.head.commit.parents] == [old]
    assert sorted(i.path for i in raw.head.commit.tree.traverse()) == ["notes.txt", "sealab.toml", "train.py"]
    assert [d.a_path for d in raw.index.diff("HEAD")] == ["staged.txt"]  # still staged, not committed
    assert [d.a_path for d in raw.index.diff(None)] == ["notes.txt"]  # still a work-tree edit only
    assert raw.git.reflog("show", "--format=%gs", "-1", "master") == "sealab: test"


def test_commit_beside_index_makes_a_root_commit_on_an_unborn_branch(tmp_path):
    """With no HEAD commit yet, the commit is a root commit holding the given paths (ignored ones too)."""
    (tmp_path / "train.py").write_text("T = 1\n")
    (tmp_path / ".gitignore").write_text("train.py\n")
    repo = gitops.init_repo(tmp_path)
    sha = gitops.commit_beside_index(repo, None, ["train.py"], "root")
    facts = git_source.resolve(repo, "HEAD")
    assert facts.sha == sha and facts.parent is None and [f.path for f in facts.files] == ["train.py"]
    assert not git_source.is_dirty(repo)


def test_commit_beside_index_refuses_when_head_moved(tmp_path):
    """HEAD elsewhere than the commit the checks were made on: RefMoved, and HEAD stays where it is."""
    repo = init(tmp_path / "ws").git
    start = git_source.head_commit(repo)
    moved = gitops.commit_file(repo, "train.py", "MOVED = 1\n", "another process's commit")
    (tmp_path / "ws" / "extra.txt").write_text("x\n")
    with pytest.raises(gitops.RefMoved) as info:
        gitops.commit_beside_index(repo, start, ["extra.txt"], "late")
    assert (info.value.ref, info.value.expected, info.value.actual) == ("HEAD", start, moved)
    assert git_source.head_commit(repo) == moved
