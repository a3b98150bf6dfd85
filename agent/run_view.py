"""One research run's view for the dashboard, kept between polls (`RunView`): a small summary per record
(`Summary`) and what the page derives from them (counts, cost, duty cycle, held-out rows, the running best,
the chart's buckets), each kept incrementally, so a poll costs what changed since the last one.

What it derives is what `sealab report` derives from the run's records (`agent.html_report`'s
definitions: the same running best, held-out rows and duty cycle); sums are exact (`ExactSum`), so a view
kept through any sequence of writes equals one built afresh.
"""

from __future__ import annotations

import bisect
import json
import math
import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable

from agent import cycle
from agent.html_report import held_out_value, metric_of, pipelined
from executor import record as recorded
from executor.ledger import Ledger, Query
from executor.types import Status

CHART_FULL = 2000  # up to this many experiments the chart has every point
CHART_BUCKETS = 1000  # beyond, the experiments other than baselines and keeps are at most this many buckets
BUCKET_ROWS = 4  # the rows of one base bucket (kept incrementally; merged into CHART_BUCKETS when drawn)
FAILED = (Status.CRASH.value, Status.TIMEOUT.value, Status.OOM.value, Status.INFRA_ERROR.value,
          Status.INTERRUPTED.value, Status.REJECTED.value)
DECISIONS = ("baseline", "keep", "discard", "confirm")
_RUNNING = Status.RUNNING.value


def _decode(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:  # a row edited outside sealab into something else: the chain check says so
        return None


# -- exact sums ------------------------------------------------------------------------------------------
_FIXED_BITS = 1074  # every finite double is an integer multiple of 2**-1074
_ONE = 1 << _FIXED_BITS


class ExactSum:
    """A sum of floats kept exactly (an integer of 2**-1074 units), so that adding and removing values in
    any order gives the same total, correctly rounded: `total()` is `math.fsum` of the values and
    `mean()` is `statistics.fmean` of them, whatever happened before."""

    __slots__ = ("fixed", "n", "nan", "inf", "ninf")

    def __init__(self) -> None:
        self.fixed = self.n = self.nan = self.inf = self.ninf = 0

    def add(self, value: float, sign: int = 1) -> None:
        self.n += sign
        if not value:
            return
        if math.isfinite(value):
            num, den = float(value).as_integer_ratio()
            self.fixed += sign * (num << (_FIXED_BITS + 1 - den.bit_length()))
        elif value != value:
            self.nan += sign
        elif value > 0:
            self.inf += sign
        else:
            self.ninf += sign

    def total(self) -> float:
        if self.nan or (self.inf and self.ninf):
            return math.nan
        if self.inf or self.ninf:
            return math.inf if self.inf else -math.inf
        return self.fixed / _ONE  # (int / int is correctly rounded)

    def mean(self) -> float | None:
        return self.total() / self.n if self.n else None

    def copy(self) -> ExactSum:
        other = ExactSum()
        other.fixed, other.n, other.nan, other.inf, other.ninf = self.fixed, self.n, self.nan, self.inf, self.ninf
        return other


# -- one record, summarised --------------------------------------------------------------------------------
_SPECS: dict[tuple[Any, ...], tuple[Any, ...]] = {}  # equal run-spec summaries shared (memory at 100k records)


@dataclass(slots=True)
class Summary:
    """What the run-wide values need of one record (a few hundred bytes, against kilobytes for the record)."""

    seq: int
    id: str
    text: int  # hash of the stored text: a record written again unchanged is not applied again
    value: float | None  # metric_of
    decision: str | None
    status: str | None
    test: float | None  # held_out_value
    reproduces: str | None
    created_at: str | None
    spec: tuple[Any, ...] | None  # (metric, direction, budget_s, grace_s) when the record has a run spec
    cycle: tuple[float, float, tuple[float, ...]] | None  # (training_s, wall_s, idle by cycle.CAUSES)
    pipelined: bool
    cost: float | None  # the proposal's cost in dollars
    drift: int  # drift entries recorded with it

    @classmethod
    def of(cls, seq: int, text: str, record: Any) -> Summary:
        if not isinstance(record, dict):
            record = {}
        decision, reproduces = record.get("decision"), record.get("reproduces")
        spec = recorded.run_spec(record)
        shape = None
        if spec:
            shape = (spec.get("metric", "val_bpb"), spec.get("direction", "minimize"),
                     recorded.number(spec.get("budget_s")), recorded.number(spec.get("grace_s")))
            shape = _SPECS.setdefault(shape, shape) if all(isinstance(x, (str, float, type(None))) for x in shape) \
                else shape
        account, times = None, record.get("cycle")
        if isinstance(times, dict):  # (what cycle.Duty.of adds up for it)
            idle = times.get("idle") if isinstance(times.get("idle"), dict) else {}
            account = (_seconds(times.get("training_s")), _seconds(times.get("wall_s")),
                       tuple(_seconds(idle.get(c)) for c in cycle.CAUSES))
        proposal = record.get("proposal")
        usage = proposal.get("usage") if isinstance(proposal, dict) else None
        return cls(seq=seq, id=str(record.get("id", f"row {seq}")), text=hash(text), value=metric_of(record),
                   decision=decision if isinstance(decision, str) else None,
                   status=record.get("status") if isinstance(record.get("status"), str) else None,
                   test=held_out_value(record), reproduces=reproduces if isinstance(reproduces, str) else None,
                   created_at=record.get("created_at") if isinstance(record.get("created_at"), str) else None,
                   spec=shape, cycle=account, pipelined=pipelined([record]),
                   cost=recorded.number(usage.get("cost_usd")) if isinstance(usage, dict) else None,
                   drift=len(recorded.drift(record)))

    @property
    def step(self) -> bool:
        """Whether the running best moves here (a baseline run or a keep with a value)."""
        return self.value is not None and self.decision in ("baseline", "keep")

    @property
    def label(self) -> str | None:
        return self.decision or self.status


def _seconds(value: Any) -> float:
    """A time account's number as cycle.Duty.of counts it (0 for anything else)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value else 0.0


def _insort(items: list[int], seq: int, sign: int) -> int:
    """Add (sign 1) or remove (-1) `seq` in the sorted list; its index."""
    at = bisect.bisect_left(items, seq)
    if sign > 0:
        items.insert(at, seq)
    elif at < len(items) and items[at] == seq:
        del items[at]
    return at


# -- one run's view ------------------------------------------------------------------------------------------
class RunView:
    """One research run's records as summaries, ordered by seq, with what is derived from them kept up to
    date as records change (the records of every run, `tag` None: a ledger without runs)."""

    def __init__(self, tag: str | None) -> None:
        self.tag = tag
        self.cursor: int | None = None  # the ledger's cursor this view is as of
        self.changed_at = 0  # the cursor when the run's rows (or the running ones listed with them) last changed
        self.reshaped_at = 0  # ... when a row was inserted before the last, or left (rows' numbers moved)
        self.chain_version = 0
        self.rows: dict[int, Summary] = {}
        self.seqs: list[int] = []
        self.by_id: dict[str, int] = {}
        self.running: list[tuple[int, dict[str, Any], str | None]] = []  # every running record: seq, record, owner
        self.extras: list[tuple[int, dict[str, Any]]] = []  # running records not (yet) tagged with the run
        # run-wide values
        self.counts: Counter[str | None] = Counter()
        self.failed = 0
        self.cost = ExactSum()
        self.duty_n = self.duty_pipelined = 0
        self.training, self.wall = ExactSum(), ExactSum()
        self.idle = [ExactSum() for _ in cycle.CAUSES]
        self.base_val, self.base_test = ExactSum(), ExactSum()  # the baseline runs that have a held-out score
        self.tested_keeps: list[int] = []  # keeps with a value and a held-out score
        self.tested: list[int] = []  # rows with a held-out score (the chart's diamonds)
        self.drifted: list[int] = []  # rows with drift entries
        self.keeps: list[int] = []  # rows decided keep
        self.keeps_changed = self.drift_changed = 0  # (how many times a keep, a row with drift, changed)
        self.confirms: dict[str, dict[int, float]] = {}  # keep id -> its confirmation runs' values by seq
        # the running best: it moves only at steps (Summary.step); recomputed from the first one touched
        self.steps: list[int] = []
        self.step_best: list[float | None] = []
        self.step_base: list[ExactSum] = []  # the baseline runs' sum up to each step
        self.step_dirty: int | None = None
        # the chart's base buckets (BUCKET_ROWS rows each, by position); None: to be recomputed
        self.buckets: list[tuple[Any, ...] | None] = []
        self.pages: dict[tuple[Any, ...], tuple[tuple[Any, ...], dict[str, Any]]] = {}
        self.chart_cache: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        self.spec_cache: tuple[int, tuple[Any, ...] | None, tuple[Any, ...] | None] | None = None
        self.reads = 0  # records read from the ledger (tests: a poll after no change reads none)

    def belongs(self, record: Any) -> bool:
        return self.tag is None or (isinstance(record, dict) and record.get("run_tag") == self.tag)

    # -- reading the ledger ------------------------------------------------------------------------------
    def load(self, ledger: Ledger, cursor: int) -> None:
        """All of the run's records (the first poll of the run)."""
        for seq, text in ledger.select(Query(run_tag=self.tag) if self.tag is not None else Query(), raw=True):
            self.reads += 1
            self.put(seq, text, _decode(text))
        self._running(ledger)
        self.cursor = self.changed_at = self.reshaped_at = cursor

    def update(self, ledger: Ledger, cursor: int) -> None:
        """The records written (begun, finished, annotated) since the view's cursor."""
        assert self.cursor is not None
        changed = reshaped = False
        for seq, text in ledger.select(Query(changed_after=self.cursor), raw=True):
            self.reads += 1
            record = _decode(text)
            if self.belongs(record):
                before = len(self.seqs)
                if self.put(seq, text, record):
                    changed = True
                    reshaped |= len(self.seqs) > before and self.seqs[-1] != seq
            elif seq in self.rows:
                self.drop(seq)
                changed = reshaped = True
        moved, vanished = self._running(ledger)
        changed |= moved
        reshaped |= vanished
        if changed:
            self.changed_at = cursor
        if reshaped:
            self.reshaped_at = cursor
        self.cursor = cursor

    def reread(self, ledger: Ledger, ids: Iterable[str], cursor: int) -> None:
        """Read again the rows the chain check names (edited outside sealab: their cursor did not move)."""
        changed = False
        for eid in ids:
            seq = self.by_id.get(eid)
            if seq is None:
                continue
            found = list(ledger.select(Query(after=seq - 1, before=seq + 1), raw=True))
            self.reads += len(found)
            if not found or not self.belongs(record := _decode(found[0][1])):
                self.drop(seq)
                self.reshaped_at = cursor
                changed = True
            else:
                changed |= self.put(seq, found[0][1], record)
        if changed:
            self.changed_at = cursor

    def _running(self, ledger: Ledger) -> tuple[bool, bool]:
        """Every record still running (the loop tags a record with its run only once finished: a running
        one is listed after the run's rows). (Whether the listed ones changed, whether one left the list.)"""
        owners = dict(ledger.running())
        running = []
        for seq, text in ledger.select(Query(status=_RUNNING), raw=True):
            self.reads += 1
            record = _decode(text)
            record = record if isinstance(record, dict) else {}
            running.append((seq, record, owners.get(str(record.get("id")))))
        self.running = running
        extras = [(seq, record) for seq, record, _ in running if seq not in self.rows]
        moved = extras != self.extras
        listed = {seq for seq, _ in extras}
        vanished = any(seq not in listed and seq not in self.rows for seq, _ in self.extras)
        self.extras = extras
        return moved, vanished

    # -- rows ------------------------------------------------------------------------------------------
    def put(self, seq: int, text: str, record: Any) -> bool:
        """Add or replace the row `seq`; False when it is there unchanged."""
        old = self.rows.get(seq)
        if old is not None and old.text == hash(text):
            return False
        new = Summary.of(seq, text, record)
        if old is not None:
            self._tally(old, -1)
            if self.by_id.get(old.id) == seq:
                del self.by_id[old.id]
            self._touch(bisect.bisect_left(self.seqs, seq))
        else:
            at = _insort(self.seqs, seq, 1)
            self._touch(at, shifted=at < len(self.seqs) - 1)
        self.rows[seq] = new
        self.by_id[new.id] = seq
        self._tally(new, 1)
        return True

    def drop(self, seq: int) -> None:
        old = self.rows.pop(seq)
        self._tally(old, -1)
        if self.by_id.get(old.id) == seq:
            del self.by_id[old.id]
        self._touch(_insort(self.seqs, seq, -1), shifted=True)

    def _tally(self, row: Summary, sign: int) -> None:
        """Add (1) or take away (-1) what `row` contributes to the run-wide values."""
        self.counts[row.decision] += sign
        self.failed += sign * (row.status in FAILED)
        if row.cost is not None:
            self.cost.add(row.cost, sign)
        if row.cycle is not None:
            training, wall, idle = row.cycle
            self.duty_n += sign
            self.duty_pipelined += sign * row.pipelined
            self.training.add(training, sign)
            self.wall.add(wall, sign)
            for total, seconds in zip(self.idle, idle):
                total.add(seconds, sign)
        if row.test is not None:
            _insort(self.tested, row.seq, sign)
            if row.decision == "baseline":
                self.base_test.add(row.test, sign)
                if row.value is not None:
                    self.base_val.add(row.value, sign)
            elif row.decision == "keep" and row.value is not None:
                _insort(self.tested_keeps, row.seq, sign)
        if row.drift:
            _insort(self.drifted, row.seq, sign)
            self.drift_changed += 1
        if row.decision == "keep":
            _insort(self.keeps, row.seq, sign)
            self.keeps_changed += 1
        if row.step:
            self._dirty(_insort(self.steps, row.seq, sign))
        if row.decision == "confirm" and row.reproduces and row.value is not None:
            runs = self.confirms.setdefault(row.reproduces, {})
            if sign > 0:
                runs[row.seq] = row.value
            else:
                runs.pop(row.seq, None)
                if not runs:
                    del self.confirms[row.reproduces]
            kept = self.by_id.get(row.reproduces)
            if kept is not None and self.rows[kept].step:
                self._dirty(bisect.bisect_left(self.steps, kept))

    def _dirty(self, step: int) -> None:
        self.step_dirty = step if self.step_dirty is None else min(self.step_dirty, step)

    def _touch(self, position: int, *, shifted: bool = False) -> None:
        """The base bucket of a row's position changed; `shifted`: every one from it on (rows renumbered)."""
        first = position // BUCKET_ROWS
        if first >= len(self.buckets):
            self.buckets.extend([None] * (first + 1 - len(self.buckets)))
        if shifted:
            self.buckets[first:] = [None] * (len(self.buckets) - first)
        else:
            self.buckets[first] = None

    # -- derived -------------------------------------------------------------------------------------------
    def kept_value(self, row: Summary) -> float | None:
        """The value a keep was kept at: the mean of its own and its confirmation runs' (kept_values)."""
        runs = self.confirms.get(row.id)
        return statistics.fmean([row.value, *runs.values()]) if runs and row.value is not None else row.value

    def _restep(self) -> None:
        """The running best at each step from the first one touched on (html_report.running_best)."""
        start = self.step_dirty
        if start is None:
            return
        del self.step_best[start:], self.step_base[start:]
        base = self.step_base[-1].copy() if self.step_base else ExactSum()
        for seq in self.steps[start:]:
            row = self.rows[seq]
            if row.decision == "baseline":
                base.add(row.value)  # type: ignore[arg-type]
                best = base.mean()
            else:
                best = self.kept_value(row)
            self.step_best.append(best)
            self.step_base.append(base.copy())
        self.step_dirty = None

    def best_at(self, seq: int) -> float | None:
        """The bar the loop compared the row `seq` against: the running best at it."""
        self._restep()
        at = bisect.bisect_right(self.steps, seq) - 1
        return self.step_best[at] if at >= 0 else None

    def best(self) -> float | None:
        self._restep()
        return self.step_best[-1] if self.step_best else None

    def number(self, seq: int) -> int:
        """The row's place in the run, from 1 (what the table's # shows)."""
        return bisect.bisect_left(self.seqs, seq) + 1

    def total(self) -> int:
        return len(self.seqs) + len(self.extras)

    def specs(self) -> tuple[tuple[Any, ...] | None, tuple[Any, ...] | None]:
        """The run spec summaries of the first record that has one (the metric) and of the last (the patience)."""
        if self.spec_cache is None or self.spec_cache[0] != self.changed_at:
            first = next((self.rows[s].spec for s in self.seqs if self.rows[s].spec), None)
            last = next((self.rows[s].spec for s in reversed(self.seqs) if self.rows[s].spec), None)
            self.spec_cache = (self.changed_at, first, last)
        return self.spec_cache[1], self.spec_cache[2]

    def heldout(self) -> dict[str, Any] | None:
        """The held-out split of the run's records (as the report's `heldout_rows`): the latest row (the
        latest keep's, else the baseline's), the first gap and the number of rows."""
        rows: list[dict[str, Any]] = []
        val, test = self.base_val.mean(), self.base_test.mean()
        if val is not None and test is not None:
            rows.append({"n": 0, "id": "baseline", "val": val, "test": test, "gap": test - val})
        based = len(rows)
        for seq in self.tested_keeps[:1] + self.tested_keeps[1:][-1:]:  # the first keep and the last
            row = self.rows[seq]
            kept = self.kept_value(row)
            if kept is not None and row.test is not None:
                rows.append({"n": self.number(seq), "id": row.id, "val": kept, "test": row.test,
                             "gap": row.test - kept})
        if not rows:
            return None
        return {**rows[-1], "first_gap": rows[0]["gap"], "rows": based + len(self.tested_keeps)}

    def duty(self) -> dict[str, Any] | None:
        """`duty_of` the run's records."""
        if not self.duty_n:
            return None
        duty = cycle.Duty(self.duty_n, self.training.total(), self.wall.total(),
                          {c: s.total() for c, s in zip(cycle.CAUSES, self.idle)})
        return {**duty.to_dict(), "pipelined": self.duty_pipelined > 0, "labels": dict(cycle.LABELS)}

    # -- the chart ---------------------------------------------------------------------------------------
    def chart(self) -> dict[str, Any]:
        """The chart's series (tuples: JSON arrays that the garbage collector need not follow). Up to
        CHART_FULL experiments every row is a point `[n, value, label, id]`
        (value null: no metric, drawn as a cross); beyond, the points are the baselines and keeps only, and
        the others are `buckets` `[first n, last n, min, max, with a value, without]`, at most
        CHART_BUCKETS. `best`: `[n, value]` where the running best changes; `test`: `[n, value, id]`."""
        stamp = (self.changed_at, self.cursor if self.extras else None)
        if self.chart_cache is not None and self.chart_cache[0] == stamp:
            return self.chart_cache[1]
        self._restep()
        total = self.total()
        full = total <= CHART_FULL
        if full:
            points = [(n, row.value, row.label, row.id) for n, row in
                      enumerate((self.rows[s] for s in self.seqs), 1) if row.status != _RUNNING]
        else:
            points = [(self.number(s), self.rows[s].value, self.rows[s].label, self.rows[s].id) for s in self.steps]
        best, last = [], None
        for seq, value in zip(self.steps, self.step_best):
            if value != last:
                best.append((self.number(seq), value))
                last = value
        chart = {"total": total, "downsampled": not full, "points": points, "best": best,
                 "test": [(self.number(s), self.rows[s].test, self.rows[s].id) for s in self.tested],
                 "buckets": [] if full else self._merged_buckets()}
        self.chart_cache = (stamp, chart)
        return chart

    def _merged_buckets(self) -> list[list[Any]]:
        count = -(-len(self.seqs) // BUCKET_ROWS)
        del self.buckets[count:]
        self.buckets.extend([None] * (count - len(self.buckets)))
        for b, bucket in enumerate(self.buckets):
            if bucket is None:
                self.buckets[b] = self._bucket(b)
        group = max(1, -(-count // CHART_BUCKETS))
        merged = []
        for start in range(0, count, group):
            parts = [b for b in self.buckets[start:start + group] if b and (b[4] or b[5])]
            if not parts:
                continue
            lows = [b[2] for b in parts if b[2] is not None]
            highs = [b[3] for b in parts if b[3] is not None]
            merged.append((parts[0][0], parts[-1][1], min(lows) if lows else None, max(highs) if highs else None,
                           sum(b[4] for b in parts), sum(b[5] for b in parts)))
        return merged

    def _bucket(self, b: int) -> tuple[Any, ...]:
        """The base bucket `b`: the rows that are not points (not steps, not running) at its positions."""
        first = last = None
        low = high = None
        valued = failed = 0
        for position in range(b * BUCKET_ROWS, min(len(self.seqs), (b + 1) * BUCKET_ROWS)):
            row = self.rows[self.seqs[position]]
            if row.step or row.status == _RUNNING:
                continue
            if row.value is None:
                failed += 1
            elif row.value == row.value:  # (a NaN has no place on the axis)
                valued += 1
                low = row.value if low is None else min(low, row.value)
                high = row.value if high is None else max(high, row.value)
            else:
                continue
            first = position + 1 if first is None else first
            last = position + 1
        return (first, last, low, high, valued, failed)
