"""sealab init: the scaffolded workspace and its first commit (real git, no Docker)."""

import git

from executor import config
from executor.git_source import resolve
from executor.workspace import SCAFFOLD_FILES, Workspace, init


def test_init_scaffolds_a_committed_workspace(tmp_path):
    """init makes a git repository whose first commit holds the research files, with state excluded."""
    ws = init(tmp_path / "ws")
    facts = resolve(ws.repo, "HEAD")
    assert sorted(f.path for f in facts.files) == sorted([*SCAFFOLD_FILES, "sealab.toml"])
    assert facts.parent is None and facts.subject == "sealab: initial workspace"
    assert "/.sealab/" in (tmp_path / "ws" / ".git" / "info" / "exclude").read_text()
    assert (ws.state / "logs").is_dir() and (ws.state / "outputs").is_dir()
    assert ws.repo.untracked_files == [] and not ws.repo.is_dirty()
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
    data = next(f.data for f in resolve(git.Repo(tmp_path / "ws"), "HEAD").files if f.path == "train.py")
    assert b"SCALAR_LR = 0.5" in data
