"""Reports over ledger records: autoresearch's results.tsv with sealab's provenance columns."""

from __future__ import annotations

import json
from typing import Any, Iterable, Iterator

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
    return "\n".join(results_lines(records, metric)) + "\n"


def results_lines(records: Iterable[dict[str, Any]], metric: str = "val_bpb") -> Iterator[str]:
    """`results_tsv`'s lines (without their newlines), the header first, one per record as it is read."""
    yield "\t".join(COLUMNS)
    digests: dict[str, str] = {}  # a run spec's digest, by its canonical JSON (a ledger has few specs)
    for rec in records:
        value = recorded.number(recorded.metrics(rec).get(metric))
        ok = rec.get("status") == "ok" and value is not None
        memory_gb = (rec.get("peak_memory_mb") or 0) / 1024 if ok else 0.0
        run_spec = recorded.run_spec(rec)
        key = json.dumps(run_spec, sort_keys=True, default=str)
        spec = digests.get(key)
        if spec is None:
            spec = digests[key] = _spec_digest(run_spec)
        yield "\t".join([
            _clean(rec.get("commit"))[:7], f"{value:.6f}" if ok else "0.000000", f"{memory_gb:.1f}",
            _clean(rec.get("status")), _clean(rec.get("description")), _clean(rec.get("id")), str(rec.get("image_id") or ""), str(rec.get("base_image_id") or ""),
            str(rec.get("tree") or ""), str(rec.get("data_digest") or ""), spec,
        ])
