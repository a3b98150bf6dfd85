"""`sealab run` against the real engine: keep/discard with CAS refs, the drift guard under a linter, resume."""

from __future__ import annotations

import ast
import os
import random
import re
import signal
import subprocess
import threading
import time

import git
import pytest

from tests.conftest import SEALAB, sealab, sealab_json
from tests.faults.kit import ledger_rows

pytestmark = pytest.mark.docker

FAST_POLICY = """
[acceptance]
min_delta = 0.0001
noise_runs = 2
z = 1.0
reason = "tests: a short baseline"
"""


def fast_workspace(make_workspace):
    """A workspace whose committed policy measures the baseline twice (the shipped default does 3)."""
    from agent.gitops import commit_file
    from executor.git_source import open_repo

    root = make_workspace(budget=2, grace=40)
    repo = open_repo(root)
    base = (root.parent.parent / "policy.toml")
    shipped = open(__import__("policies").policy_path("default")).read()
    base.write_text(re.sub(r"\[acceptance\][^\[]*", FAST_POLICY.strip() + "\n\n", shipped, count=1))
    toml = (root / "sealab.toml").read_text().replace('name = "default"', f'name = "{base}"')
    commit_file(repo, "sealab.toml", toml, "fast policy")
    return root


def constants(source: str) -> dict:
    tree = ast.parse(source)
    return {t.id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name) and t.id.isupper()}


def check_run_consistency(root, tag, engine=None):
    """Branch, refs and ledger agree; every experiment ran exactly its commit's train.py (and, given the
    engine, the train.py read back out of each image is the commit's)."""
    repo = git.Repo(root)
    records = [r for r in sealab_json("status", cwd=root) if r.get("run_tag") == tag]
    state_tip = repo.git.rev_parse(f"sealab/{tag}")
    kept = [r for r in records if r.get("decision") == "keep"]
    best = kept[-1]["commit"] if kept else records[0]["commit"]
    assert state_tip == best
    for r in records:
        if r.get("decision") == "discard":
            assert repo.git.rev_parse(f"refs/sealab/discarded/{r['id']}") == r["commit"]
        if r["status"] == "ok":
            committed = (repo.commit(r["commit"]).tree / "train.py").data_stream.read().decode()
            ran = r["metrics"]["hyperparameters"]
            assert {k: (list(v) if isinstance(v, tuple) else v) for k, v in constants(committed).items()
                    if k in ran} == ran
            if engine is not None:
                from executor.image.docker_build import read_file

                assert read_file(engine.api, r["image_id"], "/workspace/train.py").decode() == committed
    assert sealab_json("verify", "--all", cwd=root)["mismatches"] == []
    return records


def test_offline_run_keeps_discards_and_preserves(make_workspace):
    """An offline run measures the baseline, then keeps or discards each proposal with CAS refs."""
    root = fast_workspace(make_workspace)
    repo = git.Repo(root)
    main_before = repo.git.rev_parse("main")
    proc = sealab("run", "--experiments", "2", "--tag", "t1", "--proposer", "offline", cwd=root, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert repo.git.rev_parse("main") == main_before and repo.active_branch.name == "sealab/t1"
    records = check_run_consistency(root, "t1")
    assert [r.get("decision") for r in records[:2]] == ["baseline", "baseline"]
    assert len(records) == 4 and all(r.get("decision") in ("keep", "discard") for r in records[2:])
    assert "best" in proc.stdout and "sealab/t1" in proc.stdout
    # the held-out test split: the baseline runs and the keeps are scored on it by the real eval phase, the
    # discards not; a number of the same scale as val_bpb, on other windows (other text: a model trained for
    # a few steps on a busy machine scores it up to about a third apart, so "same scale" is a factor of two)
    for r in records:
        test = r.get("test")
        if r["decision"] in ("baseline", "keep"):
            assert isinstance(test["val_bpb"], float) and 0.5 < test["val_bpb"] / r["metrics"]["val_bpb"] < 2.0, test
            assert test["eval_causal"] is True and test["eval_windows"] != r["metrics"]["eval_windows"]
            assert (root / ".sealab" / "logs" / f"{r['id']}.test.log").is_file()
        else:
            assert test is None


def test_linter_during_run_never_reaches_a_commit(make_workspace, engine):
    """A process rewriting train.py's constants during a run: every run executes its commit, every
    mutation is a drift event, and no commit on the branch contains the linter's value."""
    root = fast_workspace(make_workspace)
    stop = threading.Event()
    mutations = []

    def linter():
        # `sealab run` refuses a dirty tree at its start, so the linter begins once the run's branch is
        # checked out (a slow start would otherwise meet the linter's first write)
        head = root / ".git" / "HEAD"
        while head.read_text().strip() != "ref: refs/heads/sealab/lint":
            if stop.wait(0.02):
                return
        rng = random.Random(7)
        while not stop.wait(rng.uniform(0.5, 3.0)):
            path = root / "train.py"
            text = path.read_text()
            new = re.sub(r"^SCALAR_LR = [0-9.e-]+", "SCALAR_LR = 0.123", text, count=1, flags=re.M)
            if new != text:
                path.write_text(new)
                mutations.append(time.monotonic())

    thread = threading.Thread(target=linter, daemon=True)
    thread.start()
    try:
        proc = sealab("run", "--experiments", "4", "--tag", "lint", "--proposer", "offline", cwd=root, timeout=900)
    finally:
        stop.set()
        thread.join()
    assert proc.returncode == 0, proc.stderr
    records = check_run_consistency(root, "lint", engine)
    repo = git.Repo(root)
    for commit in repo.iter_commits("sealab/lint"):
        assert "SCALAR_LR = 0.123" not in (commit.tree / "train.py").data_stream.read().decode()
    for r in records:
        assert r["metrics"].get("hyperparameters", {}).get("SCALAR_LR") != 0.123
    from executor.ledger import Ledger

    drift = Ledger(root / ".sealab" / "ledger.db").events("drift")
    linted = [d for d in drift if any("SCALAR_LR" in c and "0.123" in c for c in d["changes"])]
    # each write landed on a tree sealab had restored, so each one is one drift event (the last write
    # may race the process's exit)
    assert mutations and len(mutations) - 1 <= len(linted) <= len(mutations), (len(mutations), len(linted))
    assert all((root / d["patch_path"]).exists() for d in drift)
    assert any("SCALAR_LR" in c and "0.123" in c for d in drift for c in d["changes"])
    page = (root / sealab("report", cwd=root, check=True).stdout.split()[0]).read_text()
    drift_section = page[page.index('id="drift"'):page.index('id="review"')]
    assert drift_section.count("SCALAR_LR") >= len(drift)


def test_kill_9_then_resume(make_workspace, engine):
    """kill -9 during `sealab run`, then `--resume`: nothing lost or run twice; branch, refs, ledger agree."""
    root = fast_workspace(make_workspace)
    proc = subprocess.Popen([SEALAB, "run", "--experiments", "3", "--tag", "k", "--proposer", "offline"], cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # wait for the first proposal's experiment to be running
        time.sleep(0.3)
        if any(r["status"] == "running" and r.get("proposal") for r in ledger_rows(root)):  # a proposal's run
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = sealab("run", "--resume", "--tag", "k", "--experiments", "3", cwd=root, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    records = [r for r in sealab_json("status", cwd=root)]
    interrupted = [r for r in records if r["status"] == "interrupted"]
    assert len(interrupted) == 1
    repo = git.Repo(root)
    assert repo.git.rev_parse(f"refs/sealab/discarded/{interrupted[0]['id']}") == interrupted[0]["commit"]
    finished = [r for r in records if r["status"] != "interrupted" and r.get("decision") not in (None, "baseline")]
    commits = [r["commit"] for r in finished]
    assert len(commits) == len(set(commits))  # nothing run twice
    check_run_consistency(root, "k")


KEY = "sk-ant-loop-test-SECRET-0123456789"


def test_claude_proposer_in_the_loop(make_workspace, tmp_path):
    """Through the real SDK and our Messages-API server: an edit becomes a commit and an experiment after
    a retried 529; an edit to prepare.py and a raised time budget are parked, listed in the report and
    never built; a malformed tool call is recorded and the loop goes on; the API key appears nowhere in
    the ledger, the logs or the outputs."""
    from executor.ledger import Ledger
    from fake_messages_api import FakeMessagesAPI, error_reply, text_reply, tool_use_reply, usage

    root = fast_workspace(make_workspace)
    script = [
        error_reply(529),
        tool_use_reply([("edit_train_py", {"old": "SCALAR_LR = 0.5", "new": "SCALAR_LR = 0.6"})], usage(2000, 40)),
        tool_use_reply([("submit", {"description": "SCALAR_LR 0.5 -> 0.6"})], usage(2100, 10)),
        tool_use_reply([("edit_train_py", {"path": "prepare.py", "old": "EVAL_BYTES = 65536",
                                           "new": "EVAL_BYTES = 1024"})], usage(2000, 40)),
        tool_use_reply([("submit", {"description": "evaluate on fewer bytes"})], usage(2100, 10)),
        tool_use_reply([("edit_train_py", {"path": "sealab.toml", "old": "train_seconds = 2",
                                           "new": "train_seconds = 3600"})], usage(2000, 40)),
        tool_use_reply([("submit", {"description": "train for an hour"})], usage(2100, 10)),
        tool_use_reply([("run_command", {"cmd": "cat /etc/passwd"})], usage(2000, 40)),
        *[text_reply("I cannot do more.", usage(2100, 10))] * 7,  # never a valid submit: 8 turns, then it fails
    ]
    with FakeMessagesAPI(script) as api:
        proc = sealab("run", "--experiments", "4", "--tag", "c", "--proposer", "claude", cwd=root, timeout=600,
                      env={"ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": api.base_url})
        requests = list(api.requests)
    assert proc.returncode == 0, proc.stderr
    assert len(requests) == len(script)  # the 529 was retried by the SDK, every reply consumed
    ledger = Ledger(root / ".sealab" / "ledger.db")
    records = [r for r in ledger.records() if r.get("run_tag") == "c"]
    assert [r["decision"] for r in records][:2] == ["baseline", "baseline"] and len(records) == 3
    edited = records[2]
    assert edited["proposal"]["proposer"].startswith("claude:") and edited["proposal"]["usage"]["cost_usd"] > 0
    assert edited["metrics"]["hyperparameters"]["SCALAR_LR"] == 0.6
    harness_edit, budget_raise = ledger.events("parked")
    assert harness_edit["rule"] == "gates.protected_paths" and "prepare.py" in harness_edit["patch"]
    assert budget_raise["rule"] == "gates.raise_limits" and "budget_s" in budget_raise["reason"]
    assert ledger.run_state("c")["best_commit"] in (records[0]["commit"], edited["commit"])
    page = (root / sealab("report", cwd=root, check=True).stdout.split()[0]).read_text()
    review = page[page.index('id="review"'):]
    assert "evaluate on fewer bytes" in review and "train for an hour" in review
    [failed] = ledger.events("proposal_failed")
    assert "run_command" in failed["reason"] or "without calling a tool" in failed["reason"]
    repo = git.Repo(root)
    harness = (repo.commit("main").tree / "prepare.py").hexsha
    for ref in ["sealab/c", *[r.path for r in repo.refs if r.path.startswith("refs/sealab/")]]:
        for commit in repo.iter_commits(ref):
            assert (commit.tree / "prepare.py").hexsha == harness  # the harness edit was never built
    assert ledger.run_state("c")["cost_usd"] > 0
    for path in (root / ".sealab").rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in proc.stdout + proc.stderr


def test_drift_halt_stops_the_run(make_workspace):
    """With the policy's drift action `halt`, a work-tree change stops the run (exit 4) and is recorded."""
    from executor.ledger import Ledger

    root = fast_workspace(make_workspace)
    policy = root.parent.parent / "policy.toml"
    policy.write_text(policy.read_text().replace('action = "restore"', 'action = "halt"'))
    stop = threading.Event()

    def linter():
        stop.wait(3)  # once the run has started on a clean tree
        while not stop.wait(0.3):
            text = (root / "train.py").read_text()
            if "SCALAR_LR = 0.5" in text:
                (root / "train.py").write_text(text.replace("SCALAR_LR = 0.5", "SCALAR_LR = 0.123"))

    thread = threading.Thread(target=linter, daemon=True)
    thread.start()
    try:
        proc = sealab("run", "--experiments", "3", "--tag", "h", "--proposer", "offline", cwd=root, timeout=600)
    finally:
        stop.set()
        thread.join()
    assert proc.returncode == 4 and "halted per policy" in proc.stderr, proc.stderr
    drift = Ledger(root / ".sealab" / "ledger.db").events("drift")
    assert drift and drift[0]["action"] == "halt" and "SCALAR_LR = 0.5 -> 0.123" in drift[0]["changes"][0]
    assert "SCALAR_LR = 0.123" in (root / "train.py").read_text()  # left as found, for a human to look at


def test_state_directory_removed_during_a_run_is_named_and_its_records_rescued(make_workspace, engine):
    """`.sealab/` deleted while the first baseline runs: the loop stops with exit 5 naming the removed
    ledger (not a crash of the experiment), no container is left, and the records written until then
    are in the rescued copy, which works as a ledger: the experiment there is `infra_error`."""
    import shutil

    from executor.ledger import Ledger

    root = fast_workspace(make_workspace)
    state = root / ".sealab"
    proc = subprocess.Popen([SEALAB, "run", "--experiments", "2", "--tag", "gone", "--proposer", "offline"],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not any((state / "outputs").glob("*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    running = sorted({p.name.split(".")[0] for p in (state / "outputs").iterdir()})  # (<id>.eval-in: started ahead)
    shutil.rmtree(state)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 5, err
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and "is gone while sealab was using it" in lines[0] and "crash" not in err, err
    assert engine.api.containers(all=True, filters={"label": f"sealab.experiment={running[0]}"}) == []
    rescued = list(state.glob("ledger.rescued-*.db"))
    assert len(rescued) == 1 and str(rescued[0]) in lines[0]
    kept = Ledger(rescued[0])
    assert kept.run_state("gone") is not None
    [record] = [r for r in kept.records() if r["id"] == running[0]]
    assert record["status"] == "infra_error" and "removed or replaced during the run" in record["reason"]
