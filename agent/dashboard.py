"""The data behind `sealab serve`: JSON payloads built from a ledger (only read) and the workspace's git.

Every string here may come from the agent or from train.py (descriptions, reasons, log tails, diffs,
patches). It leaves as JSON data, never as markup: the page puts it into the DOM with `textContent`
only (see `agent/dashboard_static/dashboard.js`). The run's data is gathered as `sealab report`
gathers it (`agent.html_report.collect`), so the page and the report agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from agent import cycle
from agent.html_report import (ReportData, _read_patch, collect, heldout_rows, kept_values, metric_of, pipelined,
                               running_best, held_out_value)
from executor import owner
from executor import record as recorded
from executor.errors import SealabError
from executor.git_source import Repository, commit_diff
from executor.ledger import Ledger, record_digest
from executor.types import Status

LOG_TAIL_LINES = 20
_CHAIN_FIELDS = ("chain link", "record", "order")  # what Ledger.chain_problems reports; the rest is identity
_FAILED = (Status.CRASH.value, Status.TIMEOUT.value, Status.OOM.value, Status.INFRA_ERROR.value,
           Status.INTERRUPTED.value, Status.REJECTED.value)


def parse_time(stamp: str | None) -> datetime | None:
    """A ledger timestamp (ISO-8601, `Z`) as an aware datetime, or None."""
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def cost_so_far(data: ReportData) -> float:
    """The run's dollars spent on proposals: the loop's own total, else the sum over the records."""
    cost = (data.state or {}).get("cost_usd")
    if cost is None:
        cost = sum(((r.get("proposal") or {}).get("usage") or {}).get("cost_usd") or 0 for r in data.records)
    return float(cost or 0)


def description_of(record: dict[str, Any]) -> str | None:
    return (record.get("proposal") or {}).get("description") or record.get("description")


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


def _heldout(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The held-out test split's latest row (the latest keep's, else the baseline's) and the first gap."""
    rows = heldout_rows(records)
    return {**rows[-1], "first_gap": rows[0]["gap"], "rows": len(rows)} if rows else None


@dataclass(frozen=True)
class Dashboard:
    """Builds the payloads of one workspace; caches what cannot change (git diffs, per-content checks).

    `repo` None skips what needs git (identity checks and diffs); `alive` decides whether the process
    owning a running record is alive (tests inject it).
    """

    root: Path | None = None
    repo: Repository | None = None
    alive: Callable[[str | None], bool] = owner.alive
    _identity: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict, repr=False)
    _diffs: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)
    _tails: dict[tuple[str, str], str | None] = field(default_factory=dict, repr=False)

    # -- /api/state ---------------------------------------------------------------------------------
    def state(self, ledger: Ledger, tag: str | None = None, now: datetime | None = None) -> dict[str, Any]:
        """Is a run going on, what runs now and for how long against its budget, the best so far, the cost."""
        now = now or datetime.now(timezone.utc)
        data = collect(ledger, tag)
        state = data.state or {}
        live, dead = [], []
        for eid, holder in ledger.running():
            (live if self.alive(holder) else dead).append(eid)
        current = next((r for r in reversed(ledger.records()) if r["id"] in live), None)
        values = [metric_of(r) for r in data.records]
        decisions = [r.get("decision") for r in data.records]
        best = running_best(values, decisions, kept_values(data.records))
        moments = [run_updated_at(ledger, data.tag), *(parse_time(r.get("created_at")) for r in data.records[-1:])]
        last_activity = max(filter(None, moments), default=None)
        return {
            "server_time": iso(now),
            "workspace": str(self.root) if self.root else None,
            "tag": data.tag,
            "branch": state.get("branch"),
            "metric": data.metric,
            "direction": data.direction,
            "run": self._run_phase(data, current, dead, last_activity, now),
            "current": self._current(current, now),
            "best": {"value": state.get("best_value", best[-1] if best else None), "commit": state.get("best_commit")},
            "threshold": state.get("threshold"),
            "heldout": _heldout(data.records),
            "counts": {
                "experiments": len(data.records),
                **{d: decisions.count(d) for d in ("baseline", "keep", "discard", "confirm")},
                "failed": sum(r.get("status") in _FAILED for r in data.records),
                **{kind: len(events) for kind, events in data.events.items()},
            },
            "cost_usd": cost_so_far(data),
            "chain": {"problems": len(ledger.chain_problems())},
            "duty": duty_of(data.records),
        }

    def _run_phase(self, data: ReportData, current: dict[str, Any] | None, dead: list[str],
                   last_activity: datetime | None, now: datetime) -> dict[str, Any]:
        """`running` (a live process runs an experiment), `between experiments` (the loop is proposing or
        deciding), `stopped` (the loop ended), `interrupted` (its process died: `sealab run --resume`)."""
        state = data.state or {}
        quiet = (now - last_activity).total_seconds() if last_activity else None
        if current is not None:
            phase = "running"
        elif data.state is None:
            phase = "no run"
        elif state.get("stop_reason"):
            phase = "stopped"
        elif dead or quiet is None or quiet > self._patience(data):
            phase = "interrupted"
        else:
            phase = "between experiments"
        return {"phase": phase, "stop_reason": state.get("stop_reason"),
                "last_activity": iso(last_activity) if last_activity else None,
                "elapsed_s": state.get("elapsed_s")}

    @staticmethod
    def _patience(data: ReportData) -> float:
        """How long a live loop may stay silent between experiments: a proposal (a model call) and the
        decision take well under one experiment's deadline."""
        spec = next((recorded.run_spec(r) for r in reversed(data.records) if recorded.run_spec(r)), {})
        return (recorded.number(spec.get("budget_s")) or 60) + (recorded.number(spec.get("grace_s")) or 60) + 300

    @staticmethod
    def _current(record: dict[str, Any] | None, now: datetime) -> dict[str, Any] | None:
        if record is None:
            return None
        spec = recorded.run_spec(record)
        started = parse_time(record.get("created_at"))
        return {"id": record["id"], "commit": record.get("commit"), "description": description_of(record),
                "run_tag": record.get("run_tag"), "started_at": record.get("created_at"),
                "elapsed_s": (now - started).total_seconds() if started else None,
                "budget_s": spec.get("budget_s"), "grace_s": spec.get("grace_s"), "steps": spec.get("steps")}

    # -- /api/experiments ---------------------------------------------------------------------------
    def experiments(self, ledger: Ledger, tag: str | None = None) -> dict[str, Any]:
        """The table and the chart: one row per experiment, with its verification. An experiment still
        running is listed too (the loop tags a record with its run only once it has finished)."""
        data = collect(ledger, tag)
        running = {eid for eid, _ in ledger.running()}
        listed = {r["id"] for r in data.records}
        data.records += [r for r in ledger.records() if r["id"] in running and r["id"] not in listed]
        chain: dict[str, list[str]] = {}
        for problem in ledger.chain_problems():
            chain.setdefault(problem["id"], []).append(_say(problem))
        values = [metric_of(r) for r in data.records]
        best = running_best(values, [r.get("decision") for r in data.records], kept_values(data.records))
        rows = [self._row(n, r, v, b, ledger, chain.get(r["id"], []))
                for n, (r, v, b) in enumerate(zip(data.records, values, best), 1)]
        return {"tag": data.tag, "metric": data.metric, "direction": data.direction, "experiments": rows}

    def _row(self, n: int, r: dict[str, Any], value: float | None, best: float | None, ledger: Ledger,
             chain: list[str]) -> dict[str, Any]:
        digest = record_digest(r)
        return {
            "n": n, "id": r["id"], "status": r.get("status"), "decision": r.get("decision"),
            "decision_reason": r.get("decision_reason"), "reason": r.get("reason"), "value": value, "best": best,
            "test": held_out_value(r), "reproduces": r.get("reproduces"),
            "commit": r.get("commit"), "parent": r.get("parent"), "image_id": r.get("image_id"),
            "description": description_of(r), "created_at": r.get("created_at"), "durations": recorded.durations(r),
            "drift": len(recorded.drift(r)), "verification": self._verification(r, digest, ledger, chain),
            "log_tail": self._log_tail(r, digest) if r.get("status") in _FAILED else None,
            **time_account(r),
        }

    def _verification(self, r: dict[str, Any], digest: str, ledger: Ledger, chain: list[str]) -> dict[str, Any]:
        """`ok`, `mismatch` (with the problems), `pending` (still running) or `unchecked` (no git).

        The identity check re-derives the image ID from git and the base (`executor.verify`, no engine
        calls) and is cached by the record's content; the hash chain is checked on every request."""
        if r.get("status") == Status.RUNNING.value:
            return {"state": "pending", "problems": chain}
        identity = self._identity_problems(r, digest, ledger)
        if identity is None:
            return {"state": "mismatch" if chain else "unchecked", "problems": chain}
        problems = identity + chain
        return {"state": "mismatch" if problems else "ok", "problems": problems}

    def _identity_problems(self, r: dict[str, Any], digest: str, ledger: Ledger) -> list[str] | None:
        if self.repo is None:
            return None
        key = (r["id"], digest)
        if key not in self._identity:
            from executor.verify import verify  # imports the docker adapter: only once a check is needed

            try:
                found = verify(self.repo, ledger, None, [r])["mismatches"]
            except (SealabError, KeyError, TypeError, ValueError) as exc:  # a record too malformed to seal
                found = [{"field": "record", "expected": "a sealable record", "actual": str(exc)}]
            self._identity[key] = [m for m in found if m["field"] not in _CHAIN_FIELDS]
        return [_say(m) for m in self._identity[key]]

    def _log_tail(self, r: dict[str, Any], digest: str) -> str | None:
        key = (r["id"], digest)
        if key not in self._tails:
            text = _read_patch(self.root, r.get("log_path"))
            self._tails[key] = "\n".join(text.splitlines()[-LOG_TAIL_LINES:]) if text else None
        return self._tails[key]

    # -- /api/kept, /api/drift, /api/review ---------------------------------------------------------
    def kept(self, ledger: Ledger, tag: str | None = None) -> dict[str, Any]:
        """Each kept change with its diff against its parent."""
        data = collect(ledger, tag)
        return {"tag": data.tag, "kept": [
            {"id": r["id"], "value": metric_of(r), "description": description_of(r), "parent": r.get("parent"),
             "commit": r.get("commit"), "decision_reason": r.get("decision_reason"),
             "diff": self._diff(r.get("parent"), r.get("commit"))}
            for r in data.records if r.get("decision") == "keep"]}

    def _diff(self, parent: str | None, commit: str | None) -> str:
        if (parent, commit) not in self._diffs:  # commits never change: a diff is computed once
            diff = commit_diff(self.repo, parent, commit)
            if diff.startswith("(cannot diff"):
                return diff  # perhaps fetched later: not kept
            self._diffs[(parent, commit)] = diff
        return self._diffs[(parent, commit)]

    def drift(self, ledger: Ledger, tag: str | None = None) -> dict[str, Any]:
        """The loop's drift events with their patches, then the drift recorded with experiments."""
        data = collect(ledger, tag)
        events = [{"created_at": ev.get("created_at"), "where": ev.get("where"), "action": ev.get("action"),
                   "commit": ev.get("commit"), "experiment": None, "changes": list(ev.get("changes") or []),
                   "patch_path": ev.get("patch_path"), "patch": _read_patch(self.root, ev.get("patch_path"))}
                  for ev in data.events["drift"]]
        for r in data.records:
            for entry in recorded.drift(r):
                events.append({"created_at": r.get("created_at"), "where": "at exec (not run)", "action": None,
                               "commit": r.get("commit"), "experiment": r["id"],
                               "changes": [f"{entry['path']}: {c}" for c in entry["changes"]],
                               "patch_path": None, "patch": entry.get("patch")})
        return {"tag": data.tag, "drift": events}

    def review(self, ledger: Ledger, tag: str | None = None) -> dict[str, Any]:
        """Proposals the policy parked (awaiting a human) or rejected, and proposals that failed."""
        data = collect(ledger, tag)
        review = [{"kind": kind, "created_at": ev.get("created_at"), "description": ev.get("description"),
                   "rule": ev.get("rule"), "reason": ev.get("reason"), "proposer": ev.get("proposer"),
                   "best_commit": ev.get("best_commit"), "cost_usd": (ev.get("usage") or {}).get("cost_usd"),
                   "patch": ev.get("patch")}
                  for kind in ("parked", "rejected") for ev in data.events[kind]]
        failed = [{"created_at": ev.get("created_at"), "reason": ev.get("reason"), "best_commit": ev.get("best_commit")}
                  for ev in data.events["proposal_failed"]]
        return {"tag": data.tag, "review": review, "proposal_failed": failed}


def _say(problem: dict[str, Any]) -> str:
    row = f" (row {problem['row']})" if problem.get("row") is not None else ""
    return f"{problem['field']}{row}: expected {problem['expected']}, found {problem['actual']}"
