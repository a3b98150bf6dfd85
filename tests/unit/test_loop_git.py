"""The research loop's git steps without an engine: the branch it starts on, the dirty-tree refusal, the
drift guard's restore and a moved branch, all through the git seam (real git and ledger, no Docker)."""

import git
import pytest

from agent import gitops
from agent.create import init
from agent.loop import Loop, LoopStopped
from executor import git_source
from executor.ledger import Ledger
from policies import load_policy


@pytest.fixture
def loop(tmp_path):
    ws = init(tmp_path / "ws")
    ledger = Ledger(ws.ledger_path)
    yield Loop(ws=ws, engine=None, ledger=ledger, policy=load_policy("default"), proposer=None)
    ledger.close()


def test_start_makes_and_checks_out_the_run_branch(loop):
    """start points sealab/<tag> at HEAD and checks it out, leaving main where it was; a second run
    with the same tag, or a dirty tree, is refused."""
    head = git_source.head_commit(loop.ws.git)
    state = loop.start("t")
    assert (state.branch, state.start_commit, state.best_commit) == ("sealab/t", head, head)
    assert git_source.current_branch(loop.ws.git) == "sealab/t"
    assert git_source.ref_value(loop.ws.git, "refs/heads/main") == head
    with pytest.raises(LoopStopped, match="exists"):
        loop.start("t")
    (loop.ws.root / "train.py").write_text("dirty\n")
    with pytest.raises(LoopStopped, match="uncommitted changes"):
        loop.start("u")


def test_drift_is_recorded_and_restored_from_git_objects(loop):
    """An edit of the work tree, or HEAD on another branch, is a drift event; the tree is restored to the
    branch's commit and the loop reads that commit's files, never the edited ones."""
    state = loop.start("t")
    committed = (loop.ws.root / "train.py").read_text()
    (loop.ws.root / "train.py").write_text(committed + "SCALAR_LR = 9  # a linter\n")
    assert loop._read(state.best_commit, "train.py") == committed and loop._read(state.best_commit, "nope") is None
    loop.check_drift(state, "test")
    assert (loop.ws.root / "train.py").read_text() == committed
    git.Repo(loop.ws.root).git.checkout("-q", "main")
    loop.check_drift(state, "test again")
    assert git_source.current_branch(loop.ws.git) == "sealab/t"
    events = loop.ledger.events("drift")
    assert [e["where"] for e in events] == ["test", "test again"] and state.drift_events == 2
    assert events[1]["changes"] == ["HEAD: HEAD is not sealab/t"]


def test_a_moved_branch_stops_the_run(loop):
    """Another process moving the run's branch is seen at the next check: LoopStopped naming it."""
    state = loop.start("t")
    other = gitops.make_commit(loop.ws.git, state.best_commit, {"train.py": "X = 1\n"}, "someone else")
    gitops.cas(loop.ws.git, "refs/heads/sealab/t", other, state.best_commit)
    with pytest.raises(LoopStopped, match="someone moved it"):
        loop._check_branch(state)
