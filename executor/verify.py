"""Re-derive each recorded experiment's image ID from git and its base, and report every mismatch."""

from __future__ import annotations

from typing import Any, Iterable

from executor import git_source
from executor.docker_engine import Engine
from executor.errors import SourceError
from executor.ledger import Ledger
from executor.image.seal import seal
from executor.types import RunSpec, Status


def verify(repo: git_source.Repository, ledger: Ledger, engine: Engine | None, records: Iterable[dict[str, Any]],
           *, whole_ledger: bool = False) -> dict[str, Any]:
    """`{"checked": N, "mismatches": [{"id", "field", "expected", "actual"}]}` over `records`.

    The ledger's hash chain is checked too: for the given records, or whole (deleted and reordered
    records included, with their `row`) when `whole_ledger`.
    """
    checked, mismatches = 0, []
    records = list(records)

    def report(rec: dict[str, Any], field: str, expected: Any, actual: Any) -> None:
        mismatches.append({"id": rec["id"], "field": field, "expected": expected, "actual": actual})

    for rec in records:
        if rec["status"] == Status.RUNNING.value:
            continue
        checked += 1
        try:
            facts = git_source.resolve(repo, rec["commit"])
        except SourceError:
            report(rec, "commit", rec["commit"], "not in the repository")
            continue
        if facts.tree != rec["tree"]:
            report(rec, "tree", facts.tree, rec["tree"])
        base = ledger.base(rec["base_image_id"])
        if base is None:
            report(rec, "base_image_id", rec["base_image_id"], "no such base recorded")
            continue
        if base.data_digest != rec["data_digest"]:
            report(rec, "data_digest", base.data_digest, rec["data_digest"])
        if rec["image_id"] is None:
            continue  # never sealed (e.g. the engine failed first): nothing more to compare
        sealed = seal(facts, base, RunSpec.from_dict(rec["run_spec"]))
        if sealed.image_id != rec["image_id"]:
            report(rec, "image_id", sealed.image_id, rec["image_id"])
        if engine is None:
            continue
        if engine.image_id(sealed.image_id) is not None:
            labels = engine.image_labels(sealed.image_id)
            for key, value in sealed.labels.items():
                if labels.get(key) != value:
                    report(rec, f"engine label {key}", value, labels.get(key))
        named = engine.image_id(sealed.tag)
        if named not in (None, sealed.image_id):
            report(rec, f"engine image {sealed.tag}", sealed.image_id, named)
    wanted = {rec["id"] for rec in records}
    mismatches += [p for p in ledger.chain_problems() if whole_ledger or p["id"] in wanted]
    return {"checked": checked, "mismatches": mismatches}
