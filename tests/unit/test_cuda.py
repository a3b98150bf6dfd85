"""Which wheels make a CUDA base's torch (executor/image/cuda.py), and the GPU checks around a run: pure, no Docker."""

import re
import zipfile
from pathlib import Path

import docker
import pytest

from executor.docker_engine import Engine, no_gpu
from executor.errors import BaseImageError, EngineUnavailable, NoGpu
from executor.hardening import gpu_requests
from executor.image import cuda, deps
from executor.judge import gpu_of

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "lockrepo"


def _entries(requirements: str) -> dict[str, str]:
    """name → the entry's text (its first line and its --hash lines)."""
    return {re.split(r"[=\s;\[]", b)[0].lower(): b for b in re.split(r"\n(?=\S)", requirements.strip()) if b}


def test_the_default_cuda_torch_is_every_package_pinned_and_hashed():
    """torch-cuda.txt pins torch 2.13.0 (the CPU wheel's public version) with its CUDA runtime; every entry is
    `name==version` with at least one sha256, so pip can only ever fetch those bytes."""
    wanted = cuda.requirements(None, Path("/nonexistent"))
    entries = _entries(wanted.requirements)
    assert wanted.torch == "2.13.0" and "torch-cuda.txt" in wanted.source
    assert {"torch", "triton", "nvidia-cublas", "nvidia-cudnn-cu13", "nvidia-nccl-cu13", "numpy"} <= set(entries)
    for name, entry in entries.items():
        assert re.match(rf"{re.escape(name)}==\S+ \\", entry), entry.splitlines()[0]
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", entry), name
    assert wanted.digest == cuda.requirements(None, Path("/nonexistent")).digest  # a pure function of the file


def test_a_lock_that_pins_torch_gives_its_own_torch_at_its_pins(tmp_path):
    """uv.lock pins torch: the CUDA layer is the lock's torch and what only torch needs, with the lock's hashes;
    what the rest of the project needs too stays in the deps layer (no package in both)."""
    files = {name: (FIXTURE / name).read_bytes() for name in ("pyproject.toml", "uv.lock")}
    wanted = cuda.requirements(files, tmp_path)
    locked = deps.lock_of(files, tmp_path)
    own, rest = _entries(wanted.requirements), {p.split("==")[0] for p in locked.packages}
    assert wanted.torch == locked.torch == "2.13.0" and wanted.source == "uv.lock (its torch)"
    assert "torch" in own and any(name.startswith("nvidia-") for name in own)
    assert not set(own) & rest
    assert all("--hash=sha256:" in entry for entry in own.values())
    assert len(wanted.packages) == len(own)  # one version each: the lock's markers decided for the image's Python
    assert ";" not in wanted.requirements


def test_a_requirements_txt_torch_without_hash_is_refused_in_one_line(tmp_path):
    files = {"requirements.txt": b"torch==2.13.0\nrequests==2.32.3 --hash=sha256:" + b"a" * 64 + b"\n"}
    with pytest.raises(BaseImageError) as info:
        cuda.requirements(files, tmp_path)
    assert "torch==2.13.0 has no --hash" in str(info.value) and "\n" not in str(info.value)
    hashed = {"requirements.txt": b"torch==2.13.0 --hash=sha256:" + b"b" * 64 + b"\n"}
    assert cuda.requirements(hashed, tmp_path).requirements == "torch==2.13.0 --hash=sha256:" + "b" * 64 + "\n"


def test_cuda_version_is_read_from_the_torch_wheel(tmp_path):
    """The CUDA a torch wheel was built for, from its torch/version.py; a CPU build (cuda None) has none."""
    def wheel(name: str, cuda_line: str) -> Path:
        path = tmp_path / name
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("torch/version.py", f"__version__ = '2.13.0'\n{cuda_line}\n")
        return path

    assert cuda.cuda_version([tmp_path / "numpy.whl", wheel("torch-2.13.0-cp311.whl",
                                                            "cuda: Optional[str] = '13.0'")]) == "13.0"
    assert cuda.cuda_version([wheel("torch-2.13.0+cpu-cp311.whl", "cuda: Optional[str] = None")]) is None
    assert cuda.cuda_version([]) is None


def test_gpu_requests_are_one_request_for_that_many_gpus_or_none():
    assert gpu_requests(0) == []
    assert gpu_requests(2) == [(2, [["gpu"]])]


class _RefusingApi:
    """docker-py's low-level client as an engine without a GPU runtime answers a start."""

    def __init__(self, explanation: str) -> None:
        self.explanation = explanation

    def start(self, container: str) -> None:
        response = type("R", (), {"status_code": 500, "reason": "Server Error", "url": "/start"})()
        raise docker.errors.APIError("500 Server Error", response=response, explanation=self.explanation)


def _engine(explanation: str) -> Engine:
    client = type("Client", (), {})()
    client.api = _RefusingApi(explanation)
    return Engine(client)


def test_a_gpu_start_on_an_engine_without_a_gpu_runtime_says_so_in_one_line():
    said = 'could not select device driver "" with capabilities: [[gpu]]'
    with pytest.raises(NoGpu) as info:
        _engine(said).start("c1", gpus=1)
    text = str(info.value)
    assert text == no_gpu(1, said) and "\n" not in text
    assert "[resources] gpus = 1" in text and "NVIDIA" in text and "gpus = 0" in text and said in text
    with pytest.raises(EngineUnavailable) as plain:  # without a GPU request the engine's words stay as they are
        _engine(said).start("c1")
    assert "[resources] gpus" not in str(plain.value) and not isinstance(plain.value, NoGpu)
    with pytest.raises(EngineUnavailable) as other:  # another failure of a GPU run is not blamed on the GPU
        _engine("container is marked for removal").start("c1", gpus=1)
    assert "[resources] gpus" not in str(other.value)


def test_gpu_facts_are_kept_short_and_typed():
    """What the harness says about its GPUs goes into the record's metrics as strings and integers only."""
    assert gpu_of({"gpu": None}) is None and gpu_of(None) is None and gpu_of({"gpu": "H100"}) is None
    kept = gpu_of({"gpu": {"name": "NVIDIA H100 80GB HBM3", "count": 1, "capability": "9.0", "memory_mb": 81_559,
                           "cuda": "13.0", "driver": "570.124.06", "driver_cuda": "12.8", "extra": "x" * 10,
                           "evil": {"a": 1}}})
    assert kept == {"name": "NVIDIA H100 80GB HBM3", "count": 1, "capability": "9.0", "memory_mb": 81_559,
                    "cuda": "13.0", "driver": "570.124.06", "driver_cuda": "12.8"}
    assert gpu_of({"gpu": {"name": "x" * 999, "count": True}}) == {"name": "x" * 200}


def test_a_cached_wheel_that_changed_since_its_download_is_refused(tmp_path, monkeypatch):
    """The CUDA wheels are checked against the pinned hashes each time they are used, not only when pip
    downloaded them: a cached file that changed is named, with what to do."""
    import hashlib

    from executor.image import base

    store = tmp_path / "torch-cuda" / "k"
    store.mkdir(parents=True)
    good, bad = store / "torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl", store / "numpy-2.4.6-cp311.whl"
    good.write_bytes(b"torch bytes")
    bad.write_bytes(b"numpy bytes, changed")
    wanted = deps.Locked("test.txt", "sha256:" + "0" * 64,
                         f"torch==2.13.0 \\\n    --hash=sha256:{hashlib.sha256(b'torch bytes').hexdigest()}\n"
                         f"numpy==2.4.6 \\\n    --hash=sha256:{hashlib.sha256(b'numpy bytes').hexdigest()}\n", "2.13.0")
    monkeypatch.setattr(cuda, "requirements", lambda files, cache_dir, locked=None: wanted)
    monkeypatch.setattr(deps, "fetch", lambda locked, cache_dir, progress, kind: [good, bad])
    with pytest.raises(BaseImageError) as info:
        base.cuda_wheels(None, tmp_path, None, lambda step, detail: None)
    assert str(bad) in str(info.value) and "does not list" in str(info.value) and f"delete {store}" in str(info.value)
    bad.write_bytes(b"numpy bytes")
    assert [w.name for w in base.cuda_wheels(None, tmp_path, None, lambda step, detail: None)] == [bad.name, good.name]
