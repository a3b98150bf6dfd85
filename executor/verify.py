"""Re-derive each recorded experiment's image ID from git and its base, and report every mismatch.

It takes records as stored (not decoded) because what it checks is untrusted: a record that does not
decode is reported like any other mismatch, and the others are still checked.

Each distinct identity (commit, base, run spec) is derived once per check (git read, image sealed); with a
verification cache (executor/verify_cache.py) once for as long as its inputs stay the same: what is
derived is kept under an `identity key`, the digest of every input it is a function of (the commit and
the tree git resolves it to now, the base record's canonical digest, the run spec's digest, and this
code), and each record's verdict under the digest of the record's stored text, valid while its identity
key still is. A changed input gives another key: the cache cannot vouch for it.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol, Sequence

from executor import chain_check, git_source
from executor.docker_engine import Engine
from executor.errors import RecordError, SourceError
from executor.image import deps
from executor.image.seal import seal
from executor.ledger import Ledger
from executor.record import ExperimentRecord
from executor.types import BaseImage, Status, canonical_json, sha256_hex

Mismatch = dict[str, Any]


class VerifyCache(Protocol):
    """What verify needs of a cache (executor/verify_cache.py's VerifyCache)."""

    def record(self, key: str) -> tuple[str, int, bool, str, str] | None: ...
    def identity(self, key: str) -> dict[str, Any] | None: ...
    def put_record(self, key: str, identity: str, counted: int, engine: bool, eid: Any,
                   mismatches: list[Mismatch]) -> None: ...
    def put_identity(self, key: str, derived: Mapping[str, Any]) -> None: ...

NO_IDENTITY = "-"  # the identity key of a verdict that needs none (a record that does not decode, a running one)
# What a derivation is a function of besides its inputs: the code that derives and compares.
_CODE_FILES = ("verify.py", "verify_cache.py", "record.py", "types.py", "git_source.py", "image/seal.py",
               "image/layer.py", "image/launch.py", "image/deps.py")
_code: str | None = None


def derivation_code() -> str:
    """The digest of the code a verdict comes from (these modules' bytes, the Python that runs them): a
    verdict kept by another sealab is not used."""
    global _code
    if _code is None:
        here, h = Path(__file__).parent, hashlib.sha256(sys.version.encode())
        for name in _CODE_FILES:
            h.update(name.encode() + b"\0" + (here / name).read_bytes() + b"\0")
        _code = h.hexdigest()
    return _code


def verify(repo: git_source.Repository, ledger: Ledger, engine: Engine | None,
           records: Iterable[Mapping[str, Any] | str], *, whole_ledger: bool = False, cache: VerifyCache | None = None,
           chain: Sequence[Mismatch] | None = None) -> dict[str, Any]:
    """`{"checked": N, "mismatches": [{"id", "field", "expected", "actual"}], "cached": C, "rederived": R}`
    over `records` (as stored: decoded tables, or their stored JSON text).

    A stored record that does not decode is one mismatch naming its field (see
    ExperimentRecord.from_dict): there is no identity to re-derive from it. The ledger's hash chain is
    checked too: for the given records, or whole (deleted and reordered records included, with their
    `row`) when `whole_ledger`; `chain`: its problems already found (e.g. by chain_check.since).
    With `cache`, verdicts whose inputs are all unchanged are taken from it (`cached` of them) and new
    ones are added; `rederived`: the identities derived from git and the base this time.
    """
    stored = list(records)
    checker = Checker(repo, ledger, cache)
    outcomes = checker.check([(checker.canonical_key(item), item) for item in stored])
    checked, mismatches, engine_checks = 0, [], EngineChecks(engine)
    for outcome in outcomes:
        checked += outcome.counted
        mismatches += outcome.mismatches + engine_checks(outcome)
    problems = chain if chain is not None else chain_check.full(ledger).problems
    wanted = {outcome.id for outcome in outcomes}
    mismatches += [p for p in problems if whole_ledger or p["id"] in wanted]
    return {"checked": checked, "mismatches": mismatches, "cached": checker.cached, "rederived": checker.rederived}


def engine_mismatches(engine: Engine, eid: Any, sealed: Mapping[str, Any]) -> list[Mismatch]:
    """What the engine holds under the sealed image's ID and tag, against the sealed labels (never cached)."""
    found = []
    image = sealed["image_id"]
    if engine.image_id(image) is not None:
        labels = engine.image_labels(image)
        for key, value in sealed["labels"].items():
            if labels.get(key) != value:
                found.append({"id": eid, "field": f"engine label {key}", "expected": value, "actual": labels.get(key)})
    named = engine.image_id(sealed["tag"])
    if named not in (None, image):
        found.append({"id": eid, "field": f"engine image {sealed['tag']}", "expected": image, "actual": named})
    return found


class EngineChecks:
    """`engine_mismatches` of each outcome that got as far as a sealed image, asked of the engine once per
    image in one check (records sharing an identity share the answer); none without an engine."""

    def __init__(self, engine: Engine | None) -> None:
        self.engine = engine
        self._asked: dict[Any, list[Mismatch]] = {}

    def __call__(self, outcome: Outcome) -> list[Mismatch]:
        sealed = outcome.sealed
        if self.engine is None or sealed is None:
            return []
        key = (sealed["image_id"], sealed["tag"], tuple(sorted(sealed["labels"].items())))
        if key not in self._asked:
            self._asked[key] = engine_mismatches(self.engine, None, sealed)
        return [{**m, "id": outcome.id} for m in self._asked[key]]


@dataclass
class Outcome:
    """One record's verdict: whether it counts as checked, its mismatches, and the sealed image (ID,
    labels, tag) for the engine checks, when it got that far."""

    id: Any
    counted: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    sealed: dict[str, Any] | None = None
    identity: str | None = NO_IDENTITY  # the identity key it depends on; None: not to be kept

    def report(self, field_name: str, expected: Any, actual: Any) -> None:
        self.mismatches.append({"id": self.id, "field": field_name, "expected": expected, "actual": actual})


class _Identity:
    """A (commit, base, run spec) and what is derived from it: the tree and lock of the commit, the sealed
    image; read from the cache or derived (once) when first asked for."""

    def __init__(self, key: str | None, ref: str, base_id: str | None, spec: str | None,
                 resolved: tuple[str, str] | None, derived: dict[str, Any] | None) -> None:
        self.key, self.ref, self.base_id, self.spec, self.resolved = key, ref, base_id, spec, resolved
        self.derived = dict(derived) if derived else {"ref": ref, "base": base_id, "spec": spec}
        self.from_cache = derived is not None
        self.changed = False  # derived more than the cache had: to be kept
        self.derived_now = False  # derived (in part) by this check


class Checker:
    """Verdicts for stored records, each distinct identity derived at most once, through an optional cache."""

    def __init__(self, repo: git_source.Repository, ledger: Ledger, cache: VerifyCache | None = None) -> None:
        self.repo, self.ledger, self.cache = repo, ledger, cache
        self.cached = 0  # records whose verdict came from the cache (its own, or its identity's)
        self.rederived = 0  # identities derived from git and the base this time
        self._trees: dict[str, tuple[str, str] | None] = {}
        self._bases: dict[str | None, str | None] = {}
        self._base_images: dict[str, BaseImage | None] = {}
        self._identities: dict[Any, _Identity] = {}
        self._facts: OrderedDict[str, git_source.CommitFacts | None] = OrderedDict()
        self._valid: dict[str, dict[str, Any] | None] = {}

    # -- keys ----------------------------------------------------------------------------------------
    def canonical_key(self, item: Mapping[str, Any] | str) -> str | None:
        """The cache key of a record's verdict: by the digest of its canonical JSON (of its stored text,
        as stored, for a text)."""
        if self.cache is None:
            return None
        if isinstance(item, str):
            return "t:" + chain_check.text_digest(item)
        try:
            return "c:" + sha256_hex(canonical_json(item))
        except (TypeError, ValueError):
            return None

    def _base_digest(self, base_id: str | None) -> str | None:
        """The base record's canonical digest (None: no such base)."""
        if base_id not in self._bases:
            row = self.ledger._query("SELECT record FROM bases WHERE image_id = ?", (base_id,)).fetchone() \
                if base_id else None
            if row is None:
                self._bases[base_id] = None
            else:
                try:
                    self._bases[base_id] = sha256_hex(canonical_json(json.loads(row[0])))
                except (TypeError, ValueError):
                    self._bases[base_id] = "text:" + chain_check.text_digest(row[0])
        return self._bases[base_id]

    def identity_key(self, ref: str, base_id: str | None, spec: str | None) -> str:
        """The digest of every input of an identity's derivation as they are now: the commit and what git
        resolves it to (commit and tree; None when it has no such commit), the base and its record's
        digest, the run spec's digest (None when the record has no image to seal), and this code."""
        if ref not in self._trees:
            self._trees.update(git_source.commit_trees(self.repo, [ref]))
        resolved = self._trees.get(ref)
        return sha256_hex(canonical_json([derivation_code(), ref, resolved, base_id, self._base_digest(base_id), spec]))

    def _identity(self, ref: str, base_id: str | None, spec: str | None) -> _Identity:
        memo = (ref, base_id, spec)
        if memo not in self._identities:
            key = self.identity_key(ref, base_id, spec)
            derived = self.cache.identity(key) if self.cache is not None and key is not None else None
            self._identities[memo] = _Identity(key, ref, base_id, spec, self._trees.get(ref), derived)
        return self._identities[memo]

    # -- derivation ----------------------------------------------------------------------------------
    def _resolve(self, ident: _Identity) -> git_source.CommitFacts | None:
        if ident.ref not in self._facts:
            try:
                facts = git_source.resolve(self.repo, ident.ref)
            except SourceError:
                facts = None
            self._facts[ident.ref] = facts
            if len(self._facts) > 4:  # (a commit's files are held while its identities are derived)
                self._facts.popitem(last=False)
        if not ident.derived_now:
            ident.derived_now = True
            self.rederived += 1
        facts = self._facts[ident.ref]
        if (None if facts is None else (facts.sha, facts.tree)) != ident.resolved:
            ident.key = None  # git answered otherwise than the lookup the key was made of: keep nothing
        return facts

    def _commit(self, ident: _Identity) -> dict[str, Any] | None:
        """`{"tree", "lock"}` of the identity's commit; None when the repository has no such commit."""
        d = ident.derived
        if "tree" not in d:
            facts = self._resolve(ident)
            d["tree"] = None if facts is None else facts.tree
            d["lock"] = None if facts is None else deps.lock_digest(facts.top_level(deps.LOCK_FILES))
            ident.changed = True
        return None if d["tree"] is None else d

    def _base(self, base_id: str | None) -> BaseImage | None:
        if not base_id:
            return None
        if base_id not in self._base_images:
            self._base_images[base_id] = self.ledger.base(base_id)
        return self._base_images[base_id]

    def _sealed(self, ident: _Identity, base: BaseImage, spec: Any) -> dict[str, Any]:
        d = ident.derived
        if "image_id" not in d:
            facts = self._resolve(ident)
            if facts is None:  # (gone meanwhile)
                raise SourceError(ident.ref, "no such commit in this repository")
            sealed = seal(facts, base, spec)
            d.update(image_id=sealed.image_id, labels=dict(sealed.labels), tag=sealed.tag)
            ident.changed = True
        return {"image_id": d["image_id"], "labels": d["labels"], "tag": d["tag"]}

    def derive(self, data: Any) -> Outcome:
        """The verdict on one stored record, derived (its identity from the cache when there)."""
        try:
            rec = ExperimentRecord.from_dict(data)
        except RecordError as exc:
            eid = data.get("id") if isinstance(data, Mapping) else None
            if (data.get("status") if isinstance(data, Mapping) else None) == Status.RUNNING.value:
                return Outcome(eid)
            outcome = Outcome(eid, 1)
            outcome.report(exc.field, exc.expected, exc.actual)
            return outcome
        if not rec.finished:
            return Outcome(rec.id)
        out = Outcome(rec.id, 1)
        spec, spec_digest, spec_error = None, None, None
        if rec.image_id is not None:
            try:
                spec = rec.spec
                spec_digest = spec.digest()
            except RecordError as exc:
                spec_error = exc
        ident = self._identity(rec.commit, rec.base_image_id, spec_digest)
        derived_before = ident.from_cache and "tree" in ident.derived
        commit = self._commit(ident)
        if commit is None:
            out.report("commit", rec.commit, "not in the repository")
        else:
            if commit["tree"] != rec.tree:
                out.report("tree", commit["tree"], rec.tree)
            base = self._base(rec.base_image_id)
            if base is None:
                out.report("base_image_id", rec.base_image_id, "no such base recorded")
            else:
                if base.data_digest != rec.data_digest:
                    out.report("data_digest", base.data_digest, rec.data_digest)
                if commit["lock"] != base.deps:  # the packages the run had are the ones its commit locks
                    out.report("deps", commit["lock"], base.deps)
                if rec.image_id is not None:
                    if spec_error is not None:
                        out.report(spec_error.field, spec_error.expected, spec_error.actual)
                    else:
                        derived_before = derived_before and "image_id" in ident.derived
                        out.sealed = self._sealed(ident, base, spec)
                        if out.sealed["image_id"] != rec.image_id:
                            out.report("image_id", out.sealed["image_id"], rec.image_id)
        if derived_before:
            self.cached += 1
        out.identity = ident.key
        if ident.changed and ident.key is not None and self.cache is not None:
            self.cache.put_identity(ident.key, ident.derived)
            ident.changed = False
        return out

    # -- many records --------------------------------------------------------------------------------
    def _still(self, identity: str) -> dict[str, Any] | None:
        """The kept derivation of `identity` if every input of it is still as it was (None: not kept, or
        something changed: a commit, the base record, this code)."""
        if identity not in self._valid:
            derived = self.cache.identity(identity) if self.cache is not None else None
            ref = derived.get("ref") if derived else None
            self._valid[identity] = dict(derived) if isinstance(ref, str) and self.identity_key(
                ref, derived.get("base"), derived.get("spec")) == identity else None  # (a copy: memo added)
        return self._valid[identity]

    def _kept(self, entry: tuple[str, int, bool, str, str], name: Any) -> Outcome | None:
        """A kept verdict on the record `name`, if its identity's inputs are all as they were."""
        identity, counted, engine, _, mismatches = entry
        sealed = None
        if identity != NO_IDENTITY:
            derived = self._still(identity)
            if derived is None:
                return None
            if engine:
                sealed = derived.get("sealed")
                if sealed is None:
                    if "image_id" not in derived:
                        return None
                    sealed = derived["sealed"] = {"image_id": derived["image_id"], "labels": derived["labels"],
                                                  "tag": derived["tag"]}
        elif engine:
            return None
        return Outcome(name, counted, json.loads(mismatches) if mismatches != "[]" else [], sealed, identity)

    def prefetch(self, refs: Iterable[Any]) -> None:
        """Look up many commits' trees in one go (rather than one git call each)."""
        wanted = [r for r in dict.fromkeys(refs) if isinstance(r, str) and r not in self._trees]
        if wanted:
            self._trees.update(git_source.commit_trees(self.repo, wanted))

    def check(self, items: Sequence[tuple[str | None, Any]], *, ids: Sequence[Any] | None = None,
              texts: Any = None) -> list[Outcome]:
        """Verdicts for `(cache key, stored record or its text)` pairs, in order. `texts(indexes)`, when
        given, yields `(index, text)` for the records to derive (items may then hold None: a ledger's rows
        are read again only where the cache had no verdict); `ids` names each record."""
        outcomes: list[Outcome | None] = [None] * len(items)
        if self.cache is not None:
            kept = [self.cache.record(key) if key is not None else None for key, _ in items]
            identities = {e[0] for e in kept if e is not None and e[0] != NO_IDENTITY}
            self.prefetch(d.get("ref") for d in map(self.cache.identity, identities) if d)
            for i, entry in enumerate(kept):
                if entry is None:
                    continue
                outcome = self._kept(entry, _name(entry[3]))
                if outcome is not None:
                    outcomes[i] = outcome
                    self.cached += 1
        todo = [i for i, o in enumerate(outcomes) if o is None]
        source = texts(todo) if texts is not None else ((i, items[i][1]) for i in todo)
        chunk: list[tuple[int, Any]] = []
        for i, item in source:  # decoded a chunk at a time: memory stays that of a chunk of records
            chunk.append((i, _decode(item)))
            if len(chunk) >= 2048:
                self._derive_chunk(chunk, items, ids, outcomes)
                chunk = []
        self._derive_chunk(chunk, items, ids, outcomes)
        for i in todo:
            if outcomes[i] is None:  # (a row gone meanwhile: read as no record)
                self._derive_chunk([(i, _NOT_JSON)], items, ids, outcomes)
        return outcomes  # type: ignore[return-value]

    def _derive_chunk(self, chunk: list[tuple[int, Any]], items: Sequence[tuple[str | None, Any]],
                      ids: Sequence[Any] | None, outcomes: list[Outcome | None]) -> None:
        self.prefetch(data.get("commit") for _, data in chunk if isinstance(data, Mapping))
        for i, data in chunk:
            if data is _NOT_JSON:
                outcome = Outcome(ids[i] if ids is not None else None, 1)
                outcome.report("record", "a JSON record", "not JSON")
            else:
                outcome = self.derive(data)
            if outcome.id is None and ids is not None:
                outcome.id = ids[i]
            outcomes[i] = outcome
            key = items[i][0]
            if self.cache is not None and key is not None and outcome.identity is not None:
                self.cache.put_record(key, outcome.identity, outcome.counted, outcome.sealed is not None,
                                      outcome.id, outcome.mismatches)


_NOT_JSON = object()


def _decode(item: Any) -> Any:
    if isinstance(item, (str, bytes)):
        try:
            return json.loads(item)
        except ValueError:
            return _NOT_JSON
    return item


def _name(text: str) -> Any:
    """A record's id kept as JSON (most are plain strings: read without the JSON decoder)."""
    if len(text) > 1 and text[0] == '"' == text[-1] and "\\" not in text:
        return text[1:-1]
    return json.loads(text)
