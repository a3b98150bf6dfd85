"""Duty cycle of the research loop `sealab run`: pipelined (the default) against `--sequential`.

Duty = training seconds / wall seconds. Training seconds are the harness's own `training_seconds` (its
clock starts when train() is called); an experiment's wall seconds run, on the loop's clock, from the
end of the previous experiment's decision to the end of this one's. Everything else is idle time, by
cause: waiting for the proposal, sealing + loading the image, the container's start/stop, the eval
container, scoring, the decision, other (see agent/cycle.py; each record's `cycle` holds its account).

For each proposer and training budget, the real CLI runs `sealab run --experiments N --tag T --proposer P`
twice, `--sequential` and pipelined, each in a fresh workspace (`sealab init`, the scaffold's train.py,
the default policy with one baseline run instead of three) on the same offline base, in this one process
run, so the ratio pipelined / sequential comes from one run on one machine. The workspaces and their
sealed images are removed at the end; the base stays. The duty cycle is computed
from the ledger's records of T, without the baseline (`decision = baseline`; its figure with the
baseline is in the last column and the JSON).

Proposers: `offline` (the seeded one-constant search, no model), and `claude` against a stand-in
Messages API served here on 127.0.0.1 (ANTHROPIC_BASE_URL): every proposal takes `--turns` model turns
(read_file train.py ..., edit_train_py with the offline search's one-constant change, submit), each
answered after `--latency` seconds, as a model of fixed speed would.

Usage: .venv/bin/python bench/duty.py [--budgets 20,60] [--experiments 4] [--proposers offline,claude]
                                      [--turns 3] [--latency 3] [--markdown] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.create import init  # noqa: E402
from agent.cycle import CAUSES, LABELS, Duty  # noqa: E402
from agent.gitops import commit_file, set_constant  # noqa: E402
from agent.offline import OfflineProposer  # noqa: E402
from agent.proposal import ProposalContext, ProposalFailed  # noqa: E402
from executor.docker_engine import Engine  # noqa: E402
from executor.image.base import build_base  # noqa: E402
from executor.ledger import Ledger, ReadOnlyLedger  # noqa: E402

SEALAB = str(Path(sys.executable).with_name("sealab"))
MODEL = "claude-sonnet-4-6"
POLICY = """
[acceptance]
min_delta = 0.001
noise_runs = 1
z = 2.0
reason = "duty benchmark: one baseline run, so that baselines do not dominate a short run"
"""


# ---------------------------------------------------------------------------------------------------
# The stand-in Messages API
# ---------------------------------------------------------------------------------------------------

_ids = itertools.count(1)


def _reply(blocks: list[tuple[str, dict]]) -> dict:
    """A Messages API `tool_use` reply of the real shape, calling the tools `blocks` (name, input) in order."""
    return {"id": f"msg_standin{next(_ids):06d}", "type": "message", "role": "assistant", "model": MODEL,
            "content": [{"type": "tool_use", "id": f"toolu_standin{next(_ids):06d}", "name": name, "input": inp}
                        for name, inp in blocks],
            "stop_reason": "tool_use", "stop_sequence": None,
            "usage": {"input_tokens": 2000, "output_tokens": 300, "cache_read_input_tokens": 0,
                      "cache_creation_input_tokens": 0, "service_tier": "standard"}}


def _text(content: Any) -> str:
    """A message's or tool_result's content as text (a string, or a list of text blocks)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    return ""


def train_source(messages: list[dict]) -> str | None:
    """train.py as the request shows it: the tool_result of a read_file of train.py, else the first user
    message's <train_py> block."""
    reads = {b.get("id") for m in messages if m.get("role") == "assistant" and isinstance(m.get("content"), list)
             for b in m["content"] if isinstance(b, dict) and b.get("type") == "tool_use" and b.get("name") == "read_file"
             and str((b.get("input") or {}).get("path", "")).strip().lstrip("./") == "train.py"}
    for m in messages:
        if m.get("role") == "user" and isinstance(m.get("content"), list):
            for b in m["content"]:
                if (isinstance(b, dict) and b.get("type") == "tool_result" and b.get("tool_use_id") in reads
                        and not b.get("is_error")):
                    return _text(b.get("content"))
    first = _text(messages[0].get("content")) if messages else ""
    found = re.search(r"<train_py>\n(.*)\n</train_py>", first, re.S)
    return found.group(1) if found else None


class StandIn:
    """A threaded Messages API on 127.0.0.1 that proposes like the offline search, `turns` model turns per
    proposal, each reply sent `latency` seconds after its request came in. The turn is the number of
    assistant messages in the request plus one (the proposer's loop starts over for each proposal)."""

    READS = ("train.py", "program.md", "prepare.py", "sealab.toml")

    def __init__(self, turns: int, latency: float) -> None:
        self.turns, self.latency = turns, latency
        self.requests = self.proposals = 0
        self.problems: list[str] = []  # tool errors the proposer sent back, requests we could not answer
        self._seeds = itertools.count(1)
        self._lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                try:
                    status, body = 200, api.answer(json.loads(raw))
                except Exception as exc:  # noqa: BLE001 - a stand-in failure is the client's API error
                    with api._lock:
                        api.problems.append(f"stand-in: {type(exc).__name__}: {exc}")
                    status, body = 500, {"type": "error", "error": {"type": "api_error", "message": str(exc)}}
                time.sleep(api.latency)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("request-id", f"req_standin{next(_ids):06d}")
                if status != 200:
                    self.send_header("x-should-retry", "false")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def restart(self) -> None:
        """Start the proposals' seeds over (each `sealab run` gets the same sequence, as the offline
        proposer's fixed seed gives it)."""
        with self._lock:
            self._seeds = itertools.count(1)

    def answer(self, request: dict) -> dict:
        messages = request.get("messages") or []
        with self._lock:
            self.requests += 1
            for m in messages[-1:]:
                for b in m.get("content") if isinstance(m.get("content"), list) else []:
                    if isinstance(b, dict) and b.get("is_error"):
                        self.problems.append(f"tool error: {_text(b.get('content'))[:200]}")
        turn = sum(m.get("role") == "assistant" for m in messages) + 1
        reads = max(0, self.turns - 2)
        if turn <= reads:
            return _reply([("read_file", {"path": self.READS[(turn - 1) % len(self.READS)]})])
        if turn == reads + 1 or self.turns == 1:
            source = train_source(messages)
            if source is None:
                raise ValueError("no train.py in the request")
            with self._lock:
                seed = next(self._seeds)
                self.proposals += 1
            ctx = ProposalContext(program="", train_source=source, read_file=lambda _path: None,
                                  experiment_index=seed)
            try:
                proposal = OfflineProposer(seed).propose(ctx)
            except ProposalFailed as exc:
                raise ValueError(exc.reason) from None
            edit = ("edit_train_py", {"content": proposal.files["train.py"]})
            submit = ("submit", {"description": proposal.description})
            return _reply([edit, submit] if self.turns == 1 else [edit])
        return _reply([("submit", {"description": self._last_description(messages)})])

    @staticmethod
    def _last_description(messages: list[dict]) -> str:
        """The change the last edit made, `NAME old -> new`, from the two versions of train.py."""
        old = train_source(messages) or ""
        new = ""
        for m in messages:
            if m.get("role") == "assistant" and isinstance(m.get("content"), list):
                for b in m["content"]:
                    if isinstance(b, dict) and b.get("name") == "edit_train_py":
                        new = str((b.get("input") or {}).get("content") or "")
        changed = [(a, b) for a, b in zip(old.splitlines(), new.splitlines()) if a != b]
        if changed:
            name = re.match(r"\s*([A-Z][A-Z0-9_]*)", changed[0][0])
            value = lambda line: line.split("=", 1)[-1].split("#")[0].strip()  # noqa: E731
            if name:
                return f"{name.group(1)} {value(changed[0][0])} -> {value(changed[0][1])}"
        return "one-constant change"

    def __enter__(self) -> StandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()


# ---------------------------------------------------------------------------------------------------
# Workspaces and runs
# ---------------------------------------------------------------------------------------------------


def offline_base():
    """The offline base, as bench/workers.py gets it: built once (~80 s), then reused from the engine."""
    engine = Engine.connect()
    base = build_base(source=None, wheels_dir=Path(os.environ.get("SEALAB_WHEELS", "/opt/wheels")),
                      engine_client=engine)
    return engine, base


def workspace(parent: Path, name: str, base, budget: float) -> Path:
    """A fresh workspace (`sealab init`) on `base`, with `[budget] train_seconds = budget` committed and the
    default policy with one baseline run."""
    ws = init(parent / name)
    ledger = Ledger(ws.ledger_path)
    ledger.set_base(base)
    ledger.close()
    shipped = (ROOT / "policies" / "default.toml").read_text()
    policy = parent / f"{name}-policy.toml"
    policy.write_text(re.sub(r"\[acceptance\][^\[]*", POLICY.strip() + "\n\n", shipped, count=1))
    toml = (ws.root / "sealab.toml").read_text().replace('name = "default"', f'name = "{policy}"')
    toml = set_constant(toml, "train_seconds", f"{budget:g}")
    assert str(policy) in toml
    commit_file(ws.git, "sealab.toml", toml, f"duty benchmark: {budget:g} s budget, one baseline run")
    return ws.root


def remove_images(engine: Engine, base, results: list[dict]) -> None:
    """Remove the images sealed from this bench's throw-away workspaces (those its records name, and any
    sealed from another of their commits, e.g. a proposal prepared ahead but not run); the base stays."""
    commits = {c for res in results for m in res["modes"] for c in m["commits"]}
    images = {i for res in results for m in res["modes"] for i in m["images"]}
    try:
        for image in engine.api.images(filters={"label": f"sealab.base={base.image_id}"}):
            if (image.get("Labels") or {}).get("org.opencontainers.image.revision") in commits:
                images.add(image["Id"])
    except Exception as exc:  # noqa: BLE001 - listing is best effort; the records' images are removed anyway
        print(f"could not list images: {exc}", file=sys.stderr)
    for image in images - {base.image_id}:
        try:
            engine.remove_image(image)
        except Exception as exc:  # noqa: BLE001
            print(f"could not remove image {image}: {exc}", file=sys.stderr)


def run_env(proposer: str, api: StandIn | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")}
    if proposer == "claude":
        env.update(ANTHROPIC_BASE_URL=api.base_url, ANTHROPIC_API_KEY="stand-in")
    return env


def measure(root: Path, proposer: str, pipelined: bool, experiments: int, api: StandIn | None) -> dict:
    """One `sealab run` in `root`; its duty cycle from the ledger's records of its tag."""
    tag = "duty-" + ("pipelined" if pipelined else "sequential")
    argv = [SEALAB, "run", "--experiments", str(experiments), "--tag", tag, "--proposer", proposer]
    if not pipelined:
        argv.append("--sequential")
    if api:
        api.restart()
    asked = api.proposals if api else 0
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=root, env=run_env(proposer, api), capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[1:])} failed with exit code {proc.returncode}:\n"
                         f"{proc.stderr[-3000:]}\n{proc.stdout[-1000:]}")
    ledger = ReadOnlyLedger(root / ".sealab" / "ledger.db")
    try:
        records = ledger.experiments(tag)
    finally:
        ledger.close()
    runs = [r for r in records if r.decision != "baseline"]
    duty, whole = Duty.of(runs), Duty.of(records)
    proposers = sorted({str((r.proposal or {}).get("proposer")) for r in runs if r.proposal})
    if proposer == "claude" and runs and not all(p.startswith("claude:") for p in proposers):
        raise SystemExit(f"{tag}: the records name proposers {proposers}, not claude:...")
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(f"run {tag}: duty cycle")), None)
    return {"mode": "pipelined" if pipelined else "sequential", "tag": tag, "duty": duty, "with_baseline": whole,
            "without_cycle": sum(r.cycle is None for r in records),
            "statuses": {s: sum(str(r.status) == s for r in runs) for s in sorted({str(r.status) for r in runs})},
            "decisions": {d: sum(str(r.decision) == d for r in runs) for d in sorted({str(r.decision) for r in runs})},
            "proposers": proposers, "process_s": elapsed, "cli_line": line,
            "proposals_asked": (api.proposals - asked) if api else None,
            "images": sorted({r.image_id for r in records if r.image_id}),
            "commits": subprocess.run(["git", "rev-list", "--all"], cwd=root, capture_output=True, text=True,
                                      check=True).stdout.split(),
            "records": [{"id": r.id, "decision": str(r.decision), "status": str(r.status),
                         "description": r.description, "durations": r.durations,
                         "cycle": r.cycle} for r in records]}


# ---------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------


def _f(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def rows_of(results: list[dict], markdown: bool) -> list[list[str]]:
    rows = []
    for res in results:
        for m in res["modes"]:
            d: Duty = m["duty"]
            idle = d.idle_per_experiment()
            rows.append([res["proposer"], f"{res['budget']:g}", m["mode"], str(d.experiments), _f(d.wall_s, ".1f"),
                         _f(d.training_s, ".1f"), _f(d.duty, ".3f"), _f(d.per_hour, ".0f"),
                         *(f"{idle[c]:.2f}" for c in CAUSES), _f(m["with_baseline"].duty, ".3f")])
        seq, pipe = res["modes"]
        rows.append([res["proposer"], f"{res['budget']:g}", "**pipelined / sequential**" if markdown else
                     "pipelined/sequential", "", "", "", _f(_ratio(pipe["duty"].duty, seq["duty"].duty), ".2f") + "×",
                     _f(_ratio(pipe["duty"].per_hour, seq["duty"].per_hour), ".2f") + "×", *([""] * len(CAUSES)), ""])
    return rows


HEADER = ["proposer", "budget s", "mode", "exps", "wall s", "train s", "duty", "exps/h",
          *(f"idle {LABELS[c]} s/exp" for c in CAUSES), "duty w/ baseline"]


def machine(engine: Engine) -> str:
    try:
        docker = engine.client.version()["Version"]
    except Exception:  # noqa: BLE001
        docker = "?"
    return (f"{platform.node()} · {platform.platform()} · {os.cpu_count()} CPUs · Python "
            f"{platform.python_version()} · Docker {docker}")


def render(results: list[dict], args, engine: Engine, markdown: bool) -> str:
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    setup = f"{args.experiments} experiments per run after one baseline run"
    if any(res["proposer"] == "claude" for res in results):
        setup += f"; claude = stand-in Messages API, {args.turns} turns × {args.latency:g} s per proposal"
    out = []
    if markdown:
        out.append(f"Machine: {machine(engine)}; {date}. {setup}. Duty and idle exclude the baseline.\n")
        out.append("| " + " | ".join(HEADER) + " |")
        out.append("|" + "---|" * len(HEADER))
        out += ["| " + " | ".join(r) + " |" for r in rows_of(results, True)]
    else:
        out.append(f"machine: {machine(engine)}; {date}\n{setup}; duty and idle exclude the baseline")
        table = [[h.replace("idle ", "").replace(" s/exp", "") for h in HEADER], *rows_of(results, False)]
        widths = [max(len(r[i]) for r in table) for i in range(len(HEADER))]
        out.append("idle columns: seconds per experiment")
        out += ["  ".join(c.rjust(w) for c, w in zip(r, widths)).rstrip() for r in table]
    notes = []
    for res in results:
        for m in res["modes"]:
            odd = []
            if any(s != "ok" for s in m["statuses"]):
                odd.append(f"statuses {m['statuses']}")
            if m["without_cycle"]:
                odd.append(f"{m['without_cycle']} record(s) without a cycle")
            if m["proposals_asked"] is not None and m["proposals_asked"] != m["duty"].experiments:
                odd.append(f"{m['proposals_asked']} proposal(s) asked of the stand-in for {m['duty'].experiments} "
                           "experiment(s)")
            if odd:
                notes.append(f"{res['proposer']} {res['budget']:g} s {m['mode']}: " + "; ".join(odd))
    if notes:
        out.append("\nnotes:\n" + "\n".join(f"- {n}" for n in notes))
    return "\n".join(out)


def as_json(results: list[dict], args, engine: Engine) -> dict:
    return {"machine": machine(engine), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "experiments": args.experiments, "turns": args.turns, "latency_s": args.latency,
            "results": [{"proposer": r["proposer"], "budget_s": r["budget"],
                         "ratio_duty": _ratio(r["modes"][1]["duty"].duty, r["modes"][0]["duty"].duty),
                         "ratio_per_hour": _ratio(r["modes"][1]["duty"].per_hour, r["modes"][0]["duty"].per_hour),
                         "modes": [{**{k: v for k, v in m.items() if k not in ("duty", "with_baseline", "images", "commits")},
                                    "duty": m["duty"].to_dict(), "with_baseline": m["with_baseline"].to_dict()}
                                   for m in r["modes"]]} for r in results]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="20,60", help="training seconds per experiment, comma-separated")
    parser.add_argument("--experiments", type=int, default=4, help="experiments per run, besides the baseline")
    parser.add_argument("--proposers", default="offline,claude", help="offline, claude or both")
    parser.add_argument("--turns", type=int, default=3, help="stand-in model turns per proposal")
    parser.add_argument("--latency", type=float, default=3.0, help="stand-in seconds per model turn")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown, for docs")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead")
    args = parser.parse_args()
    budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
    proposers = [p.strip() for p in args.proposers.split(",") if p.strip()]
    if not budgets or not proposers or set(proposers) - {"offline", "claude"} or args.turns < 1 or args.experiments < 1:
        parser.error("--budgets and --proposers (offline, claude) must name something; --turns, --experiments >= 1")

    engine, base = offline_base()
    results = []
    with tempfile.TemporaryDirectory(prefix="sealab-bench-duty-") as tmp, StandIn(args.turns, args.latency) as api:
        for proposer, budget in itertools.product(proposers, budgets):
            modes = []
            for pipelined in (False, True):
                name = f"{proposer}-{budget:g}-{'pipelined' if pipelined else 'sequential'}"
                root = workspace(Path(tmp), name, base, budget)
                m = measure(root, proposer, pipelined, args.experiments, api if proposer == "claude" else None)
                print(f"[{name}] {m['cli_line'] or '(no duty line printed)'} ({m['process_s']:.0f} s in all; "
                      f"proposers {', '.join(m['proposers'])})",
                      file=sys.stderr, flush=True)
                modes.append(m)
            results.append({"proposer": proposer, "budget": budget, "modes": modes})
        problems = list(api.problems)
    remove_images(engine, base, results)
    if args.json:
        print(json.dumps({**as_json(results, args, engine), "stand_in_problems": problems}, indent=2))
    else:
        print(render(results, args, engine, args.markdown))
        if problems:
            print("\nstand-in API problems:\n" + "\n".join(f"- {p}" for p in problems[:20]))


if __name__ == "__main__":
    main()
