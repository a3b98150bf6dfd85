"""Bad input gives one line on stderr and a meaningful non-zero exit, never a traceback."""

from __future__ import annotations

import git
import pytest

from executor.git_source import open_repo
from tests.conftest import sealab


def assert_one_line_error(proc, code, fragment):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_non_git_directory(tmp_path):
    """A directory that is not a git repository is refused."""
    assert_one_line_error(sealab("-C", str(tmp_path), "status"), 2, "is not a git repository")


def test_git_repository_without_sealab_toml(tmp_path):
    """A git repository that is not a workspace is refused."""
    git.Repo.init(tmp_path)
    assert_one_line_error(sealab("-C", str(tmp_path), "results"), 2, "not a sealab workspace")


def test_init_into_non_empty_directory(tmp_path):
    """init never overwrites an existing directory's content."""
    (tmp_path / "keep.txt").write_text("mine")
    assert_one_line_error(sealab("init", str(tmp_path)), 2, "not empty")
    assert (tmp_path / "keep.txt").read_text() == "mine"


@pytest.mark.docker
def test_unknown_commit(tmp_path, engine):
    """An unknown commit is named in the error."""
    sealab("init", str(tmp_path / "ws"), check=True)
    assert_one_line_error(sealab("exec", "deadbeef", cwd=tmp_path / "ws"), 2, "deadbeef: no such commit")


@pytest.mark.docker
def test_malformed_committed_config(tmp_path, engine):
    """A committed sealab.toml that is not valid TOML is refused before anything runs."""
    from agent.gitops import commit_file

    sealab("init", str(tmp_path / "ws"), check=True)
    commit_file(open_repo(tmp_path / "ws"), "sealab.toml", "[budget\ntrain_seconds = 1\n", "broken settings")
    assert_one_line_error(sealab("exec", cwd=tmp_path / "ws"), 2, "not valid TOML")
    assert_one_line_error(sealab("base", cwd=tmp_path / "ws"), 2, "not valid TOML")


def test_unreachable_daemon(tmp_path):
    """With no engine at DOCKER_HOST, exec says so and exits 3."""
    sealab("init", str(tmp_path / "ws"), check=True)
    proc = sealab("exec", cwd=tmp_path / "ws", env={"DOCKER_HOST": f"unix://{tmp_path}/no.sock"})
    assert_one_line_error(proc, 3, "Docker engine unavailable")


@pytest.mark.docker
def test_exec_without_base(tmp_path, engine):
    """exec before any base was built says to run `sealab base`."""
    sealab("init", str(tmp_path / "ws"), check=True)
    assert_one_line_error(sealab("exec", cwd=tmp_path / "ws"), 3, "run `sealab base` first")


@pytest.mark.docker
def test_run_refused_at_its_start_is_bad_input(tmp_path, engine):
    """`run --resume` of a tag that never ran, and `run` on a dirty tree, are bad input (exit 2), not a
    stopped run (exit 4); nothing is created."""
    sealab("init", str(tmp_path / "ws"), check=True)
    ws = tmp_path / "ws"
    head = git.Repo(ws).head.commit.hexsha
    assert_one_line_error(sealab("run", "--resume", "--tag", "nope", "--proposer", "offline", cwd=ws), 2,
                          "no run tagged 'nope' to resume")
    (ws / "train.py").write_text((ws / "train.py").read_text() + "\n# edited\n")
    assert_one_line_error(sealab("run", "--tag", "dirty", "--proposer", "offline", cwd=ws), 2,
                          "uncommitted changes")
    repo = git.Repo(ws)
    assert repo.head.commit.hexsha == head and not [b for b in repo.branches if b.name.startswith("sealab/")]


@pytest.mark.parametrize("args, fragment", [(["exec", "--bogus"], "No such option '--bogus'"),
                                            (["frob"], "No such command 'frob'"),
                                            (["run", "--workers", "two"], "Invalid value for '--workers'")])
def test_usage_errors_are_one_line(tmp_path, args, fragment):
    """click's usage errors too: one line naming the problem and the --help to read, exit 2."""
    proc = sealab(*args, cwd=tmp_path)
    assert_one_line_error(proc, 2, fragment)
    assert "--help" in proc.stderr and proc.stderr.startswith("sealab: error:")
