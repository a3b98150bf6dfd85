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


def results_fields(metric: str = "val_bpb") -> dict[str, str]:
    """The JSON paths of what `results_lines` reads of a record, for `Ledger.pick` (the run spec comes as
    text, `RESULTS_TEXTS`: `slim` decodes each distinct one once)."""
    keys = ("commit", "peak_memory_mb", "status", "description", "id", "image_id", "base_image_id", "tree", "data_digest")
    return {**{key: f"$.{key}" for key in keys}, "metric": "$.metrics." + json.dumps(metric)}


RESULTS_TEXTS = {"run_spec": "$.run_spec"}


def slim(picked: Iterable[dict[str, Any]], metric: str = "val_bpb") -> Iterator[dict[str, Any]]:
    """Records as `results_lines` reads them, from what `Ledger.pick(results_fields(metric), texts=RESULTS_TEXTS)`
    gave."""
    specs: dict[str, Any] = {}
    for one in picked:
        text = one["run_spec"]
        if text not in specs:
            specs[text] = json.loads(text)
        yield {**one, "run_spec": specs[text], "metrics": {metric: one["metric"]} if one["metric"] is not None else {}}


def results_lines(records: Iterable[dict[str, Any]], metric: str = "val_bpb") -> Iterator[str]:
    """`results_tsv`'s lines (without their newlines), the header first, one per record as it is read."""
    yield "\t".join(COLUMNS)
    digests: dict[int, tuple[Any, str]] = {}  # a run spec object's digest
    for rec in records:
        value = recorded.number(recorded.metrics(rec).get(metric))
        ok = rec.get("status") == "ok" and value is not None
        memory_gb = (rec.get("peak_memory_mb") or 0) / 1024 if ok else 0.0
        run_spec = recorded.run_spec(rec)
        known = digests.get(id(run_spec))
        if known is not None and known[0] is run_spec:  # the very object (held here, so its id is not reused)
            spec = known[1]
        else:
            spec = _spec_digest(run_spec)
            if len(digests) < 64:  # (records that `slim` gave share a few spec objects)
                digests[id(run_spec)] = (run_spec, spec)
        yield "\t".join([
            _clean(rec.get("commit"))[:7], f"{value:.6f}" if ok else "0.000000", f"{memory_gb:.1f}",
            _clean(rec.get("status")), _clean(rec.get("description")), _clean(rec.get("id")), str(rec.get("image_id") or ""), str(rec.get("base_image_id") or ""),
            str(rec.get("tree") or ""), str(rec.get("data_digest") or ""), spec,
        ])
