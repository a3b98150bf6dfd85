"""sealab init --adopt: an existing autoresearch checkout becomes a workspace (real git, no Docker)."""

import shutil
from pathlib import Path

import git
import pytest

from executor import config
from executor.errors import ConfigError, WorkspaceError
from agent.create import adopt
from agent.gitops import RefMoved
from executor.workspace import SCAFFOLD_FILES, Adoptable, Workspace, check_adoptable
from tests.conftest import sealab
from tests.unit.test_survey import AUTORESEARCH, MAZE

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
    adopted = adopt(root)
    ws = adopted.workspace
    assert isinstance(ws, Workspace) and ws.root == root
    assert adopted.committed == (*SCAFFOLD_FILES, "sealab.toml")
    repo = git.Repo(root)
    assert repo.active_branch.name == "main"
    assert _committed_paths(repo) == sorted([*SCAFFOLD_FILES, "sealab.toml"])
    assert repo.untracked_files == ["notes.txt"] and not repo.is_dirty()
    assert "/.sealab/" in (root / ".git" / "info" / "exclude").read_text().splitlines()
    assert (ws.state / "logs").is_dir() and (ws.state / "outputs").is_dir()
    committed = (repo.head.commit.tree / "sealab.toml").data_stream.read()
    cfg = config.parse(committed)
    assert cfg.metric_source == "summary" and cfg.run_spec.metric == "val_bpb"  # train.py prints none: the default
    assert cfg.run_spec.command == ("python3", "train.py") and cfg.measured_grace
    assert "REPORTED BY EDITABLE CODE" in committed.decode()
    assert any(t.startswith("set [metric] name") for t in adopted.survey.todo)
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


def test_adopt_refuses_a_checkout_without_train_py(tmp_path):
    """A checkout without train.py (what the run's command runs) is refused with a one-line error naming it."""
    root = _checkout(tmp_path / "ar", {k: v for k, v in FILES.items() if k != "train.py"})
    with pytest.raises(WorkspaceError, match="lacks train.py") as info:
        adopt(root)
    assert "\n" not in str(info.value)
    assert not (root / ".git").exists() and not (root / "sealab.toml").exists()


@pytest.mark.parametrize("absent", ["prepare.py", "program.md"])
def test_adopt_without_prepare_py_or_program_md_commits_the_files_there_are(tmp_path, absent):
    """prepare.py and program.md are optional: a plain checkout without one commits the others and sealab.toml."""
    root = _checkout(tmp_path / "ar", {k: v for k, v in FILES.items() if k != absent})
    assert check_adoptable(root).files == tuple(n for n in SCAFFOLD_FILES if n != absent)
    adopted = adopt(root)
    kept = sorted([*(n for n in FILES if n != absent), "sealab.toml"])
    assert sorted(adopted.committed) == kept and _committed_paths(git.Repo(root)) == kept
    assert absent not in adopted.survey.research_files and f"no {absent}" in adopted.survey.findings[0]


def test_adopt_refuses_a_committed_research_file_deleted_since(tmp_path):
    """In a repository, a research file committed at HEAD and deleted from the work tree is an uncommitted change."""
    root = tmp_path / "ar"
    _git_checkout(root)
    (root / "prepare.py").unlink()
    with pytest.raises(WorkspaceError, match="prepare.py has uncommitted changes"):
        adopt(root)
    assert not (root / "sealab.toml").exists()


def test_adopt_the_maze_fixture_as_it_is(tmp_path):
    """tests/fixtures/maze, adopted with no hand edits: solve_rate, maximize, python3 train.py, the printed
    summary, no data dirs, and no prepare.py to commit."""
    root = tmp_path / "maze"
    shutil.copytree(MAZE, root)
    adopted = adopt(root)
    cfg = Workspace.open(root).config()
    assert (cfg.run_spec.metric, cfg.run_spec.direction) == ("solve_rate", "maximize")
    assert cfg.run_spec.command == ("python3", "train.py") and cfg.metric_source == "summary"
    assert cfg.data_dirs == () and cfg.measured_grace
    assert _committed_paths(git.Repo(root)) == ["program.md", "sealab.toml", "train.py"]
    assert adopted.survey.todo == ()


def test_adopt_an_autoresearch_shaped_repository(tmp_path):
    """A git checkout shaped like karpathy/autoresearch: val_bpb, minimize, ~/.cache/autoresearch, its lock,
    and a to-do to run prepare.py before `sealab base`; the one new commit adds only sealab.toml."""
    root = _checkout(tmp_path / "ar", AUTORESEARCH)
    repo = git.Repo.init(root, initial_branch="master")
    repo.index.add(list(AUTORESEARCH))
    repo.index.commit("upstream", author=git.Actor("a", "a@b"), committer=git.Actor("a", "a@b"))
    adopted = adopt(root)
    cfg = Workspace.open(root).config()
    assert (cfg.run_spec.metric, cfg.run_spec.direction) == ("val_bpb", "minimize")
    assert cfg.data_dirs == ("~/.cache/autoresearch",) and cfg.run_spec.command == ("python3", "train.py")
    assert adopted.survey.deps_files == ("pyproject.toml", "uv.lock") and adopted.committed == ("sealab.toml",)
    assert [t for t in adopted.survey.todo if "`python prepare.py`" in t and "~/.cache/autoresearch" in t]
    assert [d.a_path for d in git.Repo(root).head.commit.diff("HEAD~1")] == ["sealab.toml"]


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
    assert "committed train.py, prepare.py, program.md and sealab.toml at" in first.stdout
    second = sealab("init", "--adopt", str(root))
    assert second.returncode == 2
    assert len(second.stderr.strip().splitlines()) == 1 and "Traceback" not in second.stderr
    assert "already has sealab.toml" in second.stderr


def test_cli_adopt_prints_what_it_found_and_what_is_left_to_do(tmp_path):
    """The printout names the deps, data dirs, metric and direction with why, and the command; then the
    to-do items one a line, then the `next:` line."""
    root = _checkout(tmp_path / "ar", AUTORESEARCH)
    proc = sealab("init", "--adopt", str(root))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    found = lines[lines.index("found:") + 1:lines.index("found:") + 8]
    assert found[1] == "  dependencies: pyproject.toml (4 dependencies: torch, numpy, tiktoken, pyarrow) + uv.lock"
    assert found[2] == "  data dirs: ~/.cache/autoresearch (computed in prepare.py)"
    assert found[3].startswith("  metric: val_bpb (printed by train.py as `val_bpb: ...` after `---`")
    assert found[4] == '  direction: minimize (program.md says "lowest" next to it)'
    assert found[6] == "  command: python3 train.py"
    todo = lines.index("to do:")
    assert lines[todo + 1:] == ["  - run `python prepare.py` once on this machine (it fills ~/.cache/autoresearch), "
                                "then `sealab base`", f"next: cd {root} && sealab base && sealab exec"]


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
