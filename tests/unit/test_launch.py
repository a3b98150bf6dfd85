"""The launcher of an adopted repository's run (executor/image/launch.py), run here on the host."""

import json
import os

from executor.image import launch, seal
from executor.types import Resources, RunSpec


def test_the_budget_and_the_numerics_pins_are_handed_to_the_command():
    spec = json.loads(RunSpec(budget_s=300, steps=25, seed=7, metric="solve_rate", command=("python3", "train.py"),
                              resources=Resources(cpus=3)).canonical())
    env = launch.environment(spec, {"HOME": "/home/sealab", "HF_HUB_OFFLINE": "0"})
    assert (env["SEALAB_TRAIN_SECONDS"], env["SEALAB_STEPS"], env["SEALAB_SEED"], env["SEALAB_METRIC"]) == \
        ("300", "25", "7", "solve_rate")
    assert (env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"], env["OMP_DYNAMIC"], env["MKL_CBWR"]) == \
        ("3", "3", "FALSE", "AUTO,STRICT")
    assert env["HF_HUB_OFFLINE"] == "0" and env["TRANSFORMERS_OFFLINE"] == "1"  # what the image sets is kept
    assert "SEALAB_STEPS" not in launch.environment({**spec, "steps": None}, {})


def test_captured_directories_are_linked_where_the_repository_looks_under_home(tmp_path):
    captured = tmp_path / "opt" / "home"
    (captured / ".cache" / "prep").mkdir(parents=True)
    (captured / ".cache" / "prep" / "shard.bin").write_bytes(b"x")
    listing = tmp_path / "home.json"
    listing.write_text(json.dumps(["~/.cache/prep"]))
    home = tmp_path / "home"
    home.mkdir()
    made = launch.link_captured(str(home), str(listing), str(captured))
    assert made == [str(home / ".cache" / "prep")]
    assert (home / ".cache" / "prep" / "shard.bin").read_bytes() == b"x"
    assert launch.link_captured(str(home), str(tmp_path / "none.json"), str(captured)) == []


def test_the_launcher_is_sealed_into_the_image_as_it_is():
    assert seal.LAUNCHER == open(launch.__file__, "rb").read()
    assert launch.cpu()["isa"].startswith(("x86-64", "aarch64", "arm"))
    assert os.path.basename(seal.LAUNCHER_PATH) == "launch.py"


def test_the_launcher_names_the_gpus_the_toolkit_gave_without_importing_torch(tmp_path):
    """/proc/driver/nvidia as the NVIDIA container toolkit mounts it: the board models and the driver; the CUDA
    of the base's torch from its version.py as text. No driver: no GPU facts."""
    proc = tmp_path / "nvidia"
    for board, model in (("0000:18:00.0", "NVIDIA H100 80GB HBM3"), ("0000:2a:00.0", "NVIDIA H100 80GB HBM3")):
        (proc / "gpus" / board).mkdir(parents=True)
        (proc / "gpus" / board / "information").write_text(f"Model: \t\t {model}\nIRQ:   \t\t 17\n")
    (proc / "version").write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.124.06  Wed Feb 26 2025\n")
    site = tmp_path / "site"
    (site / "torch").mkdir(parents=True)
    (site / "torch" / "version.py").write_text("__version__ = '2.13.0+cu130'\ncuda: Optional[str] = '13.0'\n")
    assert launch.gpus(str(proc), (str(tmp_path / "nothing"), str(site))) == {
        "name": "NVIDIA H100 80GB HBM3", "count": 2, "driver": "570.124.06", "cuda": "13.0"}
    (site / "torch" / "version.py").write_text("cuda: Optional[str] = None\n")
    assert launch.gpus(str(proc), (str(site),))["cuda"] is None
    assert launch.gpus(str(tmp_path / "no-driver"), (str(site),)) is None
