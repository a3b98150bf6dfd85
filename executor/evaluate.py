"""The trusted scorer: validation windows in, the model's raw logits back, val_bpb computed here.

Runs in the orchestrator and never imports train.py (nor torch): the experiment's code only turns
windows into logits (`python3 prepare.py --logits /in/windows.bin /out/logits.bin`, in a fresh
container of the sealed image, which holds no validation data), and everything that gives those
logits a meaning happens in this module:

    build(val, seed) -> EvalSet      the windows: N real ones laid end to end without overlap, plus k
                                     causality probes, all rows shuffled (seeded)
    write(evalset, in_dir) -> Path   in_dir/windows.bin: (N + k) x T uint8, row-major, nothing else
    score(evalset, logits) -> Score  log_softmax here (float64), val_bpb over the real windows only,
                                     the probes' verdict, or a failure reason

Window i covers val[i*(T+1) : (i+1)*(T+1)]: its input is the first T bytes, its targets bytes 1..T.
The last target of each window is in no input at all, and the other targets are only in their own
window's input at later positions, which the probes guard. A probe copies a real window, keeps its
positions 0..c and replaces positions c+1..T-1 with bytes from the part of val that is never scored;
a causal model gives the probe and its original the same logits at positions 0..c.

logits.bin (what the eval phase writes): float32 little-endian, [N + k, T, 256], row-major, in the
order of windows.bin.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VOCAB_SIZE = 256  # byte-level tokens
EVAL_BYTES = 65536  # scored target bytes (as the in-process harness always scored)
EVAL_SEQ_LEN = 256  # T: input bytes per window
PROBES = 16  # k: causality probes per evaluation
WINDOWS_FILE = "windows.bin"
LOGITS_FILE = "logits.bin"
MODEL_FILE = "model.pt"  # the train phase's model, handed to the eval phase at /in
# The probe tolerance, in nats of log-probability: ATOL + RTOL * (largest |logit - mean logit| of the
# original at the compared positions). The eval harness runs every batch at one fixed shape, so a causal
# model's prefix logits are normally bit-identical between a probe and its original (CPU and GPU GEMMs
# reduce along the feature dimension, row by row; masked attention weights are exact zeros): the real
# GPT on a CPU gives a difference of exactly 0. What can still differ is a kernel that is not
# row-independent or not deterministic; in bf16 that is a rounding flip of a logit by one ulp, at most
# 2^-7 of its magnitude, which moves any log-probability by at most that much. RTOL = 2^-7 allows one
# such flip on the largest logit and no more: every nat allowed is a nat a read-ahead could hide in.
# The scale is taken after centring, so adding a constant to every logit (which changes no
# probability) cannot buy a looser tolerance. With logits capped at +-15 the tolerance is ~0.1-0.25
# nats at a probed position (see README, "What the metric guarantees").
PROBE_ATOL = 1e-4
PROBE_RTOL = 2.0 ** -7


@dataclass(frozen=True, slots=True)
class Probe:
    """One causality probe: row `row` equals row `original` at positions 0..cut and differs at cut + 1."""

    row: int
    original: int
    cut: int


@dataclass(frozen=True, slots=True, eq=False)
class EvalSet:
    """What the model is shown (`windows`) and what only the scorer knows (targets, probe rows)."""

    windows: bytes  # rows x seq_len uint8, row-major: exactly windows.bin
    targets: bytes  # real x seq_len uint8: the targets of the real windows, in real-window order
    real_rows: tuple[int, ...]  # row of real window i (its val offset is i * (seq_len + 1))
    probes: tuple[Probe, ...]
    seq_len: int
    seed: int

    @property
    def rows(self) -> int:
        return len(self.real_rows) + len(self.probes)

    @property
    def target_bytes(self) -> int:
        return len(self.real_rows) * self.seq_len

    @property
    def logits_bytes(self) -> int:
        """The exact size logits.bin must have."""
        return self.rows * self.seq_len * VOCAB_SIZE * 4

    @property
    def digest(self) -> str:
        """sha256 of windows.bin: names exactly what the model was shown."""
        return "sha256:" + hashlib.sha256(self.windows).hexdigest()


@dataclass(frozen=True, slots=True)
class Score:
    """The scorer's verdict on one logits file; `failure` is None when val_bpb can be believed."""

    val_bpb: float | None  # bits per byte over the real windows' targets; None when unusable
    target_bytes: int
    causal: bool | None  # None: the probes could not be compared (bad file)
    probe_max_delta: float | None  # worst |change| of a prefix log-probability, nats
    probe_tolerance: float | None  # what that probe allowed, nats
    failure: str | None = None
    windows_digest: str = ""
    logits_digest: str | None = None  # sha256 of the logits file scored: names the eval phase's output

    @property
    def ok(self) -> bool:
        return self.failure is None

    def to_metrics(self) -> dict[str, object]:
        """The record's view: val_bpb only when believable, the probe facts always."""
        return {
            "val_bpb": self.val_bpb if self.ok else None,
            "eval_target_bytes": self.target_bytes,
            "eval_causal": self.causal,
            "eval_probe_max_delta": self.probe_max_delta,
            "eval_probe_tolerance": self.probe_tolerance,
            "eval_windows": self.windows_digest,
            "eval_logits": self.logits_digest,
            "metric_source": "evaluator",
        }


TEST_BYTES = 2 * EVAL_BYTES  # the held-out test split: its windows (EVAL_BYTES of targets) and its probes' bytes


def split_test(val: bytes) -> tuple[bytes, bytes | None]:
    """(the part of the validation split every decision is scored on, the held-out test part: its last
    TEST_BYTES); no test part (None) when the split cannot spare them and still hold the validation
    windows and their probes (executor/heldout.py)."""
    need = EVAL_BYTES // EVAL_SEQ_LEN * (EVAL_SEQ_LEN + 1) + EVAL_SEQ_LEN
    if len(val) < need + TEST_BYTES:
        return val, None
    return val[:-TEST_BYTES], val[-TEST_BYTES:]


def build(val: bytes, seed: int, *, eval_bytes: int = EVAL_BYTES, seq_len: int = EVAL_SEQ_LEN,
          probes: int = PROBES) -> EvalSet:
    """The evaluation windows of `val` (the bytes of val.bin), with `probes` probes placed by `seed`.

    The real windows are always the same (the first eval_bytes // seq_len windows of val), so
    val_bpb does not depend on the seed; the seed only picks the probes and the row order.

    Raises:
        ValueError: val is too short for the windows plus the unscored bytes the probes draw from.
    """
    if seq_len < 2 or eval_bytes < seq_len:
        raise ValueError(f"seq_len {seq_len} and eval_bytes {eval_bytes}: need 2 <= seq_len <= eval_bytes")
    n_real = eval_bytes // seq_len
    span = n_real * (seq_len + 1)
    if len(val) < span + seq_len:
        raise ValueError(f"validation split has {len(val)} bytes; {n_real} windows of {seq_len + 1} bytes "
                         f"plus {seq_len} unscored bytes for the probes need {span + seq_len}")
    data = np.frombuffer(val, dtype=np.uint8)
    chunks = data[:span].reshape(n_real, seq_len + 1)
    rng = np.random.default_rng(seed)
    originals = rng.choice(n_real, size=probes, replace=probes > n_real)
    cuts = rng.integers(0, seq_len - 1, size=probes)  # keep 0..cut, replace cut+1..T-1 (at least one byte)
    probe_rows = []
    for i, c in zip(originals, cuts):
        row = chunks[i, :seq_len].copy()
        start = int(rng.integers(span, len(val) - seq_len + 1))  # unscored bytes only
        row[c + 1:] = data[start:start + seq_len - 1 - c]
        if row[c + 1] == chunks[i, c + 1]:
            row[c + 1] ^= 0x01  # the first replaced byte must differ, or position c proves nothing
        probe_rows.append(row)
    inputs = np.concatenate([chunks[:, :seq_len], np.array(probe_rows, dtype=np.uint8).reshape(-1, seq_len)])
    order = rng.permutation(len(inputs))  # shown row r is inputs[order[r]]
    row_of = np.empty_like(order)
    row_of[order] = np.arange(len(order))
    return EvalSet(
        windows=inputs[order].tobytes(), targets=chunks[:, 1:].tobytes(),
        real_rows=tuple(int(r) for r in row_of[:n_real]),
        probes=tuple(Probe(int(row_of[n_real + j]), int(row_of[i]), int(c))
                     for j, (i, c) in enumerate(zip(originals, cuts))),
        seq_len=seq_len, seed=seed,
    )


def write(evalset: EvalSet, in_dir: Path) -> Path:
    """Write windows.bin into `in_dir` (created if needed); returns its path."""
    in_dir.mkdir(parents=True, exist_ok=True)
    path = in_dir / WINDOWS_FILE
    path.write_bytes(evalset.windows)
    path.chmod(0o644)
    return path


def score(evalset: EvalSet, logits: bytes) -> Score:
    """Score the eval phase's logits.bin bytes against `evalset`. A bad file is a Score with a failure.

    The model's own normalisation is never used: log_softmax is taken here, in float64.
    """
    fail = _Failure(evalset)
    if len(logits) != evalset.logits_bytes:
        return fail(f"logits.bin has {len(logits)} bytes; expected {evalset.logits_bytes} "
                    f"(float32 [{evalset.rows}, {evalset.seq_len}, {VOCAB_SIZE}])")
    z = np.frombuffer(logits, dtype="<f4").reshape(evalset.rows, evalset.seq_len, VOCAB_SIZE)
    bad = ~np.isfinite(z)
    if bad.any():
        row, pos, cls = (int(v) for v in np.argwhere(bad)[0])
        return fail(f"logits are not finite ({int(bad.sum())} values; first: row {row}, position {pos}, "
                    f"byte {cls} is {float(z[row, pos, cls])})")
    delta, allowed, where = _worst_probe(evalset, z)
    targets = np.frombuffer(evalset.targets, dtype=np.uint8).reshape(-1, evalset.seq_len)
    nats = 0.0
    for i, row in enumerate(evalset.real_rows):
        logp = _log_softmax(z[row])
        nats -= float(logp[np.arange(evalset.seq_len), targets[i]].sum())
    bpb = nats / (math.log(2) * evalset.target_bytes)
    causal = delta <= allowed
    failure = None
    if not causal:
        probe = evalset.probes[where[0]]
        failure = (f"not causal: the log-probabilities at position {where[1]} changed by {delta:.4g} nats "
                   f"(allowed {allowed:.3g}) when the bytes after position {probe.cut} were replaced "
                   f"(rows {probe.original} and {probe.row} of windows.bin)")
    return Score(bpb, evalset.target_bytes, causal, delta, allowed, failure, evalset.digest,
                 "sha256:" + hashlib.sha256(logits).hexdigest())


def score_file(evalset: EvalSet, path: Path) -> Score:
    """score() on a logits.bin file, checking its size before reading it (the file is untrusted)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return _Failure(evalset)(f"the eval phase wrote no {path.name}")
    if size != evalset.logits_bytes:
        return _Failure(evalset)(f"{path.name} has {size} bytes; expected {evalset.logits_bytes}")
    return score(evalset, path.read_bytes())


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _worst_probe(evalset: EvalSet, z: np.ndarray) -> tuple[float, float, tuple[int, int]]:
    """(delta, allowed, (probe index, position)) of the probe closest to (or furthest over) its tolerance."""
    worst = (0.0, PROBE_ATOL, (0, 0))
    ratio = -1.0
    for j, probe in enumerate(evalset.probes):
        orig, copy = z[probe.original, :probe.cut + 1], z[probe.row, :probe.cut + 1]
        diff = np.abs(_log_softmax(orig) - _log_softmax(copy)).max(axis=-1)
        pos = int(diff.argmax())
        scale = float(np.abs(orig - orig.mean(axis=-1, keepdims=True)).max())
        allowed = PROBE_ATOL + PROBE_RTOL * scale
        if float(diff[pos]) / allowed > ratio:
            ratio, worst = float(diff[pos]) / allowed, (float(diff[pos]), allowed, (j, pos))
    return worst


class _Failure:
    """Builds the Score of an unusable logits file for one EvalSet."""

    def __init__(self, evalset: EvalSet) -> None:
        self.evalset = evalset

    def __call__(self, reason: str) -> Score:
        return Score(None, self.evalset.target_bytes, None, None, None, reason, self.evalset.digest)
