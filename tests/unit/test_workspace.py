"""sealab init: the scaffolded workspace and its first commit (real git, no Docker)."""

import git
import pytest

from agent.create import init
from executor import config
from executor.errors import WorkspaceError
from executor.git_source import open_repo, resolve
from executor.workspace import SCAFFOLD_EXTRA, SCAFFOLD_FILES, Workspace, scaffold


def test_init_scaffolds_a_committed_workspace(tmp_path):
    """init makes a git repository whose first commit holds the research files, with state excluded."""
    ws = init(tmp_path / "ws")
    facts = resolve(ws.git, "HEAD")
    assert sorted(f.path for f in facts.files) == sorted([*SCAFFOLD_FILES, *SCAFFOLD_EXTRA, "sealab.toml"])
    assert facts.parent is None and facts.subject == "sealab: initial workspace"
    assert "/.sealab/" in (tmp_path / "ws" / ".git" / "info" / "exclude").read_text()
    assert (ws.state / "logs").is_dir() and (ws.state / "outputs").is_dir()
    raw = git.Repo(ws.root)
    assert raw.untracked_files == [] and not raw.is_dirty() and raw.active_branch.name == "main"
    assert config.parse((tmp_path / "ws" / "sealab.toml").read_bytes()).run_spec.metric == "val_bpb"
    assert "SCALAR_LR = 0.5" in (tmp_path / "ws" / "train.py").read_text()


def test_open_finds_the_workspace_from_a_subdirectory(tmp_path):
    """Workspace.open works from anywhere inside the workspace."""
    init(tmp_path / "ws")
    (tmp_path / "ws" / "sub").mkdir()
    assert Workspace.open(tmp_path / "ws" / "sub").root == tmp_path / "ws"


def test_git_source_reads_objects_not_the_working_tree(tmp_path):
    """resolve() returns the committed bytes even when the file on disk differs."""
    init(tmp_path / "ws")
    (tmp_path / "ws" / "train.py").write_text("changed on disk\n")
    data = next(f.data for f in resolve(open_repo(tmp_path / "ws"), "HEAD").files if f.path == "train.py")
    assert b"SCALAR_LR = 0.5" in data


def test_scaffold_writes_files_and_no_git(tmp_path):
    """scaffold (the executor's part of init) lays out the research files, sealab.toml and .sealab/ and
    leaves git to the agent side: no repository is made."""
    scaffold(tmp_path / "ws")
    assert sorted(p.name for p in (tmp_path / "ws").iterdir()) == sorted([*SCAFFOLD_FILES, *SCAFFOLD_EXTRA, "sealab.toml", ".sealab"])
    assert not (tmp_path / "ws" / ".git").exists()


def test_init_refuses_a_non_empty_directory(tmp_path):
    """init into a directory holding anything is a one-line WorkspaceError; nothing is written there."""
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "mine.txt").write_text("mine\n")
    with pytest.raises(WorkspaceError, match="not empty"):
        init(tmp_path / "ws")
    assert [p.name for p in (tmp_path / "ws").iterdir()] == ["mine.txt"]


def test_workspace_git_is_a_handle_opened_once(tmp_path):
    """Workspace.git is the git_source handle of the workspace's repository, the same object on every use."""
    ws = Workspace.open(init(tmp_path / "ws").root)
    assert ws.git is ws.git and ws.git.root == ws.root
    assert not hasattr(ws, "repo")
