"""The trusted scorer (executor/evaluate.py): windows, probes, val_bpb from raw logits, and bad files."""

import hashlib
import math
import os

import numpy as np
import pytest

from executor import evaluate

if os.environ.get("CI", "").lower() == "true":
    import torch
else:
    torch = pytest.importorskip("torch")

T = 64
EVAL_BYTES = 64 * 64  # 64 real windows
PROBES = 8


def make_val(n: int = 64 * 65 + 2000, seed: int = 0) -> bytes:
    """Text-like bytes: a skewed distribution, so a bigram model has something to learn."""
    gen = torch.Generator().manual_seed(seed)
    return bytes((torch.randint(0, 40, (n,), generator=gen) * torch.randint(1, 4, (n,), generator=gen)).tolist())


def small(val: bytes, seed: int = 1, probes: int = PROBES) -> evaluate.EvalSet:
    return evaluate.build(val, seed, eval_bytes=EVAL_BYTES, seq_len=T, probes=probes)


def rows_of(es: evaluate.EvalSet) -> torch.Tensor:
    return torch.frombuffer(bytearray(es.windows), dtype=torch.uint8).view(es.rows, es.seq_len).long()


def logits_bytes(logits: torch.Tensor) -> bytes:
    return logits.detach().to(torch.float32).contiguous().numpy().astype("<f4").tobytes()


class Bigram(torch.nn.Module):
    """Causal: the logits at t depend on x[t] only."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.table = torch.randn(256, 256, generator=torch.Generator().manual_seed(seed)) * 3

    def forward(self, idx):
        return self.table[idx]


class ReadAhead(Bigram):
    """Not causal: it peeks at x[t + 1] and boosts that byte's logit."""

    def __init__(self, boost: float = 10.0, offset: float = 0.0):
        super().__init__()
        self.boost, self.offset = boost, offset

    def forward(self, idx):
        out = super().forward(idx) + self.offset
        nxt = torch.nn.functional.one_hot(idx[:, 1:], 256).float() * self.boost
        out[:, :-1] += nxt
        return out


def test_bigram_bpb_is_exact():
    """A causal bigram model's val_bpb equals the cross-entropy computed directly from val, window by window."""
    val = make_val()
    es = small(val)
    model = Bigram()
    got = evaluate.score(es, logits_bytes(model(rows_of(es))))
    logp = torch.log_softmax(model.table.double(), dim=-1)
    nats = 0.0
    for i in range(EVAL_BYTES // T):
        chunk = torch.tensor(list(val[i * (T + 1):(i + 1) * (T + 1)]))
        nats -= logp[chunk[:-1], chunk[1:]].sum().item()
    assert got.ok and got.causal and got.probe_max_delta == 0.0
    assert got.target_bytes == EVAL_BYTES
    assert got.val_bpb == pytest.approx(nats / (math.log(2) * EVAL_BYTES), rel=1e-9)


def test_the_score_names_the_logits_it_read():
    """The record keeps the sha256 of the scored logits (reproduce tells the eval phase from the train by it)."""
    es = small(make_val())
    data = logits_bytes(Bigram()(rows_of(es)))
    got = evaluate.score(es, data).to_metrics()
    assert got["eval_logits"] == "sha256:" + hashlib.sha256(data).hexdigest()
    other = bytearray(data)
    other[-1] ^= 1  # one bit of the last logit
    assert evaluate.score(es, bytes(other)).to_metrics()["eval_logits"] != got["eval_logits"]


def test_uniform_logits_score_eight_bits_whatever_their_offset():
    """Equal logits give exactly 8 bits per byte at any common offset: the scorer normalises, not the model."""
    es = small(make_val())
    for offset in (0.0, 37.5, -1000.0):
        got = evaluate.score(es, np.full((es.rows, T, 256), offset, dtype="<f4").tobytes())
        assert got.ok and got.val_bpb == pytest.approx(8.0, abs=1e-12)


def test_read_ahead_model_is_caught_by_the_probes():
    """A model that reads x[t+1] scores far better than it should, and the probes reject it with the facts."""
    es = small(make_val())
    honest = evaluate.score(es, logits_bytes(Bigram()(rows_of(es))))
    cheat = evaluate.score(es, logits_bytes(ReadAhead()(rows_of(es))))
    assert cheat.val_bpb < honest.val_bpb - 1.0
    assert cheat.causal is False and not cheat.ok
    assert cheat.probe_max_delta > 5 > cheat.probe_tolerance
    assert "not causal" in cheat.failure and "nats" in cheat.failure
    assert cheat.to_metrics()["val_bpb"] is None and cheat.to_metrics()["eval_causal"] is False


def test_a_constant_offset_buys_no_tolerance():
    """Adding 1000 to every logit (no change in probabilities) does not widen the tolerance: a small peek is caught."""
    es = small(make_val())
    cheat = evaluate.score(es, logits_bytes(ReadAhead(boost=0.5, offset=1000.0)(rows_of(es))))
    assert cheat.causal is False and cheat.probe_tolerance < 0.5


def test_bf16_rounding_of_the_probes_is_tolerated():
    """Probe rows rounded to bf16 while their originals stay float32 (batch noise on a GPU) still count as causal."""
    es = small(make_val())
    logits = Bigram()(rows_of(es))
    probe_rows = [p.row for p in es.probes]
    logits[probe_rows] = logits[probe_rows].to(torch.bfloat16).float()
    got = evaluate.score(es, logits_bytes(logits))
    assert got.ok and got.causal and 0 < got.probe_max_delta <= got.probe_tolerance


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_logits_fail_with_their_place(bad):
    """A NaN or infinite logit is a failure naming the row, position and byte; no val_bpb."""
    es = small(make_val())
    logits = torch.zeros(es.rows, T, 256)
    logits[3, 5, 7] = bad
    got = evaluate.score(es, logits_bytes(logits))
    assert not got.ok and got.val_bpb is None and got.causal is None
    assert "not finite" in got.failure and "row 3, position 5, byte 7" in got.failure


@pytest.mark.parametrize("delta", [-4, 4, -(64 * 256 * 4)])
def test_wrong_size_fails_with_expected_and_actual(delta):
    """A logits file of the wrong size (a truncated or extra value, a missing row) says both sizes."""
    es = small(make_val())
    data = bytes(es.logits_bytes + delta)
    got = evaluate.score(es, data)
    assert not got.ok and got.val_bpb is None
    assert str(es.logits_bytes) in got.failure and str(len(data)) in got.failure


def test_score_file_checks_size_and_presence(tmp_path):
    """score_file reports a missing file and a wrong size without reading it, and scores a good one."""
    es = small(make_val())
    missing = evaluate.score_file(es, tmp_path / "logits.bin")
    assert not missing.ok and "no logits.bin" in missing.failure
    (tmp_path / "logits.bin").write_bytes(b"\0" * 12)
    assert "12 bytes" in evaluate.score_file(es, tmp_path / "logits.bin").failure
    (tmp_path / "logits.bin").write_bytes(bytes(es.logits_bytes))
    assert evaluate.score_file(es, tmp_path / "logits.bin").val_bpb == pytest.approx(8.0)


def test_windows_are_deterministic_per_seed_and_bpb_is_not():
    """Same seed, same windows; another seed moves the probes and rows but not the real windows' val_bpb."""
    val = make_val()
    a, b, c = small(val, seed=5), small(val, seed=5), small(val, seed=6)
    assert a.windows == b.windows and a.probes == b.probes and a.real_rows == b.real_rows and a.digest == b.digest
    assert a.windows != c.windows and a.digest != c.digest
    model = Bigram()
    assert (evaluate.score(a, logits_bytes(model(rows_of(a)))).val_bpb
            == pytest.approx(evaluate.score(c, logits_bytes(model(rows_of(c)))).val_bpb, rel=1e-12))


def test_real_windows_do_not_overlap_and_last_targets_are_never_shown():
    """Real rows are val[i(T+1) : i(T+1)+T]; no row shows a last target; probe tails come from unscored bytes."""
    val = make_val()
    es = small(val)
    rows = [es.windows[r * T:(r + 1) * T] for r in range(es.rows)]
    span = (EVAL_BYTES // T) * (T + 1)
    for i, r in enumerate(es.real_rows):
        assert rows[r] == val[i * (T + 1):i * (T + 1) + T]
        assert es.targets[i * T:(i + 1) * T] == val[i * (T + 1) + 1:(i + 1) * (T + 1)]
    shown = {i * (T + 1) + t for i in range(EVAL_BYTES // T) for t in range(T)}  # val offsets in real inputs
    assert not shown & {i * (T + 1) + T for i in range(EVAL_BYTES // T)}
    for p in es.probes:
        assert rows[p.row][:p.cut + 1] == rows[p.original][:p.cut + 1]
        assert rows[p.row][p.cut + 1] != rows[p.original][p.cut + 1]
        assert rows[p.row][p.cut + 2:] in val[span:]


def test_probes_are_shuffled_among_the_real_rows():
    """Probe rows are spread through windows.bin, not appended at the end, and every row is used once."""
    es = evaluate.build(make_val(), 3, eval_bytes=EVAL_BYTES, seq_len=T, probes=16)
    probe_rows = sorted(p.row for p in es.probes)
    assert sorted([*es.real_rows, *probe_rows]) == list(range(es.rows))
    assert probe_rows != list(range(es.rows - 16, es.rows)) and list(es.real_rows) != list(range(64))


def test_default_geometry_matches_the_harness():
    """Defaults: 256 windows of 256 bytes (65536 scored targets) and 16 probes, as prepare.py's EVAL constants."""
    es = evaluate.build(make_val(256 * 257 + 256), 0)
    assert (len(es.real_rows), es.seq_len, len(es.probes), es.target_bytes) == (256, 256, 16, 65536)
    assert len(es.windows) == 272 * 256 and es.logits_bytes == 272 * 256 * 256 * 4


def test_short_val_is_refused_with_the_sizes():
    """A validation split too short for the windows and the probes' unscored bytes raises ValueError with sizes."""
    with pytest.raises(ValueError, match=r"100 bytes.*need 4224"):
        evaluate.build(bytes(100), 0, eval_bytes=EVAL_BYTES, seq_len=T)


def test_write_puts_exactly_the_windows_in_place(tmp_path):
    """write() creates in_dir/windows.bin holding exactly the rows the scorer expects logits for."""
    es = small(make_val())
    path = evaluate.write(es, tmp_path / "in")
    assert path == tmp_path / "in" / "windows.bin" and path.read_bytes() == es.windows


def test_scorer_imports_neither_torch_nor_train():
    """executor/evaluate.py runs in the orchestrator: it imports no torch, no train.py, no docker."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(evaluate.__file__).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {name.split(".")[0] for name in names} & {"torch", "train", "prepare", "docker"}
