"""A ledger record: its typed form (`ExperimentRecord`), the codec between it and the JSON the ledger
holds, the values that may be written onto one, and the tolerant readers of any record's tables.

A record is kept exactly as it was written: the hash chain covers those bytes, and the dashboard and
`verify` recompute the digest from them. So the codec is exact both ways for every record an older
sealab wrote (`from_dict(d).to_dict() == d`): a key it does not know is kept in `unknown`, a key that
was absent stays absent, one written as null stays null, and the keys keep their order. Older shapes
it reads as they are: no `record_version` (written before records carried one), no `backend`,
`placement`, `finished_at` or `cpu`, no durations, drift as plain "path: change" strings.

`from_dict` is strict about what a known key holds (metrics that are not a table, a status this
sealab does not know, ...): it raises RecordError naming the field, what it should hold and what it
holds, so `sealab import` and the commands that act on one record refuse it in one line. Readers
that list whatever the ledger holds (the dashboard, `status`, `results`, the report) must still show
an odd or hand-made record: they read the record as stored, through the tolerant accessors at the
end of this module, which give the current shape or its empty value.

What may be written onto a stored record is narrow on purpose: the executor's `Finish` (status,
reason and what the run reported) and the annotations others add (`RunLabels`, a decision, a push's
digest, a rerun's link); see the Ledger methods that take them. Nothing else can reach metrics,
identity or status.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, Callable, Mapping

from executor.errors import RecordError
from executor.types import RunSpec, Status

RECORD_VERSION = 1  # the shape below; a record without `record_version` was written before it existed
DEFAULT_METRIC = "val_bpb"  # RunSpec's default, for a record whose run spec names none


class Decision(StrEnum):
    """What the research loop decided about an experiment."""

    BASELINE = "baseline"  # a run of the start commit, measuring the noise
    KEEP = "keep"
    DISCARD = "discard"
    CONFIRM = "confirm"  # a rerun of a candidate's image before its decision ([acceptance] confirm_runs)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_drift(value: Any) -> bool:  # current entries are tables, older ones "path: change" strings
    return isinstance(value, list) and all(isinstance(entry, (str, dict)) for entry in value)


_TEXT: tuple[str, Callable[[Any], bool]] = ("a string", lambda v: isinstance(v, str))
_TABLE: tuple[str, Callable[[Any], bool]] = ("a table", lambda v: isinstance(v, dict))
_NUMBER: tuple[str, Callable[[Any], bool]] = ("a number", _is_number)
_INTEGER: tuple[str, Callable[[Any], bool]] = ("an integer", lambda v: _is_number(v) and isinstance(v, int))
_DRIFT: tuple[str, Callable[[Any], bool]] = ("a list of drift entries (tables or strings)", _is_drift)

# Every key this sealab knows, in the order a new record is written; the enums and the version are
# checked on their own (see _decode).
_KINDS: dict[str, tuple[str, Callable[[Any], bool]] | None] = {
    "id": _TEXT, "commit": _TEXT, "parent": _TEXT, "tree": _TEXT, "description": _TEXT, "image_id": _TEXT,
    "base_image_id": _TEXT, "data_digest": _TEXT, "run_spec": _TABLE, "status": None, "reason": _TEXT,
    "metrics": _TABLE, "peak_memory_mb": _NUMBER, "exit_code": _INTEGER, "durations": _TABLE, "drift": _DRIFT,
    "log_path": _TEXT, "created_at": _TEXT, "record_version": None, "backend": _TEXT, "placement": _TEXT,
    "finished_at": _TEXT, "cpu": _TABLE, "run_tag": _TEXT, "decision": None, "decision_reason": _TEXT,
    "proposal": _TABLE, "registry_digest": _TEXT, "reproduces": _TEXT, "cycle": _TABLE, "test": _TABLE,
}
REQUIRED = ("id", "commit", "status")  # every record sealab ever wrote has them


def one_of(kind: type[StrEnum]) -> str:
    """What a field of the enum `kind` should hold, as an error says it."""
    return "one of " + ", ".join(member.value for member in kind)


def _decode(name: str, value: Any, record_id: str | None) -> Any:
    """One known key's stored value as its field holds it (None stays None), or RecordError."""
    if value is None:
        return None
    if name in ("status", "decision"):
        kind = Status if name == "status" else Decision
        try:
            return kind(value)
        except (ValueError, TypeError):
            raise RecordError(name, one_of(kind), value, record_id) from None
    if name == "record_version":
        if not (_is_number(value) and isinstance(value, int)) or value < 1:
            raise RecordError(name, "a positive integer", value, record_id)
        if value > RECORD_VERSION:
            raise RecordError(name, f"at most {RECORD_VERSION} (a newer sealab wrote it: upgrade sealab)", value,
                              record_id)
        return value
    expected, fits = _KINDS[name]  # type: ignore[misc]
    if not fits(value):
        raise RecordError(name, expected, value, record_id)
    return copy.deepcopy(value)


def _encode(value: Any) -> Any:
    return value.value if isinstance(value, StrEnum) else copy.deepcopy(value)


@dataclass(frozen=True, slots=True)
class ExperimentRecord:
    """One experiment as the ledger holds it. Identity (id, commit, tree, image and base, data, run
    spec), what the run reported (status, reason, metrics, durations, drift, ...) and what others
    added (run tag, decision, proposal, push digest, rerun link).

    `unknown` holds the keys this sealab does not know, as they were; `keys` the keys as read, in
    order (empty for a record made here: it is written with every field that is set). A field is
    None when its key is absent or null; `keys` tells the two apart, so a record read is written back
    to the same JSON.
    """

    id: str
    commit: str
    status: Status
    parent: str | None = None
    tree: str | None = None
    description: str | None = None
    image_id: str | None = None
    base_image_id: str | None = None
    data_digest: str | None = None
    run_spec: dict[str, Any] | None = None
    reason: str | None = None
    metrics: dict[str, Any] | None = None
    peak_memory_mb: float | None = None
    exit_code: int | None = None
    durations: dict[str, Any] | None = None
    drift: list[Any] | None = None
    log_path: str | None = None
    created_at: str | None = None
    record_version: int | None = RECORD_VERSION
    backend: str | None = None
    placement: str | None = None
    finished_at: str | None = None
    cpu: dict[str, Any] | None = None
    run_tag: str | None = None
    decision: Decision | None = None
    decision_reason: str | None = None
    proposal: dict[str, Any] | None = None
    registry_digest: str | None = None
    reproduces: str | None = None
    cycle: dict[str, Any] | None = None  # the loop's account of its wall time: training, idle by cause (agent/cycle.py)
    test: dict[str, Any] | None = None  # its model scored on the held-out test split (executor/heldout.py)
    unknown: dict[str, Any] = field(default_factory=dict)
    keys: tuple[str, ...] = ()

    # -- the codec ----------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any) -> ExperimentRecord:
        """The record stored as `data` (a parsed JSON object).

        Raises:
            RecordError: `data` is not a table, a required key (id, commit, status) is missing, or a
                known key holds what it cannot (naming the field, the expected kind and the value).
        """
        if not isinstance(data, Mapping):
            raise RecordError("record", "a table", data)
        record_id = data.get("id") if isinstance(data.get("id"), str) else None
        values = {name: _decode(name, data[name], record_id) for name in _KINDS if name in data}
        for name in REQUIRED:
            if values.get(name) is None:
                expected = one_of(Status) if name == "status" else _KINDS[name][0]  # type: ignore[index]
                raise RecordError(name, expected, data.get(name), record_id)
        values.setdefault("record_version", None)
        unknown = {k: copy.deepcopy(v) for k, v in data.items() if k not in _KINDS}
        return cls(**values, unknown=unknown, keys=tuple(data))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the record: the keys it was read with, in their order, then every other
        field that is set, then the unknown keys (a new copy: changing it changes no record)."""
        out: dict[str, Any] = {}
        for key in self.keys:
            if key in _KINDS:
                out[key] = _encode(getattr(self, key))
            elif key in self.unknown:
                out[key] = copy.deepcopy(self.unknown[key])
        for name in _KINDS:
            if name not in out and getattr(self, name) is not None:
                out[name] = _encode(getattr(self, name))
        for key, value in self.unknown.items():
            out.setdefault(key, copy.deepcopy(value))
        return out

    # -- what readers ask of it ---------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.status != Status.RUNNING

    @property
    def metric(self) -> str:
        """The name of the metric its run spec scores (RunSpec's default when it names none)."""
        name = (self.run_spec or {}).get("metric")
        return name if isinstance(name, str) else DEFAULT_METRIC

    @property
    def value(self) -> float | None:
        """Its own metric's value when it ended ok, else None."""
        if self.status != Status.OK:
            return None
        return number((self.metrics or {}).get(self.metric))

    @property
    def spec(self) -> RunSpec:
        """The run spec it was sealed with.

        Raises:
            RecordError: there is none, or it is not one (e.g. a budget that is not a number).
        """
        try:
            return RunSpec.from_dict(self.run_spec)  # type: ignore[arg-type]
        except (TypeError, ValueError, KeyError, AttributeError):
            raise RecordError("run_spec", "a run spec", self.run_spec, self.id) from None

    def drift_entries(self) -> list[dict[str, Any]]:
        """Its drift as `{"path", "changes", ...}` entries (an older record's strings become entries)."""
        return _drift_entries(self.drift)


RUN_KEYS = frozenset(("status", "reason", "image_id", "metrics", "backend", "placement", "finished_at", "drift",
                      "peak_memory_mb", "exit_code", "durations", "cpu"))  # what Finish writes
ANNOTATIONS = frozenset(("run_tag", "decision", "decision_reason", "proposal", "registry_digest", "reproduces",
                         "cycle", "test"))


@dataclass(frozen=True, slots=True)
class Results:
    """What a run that reached its end reports. Written together, None included (`cpu: null` says the
    harness named no CPU), where a run cut short (engine lost, interrupted) writes none of them."""

    metrics: dict[str, Any]
    drift: list[dict[str, Any]]
    placement: str = ""
    peak_memory_mb: float | None = None
    exit_code: int | None = None
    cpu: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Finish:
    """How a run ended, as the executor writes it onto its record (`Ledger.finish`). Status and reason
    are always written; image, durations, backend and end time when known; `results` when the run
    reached its end."""

    status: Status
    reason: str | None = None
    image_id: str | None = None
    durations: dict[str, Any] | None = None
    backend: str | None = None
    finished_at: str | None = None
    results: Results | None = None

    def __post_init__(self) -> None:
        if self.status == Status.RUNNING:
            raise RecordError("status", "a status a run ends with", self.status.value)

    def changes(self) -> dict[str, Any]:
        """The keys written, in the order sealab has always written them."""
        given = {"status": self.status.value, "reason": self.reason}
        optional = {"image_id": self.image_id, "backend": self.backend, "finished_at": self.finished_at,
                    "durations": self.durations}
        given.update({k: v for k, v in optional.items() if v is not None})
        if self.results is not None:
            given.update({f.name: getattr(self.results, f.name) for f in fields(Results)})
        order = ("status", "reason", "image_id", "metrics", "backend", "placement", "finished_at", "drift",
                 "peak_memory_mb", "exit_code", "durations", "cpu")
        return {k: _encode(given[k]) for k in order if k in given}


@dataclass(frozen=True, slots=True)
class RunLabels:
    """What the research loop says about an experiment it runs: its run, `baseline` for a run of the
    start commit, and the proposal it came from. Part of the record from its first write."""

    run_tag: str
    decision: Decision | None = None
    proposal: dict[str, Any] | None = None

    def record_fields(self) -> dict[str, Any]:
        """The ExperimentRecord fields they set (a record made with them carries them from its first write)."""
        given = {"run_tag": self.run_tag, "decision": self.decision, "proposal": self.proposal}
        return {k: copy.deepcopy(v) for k, v in given.items() if v is not None}

    def changes(self) -> dict[str, Any]:
        """The keys written onto a stored record, in the order the loop has always written them."""
        return {k: _encode(v) for k, v in self.record_fields().items()}


# -- tolerant readers of a record as stored (a dict), whatever its shape ----------------------------
def table(record: Mapping[str, Any], key: str) -> dict[str, Any]:
    """`record[key]` when it is a table, else an empty one."""
    value = record.get(key)
    return value if isinstance(value, dict) else {}


def metrics(record: Mapping[str, Any]) -> dict[str, Any]:
    return table(record, "metrics")


def run_spec(record: Mapping[str, Any]) -> dict[str, Any]:
    return table(record, "run_spec")


def durations(record: Mapping[str, Any]) -> dict[str, Any]:
    return table(record, "durations")


def number(value: Any) -> float | None:
    """A metric value as a float, or None (absent, text, a boolean)."""
    return float(value) if _is_number(value) else None


def drift(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The record's drift as `{"path", "changes"}` entries. An older record's plain "path: change"
    strings become one entry each; anything else is left out."""
    return _drift_entries(record.get("drift"))


def _drift_entries(entries: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, str):
            path, _, change = entry.partition(": ")
            out.append({"path": path, "changes": [change] if change else []})
        elif isinstance(entry, dict) and isinstance(entry.get("path"), str):
            changes = entry.get("changes")
            out.append({**entry, "changes": [str(c) for c in changes] if isinstance(changes, list) else []})
    return out
