"""The `sealab` command: wiring of the executor (and later the agent) behind click subcommands.

Every SealabError becomes one line on stderr and its exit code; no traceback reaches the user.
Exit codes: 0 ok · 1 experiment failed (crash/timeout/oom/interrupted) · 2 bad input · 3 engine or
base unavailable · 4 identity mismatch or rejected · 5 ledger problem · 70 internal error.
"""

from __future__ import annotations

import json
import re
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agent.trace import keep_trace
from executor import logs
from executor import record as recorded
from executor.errors import ConfigError, EngineUnavailable, SealabError
from executor.types import BACKENDS, Status

EXIT_FOR_STATUS = {Status.OK.value: 0, Status.REJECTED.value: 4, Status.INFRA_ERROR.value: 3}
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)


class SealabGroup(click.Group):
    """Turns SealabError into a one-line message and an exit code; click's usage errors (an unknown
    option or command, a bad value) are one line too, naming the --help to read (exit 2)."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        given = sys.argv[1:] if args is None else list(args)
        if any("\x00" in str(arg) for arg in given):  # no path or name holds one (a shell cannot even pass it)
            click.echo("sealab: error: an argument holds a NUL byte (\\x00), which no path, commit or name can hold", err=True)
            sys.exit(2)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:  # `sealab` alone: the help, as before
            exc.show()
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            where = exc.ctx.command_path if isinstance(exc, click.UsageError) and exc.ctx else "sealab"
            click.echo(f"sealab: error: {' '.join(exc.format_message().split())} (see `{where} --help`)", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("sealab: interrupted", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SealabError as exc:
            click.echo(f"sealab: error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("sealab: interrupted", err=True)
            ctx.exit(130)
        except BrokenPipeError:  # `sealab status --json | head`: the reader has what it wanted
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (no second error at exit's flush)
            ctx.exit(141)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:  # a bug of ours: say so in one line, keep the trace in a file
            click.echo(f"sealab: internal error: {type(exc).__name__}: {exc} ({keep_trace()})", err=True)
            ctx.exit(70)


def _sigterm_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # so a stopped run is recorded `interrupted` and its container removed


@click.group(cls=SealabGroup)
@click.option("-C", "--workspace", "workspace", type=click.Path(path_type=Path), default=Path("."),
              help="Workspace directory (default: the current directory).")
@click.version_option(package_name="sealab")
@click.pass_context
def main(ctx: click.Context, workspace: Path) -> None:
    """Run ML experiments sealed from git commits in read-only, content-addressed containers."""
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    ctx.obj = workspace


def _open(ctx: click.Context, *, engine: bool = True, required_engine: bool = True):
    """Open the workspace, its ledger and (optionally) the engine; recover interrupted records."""
    from executor.docker_engine import Engine
    from executor.ledger import Ledger
    from executor.run import recover
    from executor.workspace import Workspace

    ws = Workspace.open(ctx.obj)
    logs.configure(ws.logs / "sealab.jsonl")
    ledger = Ledger(ws.ledger_path)
    eng = None
    if engine:
        try:
            eng = Engine.connect()
        except EngineUnavailable:
            if required_engine:
                raise
    recovered = recover(ledger, eng, backend_for=lambda name: _configured_backend(ws, eng, name))
    for eid in recovered:
        err.print(f"[yellow]experiment {eid} was interrupted (its sealab process died); marked interrupted[/]")
    return ws, ledger, eng


def _emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


@main.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--adopt", is_flag=True,
              help="Turn an existing autoresearch checkout in DIRECTORY into a workspace (adds and commits sealab.toml "
                   "only, written from what it finds in the code).")
def init(directory: Path, adopt: bool) -> None:
    """Scaffold a research workspace in DIRECTORY (a new git repository), or --adopt an autoresearch checkout."""
    from agent.create import adopt as adopt_workspace
    from agent.create import init as init_workspace
    from executor import git_source

    if not adopt:
        ws = init_workspace(directory)
        head = git_source.head_commit(ws.git)
        click.echo(f"initialised sealab workspace {ws.root} at commit {head[:12]}")
        click.echo(f"next: cd {directory} && sealab base && sealab exec")
        return
    adopted = adopt_workspace(directory)
    ws = adopted.workspace
    head = git_source.head_commit(ws.git)
    parent = git_source.ref_value(ws.git, f"{head}^")
    on = git_source.current_branch(ws.git)
    branch = "detached HEAD" if on is None else f"branch {on}"
    history = f"on top of {parent[:12]}" if parent else "as the first commit of a new repository"
    *first, last = adopted.committed
    committed = f"{', '.join(first)} and {last}" if first else last
    click.echo(f"adopted {ws.root} as a sealab workspace: committed {committed} at {head[:12]} "
               f"({branch}, {history}); .sealab/ excluded via .git/info/exclude")
    click.echo("found:")
    for line in adopted.survey.findings:
        click.echo(f"  {line}")
    click.echo("warning: metric_source = \"summary\": the metric is read from the `name: value` summary printed by "
               "train.py, i.e. REPORTED BY EDITABLE CODE and less trustworthy than a protected harness's result.json")
    if adopted.survey.todo:
        click.echo("to do:")
        for item in adopted.survey.todo:
            click.echo(f"  - {item}")
    click.echo(f"next: cd {directory} && sealab base && sealab exec")


@main.command()
@click.option("--from", "source", metavar="IMAGE", help="Build on this local image (e.g. a CUDA PyTorch image).")
@click.option("--wheels", type=click.Path(path_type=Path), help="Local wheel directory holding torch.")
@click.option("--torch", "torch", type=click.Choice(["cpu", "cuda"]),
              help="cpu: the wheel directory's torch; cuda: PyPI's CUDA torch at pinned versions, reproducible "
                   "(default: [base] torch, else cpu).")
@click.option("--json", "as_json", is_flag=True, help="Print the base record as JSON.")
@click.option("--rebuild", is_flag=True, help="Build even when a base with the same recipe exists.")
@click.option("--prepare", "prepare", metavar="CMD",
              help="First run CMD (e.g. \"python prepare.py\") in a container of the base WITH network, "
                   "filling the [data] dirs on this machine; then capture them.")
@click.pass_context
def base(ctx: click.Context, source: str | None, wheels: Path | None, torch: str | None, as_json: bool,
         rebuild: bool, prepare: str | None) -> None:
    """Build (or reuse) the base image, offline: Debian + torch, plus the commit's locked packages
    (uv.lock or a hashed requirements.txt) and its captured [data] dirs."""
    from agent.progress import build_base_with_progress
    from executor import config, git_source
    from executor.image import deps

    ws, ledger, eng = _open(ctx)
    facts = git_source.resolve(ws.git, "HEAD")  # the commit's lock and settings, never the working tree's
    cfg = config.of_commit(facts.files, facts.sha)
    files = facts.top_level(deps.LOCK_FILES)
    if source and torch == "cuda":
        raise ConfigError("sealab base", "--torch cuda assembles the reproducible CUDA base from PyPI, --from IMAGE builds "
                                         "on that image's own torch: give one of them")
    # what is said on the command line wins over sealab.toml: --torch cuda over [base] from, --from over [base] torch
    chosen_source = source or (None if torch == "cuda" else cfg.base_from)
    chosen_torch = torch or ("cpu" if source else cfg.torch)
    options = {"source": chosen_source, "wheels": wheels or Path(cfg.wheels), "console": err,
               "files": files, "rebuild": rebuild, "torch": chosen_torch}
    if prepare is not None:
        from executor.prepare import run_prepare

        plain = build_base_with_progress(eng, **options)
        run_prepare(eng, plain, facts, prepare, cfg.data_dirs, on_line=lambda line: err.print(line, markup=False,
                                                                                                highlight=False))
    built = build_base_with_progress(eng, **options, data_dirs=cfg.data_dirs)
    ledger.set_base(built)
    if as_json:
        _emit_json(built.to_dict())
    else:
        torch_note = f", torch {built.torch}" + (f" CUDA {built.cuda}" if built.cuda else "") if built.torch else ""
        click.echo(f"base {built.image_id} (data {built.data_digest[:19]}, {built.source}{torch_note})")


@main.command("seal")
@click.argument("commit", default="HEAD")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def seal_cmd(ctx: click.Context, commit: str, as_json: bool) -> None:
    """Seal COMMIT into its image (no run) and print the image ID."""
    from executor import config, git_source
    from executor.backends.interface import ensure_image
    from executor.run import current_base
    from executor.image.seal import seal

    ws, ledger, eng = _open(ctx)
    facts = git_source.resolve(ws.git, commit)
    sealed = seal(facts, current_base(ledger, eng), config.of_commit(facts.files, facts.sha).run_spec)
    ensure_image(eng, sealed)
    if as_json:
        _emit_json({"commit": facts.sha, "image_id": sealed.image_id, "tag": sealed.tag, "labels": sealed.labels})
    else:
        click.echo(f"{sealed.image_id}  {sealed.tag}")


def _configured_backend(ws: Any, eng: Any, name: str) -> Any:
    """The workspace's configured backend if it is `name` (to stop what a dead run left there), else None."""
    from executor.backends.factory import make_backend

    settings = ws.config()
    return make_backend(name, eng, dict(settings.backend_options)) if settings.backend == name else None


def _backend(ws: Any, eng: Any, name: str | None) -> Any:
    """The backend named on the command line, else the one of the workspace's sealab.toml."""
    from executor.backends.factory import make_backend

    settings = ws.config()
    chosen = name or settings.backend
    options = dict(settings.backend_options) if chosen == settings.backend else {}
    return make_backend(chosen, eng, options)


BACKEND_OPTION = click.option(
    "--backend", type=click.Choice(BACKENDS), default=None,
    help="Where experiments run (default: [backend] name of sealab.toml, else local).")


@main.command("exec")
@click.argument("commit", default="HEAD")
@click.option("--json", "as_json", is_flag=True, help="Print the experiment record as JSON.")
@BACKEND_OPTION
@click.pass_context
def exec_cmd(ctx: click.Context, commit: str, as_json: bool, backend: str | None) -> None:
    """Run COMMIT (default HEAD) sealed, verified and hardened; record the result."""
    from executor.run import execute

    ws, ledger, eng = _open(ctx)
    record = execute(ws, commit, eng, ledger, backend=_backend(ws, eng, backend))
    if as_json:
        _emit_json(record.to_dict())
    else:
        _print_record(record)
    ctx.exit(EXIT_FOR_STATUS.get(record.status, 1))


def _print_record(rec: recorded.ExperimentRecord) -> None:
    value = (rec.metrics or {}).get(rec.metric)
    shown = f"{rec.metric} {value:.6f}" if isinstance(value, float) else escape(rec.reason or "")
    colour = "green" if rec.status == Status.OK else "red"
    err.print(f"[{colour}]{rec.status.value}[/] experiment {rec.id} commit {rec.commit[:12]} "
              f"image {str(rec.image_id)[:19]}  {shown}")
    for entry in rec.drift_entries():
        for change in entry["changes"]:
            err.print(f"[yellow]drift (not run): {escape(entry['path'])}: {escape(change)}[/]")


def _open_to_read(ctx: click.Context):
    """`_open` for a command that only reads the ledger: the engine and the executor (most of a command's
    start-up time and memory) are loaded only when a record left running by a dead process is to be
    recovered; the stray containers of finished records are left to the next command that runs something."""
    from executor import owner
    from executor.ledger import Ledger
    from executor.workspace import Workspace

    ws = Workspace.open(ctx.obj)
    ledger = Ledger(ws.ledger_path)
    if all(owner.alive(holder) for _, holder in ledger.running()):
        return ws, ledger, None  # (it logs nothing: structlog is not even loaded)
    ledger.close()
    return _open(ctx, required_engine=False)


STATUS_ROWS = 50  # the table's default: the last 50 records of the latest run


def _since(ledger: Any, ref: str) -> dict[str, Any]:
    """`--since`: after an experiment (a cursor) or from a moment on, as Query fields."""
    from datetime import datetime, timezone

    found = ledger.get(ref)
    if found is not None:
        return {"after": ledger.seq_of(found["id"])}
    try:
        moment = datetime.fromisoformat(ref)
    except ValueError:
        raise click.BadParameter(f"no experiment {ref!r} in the ledger, and not an ISO-8601 time "
                                 "(e.g. 2026-12-01 or 2026-12-01T06:00Z)", param_hint="--since") from None
    moment = moment.replace(tzinfo=moment.tzinfo or timezone.utc).astimezone(timezone.utc)
    return {"since": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")}


@main.command()
@click.option("--json", "as_json", is_flag=True,
              help="Print the records as a JSON array, streamed: every record unless --tag, --since or --limit narrow it.")
@click.option("--tag", help="Only the records of the run TAG (the table's default: the latest run).")
@click.option("--all", "every", is_flag=True, help="The records of every run (the default with --json).")
@click.option("--limit", type=click.IntRange(min=0), default=None,
              help=f"Only the last N records selected (the table's default: {STATUS_ROWS}; 0: no limit).")
@click.option("--since", "since", metavar="ID|TIME",
              help="Only the records begun after experiment ID, or created at or after TIME (ISO-8601, UTC by default).")
@click.pass_context
def status(ctx: click.Context, as_json: bool, tag: str | None, every: bool, limit: int | None,
           since: str | None) -> None:
    """List the experiment records of this workspace: the latest run's last 50 by default."""
    from executor.ledger import Query

    if tag is not None and every:
        raise click.UsageError("give --tag TAG or --all, not both")
    ws, ledger, _ = _open_to_read(ctx)
    if tag is not None and ledger.run_state(tag) is None and ledger.count(Query(run_tag=tag, limit=1)) == 0:
        raise click.BadParameter(f"no run tagged {tag!r} in the ledger (`sealab status --all` lists every record)",
                                 param_hint="--tag")
    if tag is None and not every and not as_json:
        tag = ledger.latest_run_tag()
    if limit is None and not as_json:
        limit = STATUS_ROWS
    query = Query(run_tag=tag, last=limit or None, **(_since(ledger, since) if since else {}))
    if as_json:
        _stream_json(text for _, text in ledger.select(query, raw=True))
        return
    shown = ledger.count(replace(query, last=None)) if limit else None
    records = [record for _, record in ledger.select(query)]
    table = Table("id", "status", "commit", "metric", "image", "seal s", "run s", "drift", "description")
    for rec in records:
        metric = recorded.run_spec(rec).get("metric", "val_bpb")
        value = recorded.metrics(rec).get(metric)
        d = recorded.durations(rec)
        seal_s, run_s = (recorded.number(d.get(k)) or 0 for k in ("seal", "run"))
        table.add_row(str(rec.get("id")), str(rec.get("status")), str(rec.get("commit") or "-")[:12], f"{value:.6f}" if isinstance(value, float) else "-",
                      str(rec.get("image_id") or "-")[7:19], f"{seal_s:.3f}", f"{run_s:.1f}",
                      str(len(recorded.drift(rec))), rec.get("description") or "")
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    what = f"run {tag}" if tag else "the ledger"
    if shown is not None and shown > len(records):
        every_run = "" if tag is None else f", --all every run's ({ledger.count()} records)"
        err.print(f"{what}: the last {len(records)} of {shown} record(s) selected; --limit 0 shows them all"
                  f"{every_run}, --json streams them", markup=False)
    elif tag is not None and ledger.count() > ledger.count(Query(run_tag=tag)):
        err.print(f"{what}: {len(records)} record(s); --all shows every run's ({ledger.count()} records)", markup=False)


def _stream_json(texts: Any) -> None:
    """A JSON array of the records' stored texts, written as they are read (constant memory)."""
    out = sys.stdout
    first = True
    out.write("[")
    for text in texts:
        out.write("\n" if first else ",\n")
        out.write(text)
        first = False
    out.write("]\n" if first else "\n]\n")
    out.flush()


@main.command()
@click.pass_context
def results(ctx: click.Context) -> None:
    """Print an autoresearch-compatible results.tsv (plus provenance columns) on stdout."""
    from agent.report import RESULTS_TEXTS, results_fields, results_lines, slim

    _, ledger, _ = _open_to_read(ctx)
    out = sys.stdout
    for line in results_lines(slim(ledger.pick(results_fields(), texts=RESULTS_TEXTS))):
        out.write(line + "\n")
    out.flush()


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output directory (default: .sealab/report/ in the workspace).")
@click.option("--tag", help="Run tag to report on (default: the latest run).")
@click.pass_context
def report(ctx: click.Context, out: Path | None, tag: str | None) -> None:
    """Write an HTML report (report.html) and a progress chart (progress.png) of a research run."""
    from agent.html_report import write_report

    ws, ledger, _ = _open(ctx, engine=False)
    if tag is not None and ledger.run_state(tag) is None:
        raise click.BadParameter(f"no run tagged {tag!r} in the ledger", param_hint="--tag")
    page, chart = write_report(ledger, out if out is not None else ws.state / "report", tag=tag,
                               repo=ws.git, root=ws.root)
    click.echo(page)
    click.echo(chart)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (anything but loopback exposes the page to the network).")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="Port (0: any free one).")
@click.pass_context
def serve(ctx: click.Context, host: str, port: int) -> None:
    """Serve a live, read-only dashboard of the workspace (run state, chart, experiments, drift, review)."""
    from agent.serve import serve as serve_dashboard
    from executor.workspace import Workspace

    ws = Workspace.open(ctx.obj)  # no ledger writes, no recovery: the page only reads
    if ws.ledger_path.exists():  # but an older sealab's ledger gets this one's schema (indexes) first, as any command does
        from executor.ledger import Ledger

        Ledger(ws.ledger_path).close()
    serve_dashboard(ws.root, ws.ledger_path, host, port, announce=lambda line: click.echo(line, err=True))


PARTED = {  # executor.reproduce.diverged_in's phases, as the report says them
    "train": "in the train phase: its model.pt differs",
    "eval": "in the eval phase: the same model.pt gave other logits",
    "score": "in the scoring: the same logits gave another number",
    "unknown": "somewhere: the record keeps no digests of its phases (made before they were kept)",
}


def parted_line(rerun: str, phase: str, step: int | None) -> str:
    """How `sealab reproduce` says where a rerun parted: the phase, and in the train phase the first step
    whose loss differs (executor.reproduce.parted_at_step) when the record keeps its losses."""
    where = ""
    if step == 1:
        where = " (its first training loss already differs)"
    elif step:
        where = f" (its training losses agree up to step {step - 1}; step {step}'s differs)"
    return f"rerun {rerun} parted from the record {PARTED[phase]}{where}"


@main.command()
@click.argument("ref", metavar="EXPERIMENT|IMAGE")
@click.option("--runs", type=click.IntRange(min=1), default=None,
              help="How many reruns (default: 1 for a step budget, 2 for a clock budget).")
@click.option("--tolerance", type=click.FloatRange(min=0),
              help="Allowed difference (default: the run's noise floor; a clock budget: 3σ of the measured noise).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def reproduce(ctx: click.Context, ref: str, runs: int | None, tolerance: float | None, as_json: bool) -> None:
    """Re-run a recorded experiment from its sealed identity: exact, within-noise or diverged."""
    from executor.reproduce import reproduce as run_reproduce

    ws, ledger, eng = _open(ctx)
    report = run_reproduce(ws, eng, ledger, ref, runs=runs, tolerance=tolerance)
    if as_json:
        _emit_json(report)
    else:
        spec = "r" if report["verdict"] == "diverged" else ".6f"  # all digits where they differ
        shown = ", ".join("-" if v is None else format(v, spec) for v in report["values"])
        bound = "none measured" if report["tolerance"] is None else f"{report['tolerance']:g}"
        click.echo(f"{report['verdict']}: experiment {report['experiment']} recorded {report['metric']} "
                   f"{format(report['recorded'], spec)}, reran {shown} (tolerance {bound})")
        if report.get("reason"):
            click.echo(f"why: {report['reason']}")
        if report["note"]:
            click.echo(f"note: {report['note']}")
        steps = report.get("parted_at_step") or [None] * len(report["reruns"])
        for rerun, phase, step in zip(report["reruns"], report["diverged_in"], steps):
            if phase is not None:
                click.echo(parted_line(rerun, phase, step))
    ctx.exit(1 if report["verdict"] == "diverged" else 0)


@main.command()
@click.argument("experiment")
@click.option("-o", "--output", "output", type=click.Path(path_type=Path), help="Write the statement to FILE.")
@click.option("--sign", "signed", is_flag=True, help="Print a DSSE envelope of the statement, signed with your key.")
@click.option("--key", "key", type=click.Path(path_type=Path), default=None,
              help="The private key for --sign (default: signing-key.pem of `sealab keygen`).")
@click.pass_context
def provenance(ctx: click.Context, experiment: str, output: Path | None, signed: bool, key: Path | None) -> None:
    """Print the in-toto / SLSA provenance statement of EXPERIMENT (or write it to -o FILE); --sign: in a
    DSSE envelope signed with the key of `sealab keygen`."""
    import policies
    from executor.errors import WorkspaceError
    from executor.provenance import latest_link, statement, statement_bytes
    from executor.signing import PRIVATE_NAME, PUBLIC_NAME, key_dir, sign

    ws, ledger, _ = _open(ctx, engine=False)
    record = ledger.experiment(experiment)
    if record is None:
        raise WorkspaceError(f"no experiment {experiment} in {ws.ledger_path}")
    found = ledger.base(record.base_image_id) if record.base_image_id else None
    try:
        digest = policies.policy_digest(policies.load_policy(ws.config().policy))
    except Exception:  # provenance without the policy is still provenance
        digest = None
    stmt = statement(record, base=found.to_dict() if found else None, policy_digest=digest,
                     chain_hash=latest_link(ledger, record.id))
    if signed:
        private = key or key_dir() / PRIVATE_NAME
        envelope = sign(statement_bytes(stmt), private, private.with_name(PUBLIC_NAME),
                        workspaces=(ws.root, ws.here))
        text = json.dumps(envelope, indent=2, sort_keys=True) + "\n"
    else:
        text = json.dumps(stmt, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")


@main.command()
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=None,
              help="Where to write the key pair (default: ~/.config/sealab, or $SEALAB_KEY_DIR).")
@click.option("--force", is_flag=True, help="Replace a key pair that is there.")
@click.pass_context
def keygen(ctx: click.Context, directory: Path | None, force: bool) -> None:
    """Make the Ed25519 key pair that signs provenance (`sealab provenance --sign`); it lives outside any workspace."""
    from executor.errors import SealabError
    from executor.signing import key_dir, keygen as make_keys
    from executor.workspace import Workspace

    try:
        here = Workspace.open(ctx.obj)
        workspaces: tuple[Path, ...] = (here.root, here.here)
    except SealabError:
        workspaces = ()
    pair = make_keys(directory or key_dir(), force=force, workspaces=workspaces)
    click.echo(f"private key {pair.private} (mode 0600: keep it here, never commit it)")
    click.echo(f"public key  {pair.public} (give it to whoever verifies: `sealab verify --provenance FILE --key "
               f"{pair.public}`)")
    click.echo(f"keyid {pair.keyid}")


@main.command()
@click.argument("experiment")
@click.option("--registry", required=True, metavar="HOST[:PORT]/REPO", help="Where to push, e.g. 127.0.0.1:5000/sealab.")
@click.option("--json", "as_json", is_flag=True, help="Print the annotated record as JSON.")
@click.pass_context
def push(ctx: click.Context, experiment: str, registry: str, as_json: bool) -> None:
    """Push EXPERIMENT's image to a registry; record and print its REPO@sha256:… (reproducible by digest)."""
    from executor.registry import push_experiment

    _, ledger, eng = _open(ctx)
    record = push_experiment(eng, ledger, experiment, registry)
    if as_json:
        _emit_json(record.to_dict())
    else:
        click.echo(record.registry_digest)


@main.command()
@click.argument("experiments", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The archive to write (a tar).")
@click.pass_context
def export(ctx: click.Context, experiments: tuple[str, ...], output: Path) -> None:
    """Write EXPERIMENTS (IDs or prefixes) into one tar: their images and base (by ID), records and bases."""
    from executor.archive import export_archive

    _, ledger, eng = _open(ctx)
    result = export_archive(ledger, eng, list(experiments), output, progress=lambda line: click.echo(line, err=True))
    click.echo(f"{result['path']}  {result['size']} bytes ({result['size'] / 1e9:.2f} GB): "
               f"{len(result['experiments'])} experiment(s), {len(result['images'])} image(s)")


@main.command("import")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
def import_cmd(ctx: click.Context, archive: Path) -> None:
    """Import an archive written by `sealab export`: check it, load its images, add its bases and records.

    `verify` and `reproduce` also need the experiments' commits in this workspace's git repository:
    fetch or clone them from the repository they were made in first.
    """
    from executor.archive import import_archive

    _, ledger, eng = _open(ctx)
    result = import_archive(ledger, eng, archive, progress=lambda line: click.echo(line, err=True))
    click.echo(f"imported {len(result['imported'])} experiment(s) {' '.join(result['imported']) or '-'}; "
               f"already present {len(result['skipped'])}; {len(result['images'])} image(s) with their IDs; "
               f"{len(result['bases_added'])} new base(s) in {result['seconds']:.1f} s")


@main.command()
@click.argument("experiment", required=False)
@click.option("--all", "check_all", is_flag=True,
              help="Verify every record and the hash chain: incremental, through the verification cache and the "
                   "chain checkpoint (.sealab/cache/).")
@click.option("--full", is_flag=True,
              help="With --all: re-derive every identity and walk the whole chain, ignoring the cache and the "
                   "checkpoint; then refresh both (the checkpoint only when the chain is clean).")
@click.option("--provenance", "envelope", type=click.Path(path_type=Path), default=None,
              help="Verify a signed provenance envelope (`sealab provenance --sign`) instead.")
@click.option("--key", "key", type=click.Path(path_type=Path), default=None,
              help="The public key for --provenance (default: signing-key.pub.json of `sealab keygen`).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def verify(ctx: click.Context, experiment: str | None, check_all: bool, full: bool, envelope: Path | None,
           key: Path | None, as_json: bool) -> None:
    """Re-derive recorded image IDs from git and the base; exit non-zero on any mismatch. --provenance FILE:
    check a signed provenance envelope's signature, and its statement against the record.

    `--all` re-derives each distinct (commit, base, run spec) once and keeps what it proved in
    .sealab/cache/, keyed by the digests of every input (a changed input is derived again), and checks the
    hash chain from the last checkpoint it signed (key: checkpoint.key beside the signing key, outside the
    workspace); `--all --full` does everything again."""
    from executor.errors import WorkspaceError
    from executor.verify_cache import verify_all, verify_some

    if envelope is not None:
        if experiment or check_all:
            raise click.UsageError("--provenance FILE verifies an envelope: give no experiment ID or --all with it")
        _verify_envelope(ctx, envelope, key, as_json)
        return
    if bool(experiment) == check_all:
        raise click.UsageError("give an experiment ID or --all")
    if full and not check_all:
        raise click.UsageError("--full goes with --all")
    ws, ledger, eng = _open(ctx, required_engine=False)
    if check_all:
        report = verify_all(ws.git, ledger, eng, ws.state, full=full, workspaces=(ws.root,))
    else:
        found = ledger.get(experiment)
        if found is None:
            raise WorkspaceError(f"no experiment {experiment} in {ws.ledger_path}")
        report = verify_some(ws.git, ledger, eng, [found], ws.state, workspaces=(ws.root,))
    if as_json:
        _emit_json(report)
    else:
        for note in report.get("notes", ()):
            err.print(f"[yellow]{escape(note)}[/]")
        for m in report["mismatches"]:
            row = f" (row {m['row']})" if m.get("row") is not None else ""
            click.echo(f"MISMATCH {m['id']}{row} {m['field']}: expected {m['expected']}, found {m['actual']}")
        how = ""
        if check_all:
            chain = f"chain from link {report['chain_from']}" if report["chain_from"] else "whole chain walked"
            how = (f" (re-derived {report['rederived']} identit{'y' if report['rederived'] == 1 else 'ies'}, "
                   f"{report['cached']} from the cache; {chain}; {report['seconds']:.1f} s)")
        click.echo(f"checked {report['checked']} record(s){how}, {len(report['mismatches'])} mismatch(es)")
    ctx.exit(1 if report["mismatches"] else 0)


def _verify_envelope(ctx: click.Context, path: Path, key: Path | None, as_json: bool) -> None:
    """The envelope's signature by the public key, then its statement against the workspace's record (when the
    workspace has it): the subject image and the build definition must be the record's."""
    from executor.errors import SealabError
    from executor.provenance import statement
    from executor.signing import PUBLIC_NAME, SigningError, key_dir, verify as verify_signature

    public = key or key_dir() / PUBLIC_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SigningError(f"no envelope at {path}") from None
    except (OSError, ValueError) as exc:
        raise SigningError(f"{path} is not a JSON envelope: {exc}") from None
    stmt, keyid = verify_signature(data, public)
    eid = ((stmt.get("predicate") or {}).get("runDetails") or {}).get("metadata", {}).get("invocationId")
    mismatches: list[dict[str, Any]] = []
    note = "no workspace here to compare the statement with"
    try:
        _, ledger, _ = _open(ctx, engine=False)
    except SealabError:
        ledger = None
    if ledger is not None:
        record = ledger.experiment(str(eid)) if eid else None
        if record is None:
            note = f"the workspace has no experiment {eid}: only the signature was checked"
        else:
            now = statement(record)
            for field in ("subject",):
                if stmt.get(field) != now.get(field):
                    mismatches.append({"field": field, "expected": now.get(field), "actual": stmt.get(field)})
            signed_def, record_def = (stmt["predicate"]["buildDefinition"], now["predicate"]["buildDefinition"])
            for field in ("externalParameters", "internalParameters"):
                if signed_def.get(field) != record_def.get(field):
                    mismatches.append({"field": field, "expected": record_def.get(field), "actual": signed_def.get(field)})
            note = f"the statement matches experiment {eid}" if not mismatches else f"the statement differs from experiment {eid}"
    report = {"signed_by": keyid, "experiment": eid, "mismatches": mismatches, "note": note}
    if as_json:
        _emit_json(report)
    else:
        click.echo(f"signature OK: signed by {keyid[:16]}… ({public})")
        for m in mismatches:
            click.echo(f"MISMATCH {eid} {m['field']}: expected {m['expected']}, found {m['actual']}")
        click.echo(note)
    ctx.exit(1 if mismatches else 0)


@main.command("run")
@click.option("--experiments", type=click.IntRange(min=0), help="Stop after N experiments (besides the baseline).")
@click.option("--hours", type=click.FloatRange(min=0), help="Stop after H hours.")
@click.option("--proposer", type=click.Choice(["claude", "offline"]),
              help="Who proposes changes (default: claude when ANTHROPIC_API_KEY is set, else offline).")
@click.option("--tag", help="Run tag; the branch is sealab/<tag> (default: the start time).")
@click.option("--resume", is_flag=True, help="Continue the run TAG (default: the latest) after a crash or kill.")
@click.option("--model", default=None, help="Model name for the claude proposer.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the offline proposer.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Experiments per round, run at once (one GPU each when [resources] gpus = 1).")
@click.option("--pipeline/--sequential", default=True, show_default=True,
              help="With one worker: prepare the next proposal (ask, gate, commit, seal, load) while an experiment "
                   "runs, or do each step after the last.")
@BACKEND_OPTION
@click.pass_context
def run_cmd(ctx: click.Context, experiments: int | None, hours: float | None, proposer: str | None, tag: str | None,
            resume: bool, model: str | None, seed: int, workers: int, pipeline: bool, backend: str | None) -> None:
    """The overnight loop: propose, gate, commit, run sealed, keep or discard, record."""
    from agent.cycle import Duty
    from agent.loop import Loop, default_tag
    from agent.progress import LoopDisplay
    from agent.proposers import select_proposer
    from policies import load_policy

    ws, ledger, eng = _open(ctx)
    policy = load_policy(ws.config().policy)
    chosen = select_proposer(proposer, model=model, seed=seed)
    with LoopDisplay(err, total=experiments) as display:
        loop = Loop(ws, eng, ledger, policy, chosen, drift_action=policy.drift.action, on_event=display.event,
                    workers=workers, backend=_backend(ws, eng, backend), pipeline=pipeline)
        if resume:
            tag = tag or ledger.latest_run_tag()
            if tag is None:
                raise click.UsageError("nothing to resume: no run recorded in this workspace")
            state = loop.resume(tag)
        else:
            state = loop.start(tag or default_tag())
        state = loop.run(state, experiments=experiments, hours=hours)
    confirmed = f" (+{state.confirmations} confirmation runs)" if state.confirmations else ""
    click.echo(f"run {state.tag}: {state.experiments} experiment(s){confirmed}, best {state.best_value:.6f} at "
               f"{state.best_commit[:12]} on branch {state.branch}; stopped: {state.stop_reason}")
    click.echo(f"run {state.tag}: {Duty.of(ledger.experiments(state.tag)).line()}")


@main.command("mcp")
@click.option("-C", "--workspace", "here", type=click.Path(path_type=Path), default=None,
              help="Workspace directory (default: the current directory, or the group's -C).")
@click.option("--tag", default=None, help="The research run the agent drives (default: mcp-<work tree directory>; "
                                          "started on first use at HEAD, continued after).")
@click.option("--http", "http", is_flag=True, help="Serve streamable HTTP on 127.0.0.1 instead of stdio.")
@click.option("--port", type=click.IntRange(1, 65535), default=8765, show_default=True, help="Port for --http.")
@click.pass_context
def mcp_cmd(ctx: click.Context, here: Path | None, tag: str | None, http: bool, port: int) -> None:
    """Serve the research loop's tools to a coding agent over MCP (no shell needed)."""
    from agent.mcp_server import serve
    from agent.session import Session, default_tag

    if here is not None:
        ctx.obj = here
    ws, ledger, _ = _open(ctx, required_engine=False)  # (the engine, where it answers: a killed server's leftovers go)
    ledger.close()
    tag = tag or default_tag(ws)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", tag) or ".." in tag or tag.endswith((".lock", ".")):
        raise click.BadParameter(f"{tag!r} cannot name a branch; use letters, digits, '.', '_' and '-'",
                                 param_hint="--tag")
    serve(Session(ws, tag), http=http, port=port, announce=lambda line: click.echo(line, err=True))


@main.command()
@click.argument("directory", type=click.Path(path_type=Path), default=Path("demo-workspace"))
@click.option("--budget", type=float, default=20.0, show_default=True, help="Training seconds per experiment.")
@click.option("--experiments", type=click.IntRange(min=1), default=8, show_default=True)
def demo(directory: Path, budget: float, experiments: int) -> None:
    """Scaffold a workspace, build the offline base, run the research loop under a linter, write the report."""
    from agent.demo import run_demo

    run_demo(directory, budget, experiments, console=err)


if __name__ == "__main__":
    sys.exit(main())
