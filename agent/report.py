"""Reports over ledger records: autoresearch's results.tsv with sealab's provenance columns."""

from __future__ import annotations

from typing import Any, Iterable

from executor import record as recorded
from executor.types import RunSpec

COLUMNS = ("commit", "val_bpb", "memory_gb", "status", "description",
           "experiment", "image_id", "base_image_id", "tree", "data_digest", "run_spec")


def _spec_digest(spec: dict[str, Any]) -> str:
    """The run spec's digest, or "" for a record without one (or one an older sealab wrote otherwise)."""
    try:
        return RunSpec.from_dict(spec).digest() if spec else ""
    except (TypeError, ValueError, KeyError, AttributeError):
        return ""


def _clean(text: Any) -> str:
    return " ".join(str(text or "").split())  # no tabs or newlines inside a cell


def results_tsv(records: Iterable[dict[str, Any]], metric: str = "val_bpb") -> str:
    """Tab-separated rows: the 5 autoresearch columns, then provenance. Crashes read 0.000000 / 0.0."""
    lines = ["\t".join(COLUMNS)]
    for rec in records:
        value = recorded.number(recorded.metrics(rec).get(metric))
        ok = rec["status"] == "ok" and value is not None
        memory_gb = (rec.get("peak_memory_mb") or 0) / 1024 if ok else 0.0
        spec = _spec_digest(recorded.run_spec(rec))
        lines.append("\t".join([
            rec["commit"][:7], f"{value:.6f}" if ok else "0.000000", f"{memory_gb:.1f}", rec["status"],
            _clean(rec.get("description")), rec["id"], str(rec.get("image_id") or ""), str(rec.get("base_image_id") or ""),
            str(rec.get("tree") or ""), str(rec.get("data_digest") or ""), spec,
        ]))
    return "\n".join(lines) + "\n"
