"""Re-derive each recorded experiment's image ID from git and its base, and report every mismatch.

It takes records as stored (not decoded) because what it checks is untrusted: a record that does not
decode is reported like any other mismatch, and the others are still checked.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from executor import git_source
from executor.docker_engine import Engine
from executor.errors import RecordError, SourceError
from executor.image import deps
from executor.image.seal import seal
from executor.ledger import Ledger
from executor.record import ExperimentRecord
from executor.types import Status


def verify(repo: git_source.Repository, ledger: Ledger, engine: Engine | None, records: Iterable[Mapping[str, Any]],
           *, whole_ledger: bool = False) -> dict[str, Any]:
    """`{"checked": N, "mismatches": [{"id", "field", "expected", "actual"}]}` over `records` (as stored).

    A stored record that does not decode is one mismatch naming its field (see
    ExperimentRecord.from_dict): there is no identity to re-derive from it. The ledger's hash chain is
    checked too: for the given records, or whole (deleted and reordered records included, with their
    `row`) when `whole_ledger`.
    """
    checked, mismatches = 0, []
    stored = list(records)

    def report(eid: Any, field: str, expected: Any, actual: Any) -> None:
        mismatches.append({"id": eid, "field": field, "expected": expected, "actual": actual})

    for data in stored:
        try:
            rec = ExperimentRecord.from_dict(data)
        except RecordError as exc:
            if (data.get("status") if isinstance(data, Mapping) else None) == Status.RUNNING.value:
                continue
            report(data.get("id") if isinstance(data, Mapping) else None, exc.field, exc.expected, exc.actual)
            checked += 1
            continue
        if not rec.finished:
            continue
        checked += 1
        try:
            facts = git_source.resolve(repo, rec.commit)
        except SourceError:
            report(rec.id, "commit", rec.commit, "not in the repository")
            continue
        if facts.tree != rec.tree:
            report(rec.id, "tree", facts.tree, rec.tree)
        base = ledger.base(rec.base_image_id) if rec.base_image_id else None
        if base is None:
            report(rec.id, "base_image_id", rec.base_image_id, "no such base recorded")
            continue
        if base.data_digest != rec.data_digest:
            report(rec.id, "data_digest", base.data_digest, rec.data_digest)
        lock = deps.lock_digest(facts.top_level(deps.LOCK_FILES))
        if lock != base.deps:  # the packages the run had are the ones its commit locks
            report(rec.id, "deps", lock, base.deps)
        if rec.image_id is None:
            continue  # never sealed (e.g. the engine failed first): nothing more to compare
        try:
            spec = rec.spec
        except RecordError as exc:
            report(rec.id, exc.field, exc.expected, exc.actual)
            continue
        sealed = seal(facts, base, spec)
        if sealed.image_id != rec.image_id:
            report(rec.id, "image_id", sealed.image_id, rec.image_id)
        if engine is None:
            continue
        if engine.image_id(sealed.image_id) is not None:
            labels = engine.image_labels(sealed.image_id)
            for key, value in sealed.labels.items():
                if labels.get(key) != value:
                    report(rec.id, f"engine label {key}", value, labels.get(key))
        named = engine.image_id(sealed.tag)
        if named not in (None, sealed.image_id):
            report(rec.id, f"engine image {sealed.tag}", sealed.image_id, named)
    wanted = {data.get("id") for data in stored if isinstance(data, Mapping)}
    mismatches += [p for p in ledger.chain_problems() if whole_ledger or p["id"] in wanted]
    return {"checked": checked, "mismatches": mismatches}
