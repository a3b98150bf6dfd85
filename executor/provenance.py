"""Provenance export: an in-toto Statement v1 with a SLSA provenance v1 predicate for one record.

Pure: a record (plus the base, the policy digest and the ledger's chain link, when known) in, a
statement dict out; `statement_bytes` is its one canonical serialisation (sorted keys, compact,
UTF-8), so the same record always gives the same bytes and `statement_digest`. No I/O here except
`latest_link`, which reads one row of the ledger's hash chain.
"""

from __future__ import annotations

from typing import Any

from executor.record import ExperimentRecord
from executor.types import canonical_json, sha256_hex

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://sealab.dev/experiment/v1"
BUILDER_ID = "https://sealab.dev/executor"
SUBJECT_REPO = "sealab/exp"


def _present(**fields: Any) -> dict[str, Any]:
    """`fields` without the ones that are None: missing parts are omitted, never null."""
    return {k: v for k, v in fields.items() if v is not None}


def _digest(value: str, default_algorithm: str = "sha256") -> dict[str, str]:
    """`"sha256:<hex>"` → `{"sha256": "<hex>"}` (a bare hex string is taken as `default_algorithm`)."""
    algorithm, sep, hexdigest = value.partition(":")
    return {algorithm: hexdigest} if sep else {default_algorithm: value}


def _subjects(record: ExperimentRecord, registry_digest: str | None) -> list[dict[str, Any]]:
    subjects = []
    image_id = record.image_id
    if image_id:
        subjects.append({"name": f"{SUBJECT_REPO}@{image_id}", "digest": _digest(image_id)})
    pushed = registry_digest or record.registry_digest
    if pushed:
        repo, _, digest = pushed.rpartition("@")
        subjects.append({"name": repo or pushed, "digest": _digest(digest)})
    return subjects


def _materials(record: ExperimentRecord, base: dict[str, Any] | None,
               policy_digest: str | None) -> list[dict[str, Any]]:
    materials: list[dict[str, Any]] = []
    harness, train_blob = record.unknown.get("harness"), record.unknown.get("train_blob")  # not written today
    if record.commit:
        materials.append({"name": "commit", "uri": "git+commit", "digest": {"gitCommit": record.commit}})
    if record.tree:
        materials.append({"name": "tree", "uri": "git+tree", "digest": {"gitTree": record.tree}})
    if record.base_image_id:
        entry: dict[str, Any] = {"name": "base", "uri": "docker-image", "digest": _digest(record.base_image_id)}
        if base:
            notes = _present(source=base.get("source"), recipe=base.get("recipe"))
            if notes:
                entry["annotations"] = notes
        materials.append(entry)
    if isinstance(harness, str) and harness:
        materials.append({"name": "harness", "uri": "git+file:prepare.py", "digest": _digest(harness)})
    if isinstance(train_blob, str) and train_blob:
        materials.append({"name": "train.py", "uri": "git+file:train.py", "digest": {"gitBlob": train_blob}})
    if record.data_digest:
        materials.append({"name": "data", "uri": "sealab:data-manifest", "digest": _digest(record.data_digest)})
    if policy_digest:
        materials.append({"name": "policy", "uri": "sealab:policy", "digest": _digest(policy_digest)})
    proposal = record.proposal
    if proposal is not None:
        notes = _present(proposer=proposal.get("proposer"), prompt_digest=proposal.get("prompt_digest"))
        if notes:
            materials.append({"name": "proposer", "annotations": notes})
    return materials


def _byproducts(record: ExperimentRecord, chain_hash: str | None) -> list[dict[str, Any]]:
    results = _present(
        status=record.status.value, reason=record.reason, metrics=record.metrics,
        peak_memory_mb=record.peak_memory_mb, exit_code=record.exit_code, durations=record.durations,
        decision=record.decision.value if record.decision else None, run_tag=record.run_tag,
        drift=len(record.drift or []),
    )
    byproducts: list[dict[str, Any]] = [{"name": "results", "annotations": results}]
    if chain_hash:
        byproducts.append({"name": "ledger-chain", "uri": "sealab:ledger-chain", "digest": _digest(chain_hash)})
    return byproducts


def statement(record: ExperimentRecord, *, base: dict[str, Any] | None = None, policy_digest: str | None = None,
              registry_digest: str | None = None, chain_hash: str | None = None) -> dict[str, Any]:
    """The in-toto Statement v1 (SLSA provenance v1 predicate) of one experiment record."""
    build_definition = {
        "buildType": BUILD_TYPE,
        "externalParameters": _present(commit=record.commit, run_spec=record.run_spec,
                                       description=record.description),
        "internalParameters": _present(base_image_id=record.base_image_id, data_digest=record.data_digest),
        "resolvedDependencies": _materials(record, base, policy_digest),
    }
    run_details = {
        "builder": {"id": BUILDER_ID},
        "metadata": _present(invocationId=record.id, startedOn=record.created_at),
        "byproducts": _byproducts(record, chain_hash),
    }
    return {
        "_type": STATEMENT_TYPE,
        "subject": _subjects(record, registry_digest),
        "predicateType": PREDICATE_TYPE,
        "predicate": {"buildDefinition": build_definition, "runDetails": run_details},
    }


def statement_bytes(stmt: dict[str, Any]) -> bytes:
    """The canonical serialisation of a statement: sorted keys, no whitespace, UTF-8."""
    return canonical_json(stmt)


def statement_digest(stmt: dict[str, Any]) -> str:
    return "sha256:" + sha256_hex(statement_bytes(stmt))


def latest_link(ledger: Any, experiment_id: str) -> str | None:
    """The ledger's hash-chain link for the latest write of record `experiment_id`, or None."""
    row = ledger.db.execute("SELECT hash FROM chain WHERE experiment_id = ? ORDER BY seq DESC LIMIT 1",
                            (experiment_id,)).fetchone()
    return row[0] if row else None
