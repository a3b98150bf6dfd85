"""The ledger: one SQLite file (WAL) holding every experiment record and the base images.

Each write is one transaction, so a kill -9 at any point leaves every committed record intact.
A record is inserted as `running` before its container starts and finished in place; a record
left `running` by a dead process is marked `interrupted` by the next command (see run.recover).
The only module that imports sqlite3: a reader that must never write or wait (`sealab serve`) opens
the same file read-only through `reading` rather than a connection of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from executor.errors import LedgerError, LedgerGone, RecordError
from executor.record import Decision, ExperimentRecord, Finish, RunLabels, one_of
from executor.types import BaseImage, Status, canonical_json, sha256_hex

SCHEMA_VERSION = 4
RECORD_KEYS = (
    "id", "commit", "parent", "tree", "description", "image_id", "base_image_id", "data_digest",
    "run_spec", "status", "reason", "metrics", "peak_memory_mb", "exit_code", "durations", "drift",
    "log_path", "created_at", "record_version",
)

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE bases (image_id TEXT PRIMARY KEY, record TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE experiments (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    owner TEXT,
    record TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
"""
# Schema version N → N+1. A research run's state, and what happened besides experiments
# (proposals rejected or parked by policy, drift events), each one row per transaction.
_MIGRATIONS = {
    1: """
CREATE TABLE runs (tag TEXT PRIMARY KEY, state TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_tag TEXT,
    kind TEXT NOT NULL,
    record TEXT NOT NULL,
    created_at TEXT NOT NULL
);
""",
    # Every write of an experiment record appends a link: hash = sha256(prev:id:sha256(record)).
    # An edited, deleted, inserted or reordered record no longer matches the chain (see chain_problems).
    2: """
CREATE TABLE chain (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    experiment_id TEXT NOT NULL,
    record_sha256 TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL
);
""",
    # What readers filter and sort on, as columns derived from the record itself (virtual: they cannot
    # disagree with it, and a record that is not JSON gives NULL rather than an error) with indexes, and
    # `changed`: the chain seq of the record's latest write, the cursor of "what changed since".
    3: """
ALTER TABLE experiments ADD COLUMN run_tag TEXT
    GENERATED ALWAYS AS (CASE WHEN json_valid(record) THEN json_extract(record, '$.run_tag') END) VIRTUAL;
ALTER TABLE experiments ADD COLUMN decision TEXT
    GENERATED ALWAYS AS (CASE WHEN json_valid(record) THEN json_extract(record, '$.decision') END) VIRTUAL;
ALTER TABLE experiments ADD COLUMN image_id TEXT
    GENERATED ALWAYS AS (CASE WHEN json_valid(record) THEN json_extract(record, '$.image_id') END) VIRTUAL;
ALTER TABLE experiments ADD COLUMN changed INTEGER;
UPDATE experiments SET changed = (SELECT max(chain.seq) FROM chain WHERE chain.experiment_id = experiments.id);
CREATE INDEX experiments_by_run ON experiments (run_tag, seq);
CREATE INDEX experiments_by_status ON experiments (status, seq);
CREATE INDEX experiments_by_decision ON experiments (decision, seq);
CREATE INDEX experiments_by_created ON experiments (created_at);
CREATE INDEX experiments_by_image ON experiments (image_id);
CREATE INDEX experiments_by_change ON experiments (changed);
CREATE INDEX chain_by_experiment ON chain (experiment_id, seq);
CREATE INDEX events_by_kind ON events (kind, run_tag, seq);
CREATE INDEX runs_by_update ON runs (updated_at)
""",
}
# What may be added to a record from outside the run is ANNOTATIONS (executor.record), through label,
# record_decision, record_push and record_rerun; the rest (metrics, identity, status, timings, the CPU)
# is written by the executor's begin/finish/interrupt only.
GENESIS = "0" * 64


def file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of a file, or None for an in-memory ledger or a file that is not there."""
    if str(path) == ":memory:":
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _space_hint(path: Path) -> str:
    """SQLite says "disk I/O error" when it cannot grow the WAL's shared memory on a full disk: name the cause."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return ""
    return f" (no space left: {free} bytes free in {path.parent})" if free < 1 << 20 else ""


def record_digest(record: dict[str, Any]) -> str:
    return sha256_hex(canonical_json(record))


def link_hash(prev: str, experiment_id: str, digest: str) -> str:
    return sha256_hex(f"{prev}:{experiment_id}:{digest}".encode())


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


PAGE_ROWS = 256  # rows fetched from SQLite at a time by the streaming reads


def paged(rows: sqlite3.Cursor, size: int = PAGE_ROWS) -> Iterator[Any]:
    """The rows of a query, fetched `size` at a time (constant memory however many there are)."""
    while True:
        page = rows.fetchmany(size)
        if not page:
            return
        yield from page


@dataclass(frozen=True)
class Query:
    """Which records a read selects; every field narrows it (None: no condition). Each condition is on an
    indexed column (see the schema's migration 3), so a read costs what it returns, not the ledger's size.

    `after` / `before`: rows (seq) after / before a cursor row, for pages; `since`: created at or after an
    ISO-8601 time; `changed_after`: written after a `Ledger.cursor()`. `limit`: the first `limit` records
    selected; `last`: the last `last` records selected. Records always come in the order they were begun.
    """

    run_tag: str | None = None
    status: str | None = None
    decision: str | None = None
    image_prefix: str | None = None
    after: int | None = None
    before: int | None = None
    since: str | None = None
    changed_after: int | None = None
    limit: int | None = None
    last: int | None = None

    def sql(self, columns: str, *, ordered: bool = True) -> tuple[str, tuple[Any, ...]]:
        clauses: list[str] = []
        params: list[Any] = []
        for clause, value in (("run_tag = ?", self.run_tag), ("status = ?", self.status),
                              ("decision = ?", self.decision), ("seq > ?", self.after), ("seq < ?", self.before),
                              ("created_at >= ?", self.since), ("changed > ?", self.changed_after)):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        if self.image_prefix is not None:
            clauses.append("image_id >= ? AND image_id < ?")  # a prefix as a range: the index serves it
            params += [self.image_prefix, self.image_prefix + "\uffff"]
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        if self.changed_after is not None:  # a poll: few rows changed, whatever the planner guesses from a range
            where = " INDEXED BY experiments_by_change" + where
        elif self.since is not None and self.run_tag is None and self.after is None:  # "since this morning"
            where = " INDEXED BY experiments_by_created" + where
        if not ordered:
            return f"SELECT {columns} FROM experiments{where}", tuple(params)
        if self.last is not None:  # the last N, read from the end, then put in order
            inner = f"SELECT {columns} FROM experiments{where} ORDER BY seq DESC LIMIT {int(self.last)}"
            return f"SELECT * FROM ({inner}) ORDER BY seq" + self._limit(), tuple(params)
        return f"SELECT {columns} FROM experiments{where} ORDER BY seq{self._limit()}", tuple(params)

    def _limit(self) -> str:
        return f" LIMIT {int(self.limit)}" if self.limit is not None else ""


class Ledger:
    """The experiment store of one workspace."""

    identity: tuple[int, int] | None = None

    def __init__(self, path: Path) -> None:
        self.path = path
        # the file's (device, inode) while this Ledger uses it. The SQLite connection's own descriptor keeps
        # the inode from being reused by a new file while the old one is gone. No other descriptor of the
        # file is ever opened here: closing one would drop every POSIX lock this process holds on it, its
        # other connections' included, and another process would then take itself for the last user of
        # the WAL and remove it under them (SQLite's "disk I/O error").
        self.identity = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")  # (the file is open from here on)
            if str(path) != ":memory:":
                self._where = Path(os.path.abspath(path))  # (a later chdir must not look like a moved ledger)
                self.identity = file_identity(self._where)
            self.db.execute("PRAGMA synchronous=FULL")
            with self._tx():  # IMMEDIATE: two first commands cannot both create the schema
                version = self.db.execute("PRAGMA user_version").fetchone()[0]
                if version == 0:
                    self._script(_SCHEMA)
                    version = 1
                while version < SCHEMA_VERSION:
                    self._script(_MIGRATIONS[version])
                    if version == 2:  # chain the records written before the chain existed, in order
                        for eid, text in self.db.execute("SELECT id, record FROM experiments ORDER BY seq").fetchall():
                            self._link(eid, json.loads(text), mark=False)  # (`changed` comes next)
                    version += 1
                    self.db.execute(f"PRAGMA user_version={version}")
            if version > SCHEMA_VERSION:
                raise LedgerError(f"{path}: schema version {version} is newer than this sealab ({SCHEMA_VERSION}); upgrade sealab")
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{path}: cannot use the ledger: {exc}{_space_hint(path)}") from exc

    def _script(self, sql: str) -> None:
        for statement in filter(str.strip, sql.split(";")):
            self.db.execute(statement)

    def close(self) -> None:
        self.db.close()

    def _tx(self):
        return _Transaction(self.db, self.path, self._check_identity)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Many writes as one transaction (an import, a benchmark's ledger): each write inside commits
        nothing; all of them commit at the end, or none on an error."""
        with self._tx():
            yield

    def _check_identity(self) -> None:
        """Before and after each write: the ledger file must still be the one opened. A ledger (or its
        .sealab/ directory) removed or replaced meanwhile would take every later write with it, so the
        writes stop here, with what the open ledger held copied out first (rescue).

        Raises:
            LedgerGone: the file is gone or is another file.
        """
        if self.identity is None or file_identity(self._where) == self.identity:
            return  # (the connection's descriptor keeps the old inode's number from going to a new file)
        rescued = self._rescue()
        found = "is gone" if not self.path.exists() else "was replaced by another file"
        raise LedgerGone(f"{self.path} {found} while sealab was using it (the state directory .sealab/ removed or "
                         f"replaced?); nothing more was written to it. "
                         + (f"Its records up to now are saved in {rescued}: move it back to {self.path} to go on"
                            if rescued else "Its records could not be saved; restore .sealab/ from a backup"))

    def _rescue(self) -> Path | None:
        """Copy the still-open (removed) ledger next to where it was; None if that fails."""
        target = self.path.with_name(f"{self.path.stem}.rescued-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}.db")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.closing(sqlite3.connect(target)) as copy:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                self.db.backup(copy)
            rescued = Ledger(target)
            try:  # what this process had running ended with the directory, not by its experiment's doing
                from executor import owner

                for (eid,) in rescued.db.execute("SELECT id FROM experiments WHERE status = 'running' AND owner = ?",
                                                 (owner.token(),)).fetchall():
                    rescued._merge(eid, {"status": Status.INFRA_ERROR.value,
                                         "reason": f"the ledger {self.path} was removed or replaced during the run"},
                                   release=True, only_running=True, check=False)
            finally:
                rescued.close()
        except (OSError, sqlite3.DatabaseError, LedgerError):
            return None
        return target

    # -- bases --------------------------------------------------------------------------------------
    def set_base(self, base: BaseImage) -> None:
        """Record a base image and make it the workspace's current base."""
        with self._tx():
            self.db.execute("INSERT OR REPLACE INTO bases VALUES (?, ?, ?)",
                            (base.image_id, json.dumps(base.to_dict()), now()))
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('current_base', ?)", (base.image_id,))

    def base(self, image_id: str) -> BaseImage | None:
        row = self._query("SELECT record FROM bases WHERE image_id = ?", (image_id,)).fetchone()
        return BaseImage.from_dict(json.loads(row[0])) if row else None

    def current_base(self) -> BaseImage | None:
        row = self._query("SELECT value FROM meta WHERE key = 'current_base'").fetchone()
        return self.base(row[0]) if row else None

    # -- experiments: the executor's writes ---------------------------------------------------------
    def begin(self, record: ExperimentRecord, owner: str) -> ExperimentRecord:
        """Insert a new record as `running` (with every RECORD_KEYS key), owned by the process `owner`
        until finished. Only the executor begins records (a run, an import)."""
        data = {**{k: None for k in RECORD_KEYS}, **record.to_dict(), "status": Status.RUNNING.value}
        with self._tx():
            self.db.execute(
                "INSERT INTO experiments (id, status, owner, record, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (data["id"], data["status"], owner, json.dumps(data), data["created_at"], now()),
            )
            self._link(data["id"], data)
        return ExperimentRecord.from_dict(data)

    def finish(self, experiment_id: str, outcome: Finish) -> ExperimentRecord:
        """Write how the run ended (its final status, reason and what it reported) onto its record and
        release its owner. Only the executor finishes records."""
        return ExperimentRecord.from_dict(self._merge(experiment_id, outcome.changes(), release=True))

    def interrupt(self, experiment_id: str, reason: str) -> bool:
        """Mark a record that is still `running` `interrupted` (a stopped round, a dead process's run)
        and release its owner; a record that has ended is left as it is (and an unknown one is no error:
        a stop marks what it finds). Returns whether it was marked."""
        changes = {"status": Status.INTERRUPTED.value, "reason": reason}
        return self._merge(experiment_id, changes, release=True, only_running=True, check=False) is not None

    # -- experiments: annotations (what others say about a record; never its metrics, identity or status)
    def label(self, experiment_id: str, labels: RunLabels) -> ExperimentRecord:
        """The research loop's run tag, `baseline` and proposal (idempotent: a record the loop ran has
        them from its first write)."""
        return ExperimentRecord.from_dict(self._merge(experiment_id, labels.changes()))

    def record_decision(self, experiment_id: str, decision: Decision, why: str) -> ExperimentRecord:
        """The loop's keep or discard of an experiment, and why."""
        try:
            decision = Decision(decision)
        except ValueError:
            raise RecordError("decision", one_of(Decision), decision, experiment_id) from None
        changes = {"decision": decision.value, "decision_reason": str(why)}
        return ExperimentRecord.from_dict(self._merge(experiment_id, changes))

    def record_test(self, experiment_id: str, test: dict[str, Any]) -> ExperimentRecord:
        """Its model's score on the held-out test split (executor/heldout.py): never used for a decision."""
        return ExperimentRecord.from_dict(self._merge(experiment_id, {"test": dict(test)}))

    def record_cycle(self, experiment_id: str, cycle: dict[str, Any]) -> ExperimentRecord:
        """The loop's account of the experiment's wall time (training, idle by cause; agent/cycle.py)."""
        return ExperimentRecord.from_dict(self._merge(experiment_id, {"cycle": dict(cycle)}))

    def record_push(self, experiment_id: str, registry_digest: str) -> ExperimentRecord:
        """Where `sealab push` put the experiment's image: `HOST[:PORT]/REPO@sha256:…`."""
        return ExperimentRecord.from_dict(self._merge(experiment_id, {"registry_digest": str(registry_digest)}))

    def record_rerun(self, experiment_id: str, reproduces: str) -> ExperimentRecord:
        """That the experiment is a `sealab reproduce` rerun of the experiment `reproduces`."""
        return ExperimentRecord.from_dict(self._merge(experiment_id, {"reproduces": str(reproduces)}))

    def _merge(self, experiment_id: str, changes: dict[str, Any], *, release: bool = False,
               only_running: bool = False, check: bool = True) -> dict[str, Any] | None:
        """Merge `changes` into the stored record in one transaction (so a concurrent write is never
        undone), append its chain link and return it; None when `only_running` and it has ended (or is
        not there).
        `release` clears the owner (the run is over). `check`: the result must decode, or nothing is
        written (RecordError); only `interrupt` writes onto any record, so a dead run is always recovered."""
        with self._tx():
            row = self.db.execute("SELECT record FROM experiments WHERE id = ?", (experiment_id,)).fetchone()
            if row is None and only_running:
                return None
            if row is None:
                raise LedgerError(f"no experiment {experiment_id} in {self.path}")
            stored = json.loads(row[0])
            if only_running and stored.get("status") != Status.RUNNING.value:
                return None
            record = {**stored, **changes}
            if check:
                ExperimentRecord.from_dict(record)  # raises before anything is written
            owner = ", owner = NULL" if release else ""
            self.db.execute(f"UPDATE experiments SET status = ?{owner}, record = ?, updated_at = ? WHERE id = ?",
                            (record.get("status"), json.dumps(record), now(), experiment_id))
            self._link(experiment_id, record)
        return record

    def _link(self, experiment_id: str, record: dict[str, Any], *, mark: bool = True) -> None:
        """Append the chain link of a record's new content (inside the caller's transaction), and make its
        seq the record's `changed` cursor."""
        row = self.db.execute("SELECT hash FROM chain ORDER BY seq DESC LIMIT 1").fetchone()
        prev, digest = row[0] if row else GENESIS, record_digest(record)
        cursor = self.db.execute("INSERT INTO chain (experiment_id, record_sha256, prev, hash) VALUES (?, ?, ?, ?)",
                                 (experiment_id, digest, prev, link_hash(prev, experiment_id, digest)))
        if mark:
            self.db.execute("UPDATE experiments SET changed = ? WHERE id = ?", (cursor.lastrowid, experiment_id))

    def chain_problems(self) -> list[dict[str, Any]]:
        """Every way the records disagree with their hash chain: `{"id", "row", "field", "expected", "actual"}`.

        Catches a record edited, deleted or inserted outside sealab, records reordered, and a chain link
        edited. (Someone who rewrites records and recomputes the whole chain is caught only by comparing
        with a copy of the chain's last hash kept elsewhere, e.g. an exported provenance record.)
        """
        problems: list[dict[str, Any]] = []

        def report(eid: Any, row: Any, field: str, expected: Any, actual: Any) -> None:
            problems.append({"id": eid, "row": row, "field": field, "expected": expected, "actual": actual})

        latest: dict[str, str] = {}
        first_seen: dict[str, None] = {}  # the ids in the order the chain first saw them (a dict: in, in O(1))
        prev = GENESIS
        for seq, eid, digest, link_prev, link in self._query(
                "SELECT seq, experiment_id, record_sha256, prev, hash FROM chain ORDER BY seq"):
            if link_prev != prev or link != link_hash(link_prev, eid, digest):
                report(eid, seq, "chain link", link_hash(prev, eid, digest), link)
            prev = link
            latest[eid] = digest
            first_seen.setdefault(eid)
        present: dict[str, None] = {}  # the ids in the table's order
        for seq, eid, text in self._query("SELECT seq, id, record FROM experiments ORDER BY seq"):  # (streamed)
            present[eid] = None
            if eid not in latest:
                report(eid, seq, "record", "a record written by sealab", "a record the chain has never seen")
            elif record_digest(json.loads(text)) != latest[eid]:
                report(eid, seq, "record", latest[eid], record_digest(json.loads(text)))
        for eid in first_seen:
            if eid not in present:
                report(eid, None, "record", "present", "deleted")
        chained_order = [eid for eid in first_seen if eid in present]
        listed_order = [eid for eid in present if eid in latest]
        if chained_order != listed_order:
            moved = next(i for i, (a, b) in enumerate(zip(chained_order, listed_order)) if a != b)
            report(listed_order[moved], moved + 1, "order", chained_order[moved], listed_order[moved])
        return problems

    # -- experiments: reads ---------------------------------------------------------------------------
    def records(self, run_tag: str | None = None) -> list[dict[str, Any]]:
        """Every record as stored (or those of the run `run_tag`), whatever its shape (the tolerant readers'
        view; see executor.record), in the order they were begun."""
        return [record for _, record in self.select(Query(run_tag=run_tag))]

    def select(self, query: Query | None = None, *, raw: bool = False) -> Iterator[tuple[int, Any]]:
        """`(seq, record)` of the records `query` selects, as stored, read in pages (constant memory however
        many there are). `raw`: the record as its stored JSON text, undecoded (to pass it on as it is)."""
        sql, params = (query or Query()).sql("seq, record")
        for seq, text in paged(self._query(sql, params)):
            yield seq, (text if raw else json.loads(text))

    def pick(self, paths: dict[str, str], query: Query | None = None, *,
             texts: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
        """For each record `query` selects, `{key: the value at the JSON path paths[key]}` (e.g. `"$.status"`,
        `'$.metrics."val_bpb"'`): what `json.loads(record)` holds there (None where nothing is), read by
        SQLite's JSON functions in one pass without decoding the rest of the record (for a report over many
        records). `texts`: more keys whose value comes as its JSON text (`"null"` where nothing is), e.g. to
        decode an object once for the many records that hold the same.

        Raises:
            LedgerError: a stored record is not JSON.
        """
        keys, text_keys = list(paths), list(texts or {})
        extract = ", ".join(["'$.id'"] + ["?"] * len(keys))  # (two paths at least: the values come as one array)
        columns = ", ".join([f"id, CASE WHEN json_valid(record) THEN json_extract(record, {extract}) END"]
                            + ["CASE WHEN json_valid(record) THEN json_quote(json_extract(record, ?)) END"] * len(text_keys))
        sql, params = (query or Query()).sql(columns)
        for row in paged(self._query(sql, tuple(paths.values()) + tuple((texts or {}).values()) + params)):
            if row[1] is None:
                raise LedgerError(f"{self.path}: the record {row[0]} is not JSON (`sealab verify --all` reports it)")
            out = dict(zip(keys, json.loads(row[1])[1:]))
            out.update(zip(text_keys, row[2:]))
            yield out

    def count(self, query: Query | None = None) -> int:
        """How many records `query` selects (its limit aside)."""
        sql, params = replace(query or Query(), limit=None, last=None).sql("count(*)", ordered=False)
        return self._query(sql, params).fetchone()[0]

    def tally(self, column: str, query: Query | None = None) -> dict[str | None, int]:
        """How many records `query` selects, by the value of `column` (status, decision or run_tag)."""
        if column not in ("status", "decision", "run_tag"):
            raise ValueError(f"cannot tally by {column!r}")
        sql, params = replace(query or Query(), limit=None, last=None).sql(f"{column}, count(*)", ordered=False)
        return dict(self._query(f"{sql} GROUP BY {column}", params).fetchall())

    def pushed_as(self, registry_digest: str) -> dict[str, Any] | None:
        """The latest record `sealab push` put at `registry_digest` (`HOST[:PORT]/REPO@sha256:…`), or None."""
        row = self._query("SELECT record FROM experiments WHERE json_valid(record) AND "
                          "json_extract(record, '$.registry_digest') = ? ORDER BY seq DESC LIMIT 1",
                          (registry_digest,)).fetchone()
        return json.loads(row[0]) if row else None

    def cursor(self) -> int:
        """Where the ledger's writes are now: a later `Query(changed_after=cursor)` selects what was written
        (begun, finished, annotated) after this moment."""
        row = self._query("SELECT max(seq) FROM chain").fetchone()
        return row[0] or 0

    def seq_of(self, experiment_id: str) -> int | None:
        """The row of the record `experiment_id` (its place in the order records were begun), or None."""
        row = self._query("SELECT seq FROM experiments WHERE id = ?", (experiment_id,)).fetchone()
        return row[0] if row else None

    def run_tags(self) -> list[str]:
        """The research runs, the latest saved first."""
        return [r[0] for r in self._query("SELECT tag FROM runs ORDER BY updated_at DESC, tag")]

    def get(self, experiment_id: str) -> dict[str, Any] | None:
        """The record whose id is `experiment_id`, or starts with it when that is unambiguous."""
        prefix = experiment_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = self._query("SELECT record FROM experiments WHERE id = ? OR id LIKE ? ESCAPE '\\' ORDER BY seq",
                           (experiment_id, prefix + "%")).fetchall()
        exact = [json.loads(r[0]) for r in rows if json.loads(r[0])["id"] == experiment_id]
        if exact:
            return exact[0]
        return json.loads(rows[0][0]) if len(rows) == 1 else None

    def experiment(self, experiment_id: str) -> ExperimentRecord | None:
        """`get`'s record, decoded.

        Raises:
            RecordError: the stored record is not one (see ExperimentRecord.from_dict).
        """
        found = self.get(experiment_id)
        return None if found is None else ExperimentRecord.from_dict(found)

    def experiments(self, run_tag: str | None = None) -> list[ExperimentRecord]:
        """Every record, or those of the research run `run_tag`, decoded, in the order they were begun.

        Raises:
            RecordError: one of them is not a record (see ExperimentRecord.from_dict).
        """
        return [ExperimentRecord.from_dict(r) for r in self.records(run_tag)]

    def running(self) -> list[tuple[str, str]]:
        """(id, owner) of every record still marked running."""
        return list(self._query("SELECT id, owner FROM experiments WHERE status = ?", (Status.RUNNING.value,)))

    # -- research runs ------------------------------------------------------------------------------
    def save_run(self, tag: str, state: dict[str, Any]) -> None:
        with self._tx():
            self.db.execute("INSERT INTO runs VALUES (?, ?, ?, ?) ON CONFLICT(tag) DO UPDATE SET state = excluded.state, "
                            "updated_at = excluded.updated_at", (tag, json.dumps(state), now(), now()))

    def latest_run_tag(self) -> str | None:
        row = self._query("SELECT tag FROM runs ORDER BY updated_at DESC LIMIT 1").fetchone()
        return row[0] if row else None

    def run_state(self, tag: str) -> dict[str, Any] | None:
        row = self._query("SELECT state FROM runs WHERE tag = ?", (tag,)).fetchone()
        return json.loads(row[0]) if row else None

    def add_event(self, run_tag: str | None, kind: str, record: dict[str, Any]) -> None:
        """Record something that is not an experiment: a rejected or parked proposal, a drift event."""
        with self._tx():
            self.db.execute("INSERT INTO events (run_tag, kind, record, created_at) VALUES (?, ?, ?, ?)",
                            (run_tag, kind, json.dumps(record), now()))

    def events(self, kind: str | None = None, run_tag: str | None = None) -> list[dict[str, Any]]:
        """The events (of one `kind`, of one run), in the order they happened."""
        clauses = [(c, p) for c, p in (("kind = ?", kind), ("run_tag = ?", run_tag)) if p is not None]
        where = " WHERE " + " AND ".join(c for c, _ in clauses) if clauses else ""
        params = tuple(p for _, p in clauses)
        rows = self._query(f"SELECT run_tag, kind, record, created_at FROM events{where} ORDER BY seq", params).fetchall()
        return [{"run_tag": t, "kind": k, "created_at": c, **json.loads(r)} for t, k, r, c in rows]

    def _query(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        try:
            return self.db.execute(sql, params)
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path}: {exc}{_space_hint(self.path)}") from exc


class ReadOnlyLedger(Ledger):
    """A Ledger opened with SQLite's `mode=ro`: the read methods work, any write fails; no schema set-up."""

    def __init__(self, path: Path) -> None:  # not super().__init__: that creates and migrates the schema
        self.path = path
        try:
            self.db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5,
                                      isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA query_only = ON")
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{path}: cannot read the ledger: {exc}") from exc


@contextlib.contextmanager
def reading(ledger_path: Path) -> Iterator[Ledger]:
    """The ledger of `ledger_path` opened read-only for one use (a dashboard request), closed after it; an
    empty in-memory one while the workspace has none yet, so that reading never creates a ledger."""
    ledger = ReadOnlyLedger(ledger_path) if ledger_path.exists() else Ledger(Path(":memory:"))
    try:
        yield ledger
    except sqlite3.DatabaseError as exc:  # e.g. a ledger written before the chain existed
        raise LedgerError(f"{ledger_path}: {exc}") from exc
    finally:
        ledger.close()


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT, with SQLite errors turned into LedgerError."""

    def __init__(self, db: sqlite3.Connection, path: Path, check: Callable[[], None] = lambda: None) -> None:
        self.db, self.path, self.check = db, path, check
        self.outer: bool | None = None

    def __enter__(self) -> None:
        self.outer = not self.db.in_transaction
        try:
            if self.outer:
                self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path}: {exc}{_space_hint(self.path)}") from exc
        self.check()

    def __exit__(self, kind, exc, tb) -> None:
        if self.outer is False:  # inside another transaction (Ledger.batch): that one commits or rolls back
            return
        if kind is None:
            if self.db.in_transaction:
                self.check()
                try:
                    self.db.execute("COMMIT")
                except sqlite3.DatabaseError as error:
                    with contextlib.suppress(sqlite3.DatabaseError):  # SQLite may have rolled back itself
                        self.db.execute("ROLLBACK")
                    raise LedgerError(f"{self.path}: {error}{_space_hint(self.path)}") from error
            return
        if self.db.in_transaction:
            with contextlib.suppress(sqlite3.DatabaseError):  # never hide the error that got us here
                self.db.execute("ROLLBACK")
        if issubclass(kind, sqlite3.DatabaseError):  # also when SQLite already rolled back (disk full)
            raise LedgerError(f"{self.path}: {exc}{_space_hint(self.path)}") from exc
