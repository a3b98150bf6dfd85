"""`sealab push` and `sealab reproduce REPO@sha256:…`: images travel through a registry by digest, never by tag."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path

import git
import pytest

from tests.conftest import sealab, sealab_json, unavailable
from tests.integration.test_reproduce import step_budget_workspace

pytestmark = pytest.mark.docker

REGISTRY_BIN = "/usr/bin/docker-registry"  # Debian package `docker-registry` (distribution's registry v2)
MANIFEST_TYPES = ("application/vnd.docker.distribution.manifest.v2+json,"
                  "application/vnd.oci.image.manifest.v1+json")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def registry(tmp_path_factory, engine):
    """A throwaway registry v2 on 127.0.0.1 (insecure by default for the engine), for the whole session."""
    binary = shutil.which("docker-registry") or (REGISTRY_BIN if os.path.exists(REGISTRY_BIN) else None)
    if binary is None:
        unavailable("docker-registry is not installed (apt-get install docker-registry)")
    root = tmp_path_factory.mktemp("registry")
    port = _free_port()
    config = root / "config.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
                      f"  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n")
    log = (root / "registry.log").open("wb")
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v2/"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"docker-registry did not start: {(root / 'registry.log').read_text()[-2000:]}")
            time.sleep(0.2)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def _tag_digest(registry: str, repo: str, tag: str) -> str:
    """The manifest digest a registry tag points to now (asked of the registry, not the engine)."""
    req = urllib.request.Request(f"http://{registry}/v2/{repo}/manifests/{tag}", method="HEAD",
                                 headers={"Accept": MANIFEST_TYPES})
    with urllib.request.urlopen(req, timeout=10) as res:
        return res.headers["Docker-Content-Digest"]


def _tiny_image(engine, repo: str, tag: str) -> str:
    """Import a one-file image as `repo:tag`; returns its ID."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        info = tarfile.TarInfo("impostor.txt")
        payload = f"not the experiment {time.time_ns()}\n".encode()
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    engine.api.import_image_from_data(data.getvalue(), repository=repo, tag=tag)
    return engine.image_id(f"{repo}:{tag}")


def test_reproduce_by_digest_pulls_and_ignores_moved_tag(make_workspace, engine, registry):
    """Pushed, deleted locally, its tag moved to another image: reproduce by digest pulls the recorded image and is exact."""
    root = step_budget_workspace(make_workspace, steps=5)
    record = sealab_json("exec", cwd=root)
    assert record["status"] == "ok"
    repo = f"{registry}/sealab-test"
    proc = sealab("push", record["id"], "--registry", repo, cwd=root, timeout=600, check=True)
    ref = proc.stdout.strip()
    assert ref.startswith(f"{repo}@sha256:") and len(ref.rpartition("@")[2]) == 71
    stored = next(r for r in sealab_json("status", cwd=root) if r["id"] == record["id"])
    assert stored["registry_digest"] == ref
    assert sealab_json("verify", "--all", cwd=root)["mismatches"] == []  # the annotation keeps the chain whole

    # Move the registry tag to another image, then delete the experiment image (by ID) locally.
    tag = f"{record['commit'][:12]}-{record['image_id'].removeprefix('sha256:')[:12]}"
    assert _tag_digest(registry, "sealab-test", tag) == ref.rpartition("@")[2]
    impostor = _tiny_image(engine, repo, tag)
    try:
        digest, problem = engine.push_image(repo, tag)
        assert problem is None and digest and digest != ref.rpartition("@")[2]
        assert _tag_digest(registry, "sealab-test", tag) == digest
    finally:
        engine.remove_image(impostor)
    engine.remove_image(record["image_id"])
    assert engine.image_id(record["image_id"]) is None

    report = sealab_json("reproduce", ref, cwd=root)
    assert report["experiment"] == record["id"] and report["verdict"] == "exact"
    assert report["values"] == [record["metrics"]["val_bpb"]]
    assert engine.image_id(record["image_id"]) == record["image_id"]
    assert ref in engine.repo_digests(record["image_id"])  # it came back by this digest, not re-sealed


def test_digest_missing_from_registry_is_one_line_error(make_workspace, engine, registry):
    """A recorded digest the registry does not hold, or an unrecorded one, is a one-line error and nothing runs."""
    from executor.ledger import Ledger
    from executor.record import Finish, Results
    from executor.types import Status
    from tests.conftest import begin

    root = make_workspace()
    missing = f"{registry}/sealab-test@sha256:{'0' * 64}"
    proc = sealab("reproduce", missing, cwd=root)
    assert proc.returncode == 2 and "no experiment pushed as" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1

    ledger = Ledger(root / ".sealab" / "ledger.db")
    head = git.Repo(root).head.commit.hexsha
    begin(ledger, id="feedfacecafe", commit=head, image_id="sha256:" + "1" * 64, run_spec={"metric": "val_bpb"},
          created_at="2020-01-01T00:00:00.000Z")
    ledger.finish("feedfacecafe", Finish(Status.OK, results=Results(metrics={"val_bpb": 1.0}, drift=[])))
    ledger.record_push("feedfacecafe", missing)
    proc = sealab("reproduce", missing, cwd=root)
    assert proc.returncode == 3 and "pull of" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert [r["id"] for r in sealab_json("status", cwd=root)] == ["feedfacecafe"]
    assert not Path(root / ".sealab" / "outputs").exists() or not any((root / ".sealab" / "outputs").iterdir())
