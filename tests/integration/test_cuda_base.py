"""The reproducible CUDA base (`[base] torch = "cuda"`) against the real engine: SLOW, not part of `./dev test`.

It downloads PyPI's CUDA torch and its runtime (about 2.8 GB, once per cache directory) and assembles a
layer of about 5 GB several times, which does not fit CI's time beside the rest of the suite. Run it with

    SEALAB_SLOW=1 ./dev test tests/integration/test_cuda_base.py -s

(about 15 minutes on a 2-core machine). What it shows: a from-scratch rebuild (new download directory,
new root file system, the wheels in another order) has the same image ID; a second build with the cache
reuses the image in seconds; a CPU experiment with a step budget gives the same metric in the CUDA
base as in the CPU base.
"""

from __future__ import annotations

import sys
import time

import pytest

from executor.image import assemble, docker_build, rootfs
from executor.image.base import PREPARE_DATA, build_base, cuda_wheels, default_cache_dir
from tests.conftest import sealab, sealab_json

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def say(line: str) -> None:
    print(f"[cuda-base] {line}", file=sys.stderr, flush=True)


@pytest.fixture(scope="module")
def cuda_base(engine):
    """The CUDA base with the default cache (downloaded and assembled on first use), and how long the call took."""
    started = time.monotonic()
    base = build_base(engine, torch="cuda", cache_dir=default_cache_dir(),
                      progress=lambda step, detail: say(f"{step} {detail}"))
    return base, time.monotonic() - started


def test_the_cuda_base_has_a_cuda_torch_that_imports_on_a_cpu(cuda_base, engine):
    base, seconds = cuda_base
    info = docker_build.connect(engine).inspect_image(base.image_id)
    say(f"CUDA base {base.image_id} torch {base.torch} CUDA {base.cuda}: {info['Size'] / 1e9:.2f} GB, "
        f"{len(base.diff_ids)} layers, this call {seconds:.1f} s")
    assert base.torch == "2.13.0" and base.cuda == "13.0" and base.source == "offline:bookworm"
    out = docker_build.connect(engine)
    container = out.create_container(base.image_id, command=["python3", "-c",
                                     "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available(),"
                                     " float(torch.ones(3).sum()))"], network_disabled=True)
    try:
        out.start(container)
        assert out.wait(container, timeout=300)["StatusCode"] == 0, out.logs(container).decode()
        assert out.logs(container, stderr=False).decode().split() == ["2.13.0+cu130", "13.0", "False", "3.0"]
    finally:
        out.remove_container(container, force=True)


def test_a_rebuild_from_scratch_has_the_same_id(cuda_base, tmp_path):
    """A fresh download directory, a fresh root file system from mmdebstrap and the wheels in reversed order give
    the same layers and so the same image ID."""
    base, _ = cuda_base
    started = time.monotonic()
    wheels = cuda_wheels(None, tmp_path / "cache", None, lambda step, detail: say(f"{step} {detail}"))
    say(f"downloaded {len(wheels)} wheels, {sum(w.path.stat().st_size for w in wheels) / 1e9:.2f} GB, "
        f"in {time.monotonic() - started:.0f} s")
    assert all(str(w.path).startswith(str(tmp_path)) for w in wheels)  # not the default cache's files
    fresh, _ = rootfs.ensure_rootfs(tmp_path / "cache")
    labels = docker_build.connect(None).inspect_image(base.image_id)["Config"]["Labels"]
    started = time.monotonic()
    image_id, _config, layers = assemble.assemble(
        rootfs_tar=fresh, wheels=[w.path for w in reversed(wheels)], prepare_data=PREPARE_DATA,
        work=tmp_path / "work", labels=labels, progress=lambda step, detail: say(f"{step} {detail}"))
    say(f"reassembled {image_id} in {time.monotonic() - started:.0f} s")
    assert image_id == base.image_id and tuple(diff for diff, _ in layers) == base.diff_ids


def test_a_second_build_with_the_cache_takes_seconds(cuda_base, engine):
    base, _ = cuda_base
    started = time.monotonic()
    again = build_base(engine, torch="cuda", cache_dir=default_cache_dir())
    seconds = time.monotonic() - started
    say(f"second build with the cache: {again.image_id[:19]} in {seconds:.1f} s")
    assert again == base and seconds < 60


def test_a_cpu_experiment_gives_the_same_metric_in_the_cuda_base(cuda_base, base_image, tmp_path):
    """A step-budget experiment (deterministic on a CPU) in the CPU base and in the CUDA base: the same val_bpb.
    The two torches are the same release (2.13.0+cpu, 2.13.0+cu130) and run the same CPU kernels."""
    from agent.create import init
    from agent.gitops import commit_file, set_constant
    from executor.ledger import Ledger

    base, _ = cuda_base
    ws = init(tmp_path / "ws")
    toml = set_constant((ws.root / "sealab.toml").read_text(), "grace_seconds", "120")
    toml = toml.replace("# steps = 200 ", "steps = 30 ")
    assert "\nsteps = 30 " in toml
    commit_file(ws.git, "sealab.toml", toml, "a step budget")
    records = {}
    for name, image in (("cpu", base_image), ("cuda", base)):
        Ledger(ws.ledger_path).set_base(image)
        proc = sealab("exec", "--json", cwd=ws.root, timeout=900)
        assert proc.returncode == 0, proc.stderr
        records[name] = sealab_json("status", cwd=ws.root)[-1]
    cpu, gpu_base = records["cpu"], records["cuda"]
    say(f"val_bpb in the CPU base {cpu['metrics']['val_bpb']!r} ({cpu['cpu']['torch']}), in the CUDA base "
        f"{gpu_base['metrics']['val_bpb']!r} ({gpu_base['cpu']['torch']}); {cpu['metrics']['steps']} steps each")
    assert cpu["image_id"] != gpu_base["image_id"] and gpu_base["base_image_id"] == base.image_id
    assert gpu_base["cpu"]["torch"] == "2.13.0+cu130" and gpu_base["metrics"]["device"] == "cpu"
    assert cpu["metrics"]["steps"] == gpu_base["metrics"]["steps"] == 30
    assert gpu_base["metrics"]["val_bpb"] == cpu["metrics"]["val_bpb"]
