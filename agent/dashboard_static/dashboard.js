// sealab serve: polls the read-only JSON API and redraws the page in place (no reload).
// Every string from the ledger (descriptions, reasons, diffs, patches, log tails) was written by the
// agent or because of it: it reaches the DOM only as text (text nodes, textContent), never as markup.
"use strict";

const params = new URLSearchParams(location.search);
const INTERVAL_MS = Math.max(250, Number(params.get("interval")) || 2000);
const TAG = params.get("tag");
const SVG = "http://www.w3.org/2000/svg";
const last = {};  // endpoint -> the JSON text last drawn, so an unchanged section is not redrawn
let current = null;  // the running experiment, for the ticking clock
let clockSkewMs = 0;  // server time - browser time

// -- DOM helpers: children given as strings become text nodes ---------------------------------------
function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === "class") node.className = value;
    else if (key === "title") node.title = value == null ? "" : String(value);
    else node.dataset[key] = String(value);
  }
  for (const child of children) {
    if (child == null) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  if (text != null) node.textContent = String(text);
  return node;
}

function byId(id) { return document.getElementById(id); }
function short(sha, n) { return sha ? String(sha).slice(0, n || 12) : "—"; }
function fmt(v) { return typeof v === "number" && isFinite(v) ? v.toFixed(6) : "—"; }
function code(text) { return el("code", null, text); }
function pre(text) { return el("pre", null, text == null || text === "" ? "(empty)" : text); }
function seconds(s) {
  if (typeof s !== "number") return "—";
  if (s < 120) return s.toFixed(0) + " s";
  if (s < 7200) return (s / 60).toFixed(1) + " min";
  return (s / 3600).toFixed(2) + " h";
}
function folded(label, body) {
  const details = el("details", null, el("summary", null, label));
  details.append(body);
  return details;
}
function empty(text) { return el("p", {class: "empty"}, text); }

// -- sections ------------------------------------------------------------------------------------------
function drawState(s) {
  clockSkewMs = Date.parse(s.server_time) - Date.now();
  byId("tag").textContent = s.tag ? "run " + s.tag : "(no run yet: all records)";
  const phase = byId("phase");
  phase.textContent = s.run.phase;
  phase.className = "phase phase-" + s.run.phase.split(" ")[0];
  const rows = [
    ["phase", s.run.phase + (s.run.stop_reason ? " (" + s.run.stop_reason + ")" : "")],
    ["branch", s.branch || "—"],
    ["metric", s.metric + " (" + s.direction + ")"],
    ["best", fmt(s.best.value) + " at " + short(s.best.commit)],
    ["noise threshold", fmt(s.threshold)],
    ["experiments", s.counts.experiments + " run (" + s.counts.baseline + " baseline, " + s.counts.keep + " kept, " +
      s.counts.discard + " discarded, " + s.counts.failed + " failed); " + s.counts.rejected + " rejected, " +
      s.counts.parked + " parked, " + s.counts.proposal_failed + " failed proposals"],
    ["drift events", String(s.counts.drift)],
    ["cost so far", "$" + Number(s.cost_usd || 0).toFixed(4)],
    ["ledger chain", chainText(s.chain)],
    ["last activity", s.run.last_activity || "—"],
    ...dutyRows(s.duty, s.counts.experiments),
    ...heldoutRows(s.heldout),
  ];
  const list = byId("state-list");
  list.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", null, k), el("dd", {key: k}, v)]));
  current = s.current;
  byId("current").hidden = !current;
  if (current) {
    byId("current-id").textContent = current.id;
    byId("current-description").textContent = (current.description || "") + " @ " + short(current.commit);
  }
  tick();
}

// The hash chain, as the server's background check last found it.
function chainText(c) {
  if (!c || typeof c.problems !== "number") {
    return c && c.error ? "not checked: " + c.error : c && c.checking ? "checking…" : "not checked yet";
  }
  const when = c.checked_at ? " (checked " + new Date(c.checked_at).toLocaleTimeString() +
    (c.checking ? ", checking again" : "") + ")" : "";
  return (c.problems ? c.problems + " problem(s): run `sealab verify --all`" : "intact") + when;
}

// The held-out test split: the latest keep's (or the baseline's) validation and test, and the gap.
function heldoutRows(h) {
  if (!h) return [];
  return [["held-out test", "validation " + fmt(h.val) + ", test " + fmt(h.test) + ", gap " +
    (h.gap >= 0 ? "+" : "") + Number(h.gap).toFixed(6) + " (" + (h.id === "baseline" ? "baseline" : "latest keep " + h.id) +
    "; first " + (h.first_gap >= 0 ? "+" : "") + Number(h.first_gap).toFixed(6) + ")"]];
}

// The duty cycle (training / wall seconds) and the idle seconds per experiment by cause: nothing when no
// experiment has a time account (an older ledger).
function dutyRows(d, experiments) {
  if (!d || typeof d.duty !== "number") return [];
  const over = d.experiments < experiments ? " over " + d.experiments + " of " + experiments + " experiments" : "";
  const rate = typeof d.per_hour === "number" ? ", " + d.per_hour.toFixed(1) + " experiments/hour" : "";
  const idle = Object.entries(d.idle_per_experiment || {}).filter(([, v]) => typeof v === "number" && v >= 0.05)
    .map(([cause, v]) => ((d.labels || {})[cause] || cause) + " " + v.toFixed(1) + " s");
  return [
    ["duty cycle", "duty " + d.duty.toFixed(2) + " (" + seconds(d.training_s) + " training in " + seconds(d.wall_s) +
      over + ")" + rate + (d.pipelined ? ", pipelined" : ", sequential")],
    ["idle per experiment", idle.length ? idle.join(" · ") : "none"],
  ];
}

function trainIdle(r) {
  if (typeof r.training_s !== "number" || typeof r.idle_s !== "number") return "";
  return r.training_s.toFixed(0) + " / " + r.idle_s.toFixed(0) + " s";
}

function tick() {
  if (!current || !current.started_at) return;
  const elapsed = (Date.now() + clockSkewMs - Date.parse(current.started_at)) / 1000;
  const budget = current.budget_s || 0, deadline = budget + (current.grace_s || 0);
  const bar = byId("current-bar");
  bar.style.width = Math.min(100, deadline ? 100 * elapsed / deadline : 0).toFixed(1) + "%";
  bar.classList.toggle("over", elapsed > deadline);
  byId("current-time").textContent = seconds(elapsed) + " elapsed of a " + seconds(budget) +
    " training budget (killed at " + seconds(deadline) + ")";
}

// -- the experiments: a window of rows kept here, updated with only what changed --------------------------
// The first answer is the latest rows (with `cursor`); each poll after asks for the rows written since that
// cursor and merges them in; "show older" asks for the page before the oldest row shown. An answer with
// `reset` (rows renumbered, the chain check changed its verdicts) replaces the window.
const table = {tag: undefined, rows: new Map(), cursor: null, chain: null, first: null, more: false, total: 0};

function applyExperiments(data, replace) {
  if (replace) {
    table.rows = new Map();
    table.first = data.window.first;
    table.more = !!data.window.more;
  }
  table.tag = data.tag;
  table.cursor = data.cursor;
  table.chain = data.chain ? data.chain.version : null;
  table.total = data.total;
  let changed = replace;
  for (const r of data.experiments) {
    if (!replace && table.more && table.first !== null && r.seq < table.first && !table.rows.has(r.seq)) continue;
    table.rows.set(r.seq, r);
    changed = true;
  }
  if (changed) drawTable();
  if (data.chart) drawChart(data.chart, data.metric, data.direction);
}

function applyOlder(data) {
  for (const r of data.experiments) table.rows.set(r.seq, r);
  table.first = data.window.first === null ? table.first : data.window.first;
  table.more = !!data.window.more;
  drawTable();
}

function drawTable() {
  const rows = [...table.rows.values()].sort((a, b) => a.n - b.n);
  byId("experiments-body").replaceChildren(...rows.map((r) => {
    const v = r.verification;
    return el("tr", {id: r.id},
      el("td", {class: "num"}, r.n),
      el("td", null, code(r.id)),
      el("td", {class: r.status === "ok" ? "" : "bad", title: r.reason}, r.status),
      el("td", {class: r.decision || "", title: r.decision_reason}, r.decision || ""),
      el("td", {class: "num"}, fmt(r.value)),
      el("td", null, code(short(r.commit))),
      el("td", null, code(short(r.image_id, 19))),
      el("td", {class: v.state, title: v.problems.join("\n")}, v.state),
      el("td", {class: "num"}, r.drift ? String(r.drift) : ""),
      el("td", {class: "num", title: "training / idle seconds (wall − training)"}, trainIdle(r)),
      el("td", {class: "description"}, r.description || "", r.log_tail ? folded("log tail", pre(r.log_tail)) : null));
  }));
  byId("experiments-empty").hidden = rows.length > 0;
  byId("experiments-shown").textContent = rows.length < table.total ?
    "showing the latest " + rows.length + " of " + table.total + " experiments" : "";
  byId("experiments-older").hidden = !table.more;
}

async function showOlder() {
  if (table.first === null) return;
  const button = byId("experiments-older");
  button.disabled = true;
  try {
    applyOlder(JSON.parse(await getText("/api/experiments" + query({before: table.first, limit: 500}))));
  } catch (error) {
    byId("error").textContent = "cannot load older experiments: " + error.message;
    byId("error").hidden = false;
  } finally {
    button.disabled = false;
  }
}

function num(v) { return typeof v === "number" && isFinite(v); }

// The chart: every experiment up to a few thousand; beyond, every baseline and keep as a point and the
// others as min/max bars (`buckets`), with the running best as a step line and the held-out test scores.
function drawChart(chart, metric, direction) {
  const box = byId("chart-box");
  const W = 1000, H = 360, L = 70, R = 20, T = 20, B = 40;
  const root = svg("svg", {viewBox: `0 0 ${W} ${H}`, role: "img"});
  root.append(svg("title", null, metric + " per experiment"));
  let lo = Infinity, hi = -Infinity;
  const see = (v) => { if (num(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); } };
  for (const p of chart.points) see(p[1]);
  for (const b of chart.buckets) { see(b[2]); see(b[3]); }
  for (const b of chart.best) see(b[1]);
  for (const t of chart.test) see(t[1]);
  if (!chart.total || lo > hi) {
    root.append(svg("text", {x: W / 2, y: H / 2, "text-anchor": "middle"}, "no metric yet"));
    box.replaceChildren(root);
    return;
  }
  if (hi - lo < 1e-9) { lo -= 0.5; hi += 0.5; }
  const pad = (hi - lo) * 0.08; lo -= pad; hi += pad;
  const x = (n) => L + (W - L - R) * (n - 0.5) / chart.total;
  const y = (v) => T + (H - T - B) * (hi - v) / (hi - lo);
  for (let i = 0; i <= 4; i++) {
    const v = lo + (hi - lo) * i / 4;
    root.append(svg("line", {class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v)}));
    root.append(svg("text", {x: L - 6, y: y(v) + 4, "text-anchor": "end"}, v.toFixed(4)));
  }
  root.append(svg("line", {class: "axis", x1: L, x2: L, y1: T, y2: H - B}));
  root.append(svg("line", {class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B}));
  root.append(svg("text", {x: (L + W - R) / 2, y: H - 8, "text-anchor": "middle"},
    "experiment # — " + metric + (direction === "minimize" ? " (lower is better)" : " (higher is better)") +
    (chart.downsampled ? " — " + chart.total + " experiments; bars: the range of the others" : "")));
  const cross = (cx, title) => {
    const cy = H - B - 8;
    const mark = svg("path", {class: "pt-failed", d: `M${cx - 4} ${cy - 4}L${cx + 4} ${cy + 4}M${cx - 4} ${cy + 4}L${cx + 4} ${cy - 4}`});
    mark.append(svg("title", null, title));
    root.append(mark);
  };
  for (const [first, last, low, high, valued, failed] of chart.buckets) {
    const cx = x((first + last) / 2), span = "#" + first + "–#" + last + ": ";
    if (valued && num(low) && num(high)) {
      const bar = svg("line", {class: "pt-range", x1: cx, x2: cx, y1: y(low), y2: y(high) + (high === low ? 1 : 0)});
      bar.append(svg("title", null, span + valued + " experiment(s), " + fmt(low) + " to " + fmt(high)));
      root.append(bar);
    }
    if (failed) cross(cx, span + failed + " without a metric");
  }
  const steps = chart.best.filter((b) => num(b[1]));
  if (steps.length) {
    const d = ["M" + x(steps[0][0] - 0.5) + " " + y(steps[0][1])];
    for (const [n, v] of steps.slice(1)) d.push("H" + x(n - 0.5), "V" + y(v));
    d.push("H" + x(chart.total + 0.5));
    root.append(svg("path", {class: "best", d: d.join(" ")}, null));
  }
  for (const [n, t, id] of chart.test) {  // the held-out test split's score, where one was made: a hollow diamond
    if (!num(t)) continue;
    const d = 5, cx = x(n), cy = y(t);
    const mark = svg("path", {class: "pt-test", d: `M${cx} ${cy - d}L${cx + d} ${cy}L${cx} ${cy + d}L${cx - d} ${cy}Z`});
    mark.append(svg("title", null, "#" + n + " " + id + ": held-out test " + fmt(t)));
    root.append(mark);
  }
  for (const [n, value, label, id] of chart.points) {
    const title = "#" + n + " " + id + ": " + fmt(value) + " " + (label || "");
    if (num(value)) {
      const kind = label === "keep" ? "keep" : label === "baseline" ? "baseline" : "other";
      const dot = svg("circle", {class: "pt-" + kind, cx: x(n), cy: y(value), r: kind === "other" ? 4 : 5});
      dot.append(svg("title", null, title));
      root.append(dot);
    } else {
      cross(x(n), title);
    }
  }
  box.replaceChildren(root);
}

// "the latest N of M", when a section shows a window of what there is
function windowNote(shown, total, what) {
  return typeof total === "number" && total > shown ? [empty("the latest " + shown + " of " + total + " " + what)] : [];
}

function drawKept(data) {
  const items = data.kept.map((k) => el("article", {id: k.id},
    el("h3", null, k.id + ": " + fmt(k.value) + " — " + (k.description || "")),
    el("p", null, code(short(k.parent)), " → ", code(short(k.commit)), "; " + (k.decision_reason || "")),
    pre(k.diff)));
  byId("kept-list").replaceChildren(...(items.length ? [...windowNote(items.length, data.total, "kept changes"), ...items]
    : [empty("no kept changes yet")]));
}

function drawDrift(data) {
  const items = data.drift.map((d) => el("article", {class: "event"},
    el("h3", null, (d.created_at || "") + ": " + (d.where || "") + (d.action ? " (action " + d.action + ")" : "") +
      (d.experiment ? " — experiment " + d.experiment : "")),
    el("p", null, "at ", code(short(d.commit)), d.patch_path ? ", patch " : "",
      d.patch_path ? code(d.patch_path) : null),
    el("ul", null, ...d.changes.map((c) => el("li", null, c))),
    d.patch ? folded("diff", pre(d.patch)) : null));
  const total = data.total || {};
  const notes = [...windowNote(data.drift.filter((d) => !d.experiment).length, total.events, "drift events"),
    ...windowNote(new Set(data.drift.filter((d) => d.experiment).map((d) => d.experiment)).size, total.experiments,
      "experiments with drift")];
  byId("drift-list").replaceChildren(...(items.length ? [...notes, ...items] : [empty("no drift")]));
}

function drawReview(data) {
  const items = data.review.map((p) => el("article", {class: "proposal " + p.kind},
    el("h3", null, p.kind + ": " + (p.description || "")),
    el("dl", null,
      el("dt", null, "rule"), el("dd", null, code(p.rule || "")),
      el("dt", null, "reason"), el("dd", null, p.reason || ""),
      el("dt", null, "proposer"), el("dd", null, p.proposer || ""),
      el("dt", null, "on"), el("dd", null, code(short(p.best_commit)), " at " + (p.created_at || "")),
      el("dt", null, "cost"), el("dd", null, typeof p.cost_usd === "number" ? "$" + p.cost_usd.toFixed(4) : "—")),
    folded("patch", pre(p.patch))));
  const failed = data.proposal_failed.map((f) => el("li", null, (f.created_at || "") + " on " + short(f.best_commit) +
    ": " + (f.reason || "")));
  if (failed.length) {
    items.push(el("article", {class: "failures"}, el("h3", null, "failed proposals"), el("ul", null, ...failed)));
  }
  const total = data.total || {};
  const notes = ["parked", "rejected"].flatMap((kind) =>
    windowNote(data.review.filter((p) => p.kind === kind).length, total[kind], kind + " proposals"))
    .concat(windowNote(data.proposal_failed.length, total.proposal_failed, "failed proposals"));
  byId("review-list").replaceChildren(...(items.length ? [...notes, ...items] : [empty("nothing awaiting review")]));
}

// -- polling -------------------------------------------------------------------------------------------
const SECTIONS = [["state", drawState], ["experiments", null], ["kept", drawKept], ["drift", drawDrift],
                  ["review", drawReview]];

function query(extra) {
  const q = new URLSearchParams();
  if (TAG) q.set("tag", TAG);
  for (const [key, value] of Object.entries(extra || {})) if (value !== null && value !== undefined) q.set(key, value);
  const text = q.toString();
  return text ? "?" + text : "";
}

async function getText(path) {
  const response = await fetch(path, {cache: "no-store"});
  const text = await response.text();
  if (!response.ok) throw new Error(JSON.parse(text).error || response.statusText);
  return text;
}

async function refreshExperiments() {
  const incremental = table.cursor !== null;
  const data = JSON.parse(await getText("/api/experiments" +
    query(incremental ? {since: table.cursor, chain: table.chain} : {})));
  if (incremental && data.tag !== table.tag) {  // the latest run is another one now: start its window afresh
    table.cursor = null;
    return refreshExperiments();
  }
  applyExperiments(data, !incremental || data.reset);
}

async function refresh() {
  try {
    for (const [name, draw] of SECTIONS) {
      if (name === "experiments") {
        await refreshExperiments();
        continue;
      }
      const text = await getText("/api/" + name + query());
      if (last[name] !== text) {
        draw(JSON.parse(text));
        last[name] = text;
      }
    }
    byId("error").hidden = true;
    byId("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (error) {
    byId("error").textContent = "cannot refresh: " + error.message;
    byId("error").hidden = false;
  } finally {
    setTimeout(refresh, INTERVAL_MS);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  byId("experiments-older").addEventListener("click", showOlder);
  refresh();
  setInterval(tick, 1000);
});
