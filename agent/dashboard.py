"""The data behind `sealab serve`: JSON payloads built from a ledger (only read) and the workspace's git.

Every string here may come from the agent or from train.py (descriptions, reasons, log tails, diffs,
patches). It leaves as JSON data, never as markup: the page puts it into the DOM with `textContent`
only (see `agent/dashboard_static/dashboard.js`). What the page shows is what `sealab report` shows
(the same running best, held-out rows and duty cycle: `agent.html_report`'s definitions).

At scale (a ledger of 100,000 records) a poll costs what changed since the last one, not the ledger:
  - the `Dashboard` lives as long as the server and keeps, per research run, a `RunView`: one small
    summary per record of the run, updated at each poll with only the records written since the last one
    (`Query(changed_after=cursor)`, and the records still running), and the derived values (counts, cost,
    duty cycle, held-out rows, the running best, the chart's buckets) kept incrementally. A poll after no
    write reads no record at all;
  - full records are read only for the rows a payload returns: `/api/experiments` answers a window (the
    last rows, a page before a row, or only the rows changed since the client's cursor), each row verified
    (cached by the record's content) only when it is returned; the chart keeps every baseline and kept
    change and draws the rest as min/max buckets beyond CHART_FULL experiments;
  - the ledger's hash chain is checked in the background (`ChainWatch`: a child process, waited for by a
    daemon thread), when the ledger changed and not more often than it can afford; polls report its latest
    result and when it was made.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter, OrderedDict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from agent import cycle
from agent.chain_watch import CHAIN_INTERVAL_S, ChainResult, ChainWatch, say
from agent.html_report import _read_patch, held_out_value, metric_of, pipelined
from agent.run_view import DECISIONS, FAILED, RunView, _decode
from executor import owner
from executor import record as recorded
from executor.errors import SealabError
from executor.git_source import Repository, commit_diff
from executor.ledger import Ledger, Query, file_identity, record_digest
from executor.types import Status

LOG_TAIL_LINES = 20
PAGE_ROWS = 500  # rows /api/experiments answers by default (the latest); `limit` asks for another number
PAGE_MAX = 5000  # the most rows one answer holds
KEPT_WINDOW = 100  # the latest kept changes /api/kept shows (with their diffs)
EVENT_WINDOW = 200  # the latest events of each kind /api/drift and /api/review show
RUNS_KEPT = 8  # the runs whose views the Dashboard keeps (the latest one asked for first)
_CHAIN_FIELDS = ("chain link", "record", "order")  # what the chain check reports; the rest is identity
_EVENT_KINDS = ("drift", "rejected", "parked", "proposal_failed")
_RUNNING = Status.RUNNING.value


def parse_time(stamp: str | None) -> datetime | None:
    """A ledger timestamp (ISO-8601, `Z`) as an aware datetime, or None."""
    if not stamp or not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def description_of(record: dict[str, Any]) -> str | None:
    proposal = record.get("proposal")
    return (proposal.get("description") if isinstance(proposal, dict) else None) or record.get("description")


def duty_of(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The run's duty cycle (`cycle.Duty.to_dict`, with whether the loop was pipelined and the causes'
    labels), or None when no record carries a time account (an older ledger)."""
    duty = cycle.Duty.of(records)
    if not duty.experiments:
        return None
    return {**duty.to_dict(), "pipelined": pipelined(records), "labels": dict(cycle.LABELS)}


def time_account(record: dict[str, Any]) -> dict[str, float | None]:
    """One experiment's training seconds and idle seconds (wall − training), None without a `cycle`."""
    account = record.get("cycle")
    wall = recorded.number(account.get("wall_s")) if isinstance(account, dict) else None
    training = recorded.number(account.get("training_s")) if isinstance(account, dict) else None
    if wall is None or training is None:
        return {"training_s": None, "idle_s": None}
    return {"training_s": training, "idle_s": round(max(0.0, wall - training), 3)}


def run_updated_at(ledger: Ledger, tag: str | None) -> datetime | None:
    """When the loop last saved the run's state (it does after every step)."""
    if tag is None:
        return None
    row = ledger.db.execute("SELECT updated_at FROM runs WHERE tag = ?", (tag,)).fetchone()
    return parse_time(row[0]) if row else None


def _texts_at(ledger: Ledger, seqs: list[int]) -> dict[int, str]:
    """The stored text of the records of the rows `seqs` (any order), by seq."""
    found: dict[int, str] = {}
    for start in range(0, len(seqs), 500):
        chunk = seqs[start:start + 500]
        found.update(ledger.db.execute(
            f"SELECT seq, record FROM experiments WHERE seq IN ({','.join('?' * len(chunk))})", chunk).fetchall())
    return found


def _records_at(ledger: Ledger, seqs: list[int]) -> dict[int, dict[str, Any]]:
    """The stored records of the rows `seqs` (any order, a few hundred at most), by seq."""
    found = {seq: _decode(text) for seq, text in _texts_at(ledger, seqs).items()}
    return {seq: record for seq, record in found.items() if isinstance(record, dict)}


def _events(ledger: Ledger, kind: str, tag: str | None, last: int) -> tuple[list[dict[str, Any]], int]:
    """The run's latest `last` events of `kind` (in the order they happened) and how many it has."""
    where, params = ("kind = ? AND run_tag = ?", (kind, tag)) if tag is not None else ("kind = ?", (kind,))
    total = ledger.db.execute(f"SELECT count(*) FROM events WHERE {where}", params).fetchone()[0]
    rows = ledger.db.execute(f"SELECT run_tag, kind, record, created_at FROM events WHERE {where} "
                             f"ORDER BY seq DESC LIMIT ?", (*params, last)).fetchall()
    return [{"run_tag": t, "kind": k, "created_at": c, **(_decode(r) or {})} for t, k, r, c in reversed(rows)], total


# -- the payloads ------------------------------------------------------------------------------------------
def _verify_identity(repo: Repository, ledger: Ledger, records: list[dict[str, Any]],
                     cache: Any = None) -> list[dict[str, Any]]:
    """`executor.verify`'s mismatches of `records`, its hash-chain check left out (ChainWatch's), through
    `sealab verify`'s cache when there is one (read only: what is proved here stays in memory)."""
    from executor.verify import verify  # imports the docker adapter: only once a check is needed

    return verify(repo, ledger, None, records, chain=(), cache=cache)["mismatches"]


def read_verify_cache(root: Path | None) -> Any:
    """`sealab verify`'s cache of the workspace at `root`, opened to read (None: none, or no key to check it)."""
    if root is None:
        return None
    from executor.verify_cache import open_cache

    cache, _ = open_cache(root / ".sealab", workspaces=(root,), write=False)
    return cache


class Dashboard:
    """Builds the payloads of one workspace, keeping each run's view between polls and caching what
    cannot change (git diffs, per-content checks). Thread-safe: the server answers each request in a
    thread of its own.

    `repo` None skips what needs git (identity checks and diffs); `alive` decides whether the process
    owning a running record is alive (tests inject it); `chain_interval_s`: the least time between two
    chain checks.
    """

    def __init__(self, root: Path | None = None, repo: Repository | None = None,
                 alive: Callable[[str | None], bool] = owner.alive, *, chain_interval_s: float = CHAIN_INTERVAL_S,
                 check_chain: Callable[[Ledger], list[dict[str, Any]]] | None = None) -> None:
        self.root, self.repo, self.alive = root, repo, alive
        self.chain = ChainWatch(check_chain, chain_interval_s)
        self._lock = threading.RLock()  # the views and the events' counts
        self._git = threading.Lock()  # the repository, one reader at a time
        self._runs: OrderedDict[str | None, RunView] = OrderedDict()
        self._ledger_identity: Any = None
        self._event_counts: dict[str | None, tuple[int, Counter[str]]] = {}
        self._identity: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._diffs: dict[tuple[str, str], str] = {}
        self._tails: dict[tuple[str, str], str | None] = {}
        self._rows: dict[tuple[Any, ...], dict[str, Any]] = {}  # rows built, by (seq, text, n, best, chain check)
        self._verify_cache: Any = False  # `sealab verify`'s cache, read at the first row checked (None: none)

    # -- the run's view ------------------------------------------------------------------------------
    def view(self, ledger: Ledger, tag: str | None = None) -> tuple[RunView, ChainResult]:
        """The view of the run `tag` (default: the latest run; all records when there is none), brought up
        to the ledger's cursor, and the latest chain check (one is started if due)."""
        with self._lock:
            identity = file_identity(Path(ledger.path))
            if identity != self._ledger_identity:  # another ledger file (or the first one): start afresh
                self._runs.clear()
                self._event_counts.clear()
                self._ledger_identity = identity
            cursor = ledger.cursor()
            tag = tag or ledger.latest_run_tag()
            view = self._runs.get(tag)
            if view is None or (view.cursor is not None and cursor < view.cursor):  # (a ledger rewritten)
                view = self._runs[tag] = RunView(tag)
            self._runs.move_to_end(tag)
            while len(self._runs) > RUNS_KEPT:
                self._runs.popitem(last=False)
            chain = self.chain.poke(Path(ledger.path), identity, cursor)
            if view.cursor is None:
                view.load(ledger, cursor)
            elif cursor != view.cursor:
                view.update(ledger, cursor)
            if view.chain_version != chain.version:
                view.reread(ledger, list(chain.by_id), cursor)
                view.chain_version = chain.version
            return view, chain

    def _events_of(self, ledger: Ledger, tag: str | None) -> Counter[str]:
        """How many events of each kind the run has: counted again only over the events added since."""
        latest = ledger.db.execute("SELECT max(seq) FROM events").fetchone()[0] or 0
        seen, counts = self._event_counts.get(tag, (0, Counter()))
        if latest != seen:
            where, params = ("seq > ? AND run_tag = ?", (seen, tag)) if tag is not None else ("seq > ?", (seen,))
            counts = counts + Counter(dict(ledger.db.execute(
                f"SELECT kind, count(*) FROM events WHERE {where} GROUP BY kind", params).fetchall()))
            if latest < seen:  # (fewer events than before: another ledger)
                counts = Counter(dict(ledger.db.execute("SELECT kind, count(*) FROM events" + (
                    " WHERE run_tag = ?" if tag is not None else "") + " GROUP BY kind",
                    (tag,) if tag is not None else ()).fetchall()))
            self._event_counts[tag] = (latest, counts)
        return counts

    # -- /api/state ---------------------------------------------------------------------------------
    def state(self, ledger: Ledger, tag: str | None = None, now: datetime | None = None) -> dict[str, Any]:
        """Is a run going on, what runs now and for how long against its budget, the best so far, the cost."""
        now = now or datetime.now(timezone.utc)
        with self._lock:
            view, chain = self.view(ledger, tag)
            events = self._events_of(ledger, view.tag)
            state = ledger.run_state(view.tag) if view.tag else None
            first_spec, last_spec = view.specs()
            live, dead = [], []
            for seq, record, holder in view.running:
                (live if self.alive(holder) else dead).append((seq, record))
            current = max(live, key=lambda item: item[0])[1] if live else None
            last_row = view.rows[view.seqs[-1]] if view.seqs else None
            moments = [run_updated_at(ledger, view.tag), parse_time(last_row.created_at) if last_row else None]
            last_activity = max(filter(None, moments), default=None)
            best = view.best()
            counts = {"experiments": len(view.seqs), **{d: view.counts[d] for d in DECISIONS}, "failed": view.failed,
                      **{kind: events[kind] for kind in _EVENT_KINDS}}
            cost = (state or {}).get("cost_usd")
            payload = {
                "server_time": iso(now),
                "workspace": str(self.root) if self.root else None,
                "tag": view.tag,
                "branch": (state or {}).get("branch"),
                "metric": first_spec[0] if first_spec else "val_bpb",
                "direction": first_spec[1] if first_spec else "minimize",
                "run": self._run_phase(state, current, dead, last_activity, now, last_spec),
                "current": self._current(current, now),
                "best": {"value": (state or {}).get("best_value", best if view.seqs else None),
                         "commit": (state or {}).get("best_commit")},
                "threshold": (state or {}).get("threshold"),
                "heldout": view.heldout(),
                "counts": counts,
                "cost_usd": float((view.cost.total() if view.cost.n else 0) if cost is None else cost or 0),
                "chain": chain.payload(self.chain.checking),
                "duty": view.duty(),
                "cursor": view.cursor,
            }
        return payload

    def _run_phase(self, state: dict[str, Any] | None, current: dict[str, Any] | None, dead: list[Any],
                   last_activity: datetime | None, now: datetime, spec: tuple[Any, ...] | None) -> dict[str, Any]:
        """`running` (a live process runs an experiment), `between experiments` (the loop is proposing or
        deciding), `stopped` (the loop ended), `interrupted` (its process died: `sealab run --resume`)."""
        quiet = (now - last_activity).total_seconds() if last_activity else None
        if current is not None:
            phase = "running"
        elif state is None:
            phase = "no run"
        elif state.get("stop_reason"):
            phase = "stopped"
        elif dead or quiet is None or quiet > self._patience(spec):
            phase = "interrupted"
        else:
            phase = "between experiments"
        state = state or {}
        return {"phase": phase, "stop_reason": state.get("stop_reason"),
                "last_activity": iso(last_activity) if last_activity else None,
                "elapsed_s": state.get("elapsed_s")}

    @staticmethod
    def _patience(spec: tuple[Any, ...] | None) -> float:
        """How long a live loop may stay silent between experiments: a proposal (a model call) and the
        decision take well under one experiment's deadline (the latest record's run spec)."""
        budget, grace = (spec[2], spec[3]) if spec else (None, None)
        return (budget or 60) + (grace or 60) + 300

    @staticmethod
    def _current(record: dict[str, Any] | None, now: datetime) -> dict[str, Any] | None:
        if record is None:
            return None
        spec = recorded.run_spec(record)
        started = parse_time(record.get("created_at"))
        return {"id": record.get("id"), "commit": record.get("commit"), "description": description_of(record),
                "run_tag": record.get("run_tag"), "started_at": record.get("created_at"),
                "elapsed_s": (now - started).total_seconds() if started else None,
                "budget_s": spec.get("budget_s"), "grace_s": spec.get("grace_s"), "steps": spec.get("steps")}

    # -- /api/experiments ---------------------------------------------------------------------------
    def experiments(self, ledger: Ledger, tag: str | None = None, *, limit: int | None = None,
                    before: int | None = None, since: int | None = None, chain: int | None = None) -> dict[str, Any]:
        """The table and the chart. The rows are a window of the run's experiments, oldest first: the
        latest `limit` (default PAGE_ROWS); with `before` (a row's seq) the `limit` rows before it; with
        `since` (the `cursor` of an earlier answer) only the rows written after it, and the chart only if
        the run changed, unless the rows the client holds are stale (a row inserted before others or gone,
        the chain check's `version` other than `chain`, too many changes): then `reset` is true and the
        answer is the latest window, to replace what the client holds. An experiment still running is
        listed after the run's rows (the loop tags a record with its run only once it has finished).

        Each row carries its verification (the identity re-derived, cached by the record's content, and
        the latest chain check) and its `best` (the running best when it was sent); the chart's series
        are the current ones."""
        limit = PAGE_ROWS if limit is None else max(1, min(PAGE_MAX, int(limit)))
        with self._lock:
            view, result = self.view(ledger, tag)
            first_spec, _ = view.specs()
            head = {"tag": view.tag, "metric": first_spec[0] if first_spec else "val_bpb",
                    "direction": first_spec[1] if first_spec else "minimize", "cursor": view.cursor,
                    "total": view.total(), "chain": result.payload(self.chain.checking)}
            since_window = {"kind": "since", "more": None, "first": None}
            reset, key = False, None
            if since is not None:
                stale = (since > (view.cursor or 0) or since < view.reshaped_at
                         or (chain is not None and chain != result.version))
                if not stale and since >= view.changed_at:
                    return {**head, "window": since_window, "reset": False, "chart": None, "experiments": []}
                changed = [] if stale else [seq for seq, _ in ledger.select(
                    Query(run_tag=view.tag, changed_after=since, limit=limit + 1), raw=True)]
                view.reads += len(changed)
                reset = stale or len(changed) > limit
                if not reset:
                    plan = self._plan(ledger, view, [seq for seq in changed if seq in view.rows], view.extras)
                    head = {**head, "window": since_window, "reset": False, "chart": view.chart()}
            if since is None or reset:
                if before is not None:
                    end = bisect.bisect_left(view.seqs, before)
                    start, extras = max(0, end - limit), []
                else:
                    end = len(view.seqs)
                    start, extras = max(0, end - max(0, limit - len(view.extras))), view.extras
                key = ("rows", before, limit)
                stamp = (view.changed_at, result.version, view.cursor if extras else None)
                cached = view.pages.get(key)
                if cached is not None and cached[0] == stamp:
                    return {**cached[1], **head, "reset": reset}
                plan = self._plan(ledger, view, view.seqs[start:end], extras)
                window = {"kind": "before" if before is not None else "last", "more": start > 0,
                          "first": view.seqs[start] if start < end else None}
                head = {**head, "window": window, "reset": reset,
                        "chart": view.chart() if before is None else None}  # (older rows: the chart came already)
        answer = self._answer(ledger, plan, result, head)  # (a first verification may take a while: unlocked)
        if key is not None:
            with self._lock:
                if len(view.pages) > 16:
                    view.pages.clear()
                view.pages[key] = (stamp, answer)
        return answer

    @staticmethod
    def _plan(ledger: Ledger, view: RunView, seqs: list[int],
              extras: list[tuple[int, dict[str, Any]]]) -> list[tuple[int, float | None, int, str | dict[str, Any]]]:
        """(n, running best, seq, stored text) of the rows `seqs` (read now), then (…, record) of `extras`."""
        texts = _texts_at(ledger, seqs)
        view.reads += len(texts)
        best = view.best()
        return ([(view.number(seq), view.best_at(seq), seq, texts[seq]) for seq in seqs if seq in texts]
                + [(len(view.seqs) + i, best, seq, record) for i, (seq, record) in enumerate(extras, 1)])

    def _answer(self, ledger: Ledger, plan: list[tuple[int, float | None, int, str | dict[str, Any]]],
                result: ChainResult, head: dict[str, Any]) -> dict[str, Any]:
        """The rows of `plan`, each with its verification; a row already built for the same text, place,
        running best and chain check is taken as it was."""
        rows: list[dict[str, Any] | None] = []
        todo: list[tuple[int, Any, int, int, float | None, dict[str, Any]]] = []  # (place, key, n, seq, best, record)
        for n, best, seq, stored in plan:
            key = (seq, hash(stored), n, best, result.version) if isinstance(stored, str) else None
            row = self._rows.get(key) if key is not None else None
            if row is None:
                record = _decode(stored) if isinstance(stored, str) else stored
                if not isinstance(record, dict):
                    continue
                todo.append((len(rows), key, n, seq, best, record))
            rows.append(row)
        checked = self._verify([record for *_, record in todo], ledger)
        if len(self._rows) > 4 * PAGE_MAX:
            self._rows.clear()
        for at, key, n, seq, best, r in todo:
            rows[at] = self._row(n, seq, r, metric_of(r), best, checked.get(str(r.get("id"))),
                                 result.by_id.get(r.get("id"), []))
            if key is not None:
                self._rows[key] = rows[at]
        return {**head, "experiments": rows}

    def _row(self, n: int, seq: int, r: dict[str, Any], value: float | None, best: float | None,
             identity: list[str] | None, chain: list[str]) -> dict[str, Any]:
        digest = record_digest(r)
        return {
            "n": n, "seq": seq, "id": r.get("id"), "status": r.get("status"), "decision": r.get("decision"),
            "decision_reason": r.get("decision_reason"), "reason": r.get("reason"), "value": value, "best": best,
            "test": held_out_value(r), "reproduces": r.get("reproduces"),
            "commit": r.get("commit"), "parent": r.get("parent"), "image_id": r.get("image_id"),
            "description": description_of(r), "created_at": r.get("created_at"), "durations": recorded.durations(r),
            "drift": len(recorded.drift(r)), "verification": self._verification(r, identity, chain),
            "log_tail": self._log_tail(r, digest) if r.get("status") in FAILED else None,
            **time_account(r),
        }

    @staticmethod
    def _verification(r: dict[str, Any], identity: list[str] | None, chain: list[str]) -> dict[str, Any]:
        """`ok`, `mismatch` (with the problems), `pending` (still running) or `unchecked` (no git).

        The identity check re-derives the image ID from git and the base (`executor.verify`, no engine
        calls), cached by the record's content; the hash chain's problems are the latest background check's."""
        if r.get("status") == _RUNNING:
            return {"state": "pending", "problems": chain}
        if identity is None:
            return {"state": "mismatch" if chain else "unchecked", "problems": chain}
        problems = identity + chain
        return {"state": "mismatch" if problems else "ok", "problems": problems}

    def _verify(self, records: list[dict[str, Any]], ledger: Ledger) -> dict[str, list[str]]:
        """The identity problems of each of `records` by id (checked at most once per content: those not
        yet checked in one `verify` call); none without git."""
        if self.repo is None:
            return {}
        keys = {str(r.get("id")): (str(r.get("id")), record_digest(r)) for r in records if r.get("status") != _RUNNING}
        todo = [r for r in records if r.get("status") != _RUNNING and keys[str(r.get("id"))] not in self._identity]
        if todo:
            with self._git:
                if self._verify_cache is False:
                    self._verify_cache = read_verify_cache(self.root)
                cache = self._verify_cache
                try:
                    found = _verify_identity(self.repo, ledger, todo, cache)
                except (SealabError, KeyError, TypeError, ValueError):  # one too malformed to seal: one at a time
                    found = []
                    for r in todo:
                        try:
                            found += _verify_identity(self.repo, ledger, [r], cache)
                        except (SealabError, KeyError, TypeError, ValueError) as exc:
                            found.append({"id": r.get("id"), "field": "record", "expected": "a sealable record",
                                          "actual": str(exc)})
            by_id: dict[str, list[dict[str, Any]]] = {}
            for mismatch in found:
                if mismatch.get("field") not in _CHAIN_FIELDS:
                    by_id.setdefault(str(mismatch.get("id")), []).append(mismatch)
            for r in todo:
                self._identity[keys[str(r.get("id"))]] = by_id.get(str(r.get("id")), [])
        return {eid: [say(m) for m in self._identity[key]] for eid, key in keys.items() if key in self._identity}

    def _log_tail(self, r: dict[str, Any], digest: str) -> str | None:
        key = (str(r.get("id")), digest)
        if key not in self._tails:
            text = _read_patch(self.root, r.get("log_path"))
            self._tails[key] = "\n".join(text.splitlines()[-LOG_TAIL_LINES:]) if text else None
        return self._tails[key]

    # -- /api/kept, /api/drift, /api/review ---------------------------------------------------------
    def kept(self, ledger: Ledger, tag: str | None = None) -> dict[str, Any]:
        """The run's latest KEPT_WINDOW kept changes with their diffs against their parents, and `total`."""
        with self._lock:
            view, _ = self.view(ledger, tag)
            stamp = ("kept", view.keeps_changed)
            cached = view.pages.get(("kept",))
            if cached is not None and cached[0] == stamp:
                return cached[1]
            total = len(view.keeps)
            records = _records_at(ledger, view.keeps[-KEPT_WINDOW:])
            view.reads += len(records)
        kept, complete = [], True
        for seq in sorted(records):
            r = records[seq]
            diff = self._diff(r.get("parent"), r.get("commit"))
            complete &= not diff.startswith("(cannot diff")
            kept.append({"id": r.get("id"), "value": metric_of(r), "description": description_of(r),
                         "parent": r.get("parent"), "commit": r.get("commit"),
                         "decision_reason": r.get("decision_reason"), "diff": diff})
        answer = {"tag": view.tag, "kept": kept, "total": total}
        if complete:  # (a diff that failed may work once the commit is fetched)
            view.pages[("kept",)] = (stamp, answer)
        return answer

    def _diff(self, parent: str | None, commit: str | None) -> str:
        key = (str(parent), str(commit))
        if key not in self._diffs:  # commits never change: a diff is computed once
            with self._git:
                diff = commit_diff(self.repo, parent, commit)
            if diff.startswith("(cannot diff"):
                return diff  # perhaps fetched later: not kept
            self._diffs[key] = diff
        return self._diffs[key]

    def drift(self, ledger: Ledger, tag: str | None = None) -> dict[str, Any]:
        """The loop's latest EVENT_WINDOW drift events with their patches, then the drift recorded with the
        latest EVENT_WINDOW experiments that have some; `total`: how many of each there are."""
        with self._lock:
            view, _ = self.view(ledger, tag)
            stamp = ("drift", view.drift_changed, self._events_of(ledger, view.tag)["drift"])
            cached = view.pages.get(("drift",))
            if cached is not None and cached[0] == stamp:
                return cached[1]
            found, total = _events(ledger, "drift", view.tag, EVENT_WINDOW)
            records = _records_at(ledger, view.drifted[-EVENT_WINDOW:])
            view.reads += len(records)
            drifted = len(view.drifted)
        events = [{"created_at": ev.get("created_at"), "where": ev.get("where"), "action": ev.get("action"),
                   "commit": ev.get("commit"), "experiment": None, "changes": list(ev.get("changes") or []),
                   "patch_path": ev.get("patch_path"), "patch": _read_patch(self.root, ev.get("patch_path"))}
                  for ev in found]
        for seq in sorted(records):
            r = records[seq]
            for entry in recorded.drift(r):
                events.append({"created_at": r.get("created_at"), "where": "at exec (not run)", "action": None,
                               "commit": r.get("commit"), "experiment": r.get("id"),
                               "changes": [f"{entry['path']}: {c}" for c in entry["changes"]],
                               "patch_path": None, "patch": entry.get("patch")})
        answer = {"tag": view.tag, "drift": events, "total": {"events": total, "experiments": drifted}}
        view.pages[("drift",)] = (stamp, answer)
        return answer

    def review(self, ledger: Ledger, tag: str | None = None) -> dict[str, Any]:
        """Proposals the policy parked (awaiting a human) or rejected, and proposals that failed: the latest
        EVENT_WINDOW of each, with `total`s."""
        with self._lock:
            view, _ = self.view(ledger, tag)
            counts = self._events_of(ledger, view.tag)
            stamp = ("review", counts["parked"], counts["rejected"], counts["proposal_failed"])
            cached = view.pages.get(("review",))
            if cached is not None and cached[0] == stamp:
                return cached[1]
            events = {kind: _events(ledger, kind, view.tag, EVENT_WINDOW) for kind in ("parked", "rejected",
                                                                                     "proposal_failed")}
        review = [{"kind": kind, "created_at": ev.get("created_at"), "description": ev.get("description"),
                   "rule": ev.get("rule"), "reason": ev.get("reason"), "proposer": ev.get("proposer"),
                   "best_commit": ev.get("best_commit"),
                   "cost_usd": ev.get("usage", {}).get("cost_usd") if isinstance(ev.get("usage"), dict) else None,
                   "patch": ev.get("patch")}
                  for kind in ("parked", "rejected") for ev in events[kind][0]]
        failed = [{"created_at": ev.get("created_at"), "reason": ev.get("reason"), "best_commit": ev.get("best_commit")}
                  for ev in events["proposal_failed"][0]]
        answer = {"tag": view.tag, "review": review, "proposal_failed": failed,
                  "total": {kind: total for kind, (_, total) in events.items()}}
        view.pages[("review",)] = (stamp, answer)
        return answer
