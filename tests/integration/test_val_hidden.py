"""No validation data inside experiment images: the seal's whiteout, checked on a real engine."""

from __future__ import annotations

import hashlib
import json

import pytest

from executor import config, git_source, valdata
from executor.docker_engine import LABEL_EXPERIMENT, LABEL_READER, prepare_out_dir
from executor.errors import BaseImageError
from executor.image.seal import seal
from executor.types import Resources

pytestmark = pytest.mark.docker

LIST_DATA = ("python3", "-c", "import os; print(sorted(os.listdir('/opt/sealab/data')));"
             "print(os.path.exists('/opt/sealab/data/val.bin'))")


def sealed_hidden(root, base_image):
    facts = git_source.resolve(git_source.open_repo(root), "HEAD")
    toml = next(f.data for f in facts.files if f.path == config.CONFIG_NAME)
    return seal(facts, base_image, config.parse(toml, "sealab.toml").run_spec, hide_val=True)


def test_sealed_image_has_no_val_split(make_workspace, engine, base_image, tmp_path):
    """An image sealed with hide_val has no /opt/sealab/data/val.bin, seen from a container and from the engine;
    the base keeps it, and the scorer reads it from there, checked against the data digest."""
    sealed = sealed_hidden(make_workspace(), base_image)
    engine.load(sealed.archive(), sealed.image_id)
    try:
        with pytest.raises(BaseImageError, match="has no /opt/sealab/data/val.bin"):
            engine.read_file(sealed.image_id, "/opt/sealab/data/val.bin")
        manifest = engine.read_file(sealed.image_id, "/opt/sealab/data/manifest.json")
        assert "sha256:" + hashlib.sha256(manifest).hexdigest() == base_image.data_digest
        out = tmp_path / "out"
        prepare_out_dir(out)
        container = engine.create(sealed.image_id, name=f"sealab-valtest-{sealed.image_id[7:19]}",
                                  resources=Resources(memory_mb=512, cpus=1.0), out_dir=out, env={},
                                  labels={LABEL_EXPERIMENT: "valtest"}, command=LIST_DATA)
        try:
            engine.start(container)
            assert engine.wait(container, 60).exit_code == 0
            listing, exists = engine.logs(container).decode().splitlines()[-2:]
        finally:
            engine.remove(container)
        assert listing == "['manifest.json', 'train.bin']" and exists == "False"
    finally:
        engine.remove_image(sealed.image_id)
    val = valdata.load_val(engine, base_image.image_id, base_image.data_digest, tmp_path / "cache")
    entry = json.loads(manifest)["val"]
    assert len(val) == entry["bytes"] and hashlib.sha256(val).hexdigest() == entry["sha256"]
    assert engine.api.containers(all=True, filters={"label": LABEL_READER}) == []

