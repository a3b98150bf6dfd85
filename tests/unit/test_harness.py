"""The experiment scaffold on the host: prepare_data.py, the prepare.py harness and the default train.py.

Harness runs are real subprocesses (`python prepare.py` in a temporary workspace) with a ~2 s budget.
"""

import hashlib
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if os.environ.get("CI", "").lower() == "true":
    import torch  # noqa: F401  (CI installs the dev extra: a missing torch must fail, not skip)
else:
    torch = pytest.importorskip("torch")

SCAFFOLD = Path(__file__).resolve().parents[2] / "executor" / "scaffold"
BUDGET_S = 2.0
RESULT_KEYS = {
    "metric", "val_bpb", "peak_memory_mb", "training_seconds", "total_seconds", "steps", "tokens",
    "tokens_per_s", "num_params", "device", "seed", "budget_s", "data_digest", "train_py_blob",
    "hyperparameters", "mfu_percent", "cpu", "gpu", "losses",
}
SUMMARY_KEYS = ["val_bpb", "training_seconds", "total_seconds", "peak_memory_mb", "mfu_percent",
                "total_tokens_M", "num_steps", "num_params_M", "tokens_per_s", "device"]

NAN_TRAIN = '''
import torch
LR = 0.1
class NaNModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
    def forward(self, idx):
        return torch.full((*idx.shape, 256), float("nan")) + self.w
def train(h):
    return NaNModel()
'''

NAN_LOSS_TRAIN = '''
def train(h):
    h.step(1, float("nan"))
    raise AssertionError("the harness should have stopped the run")
'''

RAISING_TRAIN = '''
def train(h):
    raise RuntimeError("boom from train.py")
'''


# ---------------------------------------------------------------------------
# helpers and fixtures
# ---------------------------------------------------------------------------

def load_module(name: str):
    """Import a scaffold file without leaving prepare.py's process-wide settings behind."""
    saved = sys.dont_write_bytecode
    try:
        spec = importlib.util.spec_from_file_location(f"sealab_scaffold_{name}", SCAFFOLD / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.dont_write_bytecode = saved


@pytest.fixture(scope="module")
def prepare():
    return load_module("prepare")


@pytest.fixture(scope="module")
def prepare_data():
    return load_module("prepare_data")


def make_data(outdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCAFFOLD / "prepare_data.py"), str(outdir)],
                          capture_output=True, text=True, timeout=60, check=True)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data")
    make_data(out)
    return out


class Run:
    def __init__(self, proc: subprocess.CompletedProcess, workspace: Path, out: Path):
        self.proc, self.workspace, self.out = proc, workspace, out
        path = out / "result.json"
        self.result = json.loads(path.read_text()) if path.exists() else None


def run_harness(tmp: Path, data: Path, train_src: str | None = None, entry: str = "prepare.py",
                budget_s: float = BUDGET_S, seed: int = 42, steps: int | None = None,
                hash_seed: str | None = None) -> Run:
    ws, out = tmp / "workspace", tmp / "out"
    ws.mkdir()
    out.mkdir()
    shutil.copy(SCAFFOLD / "prepare.py", ws / "prepare.py")
    if train_src is None:
        shutil.copy(SCAFFOLD / "train.py", ws / "train.py")
    else:
        (ws / "train.py").write_text(train_src)
    spec = {"budget_s": budget_s, "grace_s": 60.0, "seed": seed, "metric": "val_bpb", "direction": "minimize",
            "resources": {"memory_mb": 4096, "cpus": 2.0, "pids": 256, "gpus": 0, "tmp_mb": 512, "home_mb": 64}}
    if steps is not None:
        spec["steps"] = steps
    (tmp / "run_spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "SEALAB_RUN_SPEC": str(tmp / "run_spec.json"), "SEALAB_DATA": str(data),
           "SEALAB_OUT": str(out)}
    if hash_seed is not None:
        env["PYTHONHASHSEED"] = hash_seed
    proc = subprocess.run([sys.executable, entry], cwd=ws, env=env, capture_output=True, text=True, timeout=120)
    return Run(proc, ws, out)


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, data_dir) -> Run:
    # a step budget: on a loaded CPU a 2 s clock can leave the default GPT one step or none
    run = run_harness(tmp_path_factory.mktemp("real"), data_dir, steps=8)
    assert run.proc.returncode == 0, run.proc.stdout + run.proc.stderr
    return run


def summary(stdout: str) -> dict[str, str]:
    lines = stdout.splitlines()
    start = len(lines) - 1 - lines[::-1].index("---")
    return dict(line.split(": ", 1) for line in lines[start + 1:])


# ---------------------------------------------------------------------------
# prepare_data.py
# ---------------------------------------------------------------------------

def test_prepare_data_is_deterministic(data_dir, tmp_path):
    """Building the dataset twice gives byte-identical manifest and data files."""
    make_data(tmp_path)
    for name in ("manifest.json", "train.bin", "val.bin"):
        assert (tmp_path / name).read_bytes() == (data_dir / name).read_bytes(), name


def test_manifest_is_canonical_and_matches_data(data_dir):
    """manifest.json is canonical JSON whose file list, sizes and hashes describe train.bin and val.bin."""
    raw = (data_dir / "manifest.json").read_bytes()
    manifest = json.loads(raw)
    assert raw == json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    assert manifest["source"] == "cpython-stdlib" and manifest["python"] == ".".join(map(str, sys.version_info[:3]))
    paths = [f["path"] for f in manifest["files"]]
    assert paths == sorted(paths) and len(paths) > 100
    for split in ("train", "val"):
        data = (data_dir / f"{split}.bin").read_bytes()
        assert manifest[split] == {"file": f"{split}.bin", "bytes": len(data),
                                   "sha256": hashlib.sha256(data).hexdigest()}
        assert sum(f["bytes"] + 1 for f in manifest["files"] if f["split"] == split) == len(data)


def test_prepare_data_splits_by_path_hash(data_dir):
    """Each file lands in val exactly when the first 8 hex digits of sha256(path) are 0 mod 10."""
    files = json.loads((data_dir / "manifest.json").read_bytes())["files"]
    for f in files:
        expected = "val" if int(hashlib.sha256(f["path"].encode()).hexdigest()[:8], 16) % 10 == 0 else "train"
        assert f["split"] == expected, f["path"]
    assert {f["split"] for f in files} == {"train", "val"}


def test_prepare_data_selects_and_concatenates_sources(prepare_data, tmp_path):
    """Only .py files outside test/, tests/, site-packages/, dist-packages/, idlelib/idle_test/ count, newline-ended."""
    root = tmp_path / "lib"
    wanted = {"a.py": b"A = 1", "pkg/b.py": b"B = 2\n", "pkg/sub/c.py": b"", "idlelib/x.py": b"x"}
    unwanted = {"test/t.py": b"T", "pkg/tests/t.py": b"T", "site-packages/s.py": b"S", "dist-packages/d.py": b"D",
                "idlelib/idle_test/i.py": b"I", "notes.txt": b"N", "pkg/d.pyc": b"C"}
    for rel, data in {**wanted, **unwanted}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    manifest = prepare_data.build(str(tmp_path / "out"), root=str(root))
    assert [f["path"] for f in manifest["files"]] == sorted(wanted)
    for split in ("train", "val"):
        expected = b"".join(wanted[f["path"]] + b"\n" for f in manifest["files"] if f["split"] == split)
        assert (tmp_path / "out" / f"{split}.bin").read_bytes() == expected


# ---------------------------------------------------------------------------
# prepare.py as a library
# ---------------------------------------------------------------------------

class Uniform(torch.nn.Module):
    def forward(self, idx):
        return torch.zeros(*idx.shape, 256)


class Unigram(torch.nn.Module):
    def __init__(self, log_probs):
        super().__init__()
        self.log_probs = log_probs

    def forward(self, idx):
        return self.log_probs.expand(*idx.shape, 256)


def test_uniform_model_scores_eight_bits_per_byte(prepare, data_dir):
    """A model with uniform logits over 256 bytes scores exactly log2(256) = 8 bits per byte."""
    _, val, _ = prepare.load_data(str(data_dir))
    assert prepare.evaluate_bpb(Uniform(), val, "cpu") == pytest.approx(8.0, abs=1e-5)


def test_eval_is_cross_entropy_over_the_fixed_target_bytes(prepare):
    """evaluate_bpb equals the unigram cross-entropy of the first EVAL_BYTES target bytes and ignores later bytes."""
    gen = torch.Generator().manual_seed(0)
    val = torch.randint(0, 40, (prepare.EVAL_BYTES + 1,), generator=gen).to(torch.uint8)
    val[0] = 255  # an input-only byte: it must not be scored
    probs = torch.rand(256, generator=gen) + 0.01
    probs /= probs.sum()
    targets = val[1:].long()
    expected = -torch.log2(probs.double())[targets].sum().item() / targets.numel()
    model = Unigram(torch.log(probs))
    assert prepare.evaluate_bpb(model, val, "cpu") == pytest.approx(expected, rel=1e-6)
    longer = torch.cat([val, torch.full((5000,), 7, dtype=torch.uint8)])
    assert prepare.evaluate_bpb(model, longer, "cpu") == pytest.approx(expected, rel=1e-6)


def test_get_batch_returns_shifted_train_windows(prepare):
    """get_batch gives int64 [B, T] windows of the train split with y = x shifted by one, reproducible per seed."""
    data = (torch.arange(1000) % 251).to(torch.uint8)  # byte i is i % 251, so a window is known by its start
    x, y = prepare.Harness(data, "cpu", 1.0, 7).get_batch(4, 16)
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (4, 16)
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row_x, row_y in zip(x, y):
        start = int(row_x[0])
        assert torch.equal(row_x, torch.arange(start, start + 16) % 251)
        assert int(row_y[-1]) == (int(row_x[-1]) + 1) % 251
    x2, _ = prepare.Harness(data, "cpu", 1.0, 7).get_batch(4, 16)
    x3, _ = prepare.Harness(data, "cpu", 1.0, 8).get_batch(4, 16)
    assert torch.equal(x, x2) and not torch.equal(x, x3)


def test_clock_and_step_accounting(prepare):
    """time_left/progress follow the budget from start(), step() counts steps and tokens, a NaN loss raises Diverged."""
    h = prepare.Harness(torch.zeros(100, dtype=torch.uint8), "cpu", 0.05, 0)
    assert h.progress() == 0.0 and h.time_left() == pytest.approx(0.05)
    h.start()
    h.step(10, 2.5)
    h.step(10, torch.tensor(2.0))
    assert (h.steps, h.tokens, h.last_loss) == (2, 20, 2.0)
    seen = [h.progress()]
    while seen[-1] < 1.0:
        seen.append(h.progress())
    assert seen == sorted(seen) and 0.0 < seen[0] < 1.0 and seen[-1] == 1.0
    assert h.time_left() == 0.0 and h.progress() == 1.0
    with pytest.raises(prepare.Diverged):
        h.step(10, float("inf"))


def test_a_step_budget_keeps_each_steps_loss_and_a_clock_budget_none(prepare):
    """With a step budget every step's loss is kept (so a rerun can say at which step it parted), up to
    LOSS_TRACE_MAX; a clock budget keeps none (its step count is not part of its identity)."""
    data = torch.zeros(100, dtype=torch.uint8)
    stepped = prepare.Harness(data, "cpu", 1.0, 0, prepare.LOSS_TRACE_MAX + 5)
    for i in range(prepare.LOSS_TRACE_MAX + 5):
        stepped.step(1, torch.tensor(1.0 + i / 4096))
    assert len(stepped.losses) == prepare.LOSS_TRACE_MAX and stepped.losses[:2] == [1.0, 1.0 + 1 / 4096]
    clocked = prepare.Harness(data, "cpu", 1.0, 0)
    clocked.step(1, 2.5)
    assert clocked.losses == []


def test_hyperparameters_are_upper_case_json_constants(prepare):
    """collect_hyperparameters keeps UPPER_CASE plain values (tuples as lists) and drops everything else."""
    module = type(sys)("fake_train")
    module.__dict__.update(DEPTH=4, LR=0.5, BETAS=(0.9, 0.95), NAME="x", FLAG=True, LAYERS=[1, 2],
                           lower=1, _PRIVATE=2, NAN_VALUE=math.nan, OBJ=object(), MATH=math, Mixed_Case=3)
    assert prepare.collect_hyperparameters(module) == {
        "DEPTH": 4, "LR": 0.5, "BETAS": [0.9, 0.95], "NAME": "x", "FLAG": True, "LAYERS": [1, 2]}


# ---------------------------------------------------------------------------
# prepare.py as the entry point, with the real train.py
# ---------------------------------------------------------------------------

def test_result_json_has_the_contract_keys_and_types(real_run, data_dir):
    """A successful run writes exactly one result.json with every contract key, well typed and consistent."""
    r = real_run.result
    assert sorted(p.name for p in real_run.out.iterdir()) == ["result.json"]
    assert set(r) == RESULT_KEYS
    assert r["metric"] == "val_bpb" and r["device"] == "cpu" and r["seed"] == 42 and r["budget_s"] == BUDGET_S
    assert r["mfu_percent"] is None and r["gpu"] is None  # no GPU here: no MFU, no device facts
    for key in ("val_bpb", "peak_memory_mb", "training_seconds", "total_seconds", "tokens_per_s"):
        assert isinstance(r[key], float) and r[key] > 0, key
    assert isinstance(r["steps"], int) and r["steps"] > 0
    hp = r["hyperparameters"]
    assert r["tokens"] == r["steps"] * hp["BATCH_SIZE"] * hp["SEQ_LEN"]
    assert r["steps"] == 8 and 0 < r["training_seconds"] < r["total_seconds"]  # a step budget (real_run)
    assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["training_seconds"])
    assert r["data_digest"] == "sha256:" + hashlib.sha256((data_dir / "manifest.json").read_bytes()).hexdigest()
    assert r["num_params"] > 10_000
    assert len(r["losses"]) == r["steps"] and all(isinstance(v, float) and v > 0 for v in r["losses"])


def test_real_train_py_beats_uniform(real_run):
    """The default train.py learns something in 8 steps: val_bpb drops below 8 (uniform)."""
    assert real_run.result["val_bpb"] < 8.0


def test_summary_block_matches_result(real_run):
    """stdout ends with autoresearch's '---' summary block whose values agree with result.json."""
    s = summary(real_run.proc.stdout)
    r = real_run.result
    assert list(s) == SUMMARY_KEYS
    assert s["val_bpb"] == f"{r['val_bpb']:.6f}"
    assert int(s["num_steps"]) == r["steps"] and s["device"] == "cpu" and s["mfu_percent"] == "n/a"
    assert float(s["total_tokens_M"]) == pytest.approx(r["tokens"] / 1e6, abs=1e-3)
    assert float(s["tokens_per_s"]) == pytest.approx(r["tokens_per_s"], abs=1)
    assert "FAIL" not in real_run.proc.stdout


def test_train_py_blob_is_the_git_blob_id(real_run):
    """train_py_blob is the git blob id of the train.py bytes that ran (as `git hash-object` computes it)."""
    data = (real_run.workspace / "train.py").read_bytes()
    assert real_run.result["train_py_blob"] == hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    if shutil.which("git"):
        out = subprocess.run(["git", "hash-object", str(real_run.workspace / "train.py")],
                             capture_output=True, text=True, check=True).stdout.strip()
        assert real_run.result["train_py_blob"] == out


def test_hyperparameters_include_scalar_lr(real_run):
    """result.json records train.py's constants, among them SCALAR_LR = 0.5 and ADAM_BETAS as a list."""
    hp = real_run.result["hyperparameters"]
    assert hp["SCALAR_LR"] == 0.5
    assert isinstance(hp["ADAM_BETAS"], list)
    for name in ("DEPTH", "N_HEAD", "SEQ_LEN", "BATCH_SIZE", "EMBEDDING_LR", "MATRIX_LR", "WEIGHT_DECAY",
                 "WARMUP_RATIO", "WARMDOWN_RATIO"):
        assert name in hp, name
    assert "N_EMBD" in hp or "MODEL_DIM" in hp
    assert not (real_run.workspace / "__pycache__").exists()


def test_train_py_entry_point_runs_the_edited_file(tmp_path, data_dir):
    """`python train.py` runs the harness too, and an edit of SCALAR_LR shows in the hyperparameters and blob."""
    src = (SCAFFOLD / "train.py").read_text()
    assert src.count("\nSCALAR_LR = 0.5 ") == 1
    edited = src.replace("\nSCALAR_LR = 0.5 ", "\nSCALAR_LR = 0.3 ")
    run = run_harness(tmp_path, data_dir, train_src=edited, entry="train.py", budget_s=0.5)
    assert run.proc.returncode == 0, run.proc.stdout + run.proc.stderr
    assert run.result["hyperparameters"]["SCALAR_LR"] == 0.3
    data = edited.encode()
    assert run.result["train_py_blob"] == hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    assert summary(run.proc.stdout)["val_bpb"] == f"{run.result['val_bpb']:.6f}"


# ---------------------------------------------------------------------------
# failures
# ---------------------------------------------------------------------------

def test_nan_model_fails_with_null_val_bpb(tmp_path, data_dir):
    """A model whose logits are NaN makes the run print FAIL, exit 1 and record val_bpb null with an error."""
    run = run_harness(tmp_path, data_dir, train_src=NAN_TRAIN)
    assert run.proc.returncode == 1
    assert "FAIL" in run.proc.stdout.splitlines()
    assert run.result["val_bpb"] is None and "nan" in run.result["error"]
    assert run.result["hyperparameters"] == {"LR": 0.1}


def test_nan_training_loss_fails_the_run(tmp_path, data_dir):
    """A NaN loss passed to h.step stops training: FAIL, exit 1, val_bpb null and an error naming the loss."""
    run = run_harness(tmp_path, data_dir, train_src=NAN_LOSS_TRAIN)
    assert run.proc.returncode == 1
    assert "FAIL" in run.proc.stdout.splitlines()
    assert run.result["val_bpb"] is None and "loss" in run.result["error"] and run.result["steps"] == 1
    assert "AssertionError" not in run.proc.stderr


def test_tampered_data_is_refused(tmp_path, data_dir):
    """A train.bin whose sha256 differs from the manifest makes the harness print FAIL and exit 1 without training."""
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    raw = bytearray((data / "train.bin").read_bytes())
    raw[len(raw) // 2] ^= 0x01
    (data / "train.bin").write_bytes(bytes(raw))
    run = run_harness(tmp_path, data, train_src=RAISING_TRAIN)
    assert run.proc.returncode == 1
    assert any(line.startswith("FAIL") for line in run.proc.stdout.splitlines())
    assert "train.bin" in run.proc.stdout and "boom" not in run.proc.stderr
    assert run.result is None


def test_exception_in_train_crashes_without_result(tmp_path, data_dir):
    """An exception raised by train.train propagates: non-zero exit, traceback on stderr, no result.json."""
    run = run_harness(tmp_path, data_dir, train_src=RAISING_TRAIN)
    assert run.proc.returncode != 0
    assert "boom from train.py" in run.proc.stderr
    assert run.result is None and not any(run.out.iterdir())


# ---------------------------------------------------------------------------
# train phase without a validation split, and the eval phase (--logits)
# ---------------------------------------------------------------------------

PEEK_TRAIN = '''
import os
import torch
VAL_VISIBLE = os.path.exists(os.path.join(os.environ["SEALAB_DATA"], "val.bin"))
class Bigram(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(256, 256))
    def forward(self, idx):
        return self.table[idx]
def train(h):
    h.step(1)
    return Bigram()
'''

BAD_SHAPE_TRAIN = '''
import torch
class Short(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
    def forward(self, idx):
        return torch.zeros(idx.shape[0], idx.shape[1], 255) + self.w
def train(h):
    return Short()
'''

UNPICKLABLE_TRAIN = '''
import torch
class Closure(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.f = lambda idx: torch.zeros(*idx.shape, 256)
    def forward(self, idx):
        return self.f(idx) + self.w
def train(h):
    return Closure()
'''


@pytest.fixture(scope="session")
def no_val_dir(tmp_path_factory, data_dir) -> Path:
    """The data directory as a sealed image with hide_val sees it: manifest and train.bin, no val.bin."""
    out = tmp_path_factory.mktemp("data-no-val")
    for name in ("manifest.json", "train.bin"):
        shutil.copy(data_dir / name, out / name)
    return out


@pytest.fixture(scope="module")
def train_phase(tmp_path_factory, no_val_dir) -> Run:
    run = run_harness(tmp_path_factory.mktemp("train-phase"), no_val_dir)
    assert run.proc.returncode == 0, run.proc.stdout + run.proc.stderr
    return run


def run_logits(run: Run, windows: bytes, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    """`python3 prepare.py --logits in/windows.bin out/logits.bin` in the run's workspace, in/model.pt beside."""
    in_dir, out = run.workspace.parent / "in", run.workspace.parent / "eval-out"
    in_dir.mkdir(exist_ok=True)
    out.mkdir(exist_ok=True)
    (out / "logits.bin").unlink(missing_ok=True)
    (in_dir / "windows.bin").write_bytes(windows)
    if (run.out / "model.pt").exists():
        shutil.copy(run.out / "model.pt", in_dir / "model.pt")
    proc = subprocess.run([sys.executable, "prepare.py", "--logits", str(in_dir / "windows.bin"),
                           str(out / "logits.bin"), *extra], cwd=run.workspace, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "SEALAB_RUN_SPEC": str(run.workspace.parent / "run_spec.json")})
    return proc, out / "logits.bin"


def load_trained(run: Run):
    """The model the train phase saved, unpickled against that workspace's train.py."""
    saved = sys.modules.pop("train", None)
    try:
        sys.modules["train"] = load_module_at(run.workspace / "train.py", "train")
        return torch.load(run.out / "model.pt", weights_only=False)
    finally:
        sys.modules.pop("train", None)
        if saved is not None:
            sys.modules["train"] = saved


def load_module_at(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_phase_saves_the_model_and_does_not_evaluate(train_phase, no_val_dir):
    """Without val.bin the harness trains, saves /out/model.pt, and records the training facts with val_bpb null."""
    r = train_phase.result
    assert sorted(p.name for p in train_phase.out.iterdir()) == ["model.pt", "result.json"]
    assert set(r) == RESULT_KEYS | {"model_file"} and r["model_file"] == "model.pt"
    assert r["val_bpb"] is None and isinstance(r["steps"], int) and r["num_params"] > 10_000
    assert r["data_digest"] == "sha256:" + hashlib.sha256((no_val_dir / "manifest.json").read_bytes()).hexdigest()
    s = summary(train_phase.proc.stdout)
    assert list(s) == ["scored_by", *SUMMARY_KEYS[1:]] and "FAIL" not in train_phase.proc.stdout
    assert s["scored_by"].startswith("sealab, after this phase")  # no `val_bpb:` line: sealab's ends the log
    assert not [line for line in train_phase.proc.stdout.splitlines() if line.startswith("val_bpb")]
    assert sum(p.numel() for p in load_trained(train_phase).parameters()) == r["num_params"]


def test_train_phase_pins_the_numerics_from_the_run_spec(train_phase, prepare):
    """The run records the CPU it had (model, x86-64 level) and the thread count the run spec fixed."""
    cpu = train_phase.result["cpu"]
    assert cpu["threads"] == 2 and cpu["torch"] == torch.__version__  # run_harness's spec: cpus = 2.0
    model = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), None)
    assert cpu["model"] == (" ".join(model) if model else "unknown")
    flags = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
                .split(":", 1)[1].split())
    assert cpu["isa"].startswith("x86-64-v4" if "avx512bw" in flags else "x86-64")
    assert ("+amx" in cpu["isa"]) == ({"amx_tile", "amx_bf16"} <= flags)
    assert prepare.NUMERIC_ENV["OMP_DYNAMIC"] == "FALSE" and prepare.NUMERIC_ENV["MKL_CBWR"] == "AUTO,STRICT"


def test_run_spec_threads_reads_cpus_and_defaults_to_one(prepare, tmp_path):
    """The thread count comes from the run spec's resources.cpus (floored, at least 1); a missing spec is 1."""
    spec = tmp_path / "spec.json"
    for cpus, threads in ((2.0, 2), (3.7, 3), (0.5, 1), (None, 1)):
        spec.write_text(json.dumps({"resources": {"cpus": cpus}}))
        assert prepare.run_spec_threads(str(spec)) == threads
    assert prepare.run_spec_threads(str(tmp_path / "missing.json")) == 1
    spec.write_text("not json")
    assert prepare.run_spec_threads(str(spec)) == 1


def test_saved_model_is_byte_identical_with_the_images_hash_seed(tmp_path, no_val_dir):
    """Two train phases with a step budget and the image's PYTHONHASHSEED=0 save the same model.pt bytes
    (with hash randomization the pickled set of non-persistent buffers changes order from run to run)."""
    runs = []
    for i in range(2):
        (tmp_path / str(i)).mkdir()
        runs.append(run_harness(tmp_path / str(i), no_val_dir, steps=3, hash_seed="0"))
        assert runs[-1].proc.returncode == 0, runs[-1].proc.stdout + runs[-1].proc.stderr
    a, b = ((run.out / "model.pt").read_bytes() for run in runs)
    assert a == b


def test_train_phase_checks_the_train_split(tmp_path, no_val_dir):
    """Without val.bin a tampered train.bin is still refused before train.py is imported."""
    data = tmp_path / "data"
    shutil.copytree(no_val_dir, data)
    raw = bytearray((data / "train.bin").read_bytes())
    raw[7] ^= 0x01
    (data / "train.bin").write_bytes(bytes(raw))
    run = run_harness(tmp_path, data, train_src=RAISING_TRAIN)
    assert run.proc.returncode == 1 and "train.bin" in run.proc.stdout and run.result is None


def test_train_py_cannot_see_val_in_the_train_phase(tmp_path, no_val_dir):
    """train.py looking for val.bin in the data directory finds nothing (VAL_VISIBLE is recorded as False)."""
    run = run_harness(tmp_path, no_val_dir, train_src=PEEK_TRAIN)
    assert run.proc.returncode == 0, run.proc.stderr
    assert run.result["hyperparameters"]["VAL_VISIBLE"] is False


def test_train_py_entry_point_saves_the_model_too(tmp_path, no_val_dir):
    """`python3 train.py` without val.bin also saves a model.pt that unpickles against train.py's classes."""
    run = run_harness(tmp_path, no_val_dir, entry="train.py", budget_s=0.3)
    assert run.proc.returncode == 0, run.proc.stdout + run.proc.stderr
    assert type(load_trained(run)).__module__ == "train"


def test_unpicklable_model_is_a_fail(tmp_path, no_val_dir):
    """A model torch.save cannot pickle makes the train phase print FAIL, exit 1 and leave no model file."""
    run = run_harness(tmp_path, no_val_dir, train_src=UNPICKLABLE_TRAIN)
    assert run.proc.returncode == 1 and "FAIL" in run.proc.stdout.splitlines()
    assert "torch.save" in run.result["error"] and "model_file" not in run.result
    assert sorted(p.name for p in run.out.iterdir()) == ["result.json"]


def test_logits_mode_writes_the_models_forward(train_phase, prepare):
    """--logits writes float32 [N, 256, 256] equal to the saved model's forward, a padded last batch included."""
    gen = torch.Generator().manual_seed(3)
    n = prepare.EVAL_BATCH_SIZE + 5
    windows = torch.randint(0, 256, (n, prepare.EVAL_SEQ_LEN), generator=gen, dtype=torch.uint8)
    proc, out = run_logits(train_phase, bytes(windows.flatten().tolist()))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = torch.frombuffer(bytearray(out.read_bytes()), dtype=torch.float32).view(n, prepare.EVAL_SEQ_LEN, 256)
    model = load_trained(train_phase).eval()
    with torch.no_grad():
        expected = model(windows.long())
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    assert sorted(p.name for p in out.parent.iterdir()) == ["logits.bin"]


def test_real_model_scores_and_passes_the_probes(train_phase, data_dir):
    """The default GPT's logits, scored by executor/evaluate.py, pass the probes with a difference of exactly 0."""
    from executor import evaluate

    es = evaluate.build((data_dir / "val.bin").read_bytes(), 42, eval_bytes=48 * 256, probes=16)
    proc, out = run_logits(train_phase, es.windows)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    score = evaluate.score_file(es, out)
    assert score.ok, score.failure
    assert score.causal and score.probe_max_delta == 0.0 and 0 < score.val_bpb < 9  # bit-identical prefixes


def test_logits_mode_refuses_bad_windows_and_bad_models(tmp_path, no_val_dir, train_phase):
    """A windows file that is not whole rows, or a model with the wrong output shape: FAIL, exit 1, no logits."""
    proc, out = run_logits(train_phase, bytes(300))
    assert proc.returncode == 1 and "multiple of 256" in proc.stdout and not out.exists()
    bad = run_harness(tmp_path, no_val_dir, train_src=BAD_SHAPE_TRAIN)
    assert bad.proc.returncode == 0, bad.proc.stderr
    proc, out = run_logits(bad, bytes(256 * 2))
    assert proc.returncode == 1 and "shape" in proc.stdout and not any(out.parent.iterdir())


def test_logits_mode_takes_an_explicit_model_path(train_phase, tmp_path):
    """--model names the checkpoint when it is not beside the windows file."""
    shutil.copy(train_phase.out / "model.pt", tmp_path / "elsewhere.pt")
    proc, out = run_logits(train_phase, bytes(256), "--model", str(tmp_path / "elsewhere.pt"))
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size == 256 * 256 * 4


def test_the_nvidia_driver_version_is_read_as_the_toolkit_mounts_it(prepare, tmp_path):
    """/proc/driver/nvidia/version of the proprietary and of the open kernel module; none without a driver;
    and no GPU facts at all on a machine without a GPU."""
    proprietary = tmp_path / "proprietary"
    proprietary.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.124.06  Wed Feb 26 2025\n"
                           "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")
    open_module = tmp_path / "open"
    open_module.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build\n")
    assert prepare.nvidia_driver(str(proprietary)) == "570.124.06"
    assert prepare.nvidia_driver(str(open_module)) == "580.65.06"
    assert prepare.nvidia_driver(str(tmp_path / "absent")) is None
    assert prepare.gpu_identity() is None
