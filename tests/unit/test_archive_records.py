"""`sealab import` of an archive whose checksums match but whose records are malformed (edited by hand,
checksums recomputed): one WorkspaceError line (exit 2), nothing imported; no engine is reached. Each
record goes through the record codec (executor.record), as every reader that acts on one does."""

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from executor.archive import BASES, FORMAT_VERSION, IMAGES, MANIFEST, RECORDS, import_archive
from executor.errors import WorkspaceError
from executor.ledger import Ledger

GOOD = {"id": "e1", "commit": "c" * 40, "image_id": "sha256:" + "a" * 64, "status": "ok", "run_spec": {}}


def archive(tmp_path: Path, records) -> Path:
    members = {RECORDS: json.dumps(records).encode(), BASES: b"[]", IMAGES: b""}
    manifest = {"format": FORMAT_VERSION, "experiments": ["e1"], "images": [],
                "sha256": {name: "sha256:" + hashlib.sha256(data).hexdigest() for name, data in members.items()}}
    path = tmp_path / "edited.sealab.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in {MANIFEST: json.dumps(manifest).encode(), **members}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("records, said", [
    ({"e1": GOOD}, "records.json is not a list of records"),
    (["e1"], "record 0 of records.json is not a JSON object"),
    ([{**GOOD, "id": 7}], "record 0 (7) of records.json has no valid id (expected a string, found int)"),
    ([{k: v for k, v in GOOD.items() if k != "image_id"}], "has no valid image_id"),
    ([{**GOOD, "run_spec": "fast"}], "has no valid run_spec (expected a table, found str)"),
    ([{**GOOD, "metrics": "0.9"}], "has no valid metrics (expected a table, found str)"),  # the record codec's
    ([{**GOOD, "status": "exploded"}], "has no valid status (expected one of running, ok"),
    ([{**GOOD, "status": "running"}], "has no valid status (expected a finished status, found 'running')"),
])
def test_malformed_records_are_one_line_and_nothing_is_imported(tmp_path, records, said):
    ledger = Ledger(tmp_path / "ledger.db")
    with pytest.raises(WorkspaceError) as refused:
        import_archive(ledger, None, archive(tmp_path, records))
    assert said in str(refused.value) and "\n" not in str(refused.value)
    assert ledger.records() == [] and WorkspaceError.exit_code == 2
