"""The `slurm` backend: one Slurm batch job per container run, verified and hardened on the node.

    orchestrator (here)                               node (the job script, bash)
    ensure_image, verify_image  (local engine)
    tag REGISTRY:<commit12>-<id12>, push  -> digest
    write <jobs_dir>/<eid>-<phase>/job.sh, sbatch  ->  docker pull REGISTRY@sha256:…     (by digest, never a tag)
                                                      image ID == the sealed ID?  else `rejected`, nothing created
                                                      docker create (Engine.create's hardening), by image ID
                                                      docker inspect == container.expected?  else `rejected`, removed
                                                      docker start; wait; kill at the deadline (or /out over its cap)
                                                      status.json (exit code, OOMKilled, node, GPUs), output.log; rm
    poll squeue until the job left the queue; read status.json and output.log -> Finished

Assumptions: the job directory and the run's out dir are on a file system shared with the nodes
(as home and project directories are on Slurm clusters); /out is bind-mounted from there, so the
harness's result.json is read back here. Each node runs a Docker engine the job's user may use, and
reaches the registry. `scancel` alone would leave the container running (it is a child of
containerd, not of the job): the script traps TERM/INT and kills and removes it; `--signal=B:TERM@60`
does the same before the time limit, which is the deadline plus `time_margin_s`.

GPUs: `gres` (default `gpu:<resources.gpus>`, one GPU per experiment by default) asks Slurm for the
devices; `gpu_mode = "nvidia"` passes `--gpus "device=$SLURM_JOB_GPUS"` to docker (and the node checks
the container's device IDs), `"env"` (fake GPUs in CI) only exports the allocation's indices as
SEALAB_GPUS and CUDA_VISIBLE_DEVICES. The container sees /out (and /in), never the job directory, so
it cannot write the status.json that this side trusts.

Errors: the node refusing the image or the container is IdentityMismatch (the record says
`rejected`); a failed push, sbatch or squeue, a cancelled job or one that ended without a status is
SlurmUnavailable, an EngineUnavailable (`infra_error`).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Mapping

from executor.backends.interface import Finished, Job, ensure_image, verify_image
from executor.docker_engine import IN_DIR, LABEL_EXPERIMENT, OUT_DIR, Engine, prepare_out_dir
from executor.errors import ConfigError, EngineUnavailable, IdentityMismatch
from executor.hardening import Hardening, go_value, template
from executor.registry import BadReference, parse_registry
from executor.image.seal import REVISION
from executor.types import Resources

GPU_MODES = ("nvidia", "env")
QUEUED = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
          "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"}
SLURM_TIMEOUT_S = 60  # one sbatch / squeue / scancel call
STATUS_FILE, OUTPUT_FILE, SCRIPT_FILE, EXPECTED_FILE = "status.json", "output.log", "job.sh", "container.expected"

# What the node reads back from the created container; every line must equal container.expected:
# the image, command and label, then every field of the run's Hardening (executor/hardening.py).
INSPECT_FIELDS = (
    ("Image", "{{.Image}}"),
    ("Cmd", "{{json .Config.Cmd}}"),
    ("Label", '{{index .Config.Labels "%s"}}' % LABEL_EXPERIMENT),
    *((name, template(name)) for name in Hardening.of(Resources()).fields()),
)
# One `Bind=` line per bind mount; the engine may list them in any order, so both sides are sorted.
INSPECT_FORMAT = "".join(f"{key}={template}\n" for key, template in INSPECT_FIELDS) + \
    "{{range .HostConfig.Binds}}Bind={{.}}\n{{end}}"


class SlurmUnavailable(EngineUnavailable):
    """Slurm, the registry or a node's engine failed, or the job ended without saying how."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        Exception.__init__(self, f"slurm: {problem}")


@dataclass(frozen=True, slots=True)
class SlurmOptions:
    """The `[backend]` table of sealab.toml for `name = "slurm"`."""

    registry: str  # HOST[:PORT]/REPO the nodes pull from
    partition: str | None = None
    gres: str | None = None  # default: gpu:<resources.gpus> when the run asks for GPUs
    gpu_mode: str = "nvidia"  # "nvidia": docker --gpus device=…; "env": only SEALAB_GPUS / CUDA_VISIBLE_DEVICES
    slurm_conf: str | None = None  # SLURM_CONF for sbatch, squeue, scancel, scontrol
    docker: str = "docker"  # the docker client on the nodes
    poll_s: float = 2.0  # how often squeue is asked (and the node checks the container)
    jobs_dir: str | None = None  # default: <workspace>/.sealab/slurm (see jobs_root)
    time_margin_s: int = 300  # --time = deadline + this (the pull, the checks, the logs)

    @classmethod
    def parse(cls, options: Mapping[str, Any], source: str = "sealab.toml") -> SlurmOptions:
        """Validate `[backend]` options (a `name` key is ignored).

        Raises:
            ConfigError: a missing registry, an unknown key, a wrong type or value.
        """
        known = {f: cls.__dataclass_fields__[f].type for f in cls.__dataclass_fields__}
        given = {k: v for k, v in options.items() if k != "name"}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ConfigError(source, f"unknown [backend] option(s) for slurm: {', '.join(unknown)} "
                                      f"(known: {', '.join(known)})")
        if not isinstance(given.get("registry"), str):
            raise ConfigError(source, 'backend "slurm" needs [backend] registry = "HOST[:PORT]/REPO"')
        try:
            parse_registry(given["registry"])
        except BadReference as exc:
            raise ConfigError(source, f"backend.registry: {exc}") from None
        for key in ("poll_s", "time_margin_s"):
            value = given.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise ConfigError(source, f"backend.{key} must be a positive number: {value!r}")
        for key in ("partition", "gres", "gpu_mode", "slurm_conf", "docker", "jobs_dir"):
            if key in given and not isinstance(given[key], str):
                raise ConfigError(source, f"backend.{key} must be a string: {given[key]!r}")
        if given.get("gpu_mode", "nvidia") not in GPU_MODES:
            raise ConfigError(source, f"backend.gpu_mode must be one of {', '.join(GPU_MODES)}: {given['gpu_mode']!r}")
        if "time_margin_s" in given:
            given["time_margin_s"] = int(math.ceil(given["time_margin_s"]))
        return cls(**given)


# -- the job (pure) ---------------------------------------------------------------------------------
def binds(job: Job) -> list[str]:
    """/out (read-write) and /in (read-only) bind mounts from the shared file system.

    Raises:
        ConfigError: a path docker's `-v` cannot express (it holds a colon or a comma).
    """
    pairs = [(job.out_dir.resolve(), OUT_DIR, "rw")]
    if job.in_dir is not None:
        pairs.append((job.in_dir.resolve(), IN_DIR, "ro"))
    for path, _, _ in pairs:
        if ":" in str(path) or "," in str(path):
            raise ConfigError("slurm backend", f"{path}: a bind-mounted path cannot hold ':' or ','")
    return [f"{path}:{target}:{mode}" for path, target, mode in pairs]


def container_command(job: Job) -> list[str]:
    """What the container runs: the job's command, or the sealed image's own CMD."""
    if job.command is not None:
        return list(job.command)
    return list(json.loads(job.sealed.config)["config"]["Cmd"])


def create_args(job: Job) -> list[str]:
    """`docker create` options: the name, labels, the run's Hardening, mounts and environment (GPU
    options are added on the node)."""
    args = ["--name", job.name, "--label", f"{LABEL_EXPERIMENT}={job.experiment_id}", "--label",
            f"sealab.phase={job.phase}", "--label", f"sealab.commit={job.sealed.labels.get(REVISION, '')}",
            *Hardening.of(job.spec.resources).docker_cli()]
    for bind in binds(job):
        args += ["--volume", bind]
    for key, value in sorted(job.env.items()):
        args += ["--env", f"{key}={value}"]
    return args


def expected_container(job: Job) -> str:
    """What `docker inspect --format INSPECT_FORMAT` must print for the created container, lines sorted."""
    lines = [f"Image={job.sealed.image_id}", f"Cmd={go_value(container_command(job))}", f"Label={job.experiment_id}",
             *Hardening.of(job.spec.resources).expected_lines(), *(f"Bind={bind}" for bind in binds(job))]
    return "".join(f"{line}\n" for line in sorted(lines))  # code point order = the node's `LC_ALL=C sort`


def gres_for(job: Job, options: SlurmOptions) -> str | None:
    if job.spec.resources.gpus <= 0:
        return None
    return options.gres or f"gpu:{job.spec.resources.gpus}"


def sbatch_lines(job: Job, options: SlurmOptions, job_dir: Path) -> list[str]:
    """The #SBATCH options: name, log, no requeue, TERM before the limit, time = deadline + margin, resources."""
    res = job.spec.resources
    limit = int(math.ceil(job.deadline)) + options.time_margin_s
    lines = [f"--job-name={job.name}", f"--output={job_dir}/slurm-%j.out", f"--chdir={job_dir}",
             "--export=NIL", "--no-requeue", "--signal=B:TERM@60", f"--time={limit // 60}:{limit % 60:02d}",
             "--nodes=1", "--ntasks=1", f"--cpus-per-task={max(1, math.ceil(res.cpus))}", f"--mem={res.memory_mb}M"]
    if gres_for(job, options):
        lines.append(f"--gres={gres_for(job, options)}")
    if options.partition:
        lines.append(f"--partition={options.partition}")
    return [f"#SBATCH {line}" for line in lines]


def quoted(word: str) -> str:
    """`word` single-quoted for bash, always (an option list such as a tmpfs's `rw,size=…` is one word)."""
    return "'" + word.replace("'", "'\\''") + "'"


def job_script(job: Job, ref: str, options: SlurmOptions, job_dir: Path) -> str:
    """The bash script of one job: its settings, then the fixed body (NODE_BODY)."""
    settings = {
        "DOCKER": options.docker, "JOB_DIR": str(job_dir), "REF": ref, "EXPECTED": job.sealed.image_id,
        "NAME": job.name, "OUT_DIR": str(job.out_dir.resolve()), "DEADLINE_NS": str(int(job.deadline * 1e9)),
        "OUT_CAP_KB": str(job.out_cap << 10), "OUT_CAP_MB": str(job.out_cap),
        "POLL_S": f"{min(options.poll_s, 1.0):g}", "GPU_MODE": options.gpu_mode,
        "NEED_GPUS": str(job.spec.resources.gpus), "INSPECT_FORMAT": INSPECT_FORMAT,
    }
    head = ["#!/bin/bash", *sbatch_lines(job, options, job_dir),
            f"# sealab: experiment {job.experiment_id} ({job.phase}), image {job.sealed.image_id}",
            "# Written by the orchestrator; it runs on the node. See executor/backends/slurm.py."]
    head += [f"{key}={shlex.quote(value)}" for key, value in settings.items()]
    head.append("CREATE_ARGS=(" + " ".join(quoted(a) for a in create_args(job)) + ")")
    head.append("COMMAND=(" + " ".join(quoted(a) for a in container_command(job)) + ")")
    return "\n".join(head) + "\n" + NODE_BODY


# The job's body, run on the node (a file of its own so that shellcheck reads it).
NODE_BODY = resources.files("executor.backends").joinpath("slurm_node.sh").read_text(encoding="utf-8")


def read_chunks(path: Path) -> Iterator[bytes]:
    """A file's bytes in chunks (nothing if it is absent): the node's output.log, never whole in memory."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return
    with f:
        yield from iter(lambda: f.read(1 << 20), b"")


def finished_from(status: Mapping[str, Any], output: bytes, job_id: str, timings: Mapping[str, float]) -> Finished:
    """Turn the node's status.json into a Finished, or raise what it means (pure).

    Raises:
        IdentityMismatch: the node refused the image or the container; nothing ran.
        SlurmUnavailable: the job failed before starting the container, or it was cancelled.
    """
    state, node = status.get("state"), status.get("node") or "?"
    if state == "rejected":
        raise IdentityMismatch(str(status.get("what")), str(status.get("expected")), str(status.get("actual")))
    if state == "cancelled":
        raise SlurmUnavailable(f"job {job_id} was cancelled on {node} (scancel, preemption or the time limit); "
                               "its container was killed and removed")
    if state != "done":
        raise SlurmUnavailable(f"job {job_id} on {node}: {status.get('reason') or state}")
    placement = f"slurm:{job_id}@{node}" + (f" gpus={status['gpus']}" if status.get("gpus") else "")
    timed_out = bool(status.get("timed_out"))
    exit_code = status.get("exit_code")
    return Finished(None if timed_out else exit_code, bool(status.get("oom_killed")), timed_out, output, placement,
                    dict(timings), status.get("over_cap") or None)


def node_timings(status: Mapping[str, Any], submitted: float, push_s: float) -> dict[str, float]:
    """Seconds: queue (submit to job start), load (push + pull), verify (on the node), run (pure)."""
    def gap(a: str, b: str) -> float:
        x, y = status.get(a), status.get(b)
        return max(0.0, float(y) - float(x)) if isinstance(x, (int, float)) and isinstance(y, (int, float)) else 0.0

    begin = status.get("t_begin")
    queue = max(0.0, float(begin) - submitted) if isinstance(begin, (int, float)) else 0.0
    return {"queue": queue, "load": push_s + gap("t_begin", "t_pulled"), "verify": gap("t_pulled", "t_verified"),
            "run": gap("t_started", "t_ended")}


def jobs_root(out_dir: Path, configured: str | None) -> Path:
    """Where job directories go: `configured`, else `slurm/` in the .sealab folder holding `out_dir`
    (a train run's .sealab/outputs/<id>, an eval run's .sealab/outputs/<id>/eval-out), else beside `out_dir`."""
    if configured:
        return Path(configured)
    out_dir = out_dir.resolve()
    state = next((p for p in out_dir.parents if p.name == ".sealab"), None)
    return state / "slurm" if state is not None else out_dir.parent / "slurm-jobs"


# -- the backend (I/O) ------------------------------------------------------------------------------
class SlurmBackend:
    """Runs each Job as one Slurm batch job; see the module docstring."""

    name = "slurm"

    def __init__(self, engine: Engine, options: SlurmOptions) -> None:
        self.engine, self.options = engine, options
        self._push_lock = threading.Lock()  # one push at a time: concurrent pushes would upload the base twice
        self._pushed: dict[str, str] = {}  # image ID -> REPO@sha256:… (an eval phase reuses its train phase's)

    @classmethod
    def from_options(cls, engine: Engine, options: Mapping[str, Any]) -> SlurmBackend:
        """From the `[backend]` table of sealab.toml.

        Raises:
            ConfigError: see SlurmOptions.parse.
        """
        return cls(engine, SlurmOptions.parse(options))

    # -- Slurm commands ----------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = {k: os.environ[k] for k in ("PATH", "HOME", "USER", "LANG", "SLURM_CONF") if k in os.environ}
        if self.options.slurm_conf:
            env["SLURM_CONF"] = self.options.slurm_conf
        return env

    def slurm(self, *args: str) -> str:
        """Run a Slurm client command; its stdout.

        Raises:
            SlurmUnavailable: it is missing, failed or hung.
        """
        try:
            proc = subprocess.run(list(args), env=self._env(), capture_output=True, text=True,
                                  timeout=SLURM_TIMEOUT_S, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SlurmUnavailable(f"{args[0]}: {exc}") from exc
        if proc.returncode != 0:
            said = " ".join(proc.stderr.split())[:300] or f"exit code {proc.returncode}"
            raise SlurmUnavailable(f"{' '.join(args[:2])}: {said}")
        return proc.stdout

    def job_state(self, job_id: str) -> str | None:
        """The job's state while it is in the queue (PENDING, RUNNING, …), or None once it left."""
        try:
            out = self.slurm("squeue", "--noheader", "--states=all", f"--jobs={job_id}", "--format=%T")
        except SlurmUnavailable as exc:
            if "Invalid job id" in str(exc):
                return None
            raise
        state = out.strip().split("\n")[0].strip() if out.strip() else ""
        return state if state in QUEUED else None

    def scancel(self, *job_ids: str) -> None:
        if job_ids:
            self.slurm("scancel", *job_ids)

    # -- the run -----------------------------------------------------------------------------------
    def publish(self, job: Job) -> str:
        """Load the sealed image here, push it to the registry and return `REPO@sha256:…`.

        Raises:
            IdentityMismatch: the local name or labels lead elsewhere.
            SlurmUnavailable: the push failed.
        """
        sealed, repo = job.sealed, self.options.registry
        ensure_image(self.engine, sealed)
        verify_image(self.engine, sealed)
        tag = sealed.tag.rpartition(":")[2]
        with self._push_lock:
            if sealed.image_id in self._pushed:
                return self._pushed[sealed.image_id]
            self.engine.tag(sealed.image_id, f"{repo}:{tag}")
            digest, problem = self.engine.push_image(repo, tag)
            if problem or not digest:
                raise SlurmUnavailable(f"push of {sealed.image_id[:19]} to {repo} failed: {problem}")
            self._pushed[sealed.image_id] = f"{repo}@{digest}"
            return self._pushed[sealed.image_id]

    def job_dir(self, job: Job) -> Path:
        """`jobs_dir`/<id>-<phase>; by default under the workspace's .sealab/slurm (out dirs lie below .sealab)."""
        return jobs_root(job.out_dir, self.options.jobs_dir) / f"{job.experiment_id}-{job.phase}"

    def submit(self, job: Job, ref: str) -> tuple[str, Path]:
        """Write the job's directory and sbatch it; returns the job ID and the directory."""
        job_dir = self.job_dir(job).resolve()
        job_dir.mkdir(parents=True, exist_ok=True)
        for stale in (STATUS_FILE, OUTPUT_FILE):
            (job_dir / stale).unlink(missing_ok=True)
        (job_dir / EXPECTED_FILE).write_text(expected_container(job))
        script = job_dir / SCRIPT_FILE
        script.write_text(job_script(job, ref, self.options, job_dir))
        script.chmod(0o755)
        out = self.slurm("sbatch", "--parsable", str(script)).strip()
        job_id = out.split(";")[0]
        if not job_id.isdigit():
            raise SlurmUnavailable(f"sbatch printed no job ID: {out[:200]!r}")
        return job_id, job_dir

    def wait(self, job_id: str, poll_s: float | None = None) -> None:
        """Until the job has left the queue; squeue may fail for up to a minute (a busy slurmctld)."""
        failing_since: float | None = None
        while True:
            try:
                if self.job_state(job_id) is None:
                    return
                failing_since = None
            except SlurmUnavailable:
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > 60:
                    raise
            time.sleep(poll_s or self.options.poll_s)

    def read_status(self, job_id: str, job_dir: Path) -> dict[str, Any]:
        """The node's status.json (waiting a little for a shared file system to show it).

        Raises:
            SlurmUnavailable: the job ended without one.
        """
        path = job_dir / STATUS_FILE
        for _ in range(10):
            try:
                data = json.loads(path.read_text())
                if isinstance(data, dict):
                    return data
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        try:
            info = " ".join(self.slurm("scontrol", "show", "job", job_id).split())
            said = " ".join(w for w in info.split() if w.split("=")[0] in ("JobState", "Reason", "ExitCode"))
        except SlurmUnavailable as exc:
            said = str(exc)
        raise SlurmUnavailable(f"job {job_id} ended without {path} ({said}); see {job_dir}/slurm-{job_id}.out")

    def run(self, job: Job) -> Finished:
        t = time.monotonic()
        ref = self.publish(job)
        push_s = time.monotonic() - t
        prepare_out_dir(job.out_dir)
        submitted = time.time()
        job_id, job_dir = self.submit(job, ref)
        try:
            self.wait(job_id)
        except BaseException:  # KeyboardInterrupt included: the node's trap kills the container
            try:
                self.scancel(job_id)
            except SlurmUnavailable:
                pass
            raise
        status = self.read_status(job_id, job_dir)
        try:
            output = job.store_output(read_chunks(job_dir / OUTPUT_FILE))
        except OSError:
            output = b""
        return finished_from(status, output, job_id, node_timings(status, submitted, push_s))

    def cleanup(self, experiment_id: str) -> list[str]:
        """Cancel the queued or running jobs of an experiment (their nodes kill the containers)."""
        prefix = f"sealab-{experiment_id}-"
        listing = self.slurm("squeue", "--noheader", "--format=%i|%j")
        ids = [i for i, _, name in (line.partition("|") for line in listing.splitlines()) if name.startswith(prefix)]
        self.scancel(*ids)
        return [f"slurm:{i}" for i in ids]
