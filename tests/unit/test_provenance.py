"""Provenance export: the in-toto Statement v1 / SLSA provenance v1 of one experiment record."""

import copy
import json

import pytest

from executor.ledger import RECORD_KEYS, Ledger
from executor.provenance import latest_link, statement as statement_of, statement_bytes, statement_digest
from executor.record import ExperimentRecord, Finish, Results
from executor.types import BaseImage, Status
from tests.conftest import begin

IMAGE = "sha256:" + "a" * 64
BASE_ID = "sha256:" + "b" * 64
DATA = "sha256:" + "d" * 64
HARNESS = "sha256:" + "e" * 64
POLICY = "sha256:" + "f" * 64
CHAIN = "9" * 64
COMMIT, TREE, TRAIN_BLOB = "c" * 40, "7" * 40, "5" * 40
BASE = BaseImage(BASE_ID, ("sha256:" + "1" * 64,), ("PATH=/usr/bin",), ("python3",), "recipe-1", DATA,
                 "offline:bookworm")


def statement(record: dict, **kw) -> dict:
    """The statement of a record given as it is stored (decoded by the codec first, as the CLI does)."""
    return statement_of(ExperimentRecord.from_dict(record), **kw)


def make_record() -> dict:
    record = {
        "id": "20240101-000000-abcd", "commit": COMMIT, "parent": "p" * 40, "tree": TREE,
        "description": "raise SCALAR_LR", "image_id": IMAGE, "base_image_id": BASE_ID, "data_digest": DATA,
        "run_spec": {"metric": "val_bpb", "direction": "minimize", "train_seconds": 60, "grace_seconds": 60},
        "status": "ok", "reason": None, "metrics": {"val_bpb": 1.234567}, "peak_memory_mb": 512.5,
        "exit_code": 0, "durations": {"seal": 0.1, "verify": 0.2, "run": 61.0, "total": 61.5},
        "drift": [{"path": "train.py", "changes": ["SCALAR_LR = 0.5 -> 0.3"], "patch": "..."}],
        "log_path": ".sealab/logs/x.log", "created_at": "2024-01-01T00:00:00.000Z",
        "proposal": {"proposer": "offline", "description": "raise SCALAR_LR", "usage": {"input_tokens": 0},
                     "prompt_digest": "sha256:" + "3" * 64},
        "decision": "keep", "run_tag": "night1", "harness": HARNESS, "train_blob": TRAIN_BLOB,
    }
    assert set(RECORD_KEYS) - {"record_version"} <= set(record)  # a record from before record_version
    return record


def full(record: dict | None = None, **kw) -> dict:
    kw = {"base": BASE.to_dict(), "policy_digest": POLICY, "chain_hash": CHAIN, **kw}
    return statement(record if record is not None else make_record(), **kw)


def materials(stmt: dict) -> dict:
    return {m["name"]: m for m in stmt["predicate"]["buildDefinition"]["resolvedDependencies"]}


def test_shape_and_materials():
    """A full record gives the Statement v1 envelope, the SLSA predicate and every material."""
    stmt = full()
    assert stmt["_type"] == "https://in-toto.io/Statement/v1"
    assert stmt["predicateType"] == "https://slsa.dev/provenance/v1"
    assert stmt["subject"] == [{"name": f"sealab/exp@{IMAGE}", "digest": {"sha256": "a" * 64}}]
    bd = stmt["predicate"]["buildDefinition"]
    assert bd["buildType"] == "https://sealab.dev/experiment/v1"
    assert bd["externalParameters"] == {"commit": COMMIT, "run_spec": make_record()["run_spec"],
                                        "description": "raise SCALAR_LR"}
    assert bd["internalParameters"] == {"base_image_id": BASE_ID, "data_digest": DATA}
    m = materials(stmt)
    assert m["commit"] == {"name": "commit", "uri": "git+commit", "digest": {"gitCommit": COMMIT}}
    assert m["tree"]["digest"] == {"gitTree": TREE}
    assert m["base"]["digest"] == {"sha256": "b" * 64}
    assert m["base"]["annotations"] == {"source": "offline:bookworm", "recipe": "recipe-1"}
    assert m["harness"]["digest"] == {"sha256": "e" * 64}
    assert m["train.py"]["digest"] == {"gitBlob": TRAIN_BLOB}
    assert m["data"]["digest"] == {"sha256": "d" * 64}
    assert m["policy"]["digest"] == {"sha256": "f" * 64}
    assert m["proposer"] == {"name": "proposer",
                             "annotations": {"proposer": "offline", "prompt_digest": "sha256:" + "3" * 64}}
    rd = stmt["predicate"]["runDetails"]
    assert rd["builder"] == {"id": "https://sealab.dev/executor"}
    assert rd["metadata"] == {"invocationId": "20240101-000000-abcd", "startedOn": "2024-01-01T00:00:00.000Z"}
    products = {b["name"]: b for b in rd["byproducts"]}
    results = products["results"]["annotations"]
    assert results["status"] == "ok" and results["metrics"] == {"val_bpb": 1.234567}
    assert results["peak_memory_mb"] == 512.5 and results["durations"]["run"] == 61.0
    assert results["decision"] == "keep" and results["drift"] == 1
    assert products["ledger-chain"]["digest"] == {"sha256": CHAIN}


def test_deterministic():
    """The same record gives identical canonical bytes and digest, whatever its key order."""
    record = make_record()
    shuffled = dict(reversed(list(copy.deepcopy(record).items())))
    a, b = statement_bytes(full(record)), statement_bytes(full(shuffled))
    assert a == b and json.loads(a) == full(record)
    assert b" " not in a.replace(b"raise SCALAR_LR", b"").replace(b"SCALAR_LR = 0.5 -> 0.3", b"")
    assert statement_digest(full(record)) == statement_digest(full(shuffled))
    assert statement_digest(full(record)).startswith("sha256:")


def test_registry_digest_adds_subject():
    """A registry digest, given or in the record, adds a second subject."""
    pushed = "registry.example/sealab/exp@sha256:" + "4" * 64
    for stmt in (full(registry_digest=pushed), full({**make_record(), "registry_digest": pushed})):
        assert stmt["subject"][1] == {"name": "registry.example/sealab/exp", "digest": {"sha256": "4" * 64}}
    assert len(full()["subject"]) == 1


def test_missing_parts_are_omitted():
    """Optional parts absent from the record or arguments are left out, never null."""
    record = make_record()
    for key in ("harness", "train_blob", "proposal", "decision", "run_tag"):
        del record[key]
    record.update(reason=None, peak_memory_mb=None)
    stmt = statement(record)
    assert set(materials(stmt)) == {"commit", "tree", "base", "data"}
    assert "annotations" not in materials(stmt)["base"]
    products = {b["name"]: b for b in stmt["predicate"]["runDetails"]["byproducts"]}
    assert set(products) == {"results"}
    assert not {"decision", "reason", "peak_memory_mb"} & set(products["results"]["annotations"])
    assert b"null" not in statement_bytes(stmt)


@pytest.mark.parametrize("change", [
    {"commit": "0" * 40}, {"tree": "0" * 40}, {"base_image_id": "sha256:" + "0" * 64},
    {"harness": "sha256:" + "0" * 64}, {"train_blob": "0" * 40}, {"data_digest": "sha256:" + "0" * 64},
    {"proposal": {"proposer": "claude", "prompt_digest": "sha256:" + "3" * 64}}, {"policy_digest": "sha256:" + "0" * 64},
])
def test_digest_changes_with_any_material(change):
    """Changing any one material changes the statement digest."""
    before = statement_digest(full())
    if "policy_digest" in change:
        after = statement_digest(full(**change))
    else:
        after = statement_digest(full({**make_record(), **change}))
    assert after != before


def test_latest_link_is_the_records_last_chain_hash(tmp_path):
    """latest_link returns the chain hash of a record's latest write, and None for an unknown id."""
    ledger = Ledger(tmp_path / "l.db")
    begin(ledger, "owner", id="e1", commit=COMMIT, created_at="t")
    first = latest_link(ledger, "e1")
    ledger.finish("e1", Finish(Status.OK))
    last = ledger.db.execute("SELECT hash FROM chain ORDER BY seq DESC LIMIT 1").fetchone()[0]
    assert first and latest_link(ledger, "e1") == last != first
    assert latest_link(ledger, "nope") is None


def test_cli_provenance(tmp_path):
    """`sealab provenance ID` prints the statement as JSON; an unknown id is a one-line exit 2."""
    from agent.create import init
    from executor import git_source, owner
    from tests.conftest import sealab

    ws = init(tmp_path / "ws")
    ledger = Ledger(ws.ledger_path)
    ledger.set_base(BASE)
    head = git_source.head_commit(ws.git)
    begin(ledger, owner.token(), id="exp1", commit=head, tree=git_source.tree_of(ws.git, head), description="baseline",
          base_image_id=BASE_ID, data_digest=DATA, created_at="2024-01-01T00:00:00.000Z")
    ledger.finish("exp1", Finish(Status.OK, image_id=IMAGE, results=Results(metrics={"val_bpb": 2.0}, drift=[])))
    ledger.close()

    proc = sealab("provenance", "exp1", cwd=ws.root)
    assert proc.returncode == 0, proc.stderr
    stmt = json.loads(proc.stdout)
    assert stmt["predicate"]["runDetails"]["metadata"]["invocationId"] == "exp1"
    assert materials(stmt)["commit"]["digest"] == {"gitCommit": head}
    assert materials(stmt)["base"]["annotations"]["source"] == "offline:bookworm"
    assert materials(stmt)["policy"]["digest"]["sha256"]  # the workspace's policy file
    assert {b["name"] for b in stmt["predicate"]["runDetails"]["byproducts"]} == {"results", "ledger-chain"}

    out = tmp_path / "stmt.json"
    assert sealab("provenance", "exp1", "-o", str(out), cwd=ws.root).returncode == 0
    assert json.loads(out.read_text()) == stmt

    missing = sealab("provenance", "nope", cwd=ws.root)
    assert missing.returncode == 2 and missing.stdout == ""
    assert len(missing.stderr.strip().splitlines()) == 1 and "nope" in missing.stderr
