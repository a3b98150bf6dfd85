"""`sealab export` / `sealab import`: experiments travel with their images, base and records, IDs intact."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import git
import pytest

from tests.conftest import sealab, sealab_json

pytestmark = pytest.mark.docker

BASE_TAG = "sealab/base:latest"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, base_image, engine):
    """A step-budget workspace with two experiments (two commits) and their exported archive."""
    from agent.gitops import commit_file, set_constant
    from executor.ledger import Ledger
    from agent.create import init

    tmp = tmp_path_factory.mktemp("archive")
    ws = init(tmp / "origin")
    Ledger(ws.ledger_path).set_base(base_image)
    toml = set_constant(set_constant((ws.root / "sealab.toml").read_text(), "train_seconds", "60"), "grace_seconds", "60")
    toml = toml.replace("grace_seconds = 60", "grace_seconds = 60\nsteps = 5", 1)
    commit_file(ws.git, "sealab.toml", toml, "train 5 steps")
    first = sealab_json("exec", cwd=ws.root)
    commit_file(ws.git, "train.py", (ws.root / "train.py").read_text() + "\n# a second commit\n", "second")
    second = sealab_json("exec", cwd=ws.root)
    assert first["status"] == second["status"] == "ok" and first["image_id"] != second["image_id"]
    archive = tmp / "x.tar"
    started = time.monotonic()
    proc = sealab("export", first["id"], second["id"], "-o", str(archive), cwd=ws.root, check=True, timeout=900)
    print(f"\nexport: {archive.stat().st_size / 1e9:.2f} GB in {time.monotonic() - started:.1f} s: {proc.stdout.strip()}")
    assert str(archive) in proc.stdout and str(archive.stat().st_size) in proc.stdout
    return {"root": ws.root, "records": [first, second], "archive": archive, "tmp": tmp}


def fresh_clone(exported, name: str) -> Path:
    """A new workspace: a git clone of the origin (so the commits exist) with an empty ledger."""
    from executor.ledger import Ledger

    root = exported["tmp"] / name
    git.Repo.clone_from(exported["root"], root)
    (root / ".git" / "info" / "exclude").write_text("/.sealab/\n")
    Ledger(root / ".sealab" / "ledger.db").close()
    return root


def remove_with_descendants(engine, image: str) -> None:
    """Force-remove an image after the images built on top of it (which would block its removal)."""
    for child in engine.child_images(image):
        remove_with_descendants(engine, child)
    engine.remove_image(image)


def test_export_remove_import_reproduces(exported, engine, base_image):
    """Export, remove every sealab image from the engine, import: the same image IDs, and reproduce passes."""
    from executor.image.seal import image_tag

    first, second = exported["records"]
    images = [base_image.image_id, first["image_id"], second["image_id"]]
    root = fresh_clone(exported, "imported")
    base_was_tagged = engine.image_id(BASE_TAG) == base_image.image_id
    try:
        for image in images[1:]:
            engine.remove_image(image)
        remove_with_descendants(engine, base_image.image_id)
        assert [engine.image_id(i) for i in images] == [None, None, None]
        started = time.monotonic()
        proc = sealab("import", str(exported["archive"]), cwd=root, check=True, timeout=900)
        print(f"\nimport: {time.monotonic() - started:.1f} s: {proc.stdout.strip()}")
    finally:  # the base is shared by the whole session: put it back whatever happened above
        if engine.image_id(base_image.image_id) is None:
            with tarfile.open(exported["archive"]) as tar:
                engine.load_stream(iter(lambda fh=tar.extractfile("images.tar"): fh.read(1 << 20), b""))
        if base_was_tagged:
            engine.tag(base_image.image_id, BASE_TAG)
    assert [engine.image_id(i) for i in images] == images
    for rec in (first, second):
        assert engine.image_id(image_tag(rec["commit"], rec["image_id"])) == rec["image_id"]
    assert sealab_json("status", cwd=root) == [first, second]
    report = sealab_json("verify", "--all", cwd=root)
    assert report["checked"] == 2 and report["mismatches"] == []
    rerun = sealab_json("reproduce", first["id"], cwd=root)
    assert rerun["verdict"] == "exact" and rerun["values"] == [first["metrics"]["val_bpb"]]


def test_import_twice_adds_records_once(exported):
    """Importing the same archive twice leaves one copy of each record and a clean hash chain."""
    root = fresh_clone(exported, "twice")
    ids = [r["id"] for r in exported["records"]]
    sealab("import", str(exported["archive"]), cwd=root, check=True, timeout=900)
    proc = sealab("import", str(exported["archive"]), cwd=root, check=True, timeout=900)
    assert "imported 0 experiment(s)" in proc.stdout and "already present 2" in proc.stdout
    assert [r["id"] for r in sealab_json("status", cwd=root)] == ids
    assert sealab_json("verify", "--all", cwd=root)["mismatches"] == []


def test_tampered_archive_is_refused(exported):
    """An archive whose records.json differs by one byte from its manifest is refused in one line, importing nothing."""
    tampered = exported["tmp"] / "tampered.tar"
    shutil.copyfile(exported["archive"], tampered)
    with tarfile.open(tampered) as tar:
        offset = tar.getmember("records.json").offset_data + 10
    with tampered.open("r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x01]))
    root = fresh_clone(exported, "tampered")
    proc = sealab("import", str(tampered), cwd=root)
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "records.json" in proc.stderr and "sha256" in proc.stderr
    assert sealab_json("status", cwd=root) == []
    assert subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout == ""
