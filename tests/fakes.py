"""In-memory stand-ins for the Docker engine and a backend, for fast unit tests of orchestration.

`FakeEngine` holds a synthetic base image (its data manifest and val.bin, so the trusted scorer's
validation split is real bytes checked against a real digest) and answers what the orchestrator asks
an engine: image_id, read_file, ping, remove_experiment_containers. `FakeBackend` runs a sealed image
the way the harness would, without a container: it reads train.py from the sealed layer's bytes (what
the image would run, not the working tree), writes result.json and model.pt (train phase) or
logits.bin (eval phase) into the job's /out, and says how the run ended. Everything after it — the
scorer, classify, the ledger, the loop's decisions — is the real code.

The fake model is a unigram: the same logits at every position (so the causality probes hold), a
one-hot of scale `quality(train.py)` on the most frequent byte of the split. Its val_bpb is a smooth,
deterministic function of that scale, so a test can choose which commit is better.

What a real engine adds (hardening, identity checks where the image runs, deadlines, OOM) is tested
against the real engine in tests/integration/ and tests/attacks/.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from executor import evaluate
from executor.backends.interface import Finished, Job
from executor.errors import BaseImageError, EngineUnavailable
from executor.types import BaseImage

BASE_ID = "sha256:" + "ba5e" * 16


def fake_base(val: bytes | None = None) -> tuple[BaseImage, dict[str, bytes]]:
    """A base image value and the files of its data directory (manifest.json, val.bin)."""
    if val is None:  # half of it one byte (like the spaces and e's of text), the rest uniform
        rng = np.random.default_rng(0)
        val = bytes(np.where(rng.random(200_000) < 0.5, ord("e"), rng.integers(0, 256, 200_000)).astype(np.uint8))
    manifest = json.dumps({"val": {"file": "val.bin", "bytes": len(val),
                                   "sha256": hashlib.sha256(val).hexdigest()}}, sort_keys=True).encode()
    base = BaseImage(image_id=BASE_ID, diff_ids=("sha256:" + "d1ff" * 16,), env=("PATH=/usr/bin:/bin",),
                     cmd=("python3",), recipe="sha256:" + "0" * 64,
                     data_digest="sha256:" + hashlib.sha256(manifest).hexdigest(), source="fake")
    return base, {"/opt/sealab/data/manifest.json": manifest, "/opt/sealab/data/val.bin": val}


@dataclass
class FakeEngine:
    """What the orchestrator asks of an engine, in memory. `down` makes every call EngineUnavailable."""

    base: BaseImage
    files: dict[str, bytes]
    down: bool = False
    pings: int = 0
    removed: list[str | None] = field(default_factory=list)

    def _up(self) -> None:
        if self.down:
            raise EngineUnavailable("the fake engine is down")

    def ping(self) -> None:
        self.pings += 1
        self._up()

    def image_id(self, ref: str) -> str | None:
        self._up()
        return self.base.image_id if ref == self.base.image_id else None

    def read_file(self, image_id: str, path: str, limit_mb: int = 1024) -> bytes:
        self._up()
        if image_id != self.base.image_id or path not in self.files:
            raise BaseImageError(f"{path} is not in image {image_id[:19]}")
        return self.files[path]

    def remove_experiment_containers(self, experiment_id: str | None = None) -> list[str]:
        self.removed.append(experiment_id)
        return []


def train_py_of(job: Job) -> bytes:
    """The train.py the sealed image holds, read from its layer (the bytes the container would run)."""
    with tarfile.open(fileobj=io.BytesIO(job.sealed.layer_bytes())) as tar:
        member = next(m for m in tar.getmembers() if m.name.lstrip("/").endswith("workspace/train.py"))
        return tar.extractfile(member).read()


def git_blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def scale_from(source: bytes) -> float:
    """Default quality: the last `SCALE = x` of train.py, else 1.0 (on the fake split, val_bpb is 8 at
    0, falls to about 5.0 near 5.5, and rises beyond)."""
    found = re.findall(rb"^SCALE\s*=\s*([0-9.eE+-]+)", source, re.M)
    return float(found[-1]) if found else 1.0


@dataclass
class Run:
    """How the fake ends a train phase: `exit_code`, `oom`, `timed_out`; `write_result=False`: no result.json
    (a run that is to last until released waits on FakeBackend.release)."""

    exit_code: int = 0
    oom: bool = False
    timed_out: bool = False
    output: bytes = b"step 1\n"
    write_result: bool = True


@dataclass
class FakeBackend:
    """A backend whose train phase is the harness in miniature and whose eval phase writes unigram logits.

    `outcome(train_py) -> Run` decides how a train phase ends (default: it succeeds); `quality(train_py)`
    is the fake model's scale. `fail_next` EngineUnavailable errors are raised by the next runs.
    """

    base: BaseImage
    outcome: Callable[[bytes], Run] = lambda source: Run()
    quality: Callable[[bytes], float] = scale_from
    name: str = "fake"
    fail_next: int = 0
    jobs: list[Job] = field(default_factory=list)
    cleaned: list[str] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)
    release: threading.Event | None = None  # when set, a train phase waits on it (a long run)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, job: Job) -> Finished:
        with self._lock:
            self.jobs.append(job)
            if self.fail_next:
                self.fail_next -= 1
                raise EngineUnavailable("the fake engine went away mid-run")
        source = train_py_of(job)
        job.out_dir.mkdir(parents=True, exist_ok=True)
        if job.phase in ("eval", "test"):  # (test: the held-out split's eval phase, executor/heldout.py)
            return self._eval(job, source)
        self.started.set()
        if self.release is not None:
            self.release.wait()
        end = self.outcome(source)
        if end.write_result and end.exit_code == 0 and not (end.oom or end.timed_out):
            (job.out_dir / evaluate.MODEL_FILE).write_bytes(b"fake model " + hashlib.sha256(source).digest())
            (job.out_dir / "result.json").write_text(json.dumps({
                "train_py_blob": git_blob(source), "data_digest": self.base.data_digest,
                "model_file": evaluate.MODEL_FILE, "training_seconds": 0.01, "total_seconds": 0.02,
                "steps": 1, "peak_memory_mb": 1.0, "hyperparameters": {"SCALE": self.quality(source)},
            }))
        return Finished(exit_code=None if end.timed_out else end.exit_code, oom_killed=end.oom,
                        timed_out=end.timed_out, output=job.store_output([end.output]), placement="fake",
                        timings={"run": 0.001})

    def _eval(self, job: Job, source: bytes) -> Finished:
        """logits.bin for the windows at /in: a one-hot of scale quality(train.py) on the split's most
        frequent byte, the same at every position."""
        windows = np.frombuffer((job.in_dir / evaluate.WINDOWS_FILE).read_bytes(), dtype=np.uint8)
        common = int(np.bincount(windows, minlength=evaluate.VOCAB_SIZE).argmax())
        row = np.zeros(evaluate.VOCAB_SIZE, dtype="<f4")
        row[common] = self.quality(source)
        (job.out_dir / evaluate.LOGITS_FILE).write_bytes(np.tile(row, len(windows)).tobytes())
        return Finished(exit_code=0, oom_killed=False, timed_out=False, output=job.store_output([b"eval\n"]),
                        placement="fake")

    def cleanup(self, experiment_id: str) -> list[str]:
        self.cleaned.append(experiment_id)
        return []


def fake_setup(tmp_path: Path, monkeypatch, **backend) -> tuple[FakeEngine, FakeBackend]:
    """A fake engine and backend sharing one synthetic base; the scorer's val cache in tmp_path."""
    monkeypatch.setenv("SEALAB_CACHE_DIR", str(tmp_path / "cache"))
    base, files = fake_base()
    return FakeEngine(base, files), FakeBackend(base, **backend)
