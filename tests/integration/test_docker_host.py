"""The docker-host backend against a second, real Docker engine with an image store of its own.

The "remote" engine is a private dockerd (own data root, exec root, socket and network namespace; see
tests/faults/private_dockerd.py) reached through its socket URL: nothing of the experiment reaches it
but through the Engine API, as over ssh:// or TLS. It starts without the base, so the backend streams
the base over once; /in and /out travel as archives, not bind mounts.
"""

from __future__ import annotations

import json

import git
import pytest

from executor.git_source import open_repo
from tests.conftest import sealab, sealab_json
from tests.faults.private_dockerd import PrivateDockerd

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def remote_engine(engine):
    daemon = PrivateDockerd("sldh")
    daemon.cleanup()
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.cleanup()


def use_remote(root, daemon, steps: int = 3) -> None:
    from agent.gitops import commit_file, set_constant

    toml = (root / "sealab.toml").read_text()
    toml = toml.replace('name = "local"', f'name = "docker-host"\nurl = "{daemon.host}"')
    toml = set_constant(toml.replace("# steps = 200", f"steps = {steps}"), "grace_seconds", "240")
    commit_file(open_repo(root), "sealab.toml", toml, "run on the remote engine")


def test_docker_host_loads_verifies_and_runs_there(make_workspace, remote_engine, base_image, engine):
    root = make_workspace()
    use_remote(root, remote_engine)
    train = root / "train.py"
    committed = train.read_text()
    train.write_text(committed.replace("SCALAR_LR = 0.5", "SCALAR_LR = 0.3"))  # a linter, after the commit

    record = sealab_json("exec", cwd=root)
    assert record["status"] == "ok", record["reason"]
    assert record["backend"] == "docker-host" and record["placement"] == remote_engine.host
    assert record["metrics"]["hyperparameters"]["SCALAR_LR"] == 0.5  # the commit ran, not the work tree
    assert any("SCALAR_LR = 0.5 -> 0.3" in c for d in record["drift"] for c in d["changes"])

    # The image and the base were loaded into the remote engine, with the same IDs.
    there = remote_engine.docker("image", "inspect", "--format", "{{.Id}}", record["image_id"], base_image.image_id)
    assert there.stdout.split() == [record["image_id"], base_image.image_id]
    # ... and nothing ran on this machine's engine: no container, and /out came back as an archive.
    assert engine.api.containers(all=True, filters={"label": f"sealab.experiment={record['id']}"}) == []
    assert remote_engine.docker("ps", "-aq", "--filter", f"label=sealab.experiment={record['id']}").stdout == ""
    out = root / ".sealab" / "outputs" / record["id"] / "result.json"
    assert json.loads(out.read_text())["train_py_blob"] == git.Repo(root).head.commit.tree["train.py"].hexsha

    # verify re-derives the ID from git; reproduce reruns it (here, locally) to the same number.
    assert sealab_json("verify", "--all", cwd=root)["mismatches"] == []
    train.write_text(committed)
    again = sealab_json("reproduce", record["id"], cwd=root)
    assert again["verdict"] == "exact", again


def test_a_foreign_image_under_the_sealed_name_on_the_remote_engine(make_workspace, remote_engine, base_image):
    """Another image under the sealed name on the remote engine. While the sealed image is not there, the
    commit is loaded there again (same ID), takes its name back and runs; the foreign image is recorded as
    displaced and kept. Once the sealed image is there, a moved name is refused, nothing started."""
    from executor.ledger import Ledger

    root = make_workspace("forged")
    use_remote(root, remote_engine)
    sealed = sealab_json("seal", cwd=root)
    tag = sealed["tag"]
    remote_engine.docker("tag", base_image.image_id, tag)  # the name leads elsewhere, on the remote side
    proc = sealab("exec", "--json", cwd=root)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["status"] == "ok" and record["image_id"] == sealed["image_id"]
    assert remote_engine.docker("image", "inspect", "-f", "{{.Id}}", tag).stdout.strip() == sealed["image_id"]
    [event] = Ledger(root / ".sealab" / "ledger.db").events("displaced")
    assert event["foreign"] == base_image.image_id and event["experiment"] == record["id"]
    remote_engine.docker("tag", base_image.image_id, tag)  # again, now that the sealed image is there
    proc = sealab("exec", "--json", cwd=root)
    assert proc.returncode == 4, proc.stderr
    record = json.loads(proc.stdout)
    assert record["status"] == "rejected" and "nothing was started" in record["reason"]
    assert sealed["image_id"] in record["reason"] and "docker tag" in record["reason"]
    assert remote_engine.docker("ps", "-aq", "--filter", f"label=sealab.experiment={record['id']}").stdout == ""


def test_unreachable_remote_engine_is_one_line(make_workspace):
    root = make_workspace("gone")
    from agent.gitops import commit_file

    toml = (root / "sealab.toml").read_text().replace('name = "local"', 'name = "docker-host"\nurl = "unix:///nonexistent/docker.sock"')
    commit_file(open_repo(root), "sealab.toml", toml, "unreachable remote")
    proc = sealab("exec", cwd=root)
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "/nonexistent/docker.sock" in proc.stderr
