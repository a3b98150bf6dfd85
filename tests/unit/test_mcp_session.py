"""sealab mcp's pieces without an engine: drafts per client on the best commit, a draft carried onto a
commit kept meanwhile (or refused when the two conflict), the program prompt, the run lock between
processes, one-line argument errors, and linked work trees opening the main work tree's workspace."""

from __future__ import annotations

import multiprocessing
import subprocess
import time

import pytest

from agent import begin, branch, committed
from agent.context import Context
from agent.create import init
from agent.mcp_server import _fold
from agent.proposal import Proposal
from agent.run_lock import Cancelled, held
from agent.session import Session, SessionError, default_tag
from executor.errors import WorkspaceError
from executor.ledger import Ledger
from executor.workspace import Workspace
from policies import load_policy


def _workspace(tmp_path):
    ws = init(tmp_path / "ws")
    return ws, Session(ws, "t", connect=lambda: None)


def _keep(ws: Workspace, session: Session, files: dict[str, str]) -> str:
    """Start run `t` and move its best onto a commit of `files`, as a kept experiment of another client would."""
    ctx = Context(ws, None, Ledger(ws.ledger_path), load_policy(ws.config().policy), None, detached=True)
    state = begin.start(ctx, session.tag)
    kept = committed.commit(ctx.repo, state.best_commit, Proposal(files, "kept elsewhere", "test"))
    branch.take(ctx, state, kept)
    state.best_commit = kept
    ctx.save(state)
    return kept


def test_each_client_has_its_own_draft_and_the_work_tree_is_never_written(tmp_path):
    ws, session = _workspace(tmp_path)
    before = (ws.root / "train.py").read_text()
    assert "edited train.py" in session.edit("a", old="SCALAR_LR = 0.5", new="SCALAR_LR = 0.4")
    assert "SCALAR_LR = 0.4" in session.read_file("a", "train.py")
    assert "SCALAR_LR = 0.5" in session.read_file("b", "/workspace/train.py")
    assert (ws.root / "train.py").read_text() == before
    with pytest.raises(SessionError, match="occurs|not found"):
        session.edit("a", old="SCALAR_LR = 0.5", new="x")
    with pytest.raises(SessionError, match="would not parse"):
        session.edit("a", content="def broken(:\n")
    with pytest.raises(SessionError, match="no such file"):
        session.read_file("a", "secrets.txt")
    with pytest.raises(SessionError, match="needs"):
        session.edit("a")
    session.discard_draft("a")
    assert session.read_file("a", "train.py") == before
    assert (ws.root / "train.py").read_text() == before


def test_a_draft_is_carried_onto_a_commit_kept_meanwhile_or_refused_when_they_conflict(tmp_path):
    ws, session = _workspace(tmp_path)
    source = session.read_file("x", "train.py")
    session.edit("same-line", old="SCALAR_LR = 0.5", new="SCALAR_LR = 0.6")
    other_line = next(line for line in source.splitlines() if line.startswith("DEPTH = "))
    session.edit("other-line", old=other_line, new=other_line + "  # changed")
    kept = _keep(ws, session, {"train.py": source.replace("SCALAR_LR = 0.5", "SCALAR_LR = 0.4")})
    assert session.best() == kept
    assert "SCALAR_LR = 0.4" in session.read_file("fresh", "train.py")  # a new client drafts on the new best
    assert "SCALAR_LR = 0.6" in session.read_file("same-line", "train.py")  # a changed draft is kept as it is

    ctx = Context(ws, None, Ledger(ws.ledger_path), load_policy(ws.config().policy), None, detached=True)
    state = begin.resume(ctx, "t")
    with pytest.raises(SessionError, match="conflicts"):
        session._proposal(ctx, state, session._drafts["same-line"], "clash")
    proposal, drafted = session._proposal(ctx, state, session._drafts["other-line"], "merge")
    assert drafted is not None and committed.read(ctx.repo, drafted, "train.py") != proposal.files["train.py"]
    merged = proposal.files["train.py"]
    assert "SCALAR_LR = 0.4" in merged and other_line + "  # changed" in merged


def test_the_program_prompt_is_the_workspace_s_or_the_shipped_one_with_the_repository_s(tmp_path):
    ws, session = _workspace(tmp_path)
    assert session.program() == (ws.root / "program-mcp.md").read_text()
    assert "no shell" in session.program()
    _keep(ws, session, {"program-mcp.md": "# ours\n"})
    assert session.program() == "# ours\n"


def test_default_tags_name_the_work_tree_as_a_branch_allows(tmp_path):
    assert default_tag(Workspace(tmp_path / "my repo (copy)")) == "mcp-my-repo-copy"
    assert default_tag(Workspace(tmp_path, tmp_path / "agent-2")) == "mcp-agent-2"


def _hold(state_dir, ready, release):
    with held(state_dir, "t"):
        ready.set()
        release.wait(30)


def test_the_run_lock_makes_a_second_process_wait_and_a_cancelled_wait_gives_up(tmp_path):
    ready, release = multiprocessing.Event(), multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold, args=(tmp_path, ready, release))
    holder.start()
    try:
        assert ready.wait(20)
        told = []
        started = time.monotonic()
        with pytest.raises(Cancelled):
            with held(tmp_path, "t", on_wait=lambda: told.append(1), cancelled=lambda: time.monotonic() - started > 0.5):
                pytest.fail("the lock was held by another process")
        assert told == [1]
        release.set()
        with held(tmp_path, "t", on_wait=lambda: told.append(2)):  # taken once the holder lets go
            pass
    finally:
        release.set()
        holder.join(10)
    with held(tmp_path, "other"):
        with held(tmp_path, "another"):  # runs do not wait for each other
            pass


def test_argument_errors_are_one_line():
    text = ("Error executing tool run_experiment: 1 validation error for run_experimentArguments\ndescription\n"
            "  Input should be a valid string [type=string_type, input_value=['x'], input_type=list]\n"
            "    For further information visit https://errors.pydantic.dev/2.14/v/string_type")
    assert _fold(text) == ("Error executing tool run_experiment: bad arguments: description: Input should be a "
                           "valid string")
    assert _fold("Error executing tool x: two\nlines") == "Error executing tool x: two lines"


def test_a_linked_work_tree_opens_the_main_work_tree_s_workspace(tmp_path):
    ws = init(tmp_path / "ws")
    subprocess.run(["git", "-C", str(ws.root), "worktree", "add", "-q", "-b", "two", str(tmp_path / "two")],
                   check=True)
    linked = Workspace.open(tmp_path / "two")
    assert linked.root == ws.root and linked.tree == tmp_path / "two" and linked.here == tmp_path / "two"
    assert linked.ledger_path == ws.ledger_path and linked.again() == linked
    assert linked.git.root == tmp_path / "two"  # its own HEAD
    assert Workspace.open(ws.root) == Workspace(ws.root)
    subprocess.run(["git", "-C", str(ws.root), "worktree", "add", "-q", "-b", "three", str(tmp_path / "three")],
                   check=True)
    import shutil

    shutil.rmtree(ws.state)
    with pytest.raises(WorkspaceError, match="linked work tree of"):
        Workspace.open(tmp_path / "three")
