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
