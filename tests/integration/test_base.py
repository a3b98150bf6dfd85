"""`sealab base` against the real Docker engine: build, run torch sealed, data manifest, reuse.

The base is built once per session (and reused across sessions through the recipe label and the
cache in SEALAB_CACHE_DIR / ~/.cache/sealab); a cold first run takes a minute or two. Set
SEALAB_WHEELS to a folder with a torch cp311 x86_64 wheel (default /opt/wheels).
"""

from __future__ import annotations

import io
import os
import tarfile
import time
from pathlib import Path

import pytest

from executor.image import docker_build
from executor.image.base import (
    BASE_TAG,
    LABEL_RECIPE,
    OFFLINE_SOURCE,
    PREPARE_DATA,
    Wheel,
    build_base,
    default_cache_dir,
    gather_wheels,
    recipe_hash,
    write_context,
)
from executor.errors import BaseImageError, EngineUnavailable
from executor.types import BaseImage, sha256_hex
from tests.conftest import unavailable

WHEELS = Path(os.environ.get("SEALAB_WHEELS", "/opt/wheels"))
SEALED = {"read_only": True, "user": "1000:1000", "network_mode": "none", "cap_drop": ["ALL"],
          "security_opt": ["no-new-privileges"],
          "tmpfs": {"/tmp": "rw,size=64m", "/home/sealab": "rw,size=64m,uid=1000,gid=1000,mode=0700"}}


@pytest.fixture(scope="session")
def api():
    try:
        return docker_build.connect(None)
    except EngineUnavailable as exc:
        unavailable(str(exc))


@pytest.fixture(scope="session")
def client(api):
    import docker

    return docker.from_env(version=api.api_version)


@pytest.fixture(scope="session")
def built(api) -> tuple[BaseImage, list[tuple[str, str]], float]:
    if not list(WHEELS.glob("torch-*cp311*.whl")):
        unavailable(f"no torch wheel in {WHEELS} (set SEALAB_WHEELS)")
    events: list[tuple[str, str]] = []
    started = time.monotonic()
    base = build_base(source=None, wheels_dir=WHEELS, cache_dir=default_cache_dir(), engine_client=api,
                      progress=lambda step, detail: events.append((step, detail)))
    return base, events, time.monotonic() - started


def _run(client, image: str, code: str) -> str:
    out = client.containers.run(image, ["python3", "-W", "error", "-c", code], remove=True, stderr=True, **SEALED)
    return out.decode()


# -- pure ---------------------------------------------------------------------------------------------

def test_recipe_hash_changes_with_dockerfile_bytes():
    """Any change to Dockerfile.train's bytes gives another recipe hash."""
    wheels = [("torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl", "ab" * 32)]
    one = recipe_hash(b"FROM ${BASE}\n", b"print()\n", "sha256:" + "0" * 64, wheels)
    two = recipe_hash(b"FROM ${BASE}\n\n", b"print()\n", "sha256:" + "0" * 64, wheels)
    assert one.startswith("sha256:") and one != two
    assert one == recipe_hash(b"FROM ${BASE}\n", b"print()\n", "sha256:" + "0" * 64, wheels)


def test_recipe_hash_covers_base_and_wheels_but_not_their_order():
    """The FROM image and each wheel's digest count; the order the wheels come in does not."""
    a, b = ("a-1-py3-none-any.whl", "11" * 32), ("b-1-py3-none-any.whl", "22" * 32)
    base = recipe_hash(b"d", b"p", "sha256:1", [a, b])
    assert base == recipe_hash(b"d", b"p", "sha256:1", [b, a])
    assert base != recipe_hash(b"d", b"p", "sha256:2", [a, b])
    assert base != recipe_hash(b"d", b"p", "sha256:1", [a, (b[0], "33" * 32)])
    assert base != recipe_hash(b"d", b"q", "sha256:1", [a, b])


def test_context_is_laid_out_like_the_repository(tmp_path):
    """The build context holds the Dockerfile, the data script and the wheels where Dockerfile.train COPYs them."""
    wheel = tmp_path / "x-1-py3-none-any.whl"
    wheel.write_bytes(b"wheel")
    buf = io.BytesIO()
    write_context(buf, b"dockerfile", b"script", [Wheel(wheel.name, wheel, sha256_hex(b"wheel"))])
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        names = tar.getnames()
        assert tar.extractfile("executor/scaffold/prepare_data.py").read() == b"script"
        assert {m.uid for m in tar.getmembers()} == {0}
    assert names[0] == "Dockerfile.train" and f"wheels/{wheel.name}" in names


def test_context_without_wheels_still_has_the_wheels_directory():
    """With no wheels (`--from` an image whose torch is kept) the context still holds `wheels/`, which
    Dockerfile.train COPYs: a missing directory fails the build."""
    buf = io.BytesIO()
    write_context(buf, b"dockerfile", b"script", [])
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        wheels = tar.getmember("wheels")
    assert wheels.isdir() and wheels.mode == 0o755


def test_unreachable_engine_is_engine_unavailable(monkeypatch):
    """A Docker host that does not answer raises EngineUnavailable, not a docker-py error."""
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/sealab-test.sock")
    with pytest.raises(EngineUnavailable):
        docker_build.connect(None)


# -- against the engine -------------------------------------------------------------------------------

@pytest.mark.docker
def test_base_builds(built, api):
    """The offline base builds and its description matches what the engine holds."""
    base, _events, _seconds = built
    info = api.inspect_image(BASE_TAG)
    assert info["Id"] == base.image_id
    assert info["Config"]["Labels"][LABEL_RECIPE] == base.recipe
    assert base.diff_ids == tuple(info["RootFS"]["Layers"]) and len(base.diff_ids) >= 2
    assert base.source == OFFLINE_SOURCE and (base.architecture, base.os) == ("amd64", "linux")
    for var in ("PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1", "PYTHONHASHSEED=0", "LANG=C.UTF-8",
                "HOME=/home/sealab"):
        assert var in base.env
    assert BaseImage.from_dict(base.to_dict()) == base


@pytest.mark.docker
def test_torch_imports_sealed_as_uid_1000(built, client):
    """torch imports without warnings as uid 1000 with a read-only root, no network, from precompiled .pyc files."""
    base, _, _ = built
    out = _run(client, base.image_id, (
        "import importlib.util, os, torch\n"
        "assert os.getuid() == 1000 and os.environ['HOME'] == '/home/sealab'\n"
        "assert os.path.exists(importlib.util.cache_from_source(torch.__file__)), 'torch .pyc missing'\n"
        "assert float((torch.ones(2, 2) @ torch.ones(2, 2)).sum()) == 8.0\n"
        "try:\n    open('/sealab-probe', 'w')\nexcept OSError as e:\n    print('ro', e.errno)\n"
        "print('torch', torch.__version__)\n"
    ))
    assert "ro 30" in out  # EROFS
    assert "torch 2." in out and "Warning" not in out


@pytest.mark.docker
def test_data_manifest_matches_digest(built, client):
    """/opt/sealab/data/manifest.json is readable by uid 1000 and hashes to the returned data digest."""
    base, _, _ = built
    out = _run(client, base.image_id, (
        "import hashlib, os\n"
        "d = '/opt/sealab/data'\n"
        "assert sorted(os.listdir(d)) == ['manifest.json', 'train.bin', 'val.bin'], os.listdir(d)\n"
        "with open(d + '/manifest.json', 'rb') as f:\n    print(hashlib.sha256(f.read()).hexdigest())\n"
    ))
    assert "sha256:" + out.strip() == base.data_digest


@pytest.mark.docker
def test_unchanged_inputs_reuse_the_image(built, api):
    """A second build_base with unchanged inputs returns the same image quickly, without building."""
    base, _, _ = built
    events: list[tuple[str, str]] = []
    started = time.monotonic()
    again = build_base(source=None, wheels_dir=WHEELS, cache_dir=default_cache_dir(), engine_client=api,
                       progress=lambda step, detail: events.append((step, detail)))
    elapsed = time.monotonic() - started
    assert again == base
    assert not [e for e in events if e[0] in ("build", "import")], events
    assert elapsed < 10, f"reuse took {elapsed:.1f} s"


@pytest.mark.docker
def test_from_image_with_torch_skips_the_wheels(built, api, tmp_path):
    """--from an image that already has torch builds without any wheels and keeps that torch."""
    base, _, _ = built
    events: list[tuple[str, str]] = []
    derived = build_base(source=base.image_id, wheels_dir=tmp_path, cache_dir=default_cache_dir(),
                         engine_client=api, progress=lambda step, detail: events.append((step, detail)),
                         tag="sealab/base-test-from:latest")
    assert derived.source == base.image_id and derived.data_digest == base.data_digest
    assert derived.diff_ids[: len(base.diff_ids)] == base.diff_ids
    built_lines = [d for s, d in events if s == "build"]
    assert not built_lines or any("already has torch" in line for line in built_lines)
    # The images of that build inherit the base's recipe label; they must not pass for the base.
    again = build_base(api, source=None, wheels_dir=WHEELS, cache_dir=default_cache_dir())
    assert again.image_id == base.image_id


@pytest.mark.docker
def test_missing_from_image_is_a_clear_error(api, tmp_path):
    """--from an image the engine does not have fails with a one-line hint to pull it."""
    with pytest.raises(BaseImageError, match="not present locally; docker pull it first"):
        build_base(source="sealab/absent-test-image:none", wheels_dir=tmp_path, cache_dir=tmp_path,
                   engine_client=api)


@pytest.mark.docker
def test_failed_build_reports_the_log_tail(built, api, tmp_path):
    """A failing Dockerfile raises BaseImageError whose log tail shows the failing step's output."""
    base, _, _ = built
    dockerfile = tmp_path / "Dockerfile.train"
    dockerfile.write_text(f"ARG BASE\nFROM ${{BASE}}\nRUN echo sealab-boom-{time.time_ns()} >&2; exit 3\n")
    with pytest.raises(BaseImageError) as caught:
        build_base(source=base.image_id, wheels_dir=tmp_path, cache_dir=tmp_path, engine_client=api,
                   dockerfile=dockerfile, tag="sealab/base-test-broken:latest")
    assert "sealab-boom-" in caught.value.log_tail and "\n" not in str(caught.value)


class _FakeBuildAPI:
    def __init__(self, records):
        self.records = records

    def build(self, **kwargs):
        return iter(self.records)


def test_build_stream_is_split_into_whole_lines():
    """Build output becomes whole lines without colour codes, even when a record ends mid-line."""
    lines: list[str] = []
    records = [{"stream": "Step 1/2 : RUN x\n"}, {"stream": "\x1b[91mpart"}, {"stream": "ial\n\x1b[0m"},
               {"aux": {"ID": "sha256:abc"}}, {"stream": "Successfully built abc\n"}]
    image = docker_build.build(_FakeBuildAPI(records), io.BytesIO(), dockerfile="D", tag="t:1", buildargs={},
                               labels={}, on_line=lines.append)
    assert image == "sha256:abc"
    assert lines == ["Step 1/2 : RUN x", "partial", "Successfully built abc"]


def test_build_error_record_is_base_image_error():
    """An `error` record fails the build with BaseImageError carrying the log tail."""
    records = [{"stream": "Step 1/1 : RUN false\n"}, {"stream": "boom"},
               {"error": "The command '/bin/sh -c false' returned a non-zero code: 1",
                "errorDetail": {"code": 1, "message": "The command '/bin/sh -c false' returned a non-zero code: 1"}}]
    with pytest.raises(BaseImageError, match="non-zero code: 1") as caught:
        docker_build.build(_FakeBuildAPI(records), io.BytesIO(), dockerfile="D", tag="t:1", buildargs={}, labels={})
    assert "boom" in caught.value.log_tail and "Step 1/1" in caught.value.log_tail


def test_own_labels_ignore_inherited_ones():
    """Only the LABEL steps at the top of an image's history count as its own build's labels."""
    nop = "/bin/sh -c #(nop)  "
    history = [{"CreatedBy": nop + "LABEL sealab.source=offline:bookworm"},
               {"CreatedBy": nop + "LABEL sealab.recipe=sha256:new"},
               {"CreatedBy": "/bin/sh -c python3 prepare_data.py"},
               {"CreatedBy": nop + "LABEL sealab.recipe=sha256:old"}]
    assert docker_build.own_labels(history) == {"sealab.source": "offline:bookworm", "sealab.recipe": "sha256:new"}
    assert docker_build.own_labels(history[2:]) == {}
    quoted = [{"CreatedBy": nop + "LABEL \"sealab.recipe\"='sha256:a' \"sealab.source\"='x'"}]
    assert docker_build.own_labels(quoted) == {"sealab.recipe": "sha256:a", "sealab.source": "x"}


@pytest.mark.docker
def test_base_rebuilt_from_scratch_has_the_same_id(built, tmp_path, monkeypatch):
    """A second root file system from mmdebstrap and a second assembly in fresh directories, with the
    host's python at another path and the wheels in another order, give the same layers and so the same
    base image ID: a fresh machine building from source gets this base."""
    import sys

    from executor.image import assemble, rootfs

    base, _, _ = built
    elsewhere = tmp_path / "bin" / "python3"
    elsewhere.parent.mkdir()
    elsewhere.symlink_to(sys.executable)
    monkeypatch.setattr(sys, "executable", str(elsewhere))  # pip writes this path into console scripts
    cached, _ = rootfs.ensure_rootfs(default_cache_dir())
    fresh, _ = rootfs.ensure_rootfs(tmp_path / "cache")  # mmdebstrap again, from nothing
    assert fresh != cached and assemble.file_digest(fresh) == assemble.file_digest(cached) == base.diff_ids[0]
    info = docker_build.connect(None).inspect_image(base.image_id)
    wheels = gather_wheels(WHEELS, default_cache_dir())
    image_id, _config, layers = assemble.assemble(
        rootfs_tar=fresh, wheels=[w.path for w in reversed(wheels)], prepare_data=PREPARE_DATA, work=tmp_path / "work",
        labels=info["Config"]["Labels"], progress=lambda step, detail: None)
    assert image_id == base.image_id and tuple(diff for diff, _ in layers) == base.diff_ids
