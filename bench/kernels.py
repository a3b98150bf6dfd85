"""Do this CPU's kernels give the same bits every time? The scaffold's CPU kernels, recomputed in one process.

Issue 11 saw rare sealed reruns that parted from their record by float32 rounding (about one in 150 on an
Intel Xeon KVM guest). This benchmark asks the question below the container: it imports the harness (so the
same numeric pins apply: thread counts, MKL conditional numerical reproducibility, deterministic
algorithms), builds inputs of the scaffold GPT's shapes, computes each kernel once as a reference, then
recomputes every kernel for `--seconds` and counts results that differ from the reference by even one bit.
`--load N` runs N other processes (numpy matrix products) beside it, as a busy machine would.

`--processes N` asks the same of fresh processes instead (what a sealed rerun is): N processes, two at a
time, each train the scaffold's GPT for `--steps` steps on the embedded offline data (built once, on the
host's Python) and evaluate it briefly; each prints the sha256 of its weights and its val_bpb, and the
summary counts the distinct answers (goal: one).

Usage: PYTHONPATH=$PWD .venv/bin/python bench/kernels.py [--seconds 900] [--load 2]
       PYTHONPATH=$PWD .venv/bin/python bench/kernels.py --processes 200 [--steps 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = Path(tempfile.mkdtemp(prefix="sealab-kernels-")) / "run_spec.json"


def burn(deadline: float) -> None:
    """Keep one core busy with float work (and the caches and memory bandwidth) until `deadline`."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import numpy as np

    a = np.random.default_rng(0).standard_normal((384, 384))
    while time.time() < deadline:
        a = np.tanh(a @ a.T / 384.0)


def kernels(torch, F) -> dict:
    """The scaffold GPT's kernels (batch 8 x 256 bytes, width 128, 4 heads), on fixed random inputs."""
    torch.manual_seed(0)
    B, T, C, H = 8, 256, 128, 4
    M = B * T
    x128, x512 = torch.randn(M, C), torch.randn(M, 4 * C)
    w384, w512, w128, w256 = (torch.randn(*s) * 0.1 for s in ((3 * C, C), (4 * C, C), (C, 4 * C), (256, C)))
    g384 = torch.randn(M, 3 * C)
    q, k, v, go = (torch.randn(B, H, T, C // H) for _ in range(4))
    y, logits = torch.randint(0, 256, (M,)), torch.randn(M, 256)

    def grads(fn, *inputs, grad_out=None):
        leaves = [t.clone().requires_grad_() for t in inputs]
        out = fn(*leaves)
        out.backward(grad_out)
        return torch.cat([t.grad.flatten() for t in leaves])

    return {
        "mm qkv": lambda: x128 @ w384.t(), "mm fc": lambda: x128 @ w512.t(), "mm proj": lambda: x512 @ w128.t(),
        "mm head": lambda: x128 @ w256.t(), "mm grad W": lambda: g384.t() @ x128, "mm grad x": lambda: g384 @ w384,
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        "sdpa backward": lambda: grads(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=True),
                                       q, k, v, grad_out=go),
        "cross_entropy backward": lambda: grads(lambda a: F.cross_entropy(a, y), logits),
        "rms_norm backward": lambda: grads(lambda a: F.rms_norm(a, (C,)), x128, grad_out=x128),
        "sum": lambda: x512.sum(), "vector_norm": lambda: torch.linalg.vector_norm(x512),
    }


def child(data_dir: str, steps: int) -> None:
    """One fresh process: the scaffold GPT trained `steps` steps, then evaluated on 8 KiB; prints its answer."""
    import hashlib
    import importlib
    import random

    import prepare
    import torch

    prepare.EVAL_BYTES = 8192
    train_t, val_t, _ = prepare.load_data(data_dir)
    prepare.pin_numerics("cpu")
    random.seed(42)
    torch.manual_seed(42)
    h = prepare.Harness(train_t, "cpu", 60.0, 42, steps)
    h.start()
    model = importlib.import_module("train").train(h)
    weights = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
    print(weights[:16], repr(prepare.evaluate_bpb(model, val_t, "cpu")), flush=True)


def processes(args) -> None:
    """Run `args.processes` fresh processes, two at a time, and count their distinct answers."""
    import collections
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    data = SPEC.parent / "data"
    subprocess.run([sys.executable, str(ROOT / "executor" / "scaffold" / "prepare_data.py"), str(data)],
                   check=True, stdout=subprocess.DEVNULL)
    env = {**os.environ, "SEALAB_RUN_SPEC": str(SPEC)}
    cmd = [sys.executable, __file__, "--child", str(data), "--steps", str(args.steps)]
    started = time.monotonic()

    def one(i: int) -> str:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout.strip()
        print(f"process {i + 1:4d}  {out}", flush=True)
        return out

    with ThreadPoolExecutor(2) as pool:
        answers = collections.Counter(pool.map(one, range(args.processes)))
    print(f"\n{args.processes} processes, {len(answers)} distinct answers, {(time.monotonic() - started) / 60:.1f} min:")
    for answer, n in answers.most_common():
        print(f"  {n:4d}  {answer}")
    sys.exit(0 if len(answers) == 1 else 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=900)
    parser.add_argument("--load", type=int, default=os.cpu_count() or 2, help="busy processes beside it")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="the run spec's cpus")
    parser.add_argument("--processes", type=int, help="fresh processes to compare instead of kernel calls")
    parser.add_argument("--steps", type=int, default=3, help="training steps of each process (--processes)")
    parser.add_argument("--child", metavar="DATA", help=argparse.SUPPRESS)
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT / "executor" / "scaffold"))
    if args.child:
        child(args.child, args.steps)
        return
    SPEC.write_text(f'{{"resources": {{"cpus": {args.threads}}}}}')
    os.environ["SEALAB_RUN_SPEC"] = str(SPEC)
    if args.processes:
        processes(args)
        return
    import prepare  # noqa: E402  (sets the harness's numeric environment before torch loads)
    import torch
    import torch.nn.functional as F

    prepare.pin_numerics("cpu")
    ops = kernels(torch, F)
    ref = {name: fn().clone() for name, fn in ops.items()}
    calls = dict.fromkeys(ops, 0)
    differ = dict.fromkeys(ops, 0)
    deadline = time.time() + args.seconds
    burners = [multiprocessing.Process(target=burn, args=(deadline,), daemon=True) for _ in range(args.load)]
    for p in burners:
        p.start()
    while time.time() < deadline:
        for name, fn in ops.items():
            out = fn()
            calls[name] += 1
            if not torch.equal(out, ref[name]):
                differ[name] += 1
                d = (out - ref[name]).abs()
                print(f"DIFFERS {name} call {calls[name]}: {int((d > 0).sum())} elements, max {float(d.max()):.3g}",
                      flush=True)
    for p in burners:
        p.join(10)
    print(f"{prepare.cpu_identity()}, capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{args.load} busy processes, {args.seconds:g} s")
    print("| kernel | calls | differing |\n|---|---|---|")
    for name in ops:
        print(f"| {name} | {calls[name]} | {differ[name]} |")
    total = sum(calls.values())
    print(f"| all | {total} | {sum(differ.values())} |")
    sys.exit(1 if any(differ.values()) else 0)


if __name__ == "__main__":
    main()
