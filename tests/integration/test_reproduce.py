"""`sealab reproduce`: rerun a recorded experiment from its identity and judge the numbers."""

from __future__ import annotations

import json

import pytest

from executor.git_source import open_repo
from tests.conftest import commit_train, sealab, sealab_json

pytestmark = pytest.mark.docker


def step_budget_workspace(make_workspace, steps=8):
    """A workspace whose committed spec trains a fixed number of steps (deterministic on a CPU)."""
    from agent.gitops import commit_file

    root = make_workspace(budget=60, grace=60)
    toml = (root / "sealab.toml").read_text().replace("grace_seconds = 60", f"grace_seconds = 60\nsteps = {steps}", 1)
    commit_file(open_repo(root), "sealab.toml", toml, f"train {steps} steps")
    return root


def test_step_budget_reproduces_exactly(make_workspace):
    """A step-budget CPU experiment rerun twice gives the recorded val_bpb to the last bit: `exact`."""
    root = step_budget_workspace(make_workspace)
    record = sealab_json("exec", cwd=root)
    assert record["status"] == "ok" and record["metrics"]["steps"] == 8, record["reason"]
    report = sealab_json("reproduce", record["id"], "--runs", "2", cwd=root)
    assert report["verdict"] == "exact" and report["values"] == [record["metrics"]["val_bpb"]] * 2
    reruns = [r for r in sealab_json("status", cwd=root) if r.get("reproduces") == record["id"]]
    assert [r["id"] for r in reruns] == report["reruns"] and {r["image_id"] for r in reruns} == {record["image_id"]}
    by_image = sealab_json("reproduce", record["image_id"], cwd=root)  # found by its image ID too
    assert by_image["experiment"] in (record["id"], *report["reruns"]) and by_image["verdict"] == "exact"
    assert report["note"] is None and report["cpus"]["reruns"] == [record["cpu"]] * 2
    # Each phase's output is named in the record, and the reruns made the same ones.
    assert report["diverged_in"] == [None, None] and report["parted_at_step"] == [None, None]
    losses = [r["metrics"]["losses"] for r in [record, *reruns]]
    assert len(losses[0]) == 8 and losses == [losses[0]] * 3  # each step's loss, bit for bit
    phases = {(r["metrics"]["eval_model"], r["metrics"]["eval_logits"]) for r in [record, *reruns]}
    assert len(phases) == 1 and all(d.startswith("sha256:") for d in phases.pop())


def test_the_record_names_its_cpu_and_another_cpu_is_judged_within_noise(make_workspace):
    """The record names the CPU model and x86-64 level of its run; reproduced on another CPU (the record says
    another one), bit-exactness is not claimed: the verdict is within noise, and both CPUs are named."""
    from executor.ledger import Ledger
    from tests.conftest import write_stored

    root = step_budget_workspace(make_workspace, steps=3)
    record = sealab_json("exec", cwd=root)
    assert record["status"] == "ok", record["reason"]
    here = next(" ".join(line.split(":", 1)[1].split()) for line in open("/proc/cpuinfo")
                if line.startswith("model name"))
    cpu = record["cpu"]
    assert cpu["model"] == here and cpu["isa"].startswith("x86-64") and cpu["threads"] == 2
    elsewhere = {**record["cpu"], "model": "AMD EPYC 7763 64-Core Processor", "isa": "x86-64-v3"}
    write_stored(Ledger(root / ".sealab" / "ledger.db"), {**record, "cpu": elsewhere})  # as a run elsewhere wrote it
    proc = sealab("reproduce", record["id"], cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    verdict, note = proc.stdout.strip().splitlines()
    assert verdict.startswith("within-noise: ") and f"(tolerance {1e-3 * record['metrics']['val_bpb']:g})" in verdict
    assert note.startswith("note: recorded on AMD EPYC 7763 64-Core Processor (x86-64-v3), rerun on "
                           f"{here} ({cpu['isa']})") and "bit-exact" in note


def test_changed_data_digest_is_refused(make_workspace, base_image):
    """With a base whose data digest differs from the record's, reproduce refuses and runs nothing."""
    from executor.ledger import Ledger
    from executor.types import BaseImage

    root = step_budget_workspace(make_workspace, steps=5)
    record = sealab_json("exec", cwd=root)
    ledger = Ledger(root / ".sealab" / "ledger.db")
    ledger.set_base(BaseImage(**{**base_image.to_dict(), "data_digest": "sha256:" + "0" * 64}))
    proc = sealab("reproduce", record["id"], cwd=root)
    assert proc.returncode == 4 and "data_digest" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert len(sealab_json("status", cwd=root)) == 1


NOISY = '''
import time
import torch
import torch.nn as nn


class Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(256))
        self.bias.data[0] = (time.time_ns() % 1000) / 100.0  # differs on every run

    def forward(self, idx):
        return self.bias.expand(*idx.shape, 256)


def train(h):
    h.step(0)
    return Noisy()
'''


def test_time_dependent_metric_diverges(make_workspace):
    """A train.py whose result depends on the clock is `diverged` at tolerance 0, and reproduce exits 1."""
    root = make_workspace()
    commit_train(root, NOISY, "noisy")
    record = sealab_json("exec", cwd=root)
    proc = sealab("reproduce", record["id"], "--tolerance", "0", "--json", cwd=root)
    report = json.loads(proc.stdout)
    assert proc.returncode == 1 and report["verdict"] == "diverged" and report["values"][0] != report["recorded"]
    assert sealab_json("reproduce", record["id"], "--tolerance", "100", cwd=root)["verdict"] == "within-noise"


def test_unknown_or_failed_experiment(make_workspace):
    """An unknown reference, or an experiment without a metric, is a one-line error."""
    root = make_workspace()
    commit_train(root, "def train(h):\n    raise SystemExit(2)\n", "crashes")
    crashed = sealab_json("exec", cwd=root, ok_codes=(1,))
    for ref, fragment in (("nope", "no experiment or image"), (crashed["id"], "no metric to reproduce")):
        proc = sealab("reproduce", ref, cwd=root)
        assert proc.returncode == 2 and fragment in proc.stderr and "Traceback" not in proc.stderr


def test_a_clock_budget_is_rerun_twice_and_judged_on_the_noise_it_measured(make_workspace):
    """A clock-budgeted record (2 s of training): reproduce reruns it twice by default, reports the steps and
    tokens of every run, and its verdict's reason names the numbers it used, σ from the reruns included."""
    root = make_workspace()
    record = sealab_json("exec", cwd=root)
    assert record["status"] == "ok" and not record["run_spec"].get("steps")
    proc = sealab("reproduce", record["id"], "--json", cwd=root)
    report = json.loads(proc.stdout)
    assert report["budget"] == "clock" and len(report["reruns"]) == 2 and len(report["values"]) == 2
    assert report["steps"]["recorded"] == record["metrics"]["steps"] and len(report["steps"]["reruns"]) == 2
    assert report["tokens"]["recorded"] == record["metrics"]["tokens"]
    assert report["verdict"] in ("within-noise", "other-speed", "diverged"), report
    assert proc.returncode == (1 if report["verdict"] == "diverged" else 0)
    reason = report["reason"]
    assert f"recorded {record['metrics']['val_bpb']:.6g} ({record['metrics']['steps']:g} steps" in reason
    assert "from the 2 reruns" in reason and "|mean − recorded|" in reason
    shown = sealab("reproduce", record["id"], "--runs", "1", cwd=root)  # one rerun, no baseline: no noise floor
    assert shown.returncode == 0 and shown.stdout.startswith("inconclusive:") and "why: " in shown.stdout
