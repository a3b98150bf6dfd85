"""sealab harness: the protected entry point of every experiment. Do not edit; edit train.py.

Run as `python3 prepare.py` (or `python3 train.py`, which calls main() here). It
  1. reads the run spec ($SEALAB_RUN_SPEC) and the embedded dataset ($SEALAB_DATA), checking every
     data file against its manifest;
  2. seeds everything, imports train.py and calls train.train(h) with a Harness `h` that owns the
     data, the device and the training clock;
  3. evaluates the returned model with the fixed metric below, val_bpb (bits per byte on the
     validation split, lower is better), and writes $SEALAB_OUT/result.json plus a summary block.

Harness API (what train.py may use):
  h.device                       "cuda" or "cpu"
  h.vocab_size                   256 (tokens are raw bytes)
  h.eval_seq_len                 256, the context length of the evaluation
  h.budget_s, h.seed             from the run spec
  h.autocast()                   bf16 autocast context on cuda, a no-op on cpu
  h.get_batch(batch_size, seq_len) -> (x, y) int64 [B, T] on h.device, random train windows, y = x shifted by one
  h.time_left()                  seconds of the training budget left (clock starts when train() is called)
  h.progress()                   fraction of the budget used, in [0, 1]
  h.step(tokens, loss=None)      record one optimizer step; a non-finite loss stops the run as FAIL
train.train(h) returns a torch.nn.Module whose forward(idx [B, T]) gives logits [B, T, 256], T <= 256.
"""

from __future__ import annotations

import time

_T_START = time.perf_counter()  # total_seconds counts from here, before torch is imported

import contextlib
import hashlib
import importlib
import json
import math
import os
import random
import resource
import sys
import warnings

sys.dont_write_bytecode = True  # /workspace is read-only in the container; keep the host tree clean too
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")  # torch without numpy is fine here

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------
# Fixed constants (changing any of these changes what val_bpb means)
# ---------------------------------------------------------------------------

VOCAB_SIZE = 256  # byte-level tokens
EVAL_BYTES = 65536  # evaluated target bytes: the first EVAL_BYTES (+1 for targets) bytes of val.bin
EVAL_SEQ_LEN = 256  # non-overlapping evaluation windows of this length
EVAL_BATCH_SIZE = 32  # windows per evaluation forward pass
METRIC = "val_bpb"

# Dense bf16 peak FLOP/s per GPU, for mfu_percent; the first name contained in the CUDA device name
# wins, an unknown GPU counts as an H100. Values are the vendors' dense (non-sparse) numbers.
BF16_PEAK_FLOPS = {
    "GH200": 989e12,
    "H200": 989e12,
    "H100": 989e12,
    "H800": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
}
DEFAULT_PEAK_FLOPS = BF16_PEAK_FLOPS["H100"]


class DataError(Exception):
    """A data file does not match the manifest."""


class Diverged(Exception):
    """train.py reported a non-finite training loss."""


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------

def load_data(data_dir: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(train bytes, val bytes) as uint8 CPU tensors and the data digest; DataError on any mismatch."""
    with open(os.path.join(data_dir, "manifest.json"), "rb") as f:
        manifest_bytes = f.read()
    manifest = json.loads(manifest_bytes)
    tensors = []
    for split in ("train", "val"):
        entry = manifest[split]
        with open(os.path.join(data_dir, entry["file"]), "rb") as f:
            data = f.read()
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry["sha256"] or len(data) != entry["bytes"]:
            raise DataError(f"{entry['file']}: sha256 {digest} ({len(data)} bytes) does not match the "
                            f"manifest's {entry['sha256']} ({entry['bytes']} bytes)")
        tensors.append(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    return tensors[0], tensors[1], "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()


def git_blob_sha1(data: bytes) -> str:
    """The id `git hash-object` gives these bytes."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


# ---------------------------------------------------------------------------
# The harness object handed to train.train(h)
# ---------------------------------------------------------------------------

class Harness:
    def __init__(self, train_tokens: torch.Tensor, device: str, budget_s: float, seed: int,
                 steps: int | None = None):
        self.device = device
        self.budget_steps = steps  # a fixed number of steps instead of the clock: deterministic on a CPU
        self.vocab_size = VOCAB_SIZE
        self.eval_seq_len = EVAL_SEQ_LEN
        self.budget_s = float(budget_s)
        self.seed = int(seed)
        self.steps = 0
        self.tokens = 0
        self.last_loss: float | None = None
        self._train = train_tokens.to(device)
        self._gen = torch.Generator().manual_seed(self.seed)
        self._t0: float | None = None
        self._t1: float | None = None

    # --- clock -------------------------------------------------------------
    def start(self) -> None:
        self._t0 = time.perf_counter()

    def stop(self) -> None:
        self._t1 = time.perf_counter()

    def elapsed(self) -> float:
        if self._t0 is None:
            return 0.0
        return (self._t1 if self._t1 is not None else time.perf_counter()) - self._t0

    def time_left(self) -> float:
        """Seconds of training budget left (never negative); with a step budget, the share of
        budget_s that the remaining steps stand for, so it reaches 0 exactly at the last step."""
        if self.budget_steps:
            return self.budget_s * (1.0 - self.progress())
        return max(0.0, self.budget_s - self.elapsed())

    def progress(self) -> float:
        """Fraction of the training budget used, in [0, 1]."""
        if self.budget_steps:
            return min(1.0, self.steps / self.budget_steps)
        return min(1.0, self.elapsed() / self.budget_s) if self.budget_s > 0 else 1.0

    # --- training helpers --------------------------------------------------
    def autocast(self):
        """bf16 autocast on cuda, a no-op context on cpu."""
        if self.device == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def get_batch(self, batch_size: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows of the train split: x [B, T] and y = x shifted by one, int64 on h.device."""
        n = self._train.numel()
        if seq_len + 1 > n:
            raise ValueError(f"seq_len {seq_len} is longer than the train split ({n} bytes)")
        starts = torch.randint(0, n - seq_len, (batch_size,), generator=self._gen)
        idx = (starts[:, None] + torch.arange(seq_len + 1)).to(self.device)
        chunk = self._train[idx].long()
        return chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()

    def step(self, tokens: int, loss=None) -> None:
        """Record one optimizer step over `tokens` tokens; an optional non-finite loss raises Diverged."""
        self.steps += 1
        self.tokens += int(tokens)
        if loss is not None:
            value = float(loss.detach().float().item() if torch.is_tensor(loss) else loss)
            self.last_loss = value
            if not math.isfinite(value):
                raise Diverged(f"training loss is {value} at step {self.steps}")


# ---------------------------------------------------------------------------
# Evaluation (fixed; owned by the harness)
# ---------------------------------------------------------------------------

@torch.no_grad()
def evaluate_bpb(model: torch.nn.Module, val_tokens: torch.Tensor, device: str,
                 batch_size: int = EVAL_BATCH_SIZE) -> float:
    """Bits per byte of `model` on the first EVAL_BYTES target bytes of `val_tokens`.

    Non-overlapping EVAL_SEQ_LEN windows; sum of cross-entropy (nats) / (ln 2 * target bytes).
    """
    n_windows = min(EVAL_BYTES, val_tokens.numel() - 1) // EVAL_SEQ_LEN
    if n_windows < 1:
        raise ValueError(f"validation split too small: {val_tokens.numel()} bytes")
    n = n_windows * EVAL_SEQ_LEN
    x_all = val_tokens[:n].long().view(n_windows, EVAL_SEQ_LEN)
    y_all = val_tokens[1:n + 1].long().view(n_windows, EVAL_SEQ_LEN)
    autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device == "cuda"
                else contextlib.nullcontext())
    was_training = model.training
    model.eval()
    total_nats = 0.0
    try:
        for i in range(0, n_windows, batch_size):
            x = x_all[i:i + batch_size].to(device)
            y = y_all[i:i + batch_size].to(device)
            with autocast:
                logits = model(x)
            if tuple(logits.shape) != (x.shape[0], EVAL_SEQ_LEN, VOCAB_SIZE):
                raise ValueError(f"model returned logits of shape {tuple(logits.shape)}, "
                                 f"expected {(x.shape[0], EVAL_SEQ_LEN, VOCAB_SIZE)}")
            nats = F.cross_entropy(logits.float().reshape(-1, VOCAB_SIZE), y.reshape(-1), reduction="none")
            total_nats += nats.double().sum().item()
    finally:
        model.train(was_training)
    return total_nats / (math.log(2) * n)


# ---------------------------------------------------------------------------
# Result
# ---------------------------------------------------------------------------

def collect_hyperparameters(module) -> dict:
    """Every UPPER_CASE module-level constant of `module` that is a plain JSON value."""
    out = {}
    for name, value in sorted(vars(module).items()):
        if not name.isupper() or name.startswith("_"):
            continue
        if isinstance(value, (bool, int, float, str, tuple, list)):
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError):
                continue
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / (1024 * 1024)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def peak_flops(device_name: str) -> float:
    for key, flops in BF16_PEAK_FLOPS.items():
        if key in device_name:
            return flops
    return DEFAULT_PEAK_FLOPS


def write_result(out_dir: str, result: dict) -> str:
    """Write result.json atomically (tmp + os.replace); returns its path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "result.json")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, sort_keys=True, allow_nan=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def finite_or_none(x):
    return x if x is not None and math.isfinite(x) else None


def print_summary(r: dict) -> None:
    def fmt(value, spec):
        return "n/a" if value is None else format(value, spec)
    print("---")
    print(f"val_bpb: {fmt(r['val_bpb'], '.6f')}")
    print(f"training_seconds: {r['training_seconds']:.1f}")
    print(f"total_seconds: {r['total_seconds']:.1f}")
    print(f"peak_memory_mb: {r['peak_memory_mb']:.1f}")
    print(f"mfu_percent: {fmt(r['mfu_percent'], '.2f')}")
    print(f"total_tokens_M: {r['tokens'] / 1e6:.3f}")
    print(f"num_steps: {r['steps']}")
    print(f"num_params_M: {r['num_params'] / 1e6:.3f}")
    print(f"device: {r['device']}")


def fail(message: str) -> None:
    print("FAIL", flush=True)
    print(f"error: {message}", flush=True)


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------

def main() -> None:
    """Run one experiment; exits 1 on FAIL, lets exceptions from train.py propagate."""
    spec_path = os.environ.get("SEALAB_RUN_SPEC", "/sealab/run_spec.json")
    data_dir = os.environ.get("SEALAB_DATA", "/opt/sealab/data")
    out_dir = os.environ.get("SEALAB_OUT", "/out")
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    budget_s = float(spec["budget_s"])
    budget_steps = int(spec["steps"]) if spec.get("steps") else None
    seed = int(spec.get("seed", 42))
    cpus = float(spec.get("resources", {}).get("cpus", 1) or 1)

    try:
        train_tokens, val_tokens, data_digest = load_data(data_dir)
    except DataError as exc:
        fail(str(exc))
        sys.exit(1)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(max(1, int(cpus)))
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    random.seed(seed)
    torch.manual_seed(seed)
    if device == "cuda":
        torch.cuda.manual_seed_all(seed)
        torch.cuda.reset_peak_memory_stats()

    train_mod = importlib.import_module("train")
    with open(train_mod.__file__, "rb") as f:
        train_blob = git_blob_sha1(f.read())

    h = Harness(train_tokens, device, budget_s, seed, budget_steps)
    h.start()
    error = None
    try:
        model = train_mod.train(h)
    except Diverged as exc:
        model, error = None, str(exc)
    if device == "cuda":
        torch.cuda.synchronize()
    h.stop()
    training_seconds = h.elapsed()

    val_bpb = None
    num_params = 0
    if model is not None:
        num_params = sum(p.numel() for p in model.parameters())
        val_bpb = evaluate_bpb(model, val_tokens, device)
        if not math.isfinite(val_bpb):
            error = f"val_bpb is {val_bpb}"

    tokens_per_s = h.tokens / training_seconds if training_seconds > 0 else 0.0
    mfu = None
    if device == "cuda":
        mfu = 100 * 6 * num_params * tokens_per_s / peak_flops(torch.cuda.get_device_name())
    result = {
        "metric": METRIC,
        "val_bpb": finite_or_none(val_bpb),
        "peak_memory_mb": peak_memory_mb(device),
        "training_seconds": training_seconds,
        "total_seconds": time.perf_counter() - _T_START,
        "steps": h.steps,
        "tokens": h.tokens,
        "tokens_per_s": tokens_per_s,
        "num_params": num_params,
        "device": device,
        "seed": seed,
        "budget_s": budget_s,
        "data_digest": data_digest,
        "train_py_blob": train_blob,
        "hyperparameters": collect_hyperparameters(train_mod),
        "mfu_percent": finite_or_none(mfu),
    }
    if error is not None:
        result["error"] = error
        result["val_bpb"] = None
        write_result(out_dir, result)
        fail(error)
        sys.exit(1)
    write_result(out_dir, result)
    print_summary(result)


if __name__ == "__main__":
    main()
