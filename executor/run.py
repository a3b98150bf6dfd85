"""Execute one commit: seal its image, verify it, run it hardened under a deadline, record the result.

Compare-and-swap between decision and execution: the image ID is recomputed from the commit and
checked against the image by name, by labels, and against the created container, before `start`.
Any mismatch means nothing runs and the record says `rejected`, naming expected and actual.

The metric is read from the harness's result.json. Only a workspace whose committed sealab.toml says
`[harness] metric_source = "summary"` (an adopted autoresearch checkout) falls back, when there is no
result.json, to the `---` summary its train.py printed; such metrics carry `metric_source: summary`.

Once recorded, the run's log ends with sealab's summary of the record (scored_summary): the metric
line an agent greps for, which a train phase whose model the orchestrator scores cannot print.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import structlog

from executor import config, deadline, evaluate, git_source, owner, scored_summary, valdata
from executor.backends.interface import Backend, Job, Started
from executor.backends.local import DockerBackend
from executor.docker_engine import Engine
from executor.drift import describe, summarize
from executor.errors import BaseImageError, EngineUnavailable, IdentityMismatch, LedgerError, SealabError
from executor.ledger import Ledger, Query, now
from executor.record import ExperimentRecord, Finish, Results, RunLabels
from executor.image import deps
from executor.image.launch import RUN_FILE as LAUNCH_FILE
from executor.image.seal import TRAIN_PATH, Sealed, check_tree_size, eval_waits, scored_by_orchestrator, seal
from executor.judge import RESULT_FILE, Outcome, cpu_of, eval_outcome, judge, out_of_scope, summary_result
from executor.types import BaseImage, RunSpec, Status
from executor.workspace import Workspace

def new_id() -> str:
    return secrets.token_hex(5)


def current_base(ledger: Ledger, engine: Engine) -> BaseImage:
    """The workspace's base image, checked to be present in the engine.

    Raises:
        BaseImageError: none recorded, or the engine no longer holds it.
    """
    base = ledger.current_base()
    if base is None:
        raise BaseImageError("no base image recorded for this workspace; run `sealab base` first")
    if engine.image_id(base.image_id) != base.image_id:
        raise BaseImageError(f"base image {base.image_id[:19]} is not in the engine; run `sealab base` to rebuild it")
    return base


def check_base_fits(facts: git_source.CommitFacts, settings: config.Config, base: BaseImage) -> None:
    """Refuse a base that is not the commit's own: built from another lock, or without its [data] dirs.

    Raises:
        BaseImageError: naming the expected and the actual lock digest or directories.
    """
    lock = deps.lock_digest(facts.top_level(deps.LOCK_FILES))
    if lock != base.deps:
        raise BaseImageError(f"the base {base.image_id[:19]} was built from lock {base.deps or 'none'}, commit "
                             f"{facts.sha[:12]} has {lock or 'none'}: run `sealab base` to build its own")
    captured = [name for name, _ in base.data_dirs]
    if list(settings.data_dirs) != captured:
        raise BaseImageError(f"commit {facts.sha[:12]} lists [data] dirs {list(settings.data_dirs)}, the base "
                             f"{base.image_id[:19]} holds {captured}: run `sealab base` to capture them")


def execute(ws: Workspace, ref: str, engine: Engine, ledger: Ledger,
            on_record: Callable[[str], None] | None = None, editable: Sequence[str] | None = None,
            backend: Backend | None = None, labels: RunLabels | None = None) -> ExperimentRecord:
    """Run commit `ref` of the workspace sealed, and return its finished ledger record.

    `backend` runs the image (default: `engine`, this machine's); it verifies the image where it runs.
    `on_record(experiment_id)` is called once the record exists (as `running`), before anything starts.
    `labels` (the loop's run tag, `baseline`, proposal) are part of the record from its first write.
    `editable` (glob patterns): the commit may change only these paths against its parent, as read
    from git here, whatever the caller claims; otherwise it is `rejected` and nothing is loaded.

    Raises:
        SourceError, ConfigError, WorkspaceError: bad commit, or a committed sealab.toml that is bad or
            missing (nothing is recorded).
        BaseImageError: no usable base image (nothing is recorded).
        EngineUnavailable: the engine failed mid-way (the record says `infra_error`).
    """
    started = time.monotonic()
    backend = backend or DockerBackend(engine)
    facts = git_source.resolve(ws.git, ref)
    settings = config.of_commit(facts.files, facts.sha)
    spec = settings.run_spec
    check_tree_size(facts, spec)
    orchestrated = scored_by_orchestrator(facts) and settings.metric_source != "summary"
    base = current_base(ledger, engine)
    check_base_fits(facts, settings, base)
    drift = summarize(*git_source.working_diff(ws.git, facts.sha))
    forbidden = [] if editable is None else out_of_scope(git_source.changed_paths(ws.git, facts), editable)
    eid = new_id()
    log = structlog.get_logger().bind(experiment_id=eid, commit=facts.sha[:12])
    for line in describe(drift):
        log.warning("drift", change=line, note="the run uses the commit, not the working tree")
    if spec.resources.gpus > 0 and (base.torch or "").endswith("+cpu"):
        log.warning("cpu_torch", gpus=spec.resources.gpus, torch=base.torch,
                    note="the base's torch cannot use a GPU: the run trains on the CPU; `sealab base --torch cuda`")
    out_dir, log_path = ws.outputs / eid, ws.logs / f"{eid}.log"
    ledger.begin(ExperimentRecord(
        id=eid, commit=facts.sha, status=Status.RUNNING, parent=facts.parent, tree=facts.tree,
        description=facts.subject, base_image_id=base.image_id, data_digest=base.data_digest,
        run_spec=spec.to_dict(), drift=drift, log_path=str(log_path.relative_to(ws.root)), created_at=now(),
        durations={}, backend=backend.name, **(labels.record_fields() if labels else {}),
    ), owner.token())
    if on_record is not None:
        on_record(eid)
    durations: dict[str, float] = {}
    limit = deadline.measured(spec, deadline.earlier_run_times(
        (r for _, r in ledger.select(Query(status=Status.OK.value, last=deadline.RECENT_RUNS))), spec)) \
        if settings.measured_grace else None
    image_id: str | None = None
    result: dict | None = None
    placement = ""
    ahead: EvalPhase | None = None  # the eval phase, started before training
    displaced: str | None = None  # a foreign image the sealed one took its name back from
    try:
        t = time.monotonic()
        sealed = seal(facts, base, spec)
        image_id = sealed.image_id
        log = log.bind(image=image_id[:19])
        durations["seal"] = time.monotonic() - t
        try:
            if forbidden:
                raise IdentityMismatch("paths changed by the commit", "only " + ", ".join(editable or ()),
                                       ", ".join(forbidden))
            if orchestrated:
                t = time.monotonic()
                ahead = start_eval_ahead(ws, eid, facts, sealed, spec, base, engine, backend, out_dir)
                durations["eval_ahead"] = time.monotonic() - t
                if ahead is not None and ahead.started is not None:
                    displaced = ahead.started.displaced  # the phase that loaded the image first saw it
            end = backend.run(Job(eid, "train", sealed, spec, out_dir, env={
                "SEALAB_EXPERIMENT": eid, "OMP_NUM_THREADS": str(max(1, int(spec.resources.cpus)))},
                deadline_s=limit.seconds if limit else None, log_path=log_path))
        except IdentityMismatch as exc:
            outcome = Outcome(Status.REJECTED, f"{exc}; nothing was started")
        else:
            placement = end.placement
            durations.update(end.timings)
            displaced = end.displaced or displaced
            if displaced:
                ledger.add_event(labels.run_tag if labels else None, "displaced", {
                    "experiment": eid, "name": sealed.tag, "foreign": displaced, "image": image_id,
                    "note": "the name led to a foreign image; the commit was sealed again (same ID) and took it back"})
            if not out_dir.is_dir():  # removed here, not by the experiment (it sees only /out's content)
                raise OSError(f"{out_dir}, the source of the run's /out, was removed on this machine during the "
                              "run; the experiment is not to blame")
            result = read_result(out_dir)
            launched = read_result(out_dir, LAUNCH_FILE) if spec.command is not None else None
            trusted = result is not None or settings.metric_source != "summary"
            if not trusted:
                result = summary_result(end.output, spec.metric)
                if result is not None and launched is not None:
                    result["cpu"] = launched.get("cpu")  # what the launcher saw: the CPU and torch of the run
                    result["gpu"] = launched.get("gpu")  # and its GPUs (None on a CPU)
            scored: Outcome | None = None
            if (orchestrated and result is not None and end.exit_code == 0 and not end.over_cap
                    and result.get("model_file") == evaluate.MODEL_FILE):
                scored = score_model(ws, eid, sealed, spec, base, engine, backend, out_dir, durations, ahead)
                ahead = None
            outcome = judge(end, result, scored, spec, orchestrated=orchestrated, trusted=trusted,
                            train_blob=facts.blob_of(TRAIN_PATH), data_digest=base.data_digest,
                            deadline=limit.reason() if limit else None)
        finally:
            if ahead is not None:  # started, never given a model: the train phase failed, or the run was cut short
                ahead.discard(backend)
                ahead = None
    except (KeyboardInterrupt, EngineUnavailable, OSError) as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        status = Status.INTERRUPTED if interrupted else Status.INFRA_ERROR
        reason = ("stopped by the user" if interrupted else str(exc) if isinstance(exc, EngineUnavailable)
                  else f"the workspace's state directory failed: {exc.strerror or exc}"
                       + (f" ({exc.filename})" if getattr(exc, "filename", None) else ""))
        current = ledger.experiment(eid)
        if current is not None and not current.finished:  # a stopping loop may have said so first
            ledger.finish(eid, Finish(status, reason, image_id=image_id, durations=durations, backend=backend.name,
                                      finished_at=now()))
        log.error("experiment.finished", status=status.value, reason=reason, durations=durations)
        if isinstance(exc, OSError):
            raise LedgerError(reason) from exc
        raise
    durations["total"] = time.monotonic() - started
    metrics = outcome.metrics or {}
    seen = {(d["path"], tuple(d["changes"])) for d in drift}
    during = [d for d in summarize(*git_source.working_diff(ws.git, facts.sha))
              if (d["path"], tuple(d["changes"])) not in seen]  # made while it ran: reported, never run
    for line in describe(during):
        log.warning("drift", change=line, note="made during the run; the run used the commit")
    drift = drift + during
    current = ledger.experiment(eid)
    if current is not None and current.finished:  # a stopping loop finished it first (`interrupted`)
        return current
    record = ledger.finish(eid, Finish(
        outcome.status, outcome.reason, image_id=image_id, durations={k: round(v, 4) for k, v in durations.items()},
        backend=backend.name, finished_at=now(),
        results=Results(metrics=metrics, drift=drift, placement=placement,
                        peak_memory_mb=(result or {}).get("peak_memory_mb"), exit_code=outcome.exit_code,
                        cpu=cpu_of(result)),
    ))
    log.info("experiment.finished", status=record.status.value, reason=record.reason,
             metric=metrics.get(spec.metric), durations=record.durations, drift=len(drift))
    try:  # the log ends with sealab's summary: the scored metric, which the train phase's own cannot hold
        scored_summary.append(log_path, scored_summary.render(record))
    except OSError as exc:  # the record stands; only the log lacks its last lines
        log.warning("log.summary_failed", log_path=str(log_path), error=str(exc))
    return record


def read_result(out_dir: Path, name: str = RESULT_FILE) -> dict | None:
    try:
        data = json.loads((out_dir / name).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def file_digest(path: Path) -> str:
    """sha256 of a file, read in chunks (a model can be large)."""
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


EVAL_AHEAD_ENV = "SEALAB_EVAL_AHEAD"  # "0": the eval phase starts after training, never ahead of it
EVAL_COMMAND = ("python3", "/workspace/prepare.py", "--logits", "/in/windows.bin", "/out/logits.bin")


@dataclass
class EvalPhase:
    """The eval phase's inputs (the windows at `in_dir`), its job, and, when it was started ahead of
    training (`started`), its waiting container."""

    evalset: evaluate.EvalSet
    in_dir: Path
    job: Job
    started: Started | None = None

    def discard(self, backend: Backend) -> None:
        """Remove a phase started ahead that will not score anything, and its directories."""
        if self.started is not None and hasattr(backend, "abandon"):
            backend.abandon(self.started)
        shutil.rmtree(self.in_dir, ignore_errors=True)
        shutil.rmtree(self.job.out_dir, ignore_errors=True)


def eval_phase(ws: Workspace, eid: str, sealed: Sealed, spec: RunSpec, base: BaseImage, engine: Engine,
               out_dir: Path, *, ahead: bool = False, part: str = "val") -> EvalPhase | Outcome:
    """The eval phase's windows, written for its /in, and its job; a `rejected` Outcome when the
    validation split cannot be trusted. `ahead`: to be started before training, so its directories lie
    beside the train phase's /out, never inside it (training must not see the windows). `part`: "val",
    the windows every decision is scored on, or "test", the held-out split's (executor/heldout.py)."""
    try:
        val = valdata.load_val(engine, base.image_id, base.data_digest)
    except (IdentityMismatch, BaseImageError) as exc:
        return Outcome(Status.REJECTED, f"the validation split cannot be trusted: {exc}")
    decisions, test = evaluate.split_test(val)
    if part == "test" and test is None:
        return Outcome(Status.REJECTED, "the validation split is too short to hold a held-out test split")
    evalset = evaluate.build(test if part == "test" else decisions, spec.seed)
    if ahead:
        in_dir, eval_out = out_dir.parent / f"{eid}.eval-in", out_dir.parent / f"{eid}.eval-out"
    else:
        name = "eval" if part == "val" else "test"
        in_dir, eval_out = out_dir / f"{name}-in", out_dir / f"{name}-out"
    in_dir.mkdir(parents=True, exist_ok=True)
    evaluate.write(evalset, in_dir)
    phase = "eval" if part == "val" else "test"
    job = Job(eid, phase, sealed, spec, eval_out, command=EVAL_COMMAND + (("--wait",) if ahead else ()),
              in_dir=in_dir, deadline_s=spec.grace_s, out_cap_mb=(evalset.logits_bytes >> 20) + 16,
              env={"SEALAB_EXPERIMENT": eid, "OMP_NUM_THREADS": str(max(1, int(spec.resources.cpus)))},
              log_path=ws.logs / f"{eid}.{phase}.log")
    return EvalPhase(evalset, in_dir, job)


def start_eval_ahead(ws: Workspace, eid: str, facts: git_source.CommitFacts, sealed: Sealed, spec: RunSpec,
                     base: BaseImage, engine: Engine, backend: Backend, out_dir: Path) -> EvalPhase | None:
    """Start the eval phase's container before training, when the harness can wait for the model
    (`eval_waits`) and the backend can start a phase ahead (this machine's engine): it loads torch and
    the windows while the train phase starts up, and runs train.py's code only once the model is there.
    None: not possible here (the eval phase then runs after training, as it always did, and reports
    what stood in the way)."""
    if os.environ.get(EVAL_AHEAD_ENV, "1") == "0":  # bench/eval_ahead.py measures with and without
        return None
    if not (eval_waits(facts) and hasattr(backend, "start") and getattr(backend, "name", "") == "local"):
        return None
    phase = eval_phase(ws, eid, sealed, spec, base, engine, out_dir, ahead=True)
    if isinstance(phase, Outcome):
        return None
    try:
        phase.started = backend.start(phase.job)  # type: ignore[attr-defined]
    except IdentityMismatch:
        phase.discard(backend)
        return None
    return phase


def score_model(ws: Workspace, eid: str, sealed: Sealed, spec: RunSpec, base: BaseImage, engine: Engine,
                backend: Backend, out_dir: Path, durations: dict[str, float], ahead: EvalPhase | None = None) -> Outcome:
    """The eval phase: the trained model turns the evaluation windows into logits in a fresh container
    of the same sealed image (untrusted, like training), and the metric is computed here from them.
    `ahead`: its container, started before training and waiting for the model (start_eval_ahead).

    The validation split comes from the base image in this machine's engine (the sealed image has none);
    the causality probes must agree, or the result is `rejected`. Returns the metrics (status OK) or
    the failing outcome. Raises EngineUnavailable as `execute` does.
    """
    t = time.monotonic()
    phase = ahead if ahead is not None else eval_phase(ws, eid, sealed, spec, base, engine, out_dir)
    if isinstance(phase, Outcome):
        return phase
    evalset, in_dir, eval_out = phase.evalset, phase.in_dir, phase.job.out_dir
    model, model_file = in_dir / evaluate.MODEL_FILE, out_dir / evaluate.MODEL_FILE
    trained = file_digest(model_file)  # what the train phase made: reproduce tells the phases apart by it
    part = in_dir / (evaluate.MODEL_FILE + ".part")  # complete before it has the name a waiting phase looks for
    try:
        os.link(model_file, part)
    except OSError:
        shutil.copyfile(model_file, part)
    part.chmod(0o644)
    os.replace(part, model)
    try:
        end = backend.finish(phase.started) if phase.started is not None else backend.run(phase.job)  # type: ignore[attr-defined]
    except IdentityMismatch as exc:
        return Outcome(Status.REJECTED, f"eval phase: {exc}; nothing was started")
    shutil.rmtree(in_dir, ignore_errors=True)
    ended = eval_outcome(end, spec)
    if ended is not None:
        return ended
    scoring = time.monotonic()
    score = evaluate.score_file(evalset, eval_out / evaluate.LOGITS_FILE)
    durations["score"] = time.monotonic() - scoring  # the orchestrator's part of the eval phase
    durations["eval"] = time.monotonic() - t
    shutil.rmtree(eval_out, ignore_errors=True)  # 70 MB of logits; eval_windows keeps their provenance
    metrics = {**score.to_metrics(), "eval_model": trained}
    if score.causal is False:
        return Outcome(Status.REJECTED, f"the evaluator does not believe the model: {score.failure}", metrics)
    if not score.ok:
        return Outcome(Status.CRASH, f"the evaluator could not score the model: {score.failure}", metrics)
    return Outcome(Status.OK, None, metrics)


def recover(ledger: Ledger, engine: Engine | None,
            backend_for: Callable[[str], Backend | None] | None = None) -> list[str]:
    """Mark records left `running` by a dead process as `interrupted` and stop what they left running:
    the local engine's containers, or (via `backend_for(name)`) a Slurm or Kubernetes job."""
    recovered = []
    for eid, holder in ledger.running():  # records read as stored: every command recovers, none may fail on one
        if owner.alive(holder):
            continue
        name = (ledger.get(eid) or {}).get("backend") or "local"
        if name == "local" and engine is not None:
            engine.remove_experiment_containers(eid)
        elif name != "local" and backend_for is not None:
            try:
                backend = backend_for(name)
                if backend is not None:
                    backend.cleanup(eid)
            except SealabError as exc:  # the record is still recovered; say what may be left running
                structlog.get_logger().warning("recover.cleanup_failed", experiment_id=eid, backend=name,
                                               error=str(exc))
        if ledger.interrupt(eid, f"the sealab process that ran it ({holder}) died before it finished"):
            recovered.append(eid)
    if engine is not None:  # containers of finished records (e.g. their removal failed while the engine was down)
        for container, eid in engine.experiment_containers():
            stored = ledger.get(eid)
            if stored is not None and stored.get("status") != Status.RUNNING.value:
                engine.remove(container)
    return recovered
