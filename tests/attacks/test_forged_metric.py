"""A metric the agent cannot forge: the two phases on the real engine, scored by executor/evaluate.py.

Each test seals the commit with the validation split whited out, runs the train phase and the eval phase
(`prepare.py --logits`) as hardened containers of that one image, and scores the logits in this process.
"""

from __future__ import annotations

import json
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import git
import pytest

from executor import config, evaluate, git_source, valdata
from executor.backends import DockerBackend, Finished, Job
from executor.seal import seal
from tests.conftest import commit_train

pytestmark = pytest.mark.docker

EVAL_COMMAND = ("python3", "prepare.py", "--logits", "/in/windows.bin", "/out/logits.bin")

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


@dataclass
class TwoPhase:
    train: Finished
    result: dict
    eval: Finished
    score: evaluate.Score


def run_two_phases(root: Path, engine, base_image, tmp_path: Path) -> TwoPhase:
    """Seal HEAD with hide_val, train, evaluate, score: what run.py does once the eval phase is wired."""
    facts = git_source.resolve(git.Repo(root), "HEAD")
    toml = next(f.data for f in facts.files if f.path == config.CONFIG_NAME)
    spec = config.parse(toml, config.CONFIG_NAME).run_spec
    sealed = seal(facts, base_image, spec, hide_val=True)
    backend, eid = DockerBackend(engine), "forge" + secrets.token_hex(3)
    env = {"SEALAB_EXPERIMENT": eid, "OMP_NUM_THREADS": "1"}
    try:
        trained = backend.run(Job(eid, "train", sealed, spec, tmp_path / "train-out", env=env))
        assert trained.exit_code == 0, trained.output.decode()[-2000:]
        result = json.loads((tmp_path / "train-out" / "result.json").read_text())
        val = valdata.load_val(engine, base_image.image_id, base_image.data_digest, tmp_path / "cache")
        evalset = evaluate.build(val, spec.seed)
        in_dir = tmp_path / "in"
        evaluate.write(evalset, in_dir)
        shutil.copy(tmp_path / "train-out" / "model.pt", in_dir / "model.pt")
        evaluated = backend.run(Job(eid, "eval", sealed, spec, tmp_path / "eval-out", env=env,
                                    command=EVAL_COMMAND, in_dir=in_dir))
        assert evaluated.exit_code == 0, evaluated.output.decode()[-2000:]
        score = evaluate.score_file(evalset, tmp_path / "eval-out" / "logits.bin")
    finally:
        backend.cleanup(eid)
        engine.remove_image(sealed.image_id)
    return TwoPhase(trained, result, evaluated, score)


def test_honest_model_is_scored_by_the_orchestrator(make_workspace, engine, base_image, tmp_path):
    """An honest model: the train phase saves model.pt with val_bpb null, the scorer gives its val_bpb."""
    root = make_workspace(budget=3)
    commit_train(root, BIGRAM, "a bigram")
    run = run_two_phases(root, engine, base_image, tmp_path)
    assert run.result["val_bpb"] is None and run.result["model_file"] == "model.pt"
    assert run.score.ok and run.score.causal and run.score.probe_max_delta == 0.0, run.score.failure
    assert 1.0 < run.score.val_bpb < 7.5


def test_forged_result_and_summary_are_not_the_metric(make_workspace, engine, base_image, tmp_path):
    """A train.py that patches the harness (result.json and summary say 0.01) still gets the scorer's value."""
    root = make_workspace(budget=3)
    commit_train(root, FORGER, "forge the metric")
    run = run_two_phases(root, engine, base_image, tmp_path)
    assert run.result["val_bpb"] == 0.01 and b"val_bpb: 0.010000" in run.train.output
    assert run.score.ok and 1.0 < run.score.val_bpb < 7.5


def test_read_ahead_model_is_rejected(make_workspace, engine, base_image, tmp_path):
    """A model that peeks at the next input byte would score far below an honest one; the probes reject it."""
    root = make_workspace(budget=3)
    commit_train(root, PEEKER, "peek at the next byte")
    run = run_two_phases(root, engine, base_image, tmp_path)
    assert not run.score.ok and run.score.causal is False and "not causal" in run.score.failure
    assert run.score.val_bpb < 2.0 and run.score.to_metrics()["val_bpb"] is None
