"""The Docker engine dies or restarts mid-experiment: the record ends `infra_error`, `sealab` says so in one
line (exit 3), and `sealab run --resume` works once the engine is back.

The engine is a private second dockerd (tests/faults/private_dockerd.py) that holds a copy of the base
image (same ID), reached through DOCKER_HOST: the shared daemon is never stopped.
"""

from __future__ import annotations

import os
import re
import signal
import threading
from pathlib import Path

import pytest

from tests.conftest import unavailable
from tests.faults.kit import audit, fast_workspace, launch, said, sealab, wait_for
from tests.faults.private_dockerd import PrivateDockerd

pytestmark = pytest.mark.docker
PREFIX = "sfaultd"


def stale_daemons() -> list[PrivateDockerd]:
    """Private daemons of earlier test processes that died without their teardown."""
    names = {p.name for p in Path("/var/run/netns").glob(f"{PREFIX}*")} if Path("/var/run/netns").exists() else set()
    names |= {p.name for p in Path("/tmp").glob(f"{PREFIX}*")}  # the folder outlives an interrupted teardown
    return [PrivateDockerd(name) for name in sorted(names)
            if name[len(PREFIX):].isdigit() and not Path(f"/proc/{name[len(PREFIX):]}").exists()]


@pytest.fixture(scope="module")
def private_engine(base_image):
    """A private dockerd holding the base image; removed afterwards, and any stale one before."""
    if os.geteuid() != 0:
        unavailable("a second dockerd needs root")
    for stale in stale_daemons():
        stale.cleanup()
    daemon = PrivateDockerd(f"{PREFIX}{os.getpid()}")
    daemon.cleanup()
    try:
        daemon.start()
        daemon.load_from(base_image.image_id)
        yield daemon
    finally:
        daemon.cleanup()


@pytest.fixture
def daemon(private_engine):
    """The private daemon, running at the start and at the end of each test."""
    if private_engine.pid() is None:
        private_engine.start()
    yield private_engine
    if private_engine.pid() is None:
        private_engine.start()


def engine_of(daemon):
    from executor.docker_engine import Engine

    return Engine.connect(daemon.host)


def test_engine_killed_mid_experiment_then_resume(daemon, base_image, tmp_path):
    """dockerd killed (-9) while the proposal's container runs: the record is `infra_error`, `sealab run`
    exits 3 with one line, --resume says the engine is down while it is, and finishes the run once it
    is back: nothing lost or duplicated, verify clean."""
    env = {"DOCKER_HOST": daemon.host}
    root = fast_workspace(tmp_path, base_image)
    mark, go_on = tmp_path / "paused", tmp_path / "go"
    run = ["run", "--experiments", "2", "--tag", "d", "--proposer", "offline"]
    proc = launch(run, root, pause="container:2", mark=mark, go_on=go_on, env=env)
    assert wait_for(mark, proc), proc.communicate()
    daemon.kill(signal.SIGKILL)
    go_on.touch()
    _, err = proc.communicate(timeout=300)
    lines = said(err.decode())
    assert proc.returncode == 3 and len(lines) == 1, err.decode()
    assert lines[0].startswith("sealab: error: Docker engine unavailable") and "Traceback" not in err.decode()

    down = sealab(*run, "--resume", cwd=root, env=env)
    assert down.returncode == 3 and said(down.stderr)[0].startswith("sealab: error: Docker engine unavailable")

    daemon.start()
    resumed = sealab(*run, "--resume", cwd=root, env=env)
    assert resumed.returncode == 0, resumed.stderr
    found = audit(root, "d", engine=engine_of(daemon), verify=False)
    verify = sealab("verify", "--all", "--json", cwd=root, env=env)
    assert verify.returncode == 0, verify.stdout
    [broken] = [r for r in found.records if r["status"] == "infra_error"]
    assert re.search(r"Docker engine unavailable", broken["reason"]) and broken.get("decision") is None
    retried = [r for r in found.records if r["commit"] == broken["commit"] and r["id"] != broken["id"]]
    assert len(retried) == 1 and retried[0].get("decision") in ("keep", "discard"), found.records
    assert found.clean, str(found)  # the infra_error record's exited container was removed by the next command


def test_loop_retries_an_experiment_lost_to_an_engine_restart(daemon, base_image, tmp_path):
    """dockerd restarted while a proposal runs: the loop waits for the engine, runs the same commit again
    (a new record; the first stays `infra_error`) and decides on that run, without a human."""
    env = {"DOCKER_HOST": daemon.host}
    root = fast_workspace(tmp_path, base_image)
    mark, go_on = tmp_path / "paused", tmp_path / "go"
    proc = launch(["run", "--experiments", "2", "--tag", "r", "--proposer", "offline"], root,
                  pause="container:2", mark=mark, go_on=go_on, env=env)
    assert wait_for(mark, proc), proc.communicate()
    daemon.kill(signal.SIGTERM)  # a restart: the daemon stops, and is back a few seconds later
    restart = threading.Timer(3, daemon.start)
    restart.start()
    try:
        go_on.touch()
        _, err = proc.communicate(timeout=300)
    finally:
        restart.join()  # never two daemons on one socket: the fixture restarts it only if it is down
    assert proc.returncode == 0, err.decode()
    found = audit(root, "r", engine=engine_of(daemon), verify=False)
    [broken] = [r for r in found.records if r["status"] == "infra_error"]
    retried = [r for r in found.records if r["commit"] == broken["commit"] and r["id"] != broken["id"]]
    assert len(retried) == 1 and retried[0]["status"] == "ok" and retried[0].get("decision") in ("keep", "discard")
    assert found.clean, str(found)
