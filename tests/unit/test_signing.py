"""Signed provenance: `sealab keygen`, `sealab provenance --sign` and `sealab verify --provenance`, and the
envelope checked by securesystemslib's own DSSE verifier; an edited envelope and a wrong key fail with
the reason; a key inside a workspace is refused."""

from __future__ import annotations

import base64
import json
import stat

import pytest
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import SSlibKey

from agent.create import init
from executor.ledger import Ledger
from executor.provenance import statement, statement_bytes
from executor.record import ExperimentRecord, Finish, Results
from executor.signing import NotVerified, SigningError, keygen, sign, verify
from executor.types import Status
from tests.conftest import begin, sealab

COMMIT = "c" * 40
IMAGE = "sha256:" + "a" * 64


def _record(ledger: Ledger, eid: str = "0123456789") -> ExperimentRecord:
    begin(ledger, id=eid, commit=COMMIT, description="raise SCALAR_LR", base_image_id="sha256:" + "b" * 64,
          run_spec={"metric": "val_bpb", "direction": "minimize"}, created_at="2026-12-07T00:00:00.000Z")
    return ledger.finish(eid, Finish(Status.OK, None, image_id=IMAGE, durations={"total": 1.0},
                                     results=Results(metrics={"val_bpb": 1.5}, drift=[])))


def _library_key(public) -> SSlibKey:
    data = json.loads(public.read_text())
    return SSlibKey.from_dict(data.pop("keyid"), data)


def test_a_signed_statement_verifies_here_and_with_securesystemslib_and_edits_do_not(tmp_path):
    pair = keygen(tmp_path / "keys")
    assert stat.S_IMODE(pair.private.stat().st_mode) == 0o600
    with pytest.raises(SigningError, match="exists already"):
        keygen(tmp_path / "keys")
    stmt = {"_type": "https://in-toto.io/Statement/v1", "subject": [{"name": "x", "digest": {"sha256": "a" * 64}}],
            "predicateType": "https://slsa.dev/provenance/v1", "predicate": {}}
    envelope = sign(statement_bytes(stmt), pair.private, pair.public)
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    assert verify(envelope, pair.public) == (stmt, pair.keyid)
    # the well-kept verifier: securesystemslib's DSSE Envelope, with the public key file as written
    assert pair.keyid in Envelope.from_dict(json.loads(json.dumps(envelope))).verify([_library_key(pair.public)], 1)

    edited = json.loads(json.dumps(envelope))
    forged = dict(stmt, subject=[{"name": "x", "digest": {"sha256": "f" * 64}}])
    edited["payload"] = base64.b64encode(statement_bytes(forged)).decode()
    with pytest.raises(NotVerified, match="does not verify: the payload or its type changed"):
        verify(edited, pair.public)
    with pytest.raises(VerificationError):
        Envelope.from_dict(json.loads(json.dumps(edited))).verify([_library_key(pair.public)], 1)

    other = keygen(tmp_path / "other")
    with pytest.raises(NotVerified, match="no signature by the key"):
        verify(envelope, other.public)
    with pytest.raises(SigningError, match="not a DSSE envelope"):
        verify({"payload": "!!"}, pair.public)


def test_keys_inside_a_workspace_are_refused(tmp_path):
    ws = init(tmp_path / "ws")
    with pytest.raises(SigningError, match="inside the workspace"):
        keygen(ws.root / "keys", workspaces=(ws.root,))
    pair = keygen(tmp_path / "keys")
    with pytest.raises(SigningError, match="inside the workspace"):
        sign(b"{}", ws.root / "signing-key.pem", pair.public, workspaces=(ws.root,))


def test_the_cli_signs_and_verifies_provenance_and_names_what_failed(tmp_path):
    ws = init(tmp_path / "ws")
    ledger = Ledger(ws.ledger_path)
    record = _record(ledger)
    env = {"SEALAB_KEY_DIR": str(tmp_path / "keys")}
    made = sealab("keygen", cwd=ws.root, env=env, check=True)
    assert "keyid" in made.stdout and not (ws.root / "keys").exists()
    assert sealab("keygen", cwd=ws.root, env=env).returncode == 2  # not twice
    inside = sealab("keygen", "--dir", str(ws.root / "k"), cwd=ws.root, env=env)
    assert inside.returncode == 2 and "inside the workspace" in inside.stderr and "Traceback" not in inside.stderr

    out = tmp_path / "prov.dsse.json"
    sealab("provenance", record.id, "--sign", "-o", str(out), cwd=ws.root, env=env, check=True)
    envelope = json.loads(out.read_text())
    signed = json.loads(base64.b64decode(envelope["payload"]))
    assert signed == json.loads(statement_bytes(signed)) and signed["subject"] == statement(record)["subject"]
    ok = sealab("verify", "--provenance", str(out), cwd=ws.root, env=env)
    assert ok.returncode == 0 and "signature OK" in ok.stdout and f"matches experiment {record.id}" in ok.stdout

    edited = json.loads(out.read_text())
    forged = dict(signed, subject=[{"name": "sealab/exp", "digest": {"sha256": "f" * 64}}])
    edited["payload"] = base64.b64encode(statement_bytes(forged)).decode()
    bad = tmp_path / "edited.json"
    bad.write_text(json.dumps(edited))
    failed = sealab("verify", "--provenance", str(bad), cwd=ws.root, env=env)
    assert failed.returncode == 1 and "does not verify" in failed.stderr and len(failed.stderr.splitlines()) == 1

    sealab("keygen", "--dir", str(tmp_path / "wrong"), cwd=ws.root, env=env, check=True)
    wrong = sealab("verify", "--provenance", str(out), "--key", str(tmp_path / "wrong" / "signing-key.pub.json"),
                   cwd=ws.root, env=env)
    assert wrong.returncode == 1 and "no signature by the key" in wrong.stderr

    # a correctly signed statement that is not the record's (signed from a forged statement) is caught too
    from executor.signing import sign as sign_bytes

    keys = tmp_path / "keys"
    lying = sign_bytes(statement_bytes(forged), keys / "signing-key.pem", keys / "signing-key.pub.json")
    (tmp_path / "lying.json").write_text(json.dumps(lying))
    mismatch = sealab("verify", "--provenance", str(tmp_path / "lying.json"), cwd=ws.root, env=env)
    assert mismatch.returncode == 1 and "MISMATCH" in mismatch.stdout and "subject" in mismatch.stdout
    assert sealab("verify", "--provenance", str(tmp_path / "none.json"), cwd=ws.root, env=env).returncode == 2
