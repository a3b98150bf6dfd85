"""The ledger's hash chain checked whole in one pass, or from a signed checkpoint on.

`Ledger.chain_problems` walks every link and decodes every record. Here the same check (`full`, the same
problems in the same order, in time linear in the ledger) and an incremental one (`since`): a checkpoint,
written after a clean check and signed with an HMAC key kept outside the workspace, holds the chain's
length, its last link and a digest of every link up to it, and the sha256 of each experiment row's stored
text as it was then. A later check hashes the links up to the checkpoint and the rows' raw text (no JSON
decoding), compares them with the checkpoint, walks only the links written after it, and decodes only the
rows those links rewrote (or a row whose text no longer matches). It catches what the full walk catches
(a record edited, deleted, inserted or reordered, a link edited, before or after the checkpoint), and
more: a chain rewritten consistently, or cut back, before the checkpoint.

A checkpoint that was edited, or signed with another key, is not used: the check says so in one line and
walks the whole chain. The key is `checkpoint.key` in `signing.key_dir()` (or the file
`$SEALAB_CHECKPOINT_KEY`), 32 random bytes made mode 0600 on first use; never inside a workspace.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from executor.ledger import GENESIS, PAGE_ROWS, Ledger, link_hash, paged, record_digest
from executor.signing import SigningError, _outside, key_dir
from executor.types import canonical_json

KEY_NAME = "checkpoint.key"
KEY_ENV = "SEALAB_CHECKPOINT_KEY"
CHECKPOINT_NAME = "chain-checkpoint.json"
FORMAT = "sealab-chain-checkpoint/1"
Problem = dict[str, Any]
Row = tuple[int, str, str]  # (seq, id, sha256 of the stored text)


# -- the key ---------------------------------------------------------------------------------------------
def key_path() -> Path:
    """Where the checkpoint (and verification cache) key lives: `$SEALAB_CHECKPOINT_KEY`, else
    `checkpoint.key` beside the signing key pair (`$SEALAB_KEY_DIR`, else `~/.config/sealab`)."""
    return Path(os.environ[KEY_ENV]) if os.environ.get(KEY_ENV) else key_dir() / KEY_NAME


def load_key(*, workspaces: tuple[Path, ...] = (), create: bool = True) -> bytes:
    """The HMAC key, made (32 random bytes, hex, mode 0600) when there is none yet and `create`.

    Raises:
        SigningError: the key file lies inside a workspace, or cannot be read or made.
    """
    path = key_path()
    _outside(path, workspaces)
    for _ in range(2):
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            if not create:
                raise SigningError(f"no checkpoint key at {path}") from None
        except OSError as exc:
            raise SigningError(f"cannot read the checkpoint key {path}: {exc}") from None
        else:
            try:
                key = bytes.fromhex(text)
            except ValueError:
                key = b""
            if len(key) < 16:
                raise SigningError(f"{path} is not a checkpoint key (hex, at least 16 bytes); "
                                   "remove it to make a new one")
            return key
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue  # another process made it meanwhile: read that one
        except OSError as exc:
            raise SigningError(f"cannot make the checkpoint key {path}: {exc}") from None
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    raise SigningError(f"cannot read the checkpoint key {path}")


def key_id(key: bytes) -> str:
    """A public name of a key (which key signed a checkpoint), not the key."""
    return hashlib.sha256(b"sealab checkpoint key:" + key).hexdigest()[:16]


def mac(key: bytes, data: bytes) -> str:
    return hmac.new(key, data, hashlib.sha256).hexdigest()


# -- reading the ledger ----------------------------------------------------------------------------------
@contextlib.contextmanager
def snapshot(ledger: Ledger) -> Iterator[None]:
    """One read transaction: the chain and the rows read inside it are of the same moment, however many
    writes another process commits meanwhile."""
    if ledger.db.in_transaction:
        yield
        return
    ledger._query("BEGIN")
    try:
        yield
    finally:
        if ledger.db.in_transaction:
            ledger._query("ROLLBACK")


def _paged(cursor: Any) -> Iterator[Any]:
    return paged(cursor, PAGE_ROWS * 4)


def _links(ledger: Ledger, after: int = 0, upto: int | None = None) -> Iterator[tuple[int, str, str, str, str]]:
    sql = "SELECT seq, experiment_id, record_sha256, prev, hash FROM chain WHERE seq > ?"
    params: tuple = (after,)
    if upto is not None:
        sql += " AND seq <= ?"
        params = (after, upto)
    return _paged(ledger._query(sql + " ORDER BY seq", params))


def _rows(ledger: Ledger) -> Iterator[tuple[int, str, Any]]:
    """`(seq, id, stored text as UTF-8 bytes)` of every row, in order (bytes: never decoded to hash them)."""
    return _paged(ledger._query("SELECT seq, id, CAST(record AS BLOB) FROM experiments ORDER BY seq"))


def _bytes(text: Any) -> bytes:
    if isinstance(text, bytes):
        return text
    return str(text).encode("utf-8", "surrogatepass")


def text_digest(text: Any) -> str:
    """sha256 of a row's stored text, as stored (no decoding)."""
    return hashlib.sha256(_bytes(text)).hexdigest()


def _record_digest(text: Any) -> str:
    """The chain's digest of a stored record (its canonical JSON's sha256); a row that is not JSON says so."""
    try:
        return record_digest(json.loads(text))
    except ValueError:
        return "not JSON"


def _line(seq: Any, eid: Any, digest: Any, prev: Any, link: Any) -> str:
    """One link as hashed into the checkpoint's digest (each field length-prefixed: no two links read alike)."""
    eid, digest, prev, link = (x if isinstance(x, (str, bytes)) else str(x) for x in (eid, digest, prev, link))
    return f"{seq}|{len(eid)}:{eid}|{len(digest)}:{digest}|{len(prev)}:{prev}|{len(link)}:{link}\n"


def _lines(page: list[tuple[Any, Any, Any, Any, Any]]) -> list[str]:
    """`_line` of each link of a page (inline: the one loop over every link up to the checkpoint)."""
    try:
        return [f"{s}|{len(e)}:{e}|{len(d)}:{d}|{len(p)}:{p}|{len(h)}:{h}\n" for s, e, d, p, h in page]
    except TypeError:  # (a field that is neither text nor bytes: written behind sealab's back)
        return [_line(*link) for link in page]


def _hash_lines(digest: Any, lines: list[str]) -> None:
    digest.update("".join(lines).encode("utf-8", "surrogatepass"))


# -- the checkpoint --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Checkpoint:
    """What a clean check saw: the chain up to link `chain_seq` (whose hash is `chain_hash`; `chain_links`
    links, `chain_digest` over all of them) and every experiment row then, `(seq, id, sha256 of its text)`."""

    chain_seq: int
    chain_hash: str
    chain_links: int
    chain_digest: str
    rows: tuple[Row, ...] = field(repr=False)

    def payload(self, key: bytes) -> bytes:
        return canonical_json({"format": FORMAT, "key": key_id(key), "chain_seq": self.chain_seq,
                               "chain_hash": self.chain_hash, "chain_links": self.chain_links,
                               "chain_digest": self.chain_digest, "experiments_rows": len(self.rows),
                               "rows": [list(r) for r in self.rows]})


def save(path: Path, key: bytes, checkpoint: Checkpoint) -> None:
    """Write the signed checkpoint atomically (a crash leaves the old one or the new one)."""
    payload = checkpoint.payload(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(payload + b"\nmac " + mac(key, payload).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load(path: Path, key: bytes) -> tuple[Checkpoint | None, str | None]:
    """The checkpoint at `path` if it is there and signed by `key`: `(checkpoint, None)`; `(None, None)` when
    there is none; `(None, why)` when there is one that cannot be used (edited, another key), `why` one line."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"the chain checkpoint {path} cannot be read ({exc}): the whole chain is walked"
    edited = (f"the chain checkpoint {path} was edited since it was signed: not used, the whole chain is walked "
              "(`sealab verify --all --full` signs a new one once the ledger checks clean)")
    payload, sep, tail = data.rstrip(b"\n").rpartition(b"\nmac ")
    try:
        fields = json.loads(payload) if sep else None
    except ValueError:
        fields = None
    if not isinstance(fields, dict) or fields.get("format") != FORMAT:
        return None, edited
    if fields.get("key") != key_id(key):
        return None, (f"the chain checkpoint {path} is signed with another key than {key_path()}: not used, the "
                      "whole chain is walked (`sealab verify --all --full` signs a new one once the ledger checks "
                      "clean)")
    if not hmac.compare_digest(tail.decode("ascii", "replace"), mac(key, payload)):
        return None, edited
    try:
        rows = tuple((int(s), str(i), str(d)) for s, i, d in fields["rows"])
        checkpoint = Checkpoint(int(fields["chain_seq"]), str(fields["chain_hash"]), int(fields["chain_links"]),
                                str(fields["chain_digest"]), rows)
    except (KeyError, TypeError, ValueError):
        return None, edited
    return checkpoint, None


# -- the checks ------------------------------------------------------------------------------------------
@dataclass
class ChainCheck:
    """A check's outcome: the problems (Ledger.chain_problems' shape), the link after which the chain was
    walked (0: all of it), every row read, a note (why a checkpoint was not used), and the checkpoint of
    what was seen, to keep when there was no problem."""

    problems: list[Problem]
    start: int
    rows: list[Row]
    note: str | None = None
    seen: Checkpoint | None = None


class _Walk:
    """The shared half of both checks: link problems, then row problems, deletions and order, reported as
    Ledger.chain_problems does."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.digest = hashlib.sha256()
        self.links = 0
        self.head: tuple[int, str] = (0, GENESIS)

    def report(self, eid: Any, row: Any, field_name: str, expected: Any, actual: Any) -> None:
        self.problems.append({"id": eid, "row": row, "field": field_name, "expected": expected, "actual": actual})

    def walk(self, links: Iterator[tuple[int, str, str, str, str]], prev: str, latest: dict[str, str]) -> None:
        """Check each link against the one before; `latest` gets each id's last digest, in first-seen order."""
        check, lines = link_hash, []
        for seq, eid, digest, link_prev, link in links:
            if link_prev != prev or link != check(link_prev, eid, digest):
                self.report(eid, seq, "chain link", check(prev, eid, digest), link)
            prev = link
            latest[eid] = digest
            lines.append(_line(seq, eid, digest, link_prev, link))
            if len(lines) >= 4096:
                _hash_lines(self.digest, lines)
                lines = []
            self.links += 1
            self.head = (seq, link)
        _hash_lines(self.digest, lines)

    def order(self, first_seen: Any, known: Any, rows: list[Row]) -> None:
        present = [eid for _, eid, _ in rows]
        here = set(present)
        for eid in first_seen:
            if eid not in here:
                self.report(eid, None, "record", "present", "deleted")
        chained = [eid for eid in first_seen if eid in here]
        listed = [eid for eid in present if eid in known]
        if chained != listed:
            moved = next((i for i, (a, b) in enumerate(zip(chained, listed)) if a != b), min(len(chained), len(listed)))
            if moved < len(listed):
                self.report(listed[moved], moved + 1, "order", chained[moved] if moved < len(chained) else None,
                            listed[moved])

    def seen(self, rows: list[Row]) -> Checkpoint:
        return Checkpoint(self.head[0], self.head[1], self.links, self.digest.hexdigest(), tuple(rows))


def full(ledger: Ledger) -> ChainCheck:
    """Every link and every record, as Ledger.chain_problems (same problems, same order), in one pass each."""
    walk, latest = _Walk(), {}
    with snapshot(ledger):
        walk.walk(_links(ledger), GENESIS, latest)
        rows: list[Row] = []
        for seq, eid, text in _rows(ledger):
            rows.append((seq, eid, text_digest(text)))
            if eid not in latest:
                walk.report(eid, seq, "record", "a record written by sealab", "a record the chain has never seen")
            else:
                digest = _record_digest(text)
                if digest != latest[eid]:
                    walk.report(eid, seq, "record", latest[eid], digest)
    walk.order(latest, latest, rows)
    return ChainCheck(walk.problems, 0, rows, seen=walk.seen(rows))


def since(ledger: Ledger, checkpoint: Checkpoint) -> ChainCheck:
    """The chain checked from `checkpoint` on: the links up to it must be those it signed (one digest over
    them), the rows it saw must still hold the text it saw unless a later link rewrote them (then they are
    decoded and checked against that link), and the links after it are walked. Gives the full walk's
    problems; a chain that changed before the checkpoint is walked whole, with one more problem saying so."""
    walk = _Walk()
    with snapshot(ledger):
        at_checkpoint = _prefix(ledger, checkpoint.chain_seq, walk)
        if (at_checkpoint != checkpoint.chain_hash or walk.links != checkpoint.chain_links
                or walk.digest.hexdigest() != checkpoint.chain_digest):
            return _changed_before(ledger, checkpoint, at_checkpoint)
        walk.head = (checkpoint.chain_seq, checkpoint.chain_hash)
        later: dict[str, str] = {}
        walk.walk(_links(ledger, checkpoint.chain_seq), checkpoint.chain_hash, later)
        then = {eid: sha for _, eid, sha in checkpoint.rows}
        rows: list[Row] = []
        sha256, add = hashlib.sha256, rows.append
        for seq, eid, text in _rows(ledger):
            sha = sha256(text if isinstance(text, bytes) else _bytes(text)).hexdigest()
            add((seq, eid, sha))
            if eid in later:
                digest = _record_digest(text)
                if digest != later[eid]:
                    walk.report(eid, seq, "record", later[eid], digest)
            elif eid in then:
                if sha != then[eid]:
                    digest, expected = _record_digest(text), _last_digest(ledger, eid)
                    if digest != expected:  # (the same record written out differently is the same record)
                        walk.report(eid, seq, "record", expected, digest)
            else:
                walk.report(eid, seq, "record", "a record written by sealab", "a record the chain has never seen")
    first_seen = [eid for _, eid, _ in checkpoint.rows] + [eid for eid in later if eid not in then]
    walk.order(first_seen, then.keys() | later.keys(), rows)
    return ChainCheck(walk.problems, checkpoint.chain_seq, rows, seen=walk.seen(rows))


def _prefix(ledger: Ledger, upto: int, walk: _Walk) -> str | None:
    """Hash the links up to `upto` into `walk` (not checking them); the hash of the link `upto`, if any."""
    at = None
    cursor = ledger._query("SELECT seq, experiment_id, record_sha256, prev, hash FROM chain "
                           "WHERE seq <= ? ORDER BY seq", (upto,))
    while page := cursor.fetchmany(PAGE_ROWS * 16):
        _hash_lines(walk.digest, _lines(page))
        walk.links += len(page)
        if page[-1][0] == upto:
            at = page[-1][4]
    return at


def _last_digest(ledger: Ledger, eid: str) -> str | None:
    row = ledger._query("SELECT record_sha256 FROM chain WHERE experiment_id = ? ORDER BY seq DESC LIMIT 1",
                        (eid,)).fetchone()
    return row[0] if row else None


def _changed_before(ledger: Ledger, checkpoint: Checkpoint, at_checkpoint: str | None) -> ChainCheck:
    """The links up to the checkpoint are not those it signed: walk everything, and say so (one problem
    more than the walk's: the walk alone cannot see a chain recomputed over an edit, or cut back)."""
    whole = full(ledger)
    if at_checkpoint != checkpoint.chain_hash:
        expected, actual = checkpoint.chain_hash, at_checkpoint or "no such link"
    else:
        now = _Walk()
        _prefix(ledger, checkpoint.chain_seq, now)
        expected = f"{checkpoint.chain_links} links, digest {checkpoint.chain_digest}"
        actual = f"{now.links} links, digest {now.digest.hexdigest()}"
    whole.problems.append({"id": None, "row": checkpoint.chain_seq, "field": "chain checkpoint",
                           "expected": expected, "actual": actual})
    whole.note = (f"the chain up to link {checkpoint.chain_seq} is not the one the checkpoint signed "
                  "(rewritten or cut back): the whole chain was walked")
    return whole


def chain_problems_since(ledger: Ledger, checkpoint: Checkpoint | None) -> list[Problem]:
    """`Ledger.chain_problems()` from `checkpoint` on (all of the chain without one)."""
    return (full(ledger) if checkpoint is None else since(ledger, checkpoint)).problems


def check(ledger: Ledger, path: Path, key: bytes | None, *, whole: bool = False, keep: bool = True) -> ChainCheck:
    """The chain checked from the checkpoint at `path` (signed with `key`), or whole when there is none, it
    cannot be used, `whole` is asked or there is no key; with `keep`, a clean check signs and writes the
    checkpoint of what it saw (not over a checkpoint that could not be used, unless `whole`: that needs a
    look first)."""
    checkpoint, note = (None, None) if key is None or whole else load(path, key)
    result = full(ledger) if checkpoint is None else since(ledger, checkpoint)
    result.note = note or result.note
    advanced = checkpoint is None or result.seen is None or result.seen.rows != checkpoint.rows \
        or result.seen.chain_seq != checkpoint.chain_seq
    if keep and key is not None and not result.problems and result.seen is not None and advanced \
            and (note is None or whole):
        try:
            save(path, key, result.seen)
        except OSError as exc:  # (the next check walks more, nothing worse)
            result.note = f"the chain checkpoint {path} could not be written: {exc}"
    return result
