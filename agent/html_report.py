"""`sealab report`: one self-contained HTML page and a progress chart of a research run.

Everything read from the ledger (descriptions, diffs, reasons, patches) was written by or because of
the agent and is untrusted: every such string goes through `html.escape` before it reaches the page.
The page has no script; its only external reference is the chart, `progress.png`, next to it.
"""

from __future__ import annotations

import html
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import cycle
from executor import record as recorded
from executor.git_source import Repository, commit_diff
from executor.ledger import Ledger

CHART_NAME = "progress.png"
PAGE_NAME = "report.html"
CHART_SIZE_PX = (1200, 500)  # width, height
_KEPT = ("keep", "baseline")


def running_best(values: Sequence[float | None], decisions: Sequence[str | None],
                 kept_at: Sequence[float | None] | None = None) -> list[float | None]:
    """For each experiment, the bar the loop compared against: the mean of the baseline runs until the
    first kept change, then the last kept value (a keep is better by construction; `kept_at`: the value it
    was kept at, the mean of its confirmation runs where the replication gate ran them); None before any."""
    baseline: list[float] = []
    best: float | None = None
    out: list[float | None] = []
    for i, (value, decision) in enumerate(zip(values, decisions, strict=True)):
        if value is not None and decision == "baseline":
            baseline.append(value)
            best = statistics.fmean(baseline)
        elif value is not None and decision == "keep":
            best = kept_at[i] if kept_at is not None and kept_at[i] is not None else value
        out.append(best)
    return out


def kept_values(records: Sequence[dict[str, Any]]) -> list[float | None]:
    """For each record, the value a keep was kept at: the mean of its own and its confirmation runs' metrics
    (`decision: confirm`, `reproduces` it), or its own; None for the others."""
    confirms: dict[str, list[float]] = {}
    for r in records:
        value = metric_of(r)
        if r.get("decision") == "confirm" and r.get("reproduces") and value is not None:
            confirms.setdefault(r["reproduces"], []).append(value)
    out: list[float | None] = []
    for r in records:
        value = metric_of(r)
        runs = confirms.get(r.get("id"), [])
        out.append(statistics.fmean([value, *runs]) if r.get("decision") == "keep" and value is not None and runs
                   else value if r.get("decision") == "keep" else None)
    return out


def held_out_value(record: Mapping[str, Any]) -> float | None:
    """The record's score on the held-out test split (executor/heldout.py), or None."""
    test = record.get("test")
    value = test.get("val_bpb") if isinstance(test, Mapping) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def heldout_rows(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Validation and test side by side, in order: the baseline (means of its runs), then each keep (the
    value it was kept at), with the gap test − validation."""
    values = kept_values(records)  # type: ignore[arg-type]
    rows: list[dict[str, Any]] = []
    base_val = [metric_of(r) for r in records if r.get("decision") == "baseline" and held_out_value(r) is not None]
    base_test = [held_out_value(r) for r in records if r.get("decision") == "baseline" and held_out_value(r) is not None]
    if base_test:
        val, test = statistics.fmean(v for v in base_val if v is not None), statistics.fmean(base_test)
        rows.append({"n": 0, "id": "baseline", "val": val, "test": test, "gap": test - val})
    for n, (r, kept) in enumerate(zip(records, values), 1):
        if r.get("decision") == "keep" and held_out_value(r) is not None and kept is not None:
            rows.append({"n": n, "id": r.get("id"), "val": kept, "test": held_out_value(r), "gap": held_out_value(r) - kept})
    return rows


def metric_of(record: dict[str, Any]) -> float | None:
    """The record's own metric value when it ended ok, else None."""
    if record.get("status") != "ok":
        return None
    return recorded.number(recorded.metrics(record).get(recorded.run_spec(record).get("metric", "val_bpb")))


@dataclass
class ReportData:
    tag: str | None
    state: dict[str, Any] | None
    records: list[dict[str, Any]]
    events: dict[str, list[dict[str, Any]]]
    metric: str
    direction: str


def collect(ledger: Ledger, tag: str | None = None) -> ReportData:
    """Read one run's records and events (default: the latest run; all records when there is none)."""
    tag = tag or ledger.latest_run_tag()
    state = ledger.run_state(tag) if tag else None
    records = ledger.records(tag)  # (an indexed read of the run's own records)
    events = {kind: ledger.events(kind, run_tag=tag) for kind in ("drift", "rejected", "parked", "proposal_failed")}
    spec = next((recorded.run_spec(r) for r in records if recorded.run_spec(r)), {})
    return ReportData(tag, state, records, events, spec.get("metric", "val_bpb"), spec.get("direction", "minimize"))


def write_chart(data: ReportData, path: Path) -> Path:
    """The metric per experiment: discarded/crashed grey, kept green, the running best as a step line."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    values = [metric_of(r) for r in data.records]
    decisions = [r.get("decision") for r in data.records]
    best = running_best(values, decisions, kept_values(data.records))
    xs = list(range(1, len(values) + 1))
    fig = Figure(figsize=(CHART_SIZE_PX[0] / 100, CHART_SIZE_PX[1] / 100), dpi=100)
    ax = fig.add_subplot()
    kept = [(x, v) for x, v, d in zip(xs, values, decisions) if v is not None and d in _KEPT]
    other = [(x, v) for x, v, d in zip(xs, values, decisions) if v is not None and d not in _KEPT]
    failed = [x for x, v in zip(xs, values) if v is None]
    if other:
        ax.scatter(*zip(*other), color="#c8c8c8", s=28, label="discarded", zorder=2)
    if kept:
        ax.scatter(*zip(*kept), color="#2ca02c", s=40, label="kept", zorder=3)
    if failed:  # no metric: a grey cross at the bottom edge
        ax.scatter(failed, [0.03] * len(failed), marker="x", color="#a0a0a0", s=30, label="crashed / no metric",
                   transform=ax.get_xaxis_transform(), zorder=2, clip_on=False)
    tested = [(x, t) for x, t in zip(xs, (held_out_value(r) for r in data.records)) if t is not None]
    if tested:  # the held-out test split of the baseline runs and the keeps: the gap shows overfitting
        ax.scatter(*zip(*tested), marker="D", facecolors="none", edgecolors="#1f77b4", s=30,
                   label="held-out test (no decision uses it)", zorder=3)
    steps = [(x, b) for x, b in zip(xs, best) if b is not None]
    if steps:
        sx, sy = zip(*steps)
        ax.step([*sx, xs[-1] + 0.5], [*sy, sy[-1]], where="post", color="#2ca02c", linewidth=1.5, alpha=0.8,
                label="running best", zorder=1)
    arrow = "lower is better" if data.direction == "minimize" else "higher is better"
    ax.set_title(f"sealab run {data.tag or '(all records)'}: {data.metric} ({arrow})")
    ax.set_xlabel("experiment #")
    ax.set_ylabel(data.metric)
    ax.grid(True, alpha=0.3)
    if xs:
        ax.set_xlim(0.5, xs[-1] + 0.5)
        ax.legend(loc="best", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no experiments yet", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


# -- the page ---------------------------------------------------------------------------------------
def e(value: Any) -> str:
    """Escape anything for HTML text or a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def _short(sha: Any, n: int = 12) -> str:
    return e(str(sha)[:n]) if sha else ""


def _fmt(value: float | None) -> str:
    return f"{value:.6f}" if value is not None else "—"


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1240px;
     color:#1d1d1f;background:#fafafa;padding:0 16px}
h1{font-size:22px;margin:0 0 12px} h2{font-size:17px;margin:0 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
section{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:12px 16px;margin-bottom:16px}
table{border-collapse:collapse;width:100%;font-size:13px} th,td{border-bottom:1px solid #eee;padding:4px 6px;
     text-align:left;vertical-align:top} th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums} code,pre{font:12px/1.4 ui-monospace,Menlo,Consolas,monospace}
pre{background:#f6f8fa;border:1px solid #e1e4e8;border-radius:4px;padding:8px;overflow-x:auto;white-space:pre-wrap;
     word-break:break-word;max-height:480px}
.keep{color:#1a7f37;font-weight:600} .discard{color:#888} .baseline{color:#0550ae} .bad{color:#cf222e}
h3{font-size:14px;margin:12px 0 4px} dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:0} dt{color:#666} dd{margin:0}
img{max-width:100%;height:auto} .empty{color:#888;font-style:italic}
"""


def _summary(data: ReportData, branch: str | None) -> str:
    state = data.state or {}
    values = [metric_of(r) for r in data.records]
    decisions = [r.get("decision") for r in data.records]
    best = running_best(values, decisions, kept_values(data.records))
    best_value = state.get("best_value", best[-1] if best else None)
    best_commit = state.get("best_commit")
    if best_commit is None:
        kept = [r for r, v, d in zip(data.records, values, decisions) if d in _KEPT and v == best_value]
        best_commit = kept[-1]["commit"] if kept else None
    cost = state.get("cost_usd")
    if cost is None:
        cost = sum(((r.get("proposal") or {}).get("usage") or {}).get("cost_usd") or 0 for r in data.records)
    counts = {d: decisions.count(d) for d in ("baseline", "keep", "discard", "confirm")}
    rows = [
        ("tag", e(data.tag or "(no run: all records)")),
        ("branch", f"<code>{e(branch)}</code>" if branch else "—"),
        ("metric", f"{e(data.metric)} ({e(data.direction)})"),
        ("experiments", f"{len(data.records)} run ({counts['baseline']} baseline, {counts['keep']} kept, "
                        f"{counts['discard']} discarded"
                        + (f", {counts['confirm']} confirmation runs of the replication gate" if counts['confirm'] else "")
                        + f"); {len(data.events['rejected'])} rejected, "
                        f"{len(data.events['parked'])} parked, {len(data.events['proposal_failed'])} failed proposals"),
        ("best", f"{e(_fmt(best_value))} at <code>{_short(best_commit)}</code>"),
        ("noise threshold", e(_fmt(state.get("threshold")))),
        ("cost so far", f"${float(cost or 0):.4f}"),
        ("drift events", str(len(data.events["drift"]))),
        ("stop reason", e(state.get("stop_reason") or "—")),
    ]
    body = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    return f'<section id="summary"><h2>Summary</h2><dl>{body}</dl>{_duty(data.records)}</section>'


def pipelined(records: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the loop proposed (and sealed) the next experiment while one ran, for any of `records`."""
    return any(isinstance(r.get("cycle"), Mapping) and r["cycle"].get("pipelined") is True for r in records)


def _duty(records: Sequence[Mapping[str, Any]]) -> str:
    """The duty cycle (training / wall seconds) and the idle seconds per experiment by cause, over the
    records that carry a time account; nothing when none does (an older ledger)."""
    duty = cycle.Duty.of(records)
    if duty.duty is None:
        return ""
    over = f"{duty.experiments} of {len(records)}" if duty.experiments < len(records) else str(duty.experiments)
    rows = [
        ("duty", (f"{duty.duty:.2f} ({duty.training_s:.0f} s training in {duty.wall_s:.0f} s, "
                  f"over {over} experiment(s) with a time account)")),
        ("experiments/hour", f"{duty.per_hour:.1f}"),
        ("loop", "pipelined (the next proposal prepared while an experiment ran)" if pipelined(records)
         else "sequential"),
    ]
    head = "<tr><th>idle cause</th><th>seconds per experiment</th><th>share of wall time</th></tr>"
    causes = "".join(
        f"<tr><td>{e(cycle.LABELS[c])}</td><td class=num>{s:.1f}</td>"
        f"<td class=num>{100 * duty.idle.get(c, 0.0) / duty.wall_s:.1f}%</td></tr>"
        for c, s in duty.idle_per_experiment().items())
    body = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in rows)
    return (f'<div id="duty"><h3>Duty cycle</h3><dl>{body}</dl>'
            f"<table><thead>{head}</thead><tbody>{causes}</tbody></table></div>")


def _heldout(data: ReportData) -> str:
    """The held-out test split: validation and test of the baseline and each keep, and the gap over time."""
    rows = heldout_rows(data.records)
    if not rows:
        scored = [r for r in data.records if metric_of(r) is not None]
        why = ("this workspace's harness scores itself (an adopted repository): it has no held-out test split"
               if scored and all((r.get("metrics") or {}).get("metric_source") == "summary" for r in scored)
               else "no baseline run or keep has been scored on it yet")
        return f'<section id="heldout"><h2>Held-out test split</h2><p class="empty">{e(why)}</p></section>'
    body = "".join(
        f"<tr><td class=num>{r['n'] or ''}</td><td><code>{e(r['id'])}</code></td><td class=num>{r['val']:.6f}</td>"
        f"<td class=num>{r['test']:.6f}</td><td class=num>{r['gap']:+.6f}</td></tr>" for r in rows)
    first, last = rows[0]["gap"], rows[-1]["gap"]
    trend = (f"The gap went from {first:+.6f} to {last:+.6f}: the kept changes gained "
             f"{abs(rows[0]['val'] - rows[-1]['val']):.6f} on the validation windows and "
             f"{abs(rows[0]['test'] - rows[-1]['test']):.6f} on the test windows, which no decision used.")
    return ('<section id="heldout"><h2>Held-out test split</h2><p>The orchestrator scores the baseline and '
            'every kept commit on test windows that no decision uses; a gap that widens over the run means the '
            f'loop is fitting the validation split itself.</p><p>{e(trend)}</p><table><thead><tr><th>#</th>'
            '<th>kept</th><th>validation</th><th>test</th><th>gap (test − val)</th></tr></thead>'
            f'<tbody>{body}</tbody></table></section>')


def _experiments(data: ReportData) -> str:
    if not data.records:
        return '<section id="experiments"><h2>Experiments</h2><p class="empty">none</p></section>'
    rows = []
    for n, r in enumerate(data.records, 1):
        decision = r.get("decision") or ""
        cls = decision if decision in ("keep", "discard", "baseline", "confirm") else ""
        if decision == "confirm" and r.get("reproduces"):
            decision = f"confirm of {r['reproduces']}"  # the replication gate's rerun of that candidate
        status_cls = "" if r.get("status") == "ok" else "bad"
        description = (r.get("proposal") or {}).get("description") or r.get("description")
        rows.append(
            f"<tr><td class=num>{n}</td><td><code>{e(r.get('id'))}</code></td>"
            f'<td class="{status_cls}">{e(r.get("status"))}</td>'
            f'<td class="{cls}" title="{e(r.get("decision_reason"))}">{e(decision)}</td>'
            f"<td class=num>{e(_fmt(metric_of(r)))}</td><td class=num>{e(_fmt(held_out_value(r)))}</td>"
            f"<td><code>{_short(r.get('commit'))}</code></td>"
            f"<td><code>{_short(r.get('image_id'), 19)}</code></td><td>{e(description)}</td></tr>")
    head = ("<tr><th>#</th><th>id</th><th>status</th><th>decision</th><th>metric</th><th>held-out test</th><th>commit</th>"
            "<th>image ID</th><th>description</th></tr>")
    return (f'<section id="experiments"><h2>Experiments</h2><table><thead>{head}</thead>'
            f"<tbody>{''.join(rows)}</tbody></table></section>")


def _kept(data: ReportData, repo: Repository | None) -> str:
    parts = []
    for r in data.records:
        if r.get("decision") != "keep":
            continue
        parent, commit = r.get("parent"), r.get("commit")
        diff = commit_diff(repo, parent, commit)
        description = (r.get("proposal") or {}).get("description") or r.get("description")
        parts.append(
            f"<article><h3>{e(r.get('id'))}: {e(_fmt(metric_of(r)))} — {e(description)}</h3>"
            f"<p><code>{_short(parent)}</code> → <code>{_short(commit)}</code>; {e(r.get('decision_reason'))}</p>"
            f"<pre>{e(diff)}</pre></article>")
    body = "".join(parts) or '<p class="empty">no kept changes yet</p>'
    return f'<section id="kept"><h2>Kept changes</h2>{body}</section>'


def _drift(data: ReportData, root: Path | None) -> str:
    parts = []
    for ev in data.events["drift"]:
        changes = "".join(f"<li>{e(c)}</li>" for c in ev.get("changes") or [])
        patch = _read_patch(root, ev.get("patch_path"))
        parts.append(
            f"<article><h3>{e(ev.get('created_at'))}: {e(ev.get('where'))} (action {e(ev.get('action'))})</h3>"
            f"<p>at <code>{_short(ev.get('commit'))}</code>, patch <code>{e(ev.get('patch_path'))}</code></p>"
            f"<ul>{changes}</ul>{f'<pre>{e(patch)}</pre>' if patch else ''}</article>")
    body = "".join(parts) or '<p class="empty">no drift</p>'
    return f'<section id="drift"><h2>Drift events</h2>{body}</section>'


def _read_patch(root: Path | None, rel: Any) -> str | None:
    """A drift patch file, only when it lies inside the workspace."""
    if root is None or not rel:
        return None
    try:
        path = (root / str(rel)).resolve()
        if not path.is_relative_to(root.resolve()) or not path.is_file():
            return None
        return path.read_text(errors="replace")[:200_000]
    except OSError:
        return None


def _review(data: ReportData) -> str:
    parts = []
    for kind in ("parked", "rejected"):
        for ev in data.events[kind]:
            cost = (ev.get("usage") or {}).get("cost_usd")
            parts.append(
                f'<article class="{kind}"><h3>{e(kind)}: {e(ev.get("description"))}</h3><dl>'
                f"<dt>rule</dt><dd><code>{e(ev.get('rule'))}</code></dd><dt>reason</dt><dd>{e(ev.get('reason'))}</dd>"
                f"<dt>proposer</dt><dd>{e(ev.get('proposer'))}</dd>"
                f"<dt>on</dt><dd><code>{_short(ev.get('best_commit'))}</code> at {e(ev.get('created_at'))}</dd>"
                f"<dt>cost</dt><dd>{e(f'${cost:.4f}' if isinstance(cost, (int, float)) else '—')}</dd></dl>"
                f"<pre>{e(ev.get('patch') or '(empty patch)')}</pre></article>")
    body = "".join(parts) or '<p class="empty">nothing awaiting review</p>'
    return f'<section id="review"><h2>Rejected and parked proposals</h2>{body}</section>'


def _failures(data: ReportData) -> str:
    rows = "".join(f"<tr><td>{e(ev.get('created_at'))}</td><td><code>{_short(ev.get('best_commit'))}</code></td>"
                   f"<td>{e(ev.get('reason'))}</td></tr>" for ev in data.events["proposal_failed"])
    body = (f"<table><thead><tr><th>when</th><th>on</th><th>reason</th></tr></thead><tbody>{rows}</tbody></table>"
            if rows else '<p class="empty">no proposal failures</p>')
    return f'<section id="failures"><h2>Proposal failures</h2>{body}</section>'


def render_html(data: ReportData, repo: Repository | None = None, root: Path | None = None) -> str:
    """The page; the chart is referenced as `progress.png` next to it."""
    branch = (data.state or {}).get("branch")
    title = f"sealab report — {data.tag or 'all records'}"
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src 'self' file:; "
        "style-src 'unsafe-inline'\">",
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        _summary(data, branch),
        f'<section id="chart"><h2>Progress</h2><img src="{CHART_NAME}" alt="{e(data.metric)} per experiment" '
        f'width="{CHART_SIZE_PX[0]}" height="{CHART_SIZE_PX[1]}"></section>',
        _experiments(data), _heldout(data), _kept(data, repo), _drift(data, root), _review(data), _failures(data),
        "</body></html>", ""])


def write_report(ledger: Ledger, out: Path, *, tag: str | None = None, repo: Repository | None = None,
                 root: Path | None = None) -> tuple[Path, Path]:
    """Write `out/report.html` and `out/progress.png`; return both paths."""
    data = collect(ledger, tag)
    out.mkdir(parents=True, exist_ok=True)
    chart = write_chart(data, out / CHART_NAME)
    page = out / PAGE_NAME
    page.write_text(render_html(data, repo, root), encoding="utf-8")
    return page, chart
