"""Input mutation: whatever happens to the work tree, the index, HEAD or the refs, an experiment runs
exactly its commit, and the change is reported (the record's drift, the loop's drift events, or a
refusal to move a ref)."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import threading

import git
import pytest

from bench.soak import mutate
from executor.image.docker_build import read_file
from tests.attacks.conftest import committed_train, constants, containers_of, started_output, wait_for
from tests.conftest import SEALAB, TINY_TRAIN, sealab_json


def _set(text: str, name: str, value) -> str:
    return re.sub(rf"^{name} = \S+", f"{name} = {value}", text, count=1, flags=re.M)


def assert_ran_its_commit(engine, root, record) -> None:
    """The harness's hyperparameters, the train.py blob and the image's own train.py are the commit's."""
    source = committed_train(root, record["commit"])
    ran = record["metrics"]["hyperparameters"]
    assert {k: v for k, v in constants(source).items() if k in ran} == ran
    assert read_file(engine.api, record["image_id"], "/workspace/train.py").decode() == source
    labels = engine.image_labels(record["image_id"])
    assert labels["org.opencontainers.image.revision"] == record["commit"]


def test_index_only_change_is_drift(tmp_path):
    """A file staged with other content while the work tree still matches the commit is drift too
    (`git diff SHA` alone compares only the work tree)."""
    from executor.drift import describe, summarize
    from executor.git_source import open_repo, working_diff

    repo = git.Repo.init(tmp_path)
    (tmp_path / "train.py").write_text("MARK = 0\n")
    repo.index.add(["train.py"])
    head = repo.index.commit("c").hexsha
    source = open_repo(tmp_path)
    staged = subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=tmp_path, input=b"MARK = 7\n",
                            capture_output=True, check=True).stdout.decode().strip()
    repo.git.update_index("--cacheinfo", f"100644,{staged},train.py")
    assert (tmp_path / "train.py").read_text() == "MARK = 0\n"
    assert describe(summarize(*working_diff(source, head))) == ["train.py: MARK = 0 -> 7"]
    (tmp_path / "train.py").write_text("MARK = 7\n")  # `git add` of an edit: reported once
    assert describe(summarize(*working_diff(source, head))) == ["train.py: MARK = 0 -> 7"]
    (tmp_path / "train.py").write_text("MARK = 9\n")  # work tree and index differ from each other
    assert describe(summarize(*working_diff(source, head))) == ["train.py: MARK = 0 -> 9", "train.py: MARK = 0 -> 7"]


@pytest.mark.docker
def test_mutations_before_and_during_exec(tiny_workspace, engine):
    """Edits before `sealab exec` (a formatter in place, an editor's atomic save, `git add`) are the
    record's drift; edits during the run (a linter, a checkout of another branch, `git add`, the
    branch moved by another process) change nothing that runs: the image's train.py and the
    harness's hyperparameters are the commit's."""
    root = tiny_workspace(gate=True)
    repo = git.Repo(root)
    head = repo.head.commit.hexsha
    source = (root / "train.py").read_text()
    # Before: a formatter rewrites train.py in place; an editor saves program.md atomically; git add.
    (root / "train.py").write_text(_set(source, "LR", "0.25"))
    tmp = root / ".program.md.swp"
    tmp.write_text((root / "program.md").read_text() + "\nedited by an editor\n")
    os.replace(tmp, root / "program.md")
    repo.git.add("train.py")
    other = repo.git.rev_parse("HEAD~1")  # a commit without the gate: another branch to check out
    repo.git.branch("other", other)
    proc = subprocess.Popen([SEALAB, "exec", "--json"], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    out = wait_for(lambda: started_output(root), what="the gated run to start")
    # During: a linter, a checkout of another branch, `git add`, the branch ref moved elsewhere.
    (root / "train.py").write_text(_set((root / "train.py").read_text(), "MARK", "41"))
    repo.git.checkout("-q", "-f", "other")
    (root / "train.py").write_text(_set((root / "train.py").read_text(), "BATCH_SIZE", "3"))
    repo.git.add("train.py")
    repo.git.update_ref("refs/heads/main", other)
    (out / "go").touch()
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    record = json.loads(stdout)
    assert record["status"] == "ok" and record["commit"] == head
    assert_ran_its_commit(engine, root, record)
    ran = record["metrics"]["hyperparameters"]
    assert (ran["LR"], ran["MARK"], ran["BATCH_SIZE"]) == (0.5, 0, 8)
    changes = {f"{d['path']}: {c}" for d in record["drift"] for c in d["changes"]}
    assert "train.py: LR = 0.5 -> 0.25" in changes and "program.md: + edited by an editor" in changes
    assert "drift" in stderr
    assert containers_of(engine, record["id"]) == []


@pytest.mark.docker
def test_exec_reports_drift_made_during_the_run(tiny_workspace):
    """`sealab exec` alone reports a work-tree edit made while its container ran."""
    root = tiny_workspace(gate=True)
    proc = subprocess.Popen([SEALAB, "exec", "--json"], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    out = wait_for(lambda: started_output(root), what="the gated run to start")
    (root / "train.py").write_text(_set((root / "train.py").read_text(), "MARK", "41"))
    (out / "go").touch()
    stdout, _ = proc.communicate(timeout=120)
    record = json.loads(stdout)
    assert any("MARK = 0 -> 41" in c for d in record["drift"] for c in d["changes"])


HOOK = """#!/bin/sh
# a pre-commit hook that "fixes" train.py: stages MARK = 666, and edits LR in the work tree only
touch "$(git rev-parse --git-dir)/hook-ran"
sed -i 's/^MARK = [0-9.]*/MARK = 666/' train.py && git add train.py
sed -i 's/^LR = [0-9.e-]*/LR = 0.125/' train.py
"""


@pytest.mark.docker
def test_pre_commit_hook(tiny_workspace, engine):
    """A pre-commit hook rewriting files: sealab's own commits (built from git objects) never run it;
    a user's commit made through it is what runs and is recorded, and what the hook left in the work
    tree only is drift."""
    from agent.gitops import make_commit
    from executor.git_source import open_repo

    root = tiny_workspace()
    repo = git.Repo(root)
    hook = root / ".git" / "hooks" / "pre-commit"
    hook.write_text(HOOK)
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    # How the loop commits a proposal (agent/gitops.make_commit): from git objects, no hook runs.
    proposal = make_commit(open_repo(root), repo.head.commit.hexsha, {"train.py": _set(TINY_TRAIN, "MARK", "7")},
                           "proposal")
    assert not (root / ".git" / "hook-ran").exists()
    assert constants((repo.commit(proposal).tree / "train.py").data_stream.read().decode())["MARK"] == 7
    # A user's commit through the hook (real `git commit`, hooks enabled).
    (root / "train.py").write_text(_set((root / "train.py").read_text(), "MARK", "5"))
    subprocess.run(["git", "commit", "-q", "-am", "user: MARK 5"], cwd=root, check=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "u", "GIT_AUTHOR_EMAIL": "u@x", "GIT_COMMITTER_NAME": "u",
                        "GIT_COMMITTER_EMAIL": "u@x"})
    assert (root / ".git" / "hook-ran").exists()
    head = repo.head.commit.hexsha
    lr = constants(committed_train(root, head))["LR"]
    record = sealab_json("exec", cwd=root)
    assert record["status"] == "ok" and record["commit"] == head and record["description"] == "user: MARK 5"
    assert_ran_its_commit(engine, root, record)
    assert record["metrics"]["hyperparameters"]["MARK"] == 666  # the commit as made, hook included
    assert record["metrics"]["hyperparameters"]["LR"] == lr != 0.125
    assert [c for d in record["drift"] for c in d["changes"]] == [f"LR = {lr} -> 0.125"]


MUTATIONS = ("linter", "formatter", "editor", "git_add", "index_only", "checkout")


@pytest.mark.docker
def test_mutations_during_a_loop(tiny_workspace, engine):
    """During `sealab run`, each of a linter, a formatter, an editor's save, `git add`, a staged-only
    change and a checkout of another branch is a drift event naming its value; nothing any of them (or a
    pre-commit hook) wrote runs or is committed; then another process moves the branch: the loop refuses to overwrite it (exit 4)."""
    from executor.ledger import Ledger

    root = tiny_workspace(policy=True)
    policy = root.parent / "ws-policy.toml"  # no plateau stop before the attacker is done
    policy.write_text(re.sub(r"^plateau = \d+", "plateau = 1000", policy.read_text(), count=1, flags=re.M))
    repo = git.Repo(root)
    hook = root / ".git" / "hooks" / "pre-commit"  # never run by the loop's commits either
    hook.write_text(HOOK)
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    db = root / ".sealab" / "ledger.db"
    proc = subprocess.Popen([SEALAB, "run", "--experiments", "60", "--tag", "m", "--proposer", "offline"], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    detected, failure = [], []

    def drift_with(token):
        return any(f"-> {token}" in c for e in Ledger(db).events("drift") for c in e["changes"])

    def running_here():
        ids = {r["id"] for r in Ledger(db).records()}
        return any(c["Labels"].get("sealab.experiment") in ids
                   for c in engine.api.containers(filters={"label": "sealab.experiment"}))

    def attacker():
        try:
            for i, kind in enumerate(MUTATIONS):
                token = 9000 + i
                wait_for(running_here, timeout=120, what="a running experiment")
                mutate(root, kind, token)
                wait_for(lambda: drift_with(token), timeout=120, what=f"the {kind} drift event")
                detected.append(kind)
            # a commit the run never made (moving the branch to the run's own best commit would change nothing)
            moved_to = repo.git.commit_tree("main^{tree}", "-p", "main", "-m", "another process's commit")
            # another process moves the branch while an experiment runs, so the loop is still there to see
            # it (a move after the process has exited is no one's to notice; on a fast machine 25
            # experiments ended before the attacker got here)
            wait_for(running_here, timeout=120, what="a running experiment")
            repo.git.update_ref("refs/heads/sealab/m", moved_to)
            detected.append(("moved", moved_to))
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            failure.append(exc)

    thread = threading.Thread(target=attacker, daemon=True)
    thread.start()
    thread.join(timeout=900)
    if thread.is_alive() or failure:  # the loop would run its 60 experiments for nothing
        proc.kill()
    stdout, stderr = proc.communicate(timeout=300)
    assert not failure, failure
    assert detected[:-1] == list(MUTATIONS)
    assert proc.returncode == 4 and "moved" in stderr, (proc.returncode, stderr[-2000:])
    assert repo.git.rev_parse("refs/heads/sealab/m") == detected[-1][1]  # left where the other process put it
    records = [r for r in Ledger(db).records() if r.get("run_tag") == "m"]
    assert len(records) >= 2 and all(r["status"] in ("ok", "crash") for r in records)
    for record in records:
        if record["status"] == "ok":
            assert_ran_its_commit(engine, root, record)
        assert containers_of(engine, record["id"]) == []
    assert len({r["id"] for r in records}) == len(records)
    for ref in [r.path for r in repo.refs if r.path.startswith("refs/sealab/")]:
        for commit in repo.iter_commits(ref):
            assert not re.search(r"^MARK = 90\d\d", (commit.tree / "train.py").data_stream.read().decode(), re.M)
    assert not (root / ".git" / "hook-ran").exists()
    assert sealab_json("verify", "--all", cwd=root)["mismatches"] == []
