"""GPU requests against the real engine (this one has no GPU runtime): the container asks for the devices, and
a run that asks for a GPU here ends as a one-line `infra_error`, never as a crash of train.py."""

from __future__ import annotations

import json

import pytest

from executor.types import Resources
from tests.conftest import sealab, sealab_json

pytestmark = pytest.mark.docker


@pytest.mark.parametrize("gpus", [0, 1, 2])
def test_the_container_requests_exactly_the_gpus_of_the_run(engine, base_image, gpus):
    """[resources] gpus = N becomes one device request for N GPUs in the container's HostConfig (none for 0),
    as `docker inspect` reports it, next to the rest of the hardening."""
    container = engine.create(base_image.image_id, name=f"sealab-gpu-test-{gpus}", resources=Resources(gpus=gpus),
                              out_dir=None, env={}, labels={"sealab.test": "gpu"})
    try:
        host = engine.inspect(container)["HostConfig"]
    finally:
        engine.remove(container)
    requests = [(r["Count"], r["Capabilities"]) for r in host.get("DeviceRequests") or []]
    assert requests == ([(gpus, [["gpu"]])] if gpus else [])
    assert host["ReadonlyRootfs"] is True and host["NetworkMode"] == "none"


def test_a_gpu_run_on_a_host_without_one_is_a_one_line_infra_error(make_workspace):
    """gpus = 1 here: the container is created and checked (its GPU request included), the engine refuses to
    start it, and the record says infra_error with the same line stderr shows: what is missing and what to do."""
    root = make_workspace(gpus=1)
    proc = sealab("exec", "--json", cwd=root)
    assert proc.returncode == 3, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("sealab: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    logged = [line for line in proc.stderr.splitlines() if "event=experiment.finished" in line]
    assert len(logged) == 1 and "status=infra_error" in logged[0]  # the experiment's one structured line
    assert "[resources] gpus = 1" in lines[0] and "NVIDIA" in lines[0] and "gpus = 0" in lines[0]
    record = sealab_json("status", cwd=root)[-1]
    assert record["status"] == "infra_error" and "[resources] gpus = 1" in record["reason"]
    assert "\n" not in record["reason"] and record["image_id"]  # sealed and verified; only the start was refused
    assert not (root / ".sealab" / "outputs" / record["id"] / "result.json").exists()  # train.py never ran
    assert json.loads(json.dumps(record))["run_spec"]["resources"]["gpus"] == 1


def test_the_cuda_base_and_a_vendor_image_are_alternatives(make_workspace):
    """`--torch cuda` with `--from IMAGE` is bad input: one line, exit 2, nothing built; a committed
    `[base] torch` that is neither cpu nor cuda likewise."""
    from agent.gitops import commit_file
    from executor.git_source import open_repo

    root = make_workspace()
    proc = sealab("base", "--torch", "cuda", "--from", "debian:bookworm", cwd=root)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "--torch cuda" in proc.stderr and "--from IMAGE" in proc.stderr
    toml = (root / "sealab.toml").read_text().replace('# torch = "cuda" ', 'torch = "rocm" ')
    commit_file(open_repo(root), "sealab.toml", toml, "an unknown torch")
    proc = sealab("base", cwd=root)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "base.torch must be 'cpu' or 'cuda', not 'rocm'" in proc.stderr
