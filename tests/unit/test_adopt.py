"""sealab init --adopt: an existing autoresearch checkout becomes a workspace (real git, no Docker)."""

from pathlib import Path

import git
import pytest

from executor import config
from executor.errors import ConfigError, WorkspaceError
from agent.create import adopt
from agent.gitops import RefMoved
from executor.workspace import SCAFFOLD_FILES, Adoptable, Workspace, check_adoptable
from tests.conftest import sealab

FILES = {"train.py": "print('train')\n", "prepare.py": "print('prepare')\n", "program.md": "# research\n"}


def _checkout(path: Path, files: dict[str, str] = FILES) -> Path:
    """A plain directory laid out like karpathy/autoresearch."""
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def _git_checkout(path: Path, branch: str = "master") -> git.Repo:
    """An autoresearch-like git repository with two commits on `branch`."""
    _checkout(path)
    repo = git.Repo.init(path, initial_branch=branch)
    actor = git.Actor("someone", "someone@example.com")
    repo.index.add(list(FILES))
    repo.index.commit("initial", author=actor, committer=actor)
    (path / "train.py").write_text("print('train v2')\n")
    repo.index.add(["train.py"])
    repo.index.commit("tweak train", author=actor, committer=actor)
    return repo


def _committed_paths(repo: git.Repo, rev: str = "HEAD") -> list[str]:
    """The file paths in commit `rev`."""
    return sorted(item.path for item in repo.commit(rev).tree.traverse() if item.type == "blob")


def test_adopt_plain_directory_git_inits_and_commits_sealab_toml(tmp_path):
    """A plain checkout is git-initialised on main with the research files and sealab.toml committed and .sealab excluded."""
    root = _checkout(tmp_path / "ar")
    (root / "notes.txt").write_text("not research\n")
    ws = adopt(root)
    assert isinstance(ws, Workspace) and ws.root == root
    repo = git.Repo(root)
    assert repo.active_branch.name == "main"
    assert _committed_paths(repo) == sorted([*SCAFFOLD_FILES, "sealab.toml"])
    assert repo.untracked_files == ["notes.txt"] and not repo.is_dirty()
    assert "/.sealab/" in (root / ".git" / "info" / "exclude").read_text().splitlines()
    assert (ws.state / "logs").is_dir() and (ws.state / "outputs").is_dir()
    committed = (repo.head.commit.tree / "sealab.toml").data_stream.read()
    cfg = config.parse(committed)
    assert cfg.metric_source == "summary" and cfg.run_spec.metric == "val_bpb"
    assert "REPORTED BY EDITABLE CODE" in committed.decode()
    assert Workspace.open(root).config().metric_source == "summary"


def test_adopt_existing_repo_keeps_history_and_leaves_dirty_files_alone(tmp_path):
    """Adopting a git repo adds one commit on its branch whose ancestors are the old commits, touching nothing else."""
    root = tmp_path / "ar"
    repo = _git_checkout(root)
    old_head = repo.head.commit.hexsha
    old_commits = [c.hexsha for c in repo.iter_commits()]
    (root / "analysis.py").write_text("untracked\n")
    (root / "staged.txt").write_text("staged but not committed\n")
    repo.index.add(["staged.txt"])
    adopt(root)
    repo = git.Repo(root)
    head = repo.head.commit
    assert repo.active_branch.name == "master"
    assert [p.hexsha for p in head.parents] == [old_head]
    assert all(repo.is_ancestor(c, head.hexsha) for c in old_commits)
    assert _committed_paths(repo) == sorted([*FILES, "sealab.toml"])
    assert "analysis.py" in repo.untracked_files
    assert [d.a_path for d in repo.index.diff("HEAD")] == ["staged.txt"]  # still staged, not committed
    assert (root / ".sealab" / "logs").is_dir()


def test_adopt_refuses_dirty_research_files(tmp_path):
    """A research file with uncommitted changes is refused in one line, and nothing is written."""
    root = tmp_path / "ar"
    repo = _git_checkout(root)
    head = repo.head.commit.hexsha
    (root / "train.py").write_text("print('uncommitted')\n")
    with pytest.raises(WorkspaceError, match="train.py has uncommitted changes") as info:
        adopt(root)
    assert "\n" not in str(info.value)
    assert not (root / "sealab.toml").exists() and git.Repo(root).head.commit.hexsha == head


def test_adopt_refuses_a_missing_research_file(tmp_path):
    """A checkout without prepare.py is refused with a one-line error naming it."""
    root = _checkout(tmp_path / "ar", {k: v for k, v in FILES.items() if k != "prepare.py"})
    with pytest.raises(WorkspaceError, match="prepare.py") as info:
        adopt(root)
    assert "\n" not in str(info.value)
    assert not (root / ".git").exists() and not (root / "sealab.toml").exists()


def test_adopt_refuses_an_existing_sealab_toml(tmp_path):
    """A directory that already has sealab.toml is refused and left untouched."""
    root = _checkout(tmp_path / "ar")
    (root / "sealab.toml").write_text("# mine\n")
    with pytest.raises(WorkspaceError, match="already has sealab.toml"):
        adopt(root)
    assert (root / "sealab.toml").read_text() == "# mine\n" and not (root / ".git").exists()


def test_check_adoptable_reads_and_writes_nothing(tmp_path):
    """The executor's checks give no repository for a plain directory and the repository and its HEAD
    for a clean checkout, and write nothing in either (no .git, no sealab.toml, no new commit)."""
    plain = _checkout(tmp_path / "plain")
    assert check_adoptable(plain) == Adoptable(None, None) and not (plain / ".git").exists()
    root = tmp_path / "ar"
    head = _git_checkout(root).head.commit.hexsha
    found = check_adoptable(root)
    assert found.repo.root == root and found.head == head
    assert not (root / "sealab.toml").exists() and git.Repo(root).head.commit.hexsha == head


def test_adopt_refuses_untracked_research_files_and_a_subdirectory(tmp_path):
    """A research file never committed, or a checkout below the top of its repository, is refused in one line."""
    root = tmp_path / "ar"
    repo = _git_checkout(root)
    repo.index.remove(["program.md"])
    repo.index.commit("drop program.md from git", author=git.Actor("a", "a@b"), committer=git.Actor("a", "a@b"))
    with pytest.raises(WorkspaceError, match="program.md not committed"):
        adopt(root)
    inner = _checkout(root / "inner")
    with pytest.raises(WorkspaceError, match="adopt the repository's top directory"):
        adopt(inner)
    assert not (root / "sealab.toml").exists() and not (inner / "sealab.toml").exists()


def test_adopt_moves_head_by_compare_and_swap(tmp_path, monkeypatch):
    """The adoption commit moves HEAD from the commit the checks were made on (reflog "sealab: adopt");
    if another process commits in between, it stops with RefMoved and HEAD stays on that commit."""
    import agent.create

    root = tmp_path / "ar"
    repo = _git_checkout(root)
    adopt(root)
    assert git.Repo(root).git.reflog("show", "--format=%gs", "-1", "master") == "sealab: adopt"

    other = tmp_path / "other"
    repo = _git_checkout(other)
    checked = agent.create.check_adoptable

    def then_someone_commits(path):
        found = checked(path)
        (other / "notes.txt").write_text("late\n")
        repo.index.add(["notes.txt"])
        repo.index.commit("late", author=git.Actor("a", "a@b"), committer=git.Actor("a", "a@b"))
        return found

    monkeypatch.setattr(agent.create, "check_adoptable", then_someone_commits)
    with pytest.raises(RefMoved, match="HEAD moved"):
        adopt(other)
    assert git.Repo(other).head.commit.message == "late"


def test_cli_adopt_then_adopt_again_is_refused(tmp_path):
    """`sealab init --adopt DIR` exits 0 and flags the metric; a second time exits 2 with one line and no traceback."""
    root = _checkout(tmp_path / "ar")
    first = sealab("init", "--adopt", str(root))
    assert first.returncode == 0, first.stderr
    assert "sealab.toml" in first.stdout and "REPORTED BY EDITABLE CODE" in first.stdout
    second = sealab("init", "--adopt", str(root))
    assert second.returncode == 2
    assert len(second.stderr.strip().splitlines()) == 1 and "Traceback" not in second.stderr
    assert "already has sealab.toml" in second.stderr


def test_default_scaffold_still_works_with_result_json_metric_source(tmp_path):
    """Plain `sealab init` still scaffolds a workspace whose config reads the metric from result.json."""
    proc = sealab("init", str(tmp_path / "ws"))
    assert proc.returncode == 0, proc.stderr
    assert Workspace.open(tmp_path / "ws").config().metric_source == "result.json"


def test_metric_source_is_validated(tmp_path):
    """harness.metric_source accepts only "result.json" or "summary"."""
    assert config.parse('[harness]\nmetric_source = "result.json"\n').metric_source == "result.json"
    with pytest.raises(ConfigError, match="metric_source"):
        config.parse('[harness]\nmetric_source = "log"\n')
