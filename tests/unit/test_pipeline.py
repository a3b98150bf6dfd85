"""The pipelined loop's decision rule (agent/pipeline.py), fast: the real Loop, policy, executor and
ledger over tests/fakes.py's engine and backend, with a scripted proposer (a fixed sequence of
one-constant edits of the train.py it is shown) and a fake model whose quality is a function of which
edits train.py holds, so every run's metric is fixed by its tree."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import replace

import git

from agent import pipeline, run_state
from agent.create import init
from agent.gitops import set_constant
from agent.loop import Loop
from agent.proposal import Proposal, ProposalContext
from executor.ledger import Ledger
from executor import owner
from executor.run import recover
from executor.types import Status
from policies import load_policy
from tests.fakes import Run, fake_setup

GOOD = {("MATRIX_LR", "0.02"), ("EMBEDDING_LR", "0.06"), ("GRAD_CLIP", "0.5")}  # each raises the fake's quality


def quality(source: bytes) -> float:
    text = source.decode()
    held = {(name, value) for name, value in GOOD if re.search(rf"^{name} = {re.escape(value)}\b", text, re.M)}
    return 1.0 + 1.2 * len(held)


class Scripted:
    """Proposes the next (NAME, value) of its script as an edit of the train.py it is shown."""

    name = "scripted"

    def __init__(self, script: list[tuple[str, str]]) -> None:
        self.script, self.asked = list(script), []

    def propose(self, ctx: ProposalContext) -> Proposal:
        name, value = self.script[len(self.asked)]
        self.asked.append((name, value, ctx.experiment_index, tuple(ctx.siblings)))
        return Proposal({"train.py": set_constant(ctx.train_source, name, value)}, f"{name} -> {value}", "scripted")


def make_loop(tmp_path, monkeypatch, script, *, pipeline_on: bool, outcome=None):
    engine, backend = fake_setup(tmp_path, monkeypatch, quality=quality, **({"outcome": outcome} if outcome else {}))
    ws = init(tmp_path / "ws")
    ledger = Ledger(ws.ledger_path)
    ledger.set_base(engine.base)
    proposer = Scripted(script)
    loop = Loop(ws, engine, ledger, load_policy("default"), proposer, backend=backend, pipeline=pipeline_on)
    return loop, ws, ledger, proposer, backend


def run_script(tmp_path, monkeypatch, script, *, pipeline_on: bool):
    loop, ws, ledger, proposer, _ = make_loop(tmp_path / ("p" if pipeline_on else "s"), monkeypatch, script,
                                              pipeline_on=pipeline_on)
    state = loop.run(loop.start("t"), experiments=len(script), hours=None)
    records = [r for r in ledger.experiments("t") if r.decision is None or r.decision.value != "baseline"]
    return state, records, ledger, ws, proposer


SCRIPT = [("MATRIX_LR", "0.02"), ("EMBEDDING_LR", "0.06"), ("WEIGHT_DECAY", "0.1"), ("DEPTH", "4"),
          ("GRAD_CLIP", "0.5")]


def test_changes_that_merge_give_the_sequential_loops_trees_and_decisions(tmp_path, monkeypatch):
    """With edits that touch other lines, a proposal asked while the one before it ran (on its parent) and
    then carried onto it when it was kept runs the very tree the sequential loop runs: same trees, same
    metrics, same decisions, same best."""
    seq_state, seq, *_ = run_script(tmp_path, monkeypatch, SCRIPT, pipeline_on=False)
    pipe_state, pipe, ledger, ws, proposer = run_script(tmp_path, monkeypatch, SCRIPT, pipeline_on=True)
    assert [r.tree for r in pipe] == [r.tree for r in seq]
    assert [(r.value, r.decision.value) for r in pipe] == [(r.value, r.decision.value) for r in seq]
    assert [r.decision.value for r in pipe] == ["keep", "keep", "discard", "discard", "keep"]
    assert git.Repo(ws.root).tree(pipe_state.best_commit).hexsha == git.Repo(tmp_path / "s" / "ws").tree(
        seq_state.best_commit).hexsha
    # each proposal after the first was asked while the one before it ran: shown as a sibling
    assert [a[3] for a in proposer.asked[1:]] == [(f"{n} -> {v}",) for n, v in SCRIPT[:-1]]
    # the second was proposed on the start commit, kept experiment 1 meanwhile, so it was rebased onto it
    first, second, third = pipe[0], pipe[1], pipe[2]
    assert second.cycle["proposed_on"] == first.parent and second.cycle["rebased_from"] is not None
    assert second.parent == first.commit and second.cycle["best_at_decision"] == first.commit
    # the third was asked while the second ran (best: the first), and the second was kept: rebased again
    assert third.cycle["proposed_on"] == first.commit and third.parent == second.commit
    # the fourth was asked while the third ran, which was discarded: it runs as proposed
    assert pipe[3].cycle["proposed_on"] == second.commit and pipe[3].cycle["rebased_from"] is None
    rebased = [e for e in ledger.events("rebased")]
    assert [(e["proposed"], e["commit"]) for e in rebased] == [(r.cycle["rebased_from"], r.commit)
                                                               for r in (second, third)]
    assert all(r.cycle["pipelined"] for r in pipe) and not any(r.cycle["pipelined"] for r in seq)


def test_a_change_that_conflicts_with_one_kept_meanwhile_is_rejected_and_recorded(tmp_path, monkeypatch):
    """Two edits of the same line: the sequential loop runs the second on the first; the pipelined loop
    asked it on the first's parent, cannot merge it and records it `rejected` (pipeline.conflict) with
    its patch, counted as an experiment; the next proposal is asked from the new best."""
    script = [("MATRIX_LR", "0.02"), ("MATRIX_LR", "0.03"), ("GRAD_CLIP", "0.5")]
    state, records, ledger, ws, proposer = run_script(tmp_path, monkeypatch, script, pipeline_on=True)
    conflict = [e for e in ledger.events("rejected") if e["rule"] == "pipeline.conflict"]
    assert len(conflict) == 1 and "MATRIX_LR = 0.03" in conflict[0]["patch"]
    assert conflict[0]["proposed_on"] == records[0].parent and conflict[0]["best_commit"] == records[0].commit
    assert [(r.description, r.decision.value) for r in records] == [("MATRIX_LR -> 0.02", "keep"),
                                                                    ("GRAD_CLIP -> 0.5", "keep")]
    assert state.experiments == 3
    assert records[1].cycle["proposed_on"] == records[0].commit  # asked again, from the new best
    seq_state, seq, *_ = run_script(tmp_path, monkeypatch, script, pipeline_on=False)
    assert [r.description for r in seq] == [f"{n} -> {v}" for n, v in script]  # it ran the second on the first


def test_every_experiment_has_a_time_account(tmp_path, monkeypatch):
    """Each record, the baselines' too, carries its cycle: causes that add up to wall − training."""
    state, records, ledger, ws, _ = run_script(tmp_path, monkeypatch, SCRIPT[:3], pipeline_on=True)
    every = ledger.experiments("t")
    assert len(every) == 3 + load_policy("default").acceptance.noise_runs and all(r.cycle for r in every)
    for r in every:
        assert abs(sum(r.cycle["idle"].values()) + r.cycle["training_s"] - r.cycle["wall_s"]) < 0.01 or \
            r.cycle["idle"]["other"] == 0.0
        assert r.cycle["training_s"] == 0.01  # the fake harness's training_seconds


class Died(BaseException):
    """The process running the loop ends here, as with kill -9 (nothing below it finishes the record)."""


def test_a_death_while_the_next_is_prepared_then_resume_runs_it_once(tmp_path, monkeypatch):
    """The loop dies while experiment 1 runs and experiment 2 is already prepared: the resumed run takes
    up the prepared proposal (the proposer is not asked for it again) and runs it exactly once; the
    interrupted experiment is discarded, its record kept."""
    dying, release = threading.Event(), threading.Event()

    def outcome(source: bytes) -> Run:
        if dying.is_set():
            raise Died()
        return Run()

    loop, ws, ledger, proposer, backend = make_loop(tmp_path, monkeypatch, SCRIPT[:4], pipeline_on=True,
                                                    outcome=outcome)
    loop.run(loop.start("k"), experiments=0, hours=None)  # the baselines
    ledger.close()
    backend.release = release
    died: list[BaseException] = []

    def first_process() -> None:
        own = Ledger(ws.ledger_path)
        try:
            Loop(ws, loop.engine, own, loop.policy, proposer, backend=backend).run(
                run_state.load(own, "k"), experiments=3, hours=None)
        except BaseException as exc:
            died.append(exc)

    runner = threading.Thread(target=first_process, daemon=True)
    runner.start()
    watch = Ledger(ws.ledger_path)
    state = run_state.load(watch, "k")
    deadline = time.monotonic() + 20
    while pipeline.find(replace(loop._ctx, ledger=watch), state, 2) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    prepared = pipeline.find(replace(loop._ctx, ledger=watch), state, 2)
    assert prepared is not None and prepared.proposal.description == "EMBEDDING_LR -> 0.06"  # while 1 runs
    dying.set()
    release.set()
    runner.join(10)
    assert died and isinstance(died[0], Died)
    first = watch.experiments("k")[-1]
    assert first.status == Status.RUNNING and first.description == "MATRIX_LR -> 0.02"
    watch.db.execute("UPDATE experiments SET owner = ? WHERE id = ?", (owner.token().rsplit(":", 1)[0] + ":0", first.id))
    watch.db.commit()
    recover(watch, None)
    asked = len(proposer.asked)
    dying.clear()
    backend.release = None
    again = Loop(ws, loop.engine, watch, loop.policy, proposer, backend=backend)
    resumed = again.run(again.resume("k"), experiments=3, hours=None)
    records = [r for r in watch.experiments("k") if r.decision is None or r.decision.value != "baseline"]
    assert [(r.description, r.status.value) for r in records] == [
        ("MATRIX_LR -> 0.02", "interrupted"), ("EMBEDDING_LR -> 0.06", "ok"), ("WEIGHT_DECAY -> 0.1", "ok"),
        ("DEPTH -> 4", "ok")]  # (an interrupted experiment is discarded, not counted: three more ran)
    assert records[1].commit == prepared.commit  # run as prepared (experiment 1 was discarded: no rebase)
    assert len(proposer.asked) == asked + 2  # the prepared one was not asked again
    assert resumed.experiments == 3 and resumed.prepared == 4


def test_the_drift_guards_run_at_every_step_while_the_next_is_prepared(tmp_path, monkeypatch):
    """A linter writing train.py during every run: the pipelined loop reports each write as drift after
    that run and restores the tree; the proposal prepared meanwhile was built from git objects, so no
    commit holds the linter's value."""
    holder: dict = {}

    def outcome(source: bytes) -> Run:
        path = holder["ws"].root / "train.py"
        path.write_text(path.read_text().replace("SCALAR_LR = 0.5", "SCALAR_LR = 0.123"))
        return Run()

    loop, ws, ledger, proposer, backend = make_loop(tmp_path, monkeypatch, SCRIPT[:3], pipeline_on=True,
                                                    outcome=outcome)
    holder["ws"] = ws
    state = loop.run(loop.start("d"), experiments=3, hours=None)
    drift = ledger.events("drift")
    after = [d for d in drift if d["where"] in ("after run", "after baseline run")]
    runs = ledger.experiments("d")
    assert len(after) == len(runs) == 3 + load_policy("default").acceptance.noise_runs
    assert all(any("SCALAR_LR = 0.5 -> 0.123" in c for c in d["changes"]) for d in after)
    repo = git.Repo(ws.root)
    assert all(b"SCALAR_LR = 0.123" not in repo.commit(r.commit).tree["train.py"].data_stream.read() for r in runs)
    assert "SCALAR_LR = 0.5" in (ws.root / "train.py").read_text() and state.drift_events == len(drift)


def test_a_stop_with_a_proposal_prepared_keeps_it_for_the_resume(tmp_path, monkeypatch):
    """The run stops (here: its hours are up) while the next proposal is prepared: the loop waits for it,
    counts it and keeps it in the run's state; `--resume` runs it without asking the proposer again."""
    loop, ws, ledger, proposer, backend = make_loop(tmp_path, monkeypatch, SCRIPT[:2], pipeline_on=True)
    state = loop.run(loop.start("h"), experiments=None, hours=1e-9)
    assert "hours" in state.stop_reason and state.ahead is not None and len(proposer.asked) == 1
    assert state.prepared == 1 and state.experiments == 0
    saved = run_state.load(ledger, "h")
    assert saved.ahead == state.ahead  # in the saved state, for a resume in another process
    again = Loop(ws, loop.engine, ledger, loop.policy, proposer, backend=backend)
    resumed = again.run(again.resume("h"), experiments=1, hours=None)
    records = [r for r in ledger.experiments("h") if r.decision.value != "baseline"]
    assert [r.commit for r in records] == [state.ahead["commit"]] and len(proposer.asked) == 1
    assert resumed.ahead is None and resumed.prepared == 1 and resumed.experiments == 1
