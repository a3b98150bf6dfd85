"""Image tampering: whatever sits behind an experiment image's name, or disappears from the engine
between verification and start, nothing starts unless it is exactly the sealed image."""

from __future__ import annotations

import json
import time

import git
import pytest

from executor.image.layer import Entry, image_config, image_id, layer_tar, load_archive
from executor.image.seal import USER, WORKDIR
from executor.types import sha256_hex
from tests.attacks.conftest import committed_train, containers_of
from tests.conftest import commit_train, sealab, sealab_json

pytestmark = pytest.mark.docker


def container_events(engine, experiment_id: str, since: float) -> list:
    """Every container event (create, start, …) of the experiment since `since`: none means none created."""
    return list(engine.api.events(since=int(since) - 1, until=int(time.time()) + 1, decode=True,
                                  filters={"type": "container", "label": f"sealab.experiment={experiment_id}"}))


def load(engine, config: bytes, layer: bytes, base_diff_ids, tag: str | None) -> str:
    engine.client.images.load(load_archive(config, layer, base_diff_ids, tag))
    return image_id(config)


def experiment_config(base_diff_ids, layer: bytes, env, labels, cmd=("python3", "/workspace/prepare.py")) -> bytes:
    """A config shaped like a sealed one (user, workdir, history): base layers plus `layer`."""
    return image_config(diff_ids=[*base_diff_ids, "sha256:" + sha256_hex(layer)], env=env, cmd=cmd, labels=labels,
                        user=USER, workdir=WORKDIR)


def retagged(engine, root, sealed):
    """Another experiment's (real, sealed) image given this one's name."""
    commit_train(root, (root / "train.py").read_text() + "\n# another commit\n", "another commit")
    other = sealab_json("seal", cwd=root)
    git.Repo(root).git.reset("-q", "--hard", "HEAD~1")
    engine.tag(other["image_id"], sealed["tag"])
    return other["image_id"], False


def forged_labels(engine, root, sealed):
    """The sealed layer under labels claiming another commit (what `docker build --label` could make)."""
    base = engine.api.inspect_image(sealed["labels"]["sealab.base"])
    layer = engine_layer(engine, sealed)
    labels = {**sealed["labels"], "org.opencontainers.image.revision": "0" * 40}
    config = experiment_config(base["RootFS"]["Layers"], layer, base["Config"]["Env"], labels)
    return load(engine, config, layer, base["RootFS"]["Layers"], sealed["tag"]), True


def modified_layer(engine, root, sealed):
    """The sealed labels over a layer whose train.py and prepare.py are someone else's."""
    base = engine.api.inspect_image(sealed["labels"]["sealab.base"])
    layer = layer_tar([Entry("/workspace/train.py", b"print('forged')\n"),
                       Entry("/workspace/prepare.py", b"print('forged')\n")])
    config = experiment_config(base["RootFS"]["Layers"], layer, base["Config"]["Env"], sealed["labels"])
    return load(engine, config, layer, base["RootFS"]["Layers"], sealed["tag"]), True


def other_base(engine, root, sealed):
    """The commit's own layer and the sealed labels, on a base with one more layer (a sitecustomize.py
    that would run before the harness): a different base behind the same names and labels."""
    base = engine.api.inspect_image(sealed["labels"]["sealab.base"])
    evil = layer_tar([Entry("/usr/lib/python3/dist-packages/sitecustomize.py", b"print('pwned')\n")])
    evil_config = experiment_config(base["RootFS"]["Layers"], evil, base["Config"]["Env"], {}, cmd=["python3"])
    evil_base = load(engine, evil_config, evil, base["RootFS"]["Layers"], None)
    diff_ids = [*base["RootFS"]["Layers"], "sha256:" + sha256_hex(evil)]
    layer = engine_layer(engine, sealed)
    config = experiment_config(diff_ids, layer, base["Config"]["Env"], sealed["labels"])
    forged = load(engine, config, layer, diff_ids, sealed["tag"])
    return forged, evil_base


def engine_layer(engine, sealed) -> bytes:
    """The sealed image's own top layer, recomputed from the commit (as sealab does)."""
    from executor.git_source import resolve
    from executor.ledger import Ledger
    from executor.image.seal import seal
    from executor.types import RunSpec
    from executor.workspace import Workspace

    ws = Workspace.open(sealed["root"])
    facts = resolve(ws.git, sealed["commit"])
    spec = ws.config().run_spec
    made = seal(facts, Ledger(ws.ledger_path).current_base(), spec)
    assert made.image_id == sealed["image_id"] and isinstance(spec, RunSpec)
    return made.layer


@pytest.mark.parametrize("tamper", [retagged, forged_labels, modified_layer, other_base], ids=lambda f: f.__name__)
def test_tampered_image_is_refused(tiny_workspace, engine, tamper):
    """Retagged image, forged labels, a modified layer, another base: `rejected` (exit 4) naming the
    sealed and the actual ID; no container is ever created; no result."""
    root = tiny_workspace()
    sealed = {**sealab_json("seal", cwd=root), "root": root}
    forged, extra = tamper(engine, root, sealed)
    try:
        assert engine.image_id(sealed["tag"]) == forged != sealed["image_id"]
        since = time.time()
        proc = sealab("exec", "--json", cwd=root)
        assert proc.returncode == 4, proc.stderr
        record = json.loads(proc.stdout)
        assert record["status"] == "rejected" and "nothing was started" in record["reason"]
        assert sealed["image_id"] in record["reason"] and forged in record["reason"]
        assert "run" not in record["durations"] and record["metrics"] in ({}, None)
        assert not (root / ".sealab" / "outputs" / record["id"] / "result.json").exists()
        assert containers_of(engine, record["id"]) == []
        assert container_events(engine, record["id"], since) == []
        report = sealab_json("verify", "--all", cwd=root, ok_codes=(1,))
        assert any(m["field"].startswith("engine image sealab/exp:") for m in report["mismatches"])
    finally:
        engine.remove_image(forged)
        if isinstance(extra, str):
            engine.remove_image(extra)


def test_image_deleted_between_verification_and_start(tiny_workspace, engine, monkeypatch):
    """The image disappears after it was verified, just before the container is created from it:
    `rejected`, nothing created, no result."""
    from executor.docker_engine import Engine
    from executor.ledger import Ledger
    from executor.run import execute
    from executor.workspace import Workspace

    root = tiny_workspace()
    sealed = sealab_json("seal", cwd=root)
    create = Engine.create

    def delete_then_create(self, image, **kwargs):
        self.remove_image(image)
        return create(self, image, **kwargs)

    monkeypatch.setattr(Engine, "create", delete_then_create)
    ws = Workspace.open(root)
    since = time.time()
    record = execute(ws, "HEAD", engine, Ledger(ws.ledger_path)).to_dict()
    assert record["status"] == "rejected" and "gone from the engine" in record["reason"]
    assert record["image_id"] == sealed["image_id"] and "run" not in record["durations"]
    assert containers_of(engine, record["id"]) == [] and container_events(engine, record["id"], since) == []
    assert not (root / ".sealab" / "outputs" / record["id"] / "result.json").exists()


def test_name_swapped_after_verification_still_runs_the_sealed_image(tiny_workspace, engine, monkeypatch):
    """The name is pointed at a forged image after verification: the container is created by ID, so
    the sealed image runs (its own train.py, read back) and the forgery never does."""
    from executor.image.docker_build import read_file
    from executor.docker_engine import Engine

    root = tiny_workspace()
    sealed = {**sealab_json("seal", cwd=root), "root": root}
    forged, _ = modified_layer(engine, root, sealed)
    engine.tag(sealed["image_id"], sealed["tag"])  # back to the real image, for the verification
    create = Engine.create
    swapped = []

    def swap_then_create(self, image, **kwargs):
        self.tag(forged, sealed["tag"])  # the name leads to the forgery while the container is created
        swapped.append(image)
        try:
            return create(self, image, **kwargs)
        finally:
            self.tag(sealed["image_id"], sealed["tag"])

    monkeypatch.setattr(Engine, "create", swap_then_create)
    from executor.ledger import Ledger
    from executor.run import execute
    from executor.workspace import Workspace

    ws = Workspace.open(root)
    try:
        record = execute(ws, "HEAD", engine, Ledger(ws.ledger_path)).to_dict()
        assert swapped and set(swapped) == {sealed["image_id"]}  # by ID, each phase
        assert record["status"] == "ok" and record["image_id"] == sealed["image_id"]
        assert record["metrics"]["hyperparameters"]["MARK"] == 0
        committed = committed_train(root, "HEAD").encode()
        assert read_file(engine.api, record["image_id"], "/workspace/train.py") == committed
    finally:
        engine.remove_image(forged)


def test_name_left_on_a_foreign_image_after_the_sealed_one_was_removed(tiny_workspace, engine):
    """The sealed image removed, its name left on another image: the next run seals the commit again
    (same ID), takes the name back and runs; the foreign image is recorded as displaced, and kept."""
    from executor.ledger import Ledger

    root = tiny_workspace()
    sealed = {**sealab_json("seal", cwd=root), "root": root}
    engine.remove_image(sealed["image_id"])
    foreign, _ = retagged(engine, root, sealed)
    assert engine.image_id(sealed["image_id"]) is None and engine.image_id(sealed["tag"]) == foreign
    proc = sealab("exec", "--json", cwd=root)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["status"] == "ok" and record["image_id"] == sealed["image_id"]
    assert engine.image_id(sealed["tag"]) == sealed["image_id"] and engine.image_id(foreign) == foreign
    events = Ledger(root / ".sealab" / "ledger.db").events("displaced")
    assert [(e["experiment"], e["name"], e["foreign"], e["image"]) for e in events] == [
        (record["id"], sealed["tag"], foreign, sealed["image_id"])]
    assert "displaced" in proc.stderr and foreign in proc.stderr
    assert sealab_json("verify", "--all", cwd=root)["mismatches"] == []
