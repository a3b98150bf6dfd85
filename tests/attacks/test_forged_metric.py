"""A metric the agent cannot forge: `sealab exec` runs the train phase and the eval phase (`prepare.py
--logits`) as two hardened containers of one sealed image without the validation split, and the
orchestrator scores the logits (executor/evaluate.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import commit_train, sealab

pytestmark = pytest.mark.docker

# A bigram table trained by SGD: learns in well under a second of CPU, so a 2 s budget always beats 8 bits.
# PEEK > 0 makes it add PEEK to the logit of the byte that really comes next in its input.
BIGRAM = '''
import torch
import torch.nn.functional as F

PEEK = 0.0  # logit added to the next input byte (0: an honest, causal model)


class Bigram(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(256, 256))

    def forward(self, idx):
        out = self.table[idx].float()
        if PEEK:
            ahead = F.one_hot(idx[:, 1:], 256).float() * PEEK
            out = torch.cat([out[:, :-1] + ahead, out[:, -1:]], dim=1)
        return out


def train(h):
    model = Bigram().to(h.device)
    while h.time_left() > 0:  # plain SGD by hand: torch.optim's first use can take seconds to import
        x, y = h.get_batch(16, 64)
        loss = F.cross_entropy(model.table[x].view(-1, 256), y.view(-1))
        loss.backward()
        with torch.no_grad():
            model.table -= 20.0 * model.table.grad
        model.table.grad = None
        h.step(16 * 64, loss.detach())
    return model
'''

# A forger: it patches the harness in its own process so result.json claims val_bpb 0.01, and prints
# autoresearch's summary with that number.
FORGER = BIGRAM + '''

_honest_train = train


def train(h):
    import __main__ as harness
    real_write = harness.write_result

    def forged(out_dir, result):
        return real_write(out_dir, {**result, "val_bpb": 0.01})

    harness.write_result = forged
    harness.print_summary = lambda r: print("---\\nval_bpb: 0.010000")
    return _honest_train(h)
'''

PEEKER = BIGRAM.replace("PEEK = 0.0 ", "PEEK = 8.0 ")


def run_exec(root: Path) -> tuple[dict, str]:
    """`sealab exec --json` of HEAD (train phase, eval phase, scoring: the real path); record and train log."""
    proc = sealab("exec", "--json", cwd=root, timeout=600)
    assert proc.returncode in (0, 1, 4), proc.stderr
    record = json.loads(proc.stdout)
    log = (root / record["log_path"]).read_text(errors="replace")
    return record, log


def test_honest_model_is_scored_by_the_orchestrator(make_workspace, engine, base_image):
    """An honest model: the train phase saves model.pt with val_bpb null, the orchestrator's scorer gives
    its val_bpb, and the sealed image has no validation split."""
    root = make_workspace(budget=3)
    commit_train(root, BIGRAM, "a bigram")
    record, _ = run_exec(root)
    assert record["status"] == "ok", record["reason"]
    metrics = record["metrics"]
    assert metrics["metric_source"] == "evaluator" and metrics["eval_causal"] is True
    assert metrics["eval_probe_max_delta"] == 0.0 and 1.0 < metrics["val_bpb"] < 7.5
    result = json.loads((root / ".sealab" / "outputs" / record["id"] / "result.json").read_text())
    assert result["val_bpb"] is None and result["model_file"] == "model.pt"


def test_forged_result_and_summary_are_not_the_metric(make_workspace, engine, base_image):
    """A train.py that patches the harness (result.json and the summary say 0.01) is recorded with the
    scorer's value, never the forged one."""
    root = make_workspace(budget=3)
    commit_train(root, FORGER, "forge the metric")
    record, log = run_exec(root)
    assert "val_bpb: 0.010000" in log  # the forgery happened ...
    result = json.loads((root / ".sealab" / "outputs" / record["id"] / "result.json").read_text())
    assert result["val_bpb"] == 0.01
    assert record["status"] == "ok", record["reason"]  # ... and was not believed
    assert 1.0 < record["metrics"]["val_bpb"] < 7.5 and record["metrics"]["metric_source"] == "evaluator"


def test_read_ahead_model_is_rejected(make_workspace, engine, base_image):
    """A model that peeks at the next input byte would score far below an honest one; the probes reject it."""
    root = make_workspace(budget=3)
    commit_train(root, PEEKER, "peek at the next byte")
    record, _ = run_exec(root)
    assert record["status"] == "rejected" and "not causal" in record["reason"], record["reason"]
    assert record["metrics"]["val_bpb"] is None and record["metrics"]["eval_causal"] is False
