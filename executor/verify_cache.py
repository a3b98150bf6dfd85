"""What `sealab verify` proved, kept so that it is not proved again while nothing it depends on changed.

Two kinds of entries (see executor/verify.py for what they are keyed by):

    identity key → what was derived: the commit's tree and lock digest, the sealed image's ID, labels, tag
    record key   → a record's verdict: its identity key, whether it counted, its id, its mismatches

An identity key digests every input of the derivation as it is when looked up (the commit and its tree,
the base record, the run spec, the code): an entry under it can only be found while they all are the
same. A record key is the sha256 of the record's stored text ("t:") or canonical JSON ("c:"), and its
verdict is used only while its identity key still is the key of its inputs now.

The file is `.sealab/cache/verify.cache`: lines appended in blocks, each block opened by `@ <code>` and
closed by `# <HMAC>` with the key of the chain checkpoint (outside the workspace), so an entry written
by hand, or by another sealab, is not read; a block cut short by a crash is skipped. It is rewritten
(atomically) once most of it is no longer used. Not SQLite: only executor/ledger.py talks to SQLite.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from executor import chain_check, git_source
from executor.docker_engine import Engine
from executor.signing import SigningError
from executor.ledger import Ledger
from executor.verify import NO_IDENTITY, Checker, EngineChecks, derivation_code, verify

CACHE_DIR = "cache"
CACHE_NAME = "verify.cache"
FLUSH_EVERY = 2048  # entries waiting to be written; more are appended as a block
BLOCK_LINES = 8192  # lines per block when the file is rewritten


class VerifyCache:
    """The entries of one cache file, in memory; new ones appended to the file (`flush`). Safe to share
    between threads (the dashboard's requests)."""

    def __init__(self, path: Path, key: bytes, *, read: bool = True, write: bool = True) -> None:
        """`read`: use what the file holds (False: only add to it: `verify --full`). `write` False: what is
        added stays in memory, the file is never written (the dashboard, which only reads the workspace)."""
        self.path, self._key, self._code, self.write = path, key, derivation_code(), write
        self._records: dict[str, tuple[str, int, bool, str, str]] = {}
        self._identities: dict[str, dict[str, Any]] = {}
        self._pending: list[str] = []
        self._lines = 0  # entries in the file
        self._lock = threading.RLock()
        self.rejected = 0  # blocks not read: their HMAC did not verify (edited, or another key)
        if read:
            self._load()

    # -- reading -------------------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError:
            return
        start = None  # where the current block's `@` line begins
        code = None
        pos, size = 0, len(data)
        while pos < size:
            end = data.find(b"\n", pos)
            end = size if end < 0 else end
            if data.startswith(b"@\t", pos):
                start, code = pos, data[pos + 2:end]
            elif data.startswith(b"#\t", pos) and start is not None:
                tag = data[pos + 2:end].decode("ascii", "replace")
                if hmac.compare_digest(tag, self._mac(data[start:pos])):
                    if code == self._code.encode():
                        self._read_block(data[start:pos])
                else:
                    self.rejected += 1
                start = None
            pos = end + 1

    def _read_block(self, block: bytes) -> None:
        for line in block.decode("utf-8", "replace").split("\n"):
            kind = line[:2]
            if kind == "r\t":
                parts = line.split("\t", 5)
                if len(parts) == 6 and len(parts[3]) == 2:
                    flags = parts[3]
                    self._records[parts[1]] = (parts[2], int(flags[0] == "1"), flags[1] == "1", parts[4], parts[5])
                    self._lines += 1
            elif kind == "i\t":
                parts = line.split("\t", 2)
                if len(parts) == 3:
                    try:
                        derived = json.loads(parts[2])
                    except ValueError:
                        continue
                    if isinstance(derived, dict):
                        self._identities[parts[1]] = derived
                        self._lines += 1

    def _mac(self, data: bytes) -> str:
        return hmac.new(self._key, data, hashlib.sha256).hexdigest()

    def record(self, key: str) -> tuple[str, int, bool, str, str] | None:
        """`(identity key, counted, reached the engine checks, the record's id and its mismatches as JSON)`
        kept under `key`."""
        return self._records.get(key)

    def identity(self, key: str) -> dict[str, Any] | None:
        return self._identities.get(key)

    def __len__(self) -> int:
        return len(self._records) + len(self._identities)

    # -- writing -------------------------------------------------------------------------------------
    def put_identity(self, key: str, derived: Mapping[str, Any]) -> None:
        text = json.dumps(dict(derived))  # (in order: the labels are checked in the order sealing gives them)
        with self._lock:
            self._identities[key] = json.loads(text)
            self._pending.append(f"i\t{key}\t{text}")
            self._maybe_flush()

    def put_record(self, key: str, identity: str, counted: int, engine: bool, eid: Any,
                   mismatches: list[dict[str, Any]]) -> None:
        try:
            name, text = json.dumps(eid), json.dumps(mismatches)
        except (TypeError, ValueError):
            return
        if any(c in field for field in (key, identity) for c in "\t\n"):
            return
        entry = (identity, int(bool(counted)), bool(engine), name, text)
        with self._lock:
            self._records[key] = entry
            self._pending.append(self._line(key, entry))
            self._maybe_flush()

    @staticmethod
    def _line(key: str, entry: tuple[str, int, bool, str, str]) -> str:
        identity, counted, engine, name, text = entry
        return f"r\t{key}\t{identity}\t{counted}{int(engine)}\t{name}\t{text}"

    def _maybe_flush(self) -> None:
        if len(self._pending) >= FLUSH_EVERY:
            self.flush()

    def _block(self, lines: list[str]) -> bytes:
        body = ("@\t" + self._code + "\n" + "".join(line + "\n" for line in lines)).encode()
        return b"\n" + body + b"#\t" + self._mac(body).encode() + b"\n"  # (the \n first: after a torn write)

    def flush(self) -> None:
        """Append the new entries as one signed block (one write: a crash leaves it whole or unread)."""
        with self._lock:
            if not self._pending or not self.write:
                self._pending.clear()
                return
            lines, self._pending = self._pending, []
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, self._block(lines))
                finally:
                    os.close(fd)
                self._lines += len(lines)
            except OSError:
                pass  # a cache that cannot be written is a slower next check, nothing worse

    def compact(self, records: Iterable[str], identities: Iterable[str] | None = None, *, force: bool = False) -> None:
        """Keep only the entries `records` (and the identities they use, and `identities`) when the file
        holds more than twice as many, or `force`: rewritten whole, atomically."""
        with self._lock:
            self.flush()
            keep = {k: self._records[k] for k in records if k in self._records}
            used = {e[0] for e in keep.values()} | set(identities or ())
            ids = {k: v for k, v in self._identities.items() if k in used}
            if not force and self._lines <= 2 * (len(keep) + len(ids)) + 1000:
                return
            lines = [f"i\t{k}\t{json.dumps(v)}" for k, v in ids.items()]
            lines += [self._line(k, entry) for k, entry in keep.items()]
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            try:
                with open(tmp, "wb") as f:
                    for n in range(0, len(lines), BLOCK_LINES):
                        f.write(self._block(lines[n:n + BLOCK_LINES]))
                    f.flush()
                    os.fsync(f.fileno())
                os.chmod(tmp, 0o600)
                os.replace(tmp, self.path)
            except OSError:
                return
            finally:
                tmp.unlink(missing_ok=True)
            self._records, self._identities, self._lines = keep, ids, len(lines)


def open_cache(state_dir: Path, *, workspaces: tuple[Path, ...] = (), read: bool = True,
               write: bool = True) -> tuple[VerifyCache | None, str | None]:
    """The workspace's cache (`state_dir` is its `.sealab/`), or None and why (one line) when there is no
    key to sign it with. `write` False (a reader's): never writes the cache, nor makes a key."""
    try:
        key = chain_check.load_key(workspaces=workspaces, create=write)
    except SigningError as exc:
        return None, f"{exc}: no verification cache"
    return VerifyCache(state_dir / CACHE_DIR / CACHE_NAME, key, read=read, write=write), None


# -- for the dashboard -----------------------------------------------------------------------------------
def problems_for(record: Mapping[str, Any], *, repo: git_source.Repository, ledger: Ledger,
                 cache: VerifyCache | None = None) -> list[dict[str, Any]]:
    """One stored record's identity mismatches (`{"id", "field", "expected", "actual"}`; no chain or
    engine checks), through `cache` when given (and added to it; written by `cache.flush()` or once enough
    are waiting). Raises what verify does for a record too malformed to seal (SealabError, ...)."""
    checker = Checker(repo, ledger, cache)
    [outcome] = checker.check([(checker.canonical_key(record), record)])
    return outcome.mismatches


def _key(workspaces: tuple[Path, ...]) -> tuple[bytes | None, list[str]]:
    """The key of the cache and the checkpoint (made on first use), or None and the one-line note why not."""
    try:
        return chain_check.load_key(workspaces=workspaces), []
    except SigningError as exc:
        return None, [f"{exc}: no verification cache or chain checkpoint"]


# -- `sealab verify --all` -------------------------------------------------------------------------------
def verify_all(repo: git_source.Repository, ledger: Ledger, engine: Engine | None, state_dir: Path, *,
               full: bool = False, workspaces: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Every record and the whole chain, as `verify(..., whole_ledger=True)` reports them, with
    `cached`, `rederived` (see verify), `chain_from` (the checkpoint's link the chain was walked from; 0:
    all of it), `seconds` and `notes` (one line each: a checkpoint not used, no key).

    Incremental: verdicts whose inputs are unchanged come from the cache, and the chain is checked from the
    signed checkpoint. `full`: everything derived and walked again; the cache's entries and the checkpoint
    are replaced by what this check found (the checkpoint only when the chain is clean).
    """
    started = time.monotonic()
    key, notes = _key(workspaces)
    cache = VerifyCache(state_dir / CACHE_DIR / CACHE_NAME, key, read=not full) if key is not None else None
    with chain_check.snapshot(ledger):
        chain = chain_check.check(ledger, state_dir / CACHE_DIR / chain_check.CHECKPOINT_NAME, key, whole=full)
        if chain.note:
            notes.append(chain.note)
        checker = Checker(repo, ledger, cache)
        rows = chain.rows
        keys = [f"t:{sha}" if cache is not None else None for _, _, sha in rows]

        def texts(indexes: list[int]) -> Iterable[tuple[int, Any]]:
            for n in range(0, len(indexes), 500):
                chunk = indexes[n:n + 500]
                where = {rows[i][0]: i for i in chunk}
                marks = ",".join("?" * len(chunk))
                found = ledger._query(f"SELECT seq, record FROM experiments WHERE seq IN ({marks})",
                                      tuple(where)).fetchall()
                for seq, text in found:
                    yield where[seq], text

        outcomes = checker.check([(k, None) for k in keys], ids=[eid for _, eid, _ in rows], texts=texts)
    checked, mismatches, engine_checks = 0, [], EngineChecks(engine)
    for outcome in outcomes:
        checked += outcome.counted
        mismatches += outcome.mismatches + engine_checks(outcome)
    mismatches += chain.problems
    if cache is not None:
        cache.flush()
        cache.compact([k for k in keys if k is not None], force=full)  # (--full: what this check found, only)
    return {"checked": checked, "mismatches": mismatches, "cached": checker.cached, "rederived": checker.rederived,
            "chain_from": chain.start, "notes": notes, "seconds": round(time.monotonic() - started, 3)}


def verify_some(repo: git_source.Repository, ledger: Ledger, engine: Engine | None, records: list[Mapping[str, Any]],
                state_dir: Path, *, workspaces: tuple[Path, ...] = ()) -> dict[str, Any]:
    """`verify(...)` of some records (`sealab verify ID`) through the cache, with the chain checked from the
    checkpoint (its problems of these records only)."""
    key, notes = _key(workspaces)
    cache = VerifyCache(state_dir / CACHE_DIR / CACHE_NAME, key) if key is not None else None
    chain = chain_check.check(ledger, state_dir / CACHE_DIR / chain_check.CHECKPOINT_NAME, key, keep=False)
    if chain.note:
        notes.append(chain.note)
    report = verify(repo, ledger, engine, records, cache=cache, chain=chain.problems)
    if cache is not None:
        cache.flush()
    return {**report, "chain_from": chain.start, "notes": notes}


__all__ = ["VerifyCache", "open_cache", "problems_for", "verify_all", "verify_some", "NO_IDENTITY"]
