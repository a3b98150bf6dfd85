"""Where a sealed image runs: one small interface, and the Docker engine behind it.

    run(Job) -> Finished         verify the image where it will run, start it hardened, wait for it
                                 (killing it at the deadline), collect its output and /out, clean up

A backend raises IdentityMismatch when what it would start is not the sealed image (nothing was
started), and EngineUnavailable when the engine fails. Backends: `local` (this machine's engine),
`docker-host` (a remote engine, over ssh:// or TCP with TLS: the image is loaded and verified there,
/in and /out travel as archives), `slurm` (executor/slurm.py) and `kubernetes` (executor/k8s.py).
The orchestrator, not the backend, decides what the result means (executor/run.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Protocol, Sequence

from executor.docker_engine import LABEL_EXPERIMENT, Engine, prepare_out_dir
from executor.errors import EngineUnavailable, IdentityMismatch
from executor.hardening import Hardening
from executor.seal import Sealed
from executor.types import Resources, RunSpec


@dataclass(frozen=True, slots=True)
class Job:
    """One container run of a sealed image."""

    experiment_id: str
    phase: str  # "train" (the image's own command) or "eval" (the harness's --logits mode)
    sealed: Sealed
    spec: RunSpec
    out_dir: Path  # where the run's /out ends up on this machine
    env: Mapping[str, str] = field(default_factory=dict)
    command: tuple[str, ...] | None = None  # None: the image's CMD
    in_dir: Path | None = None  # read-only inputs, at /in
    deadline_s: float | None = None  # None: the spec's budget + grace
    out_cap_mb: int | None = None  # None: the spec's [resources] out_mb

    @property
    def out_cap(self) -> int:
        return self.spec.resources.out_cap_mb if self.out_cap_mb is None else self.out_cap_mb

    @property
    def name(self) -> str:
        return f"sealab-{self.experiment_id}-{self.phase}"

    @property
    def deadline(self) -> float:
        return self.spec.deadline_s if self.deadline_s is None else self.deadline_s


@dataclass(frozen=True, slots=True)
class Finished:
    """How a run ended, as the backend saw it."""

    exit_code: int | None  # None: killed at the deadline
    oom_killed: bool
    timed_out: bool
    output: bytes  # stdout + stderr (untrusted text)
    placement: str = ""  # where it ran: engine, node, GPU indices
    timings: Mapping[str, float] = field(default_factory=dict)  # seconds: load, verify, run
    over_cap: str | None = None  # why it was stopped for exceeding a cap of the backend's (e.g. /out)


class Backend(Protocol):
    name: str

    def run(self, job: Job) -> Finished: ...

    def cleanup(self, experiment_id: str) -> list[str]: ...


def ensure_image(engine: Engine, sealed: Sealed) -> None:
    """Make the engine hold the sealed image under its name, loading it if needed.

    Raises:
        IdentityMismatch: the name is held by another image, or the engine loaded something else.
    """
    holder = engine.image_id(sealed.tag)
    if holder not in (None, sealed.image_id):
        raise IdentityMismatch(f"image {sealed.tag}", sealed.image_id, holder)
    if engine.image_id(sealed.image_id) is None:
        engine.load(sealed.archive(), sealed.image_id)
    elif holder is None:
        engine.tag(sealed.image_id, sealed.tag)


def verify_image(engine: Engine, sealed: Sealed) -> None:
    """Check, just before use, that the name and the labels still lead to the sealed image.

    Raises:
        IdentityMismatch: naming expected and actual.
    """
    named = engine.image_id(sealed.tag)
    if named != sealed.image_id:
        raise IdentityMismatch(f"image {sealed.tag}", sealed.image_id, named or "no image")
    labels = engine.image_labels(sealed.image_id)
    for key, value in sealed.labels.items():
        if labels.get(key) != value:
            raise IdentityMismatch(f"label {key} of {sealed.image_id[:19]}", value, labels.get(key) or "missing")


def check_container(engine: Engine, container: str, sealed: Sealed, resources: Resources,
                    command: Sequence[str] | None = None) -> None:
    """The created container must run the sealed image and command, confined as asked: every field of
    the run's Hardening (the one the Slurm node checks too) as the engine reports it.

    Raises:
        IdentityMismatch: another image or command, or a weakened or different confinement.
    """
    inspect = engine.inspect(container)
    if inspect.get("Image") != sealed.image_id:
        raise IdentityMismatch("container image", sealed.image_id, str(inspect.get("Image")))
    actual = list((inspect.get("Config") or {}).get("Cmd") or [])
    if command is not None and actual != list(command):
        raise IdentityMismatch("container command", " ".join(command), " ".join(actual))
    for name, expected, found in Hardening.of(resources).problems(inspect):
        raise IdentityMismatch(f"container {name}", expected, found)


class DockerBackend:
    """A Docker engine: this machine's (`local`, /in and /out bind-mounted) or a remote one
    (`docker-host`: the image is loaded there and verified there; /in and /out travel as archives)."""

    def __init__(self, engine: Engine, *, remote: bool = False, where: str = "local",
                 source: Engine | None = None) -> None:
        self.engine, self.remote, self.where, self.source = engine, remote, where, source
        self.name = "docker-host" if remote else "local"

    def ensure_base(self, base_id: str) -> None:
        """A remote engine gets the base once, streamed from this machine's engine (same ID, checked)."""
        if self.engine.image_id(base_id) == base_id:
            return
        if self.source is None or self.source.image_id(base_id) != base_id:
            raise IdentityMismatch(f"base image on {self.where}", base_id, "absent there and here")
        transfer(self.source, self.engine, base_id)

    def run(self, job: Job) -> Finished:
        engine, sealed = self.engine, job.sealed
        timings: dict[str, float] = {}
        t = time.monotonic()
        if self.remote:
            self.ensure_base(sealed.labels["sealab.base"])
        ensure_image(engine, sealed)
        timings["load"] = time.monotonic() - t
        t = time.monotonic()
        verify_image(engine, sealed)
        prepare_out_dir(job.out_dir)
        container: str | None = None
        try:
            container = engine.create(
                sealed.image_id, name=job.name, resources=job.spec.resources,
                out_dir=None if self.remote else job.out_dir.resolve(),
                in_dir=job.in_dir.resolve() if job.in_dir is not None else None, command=job.command,
                env=dict(job.env), labels={LABEL_EXPERIMENT: job.experiment_id, "sealab.phase": job.phase,
                                           "sealab.commit": sealed.labels.get("org.opencontainers.image.revision", "")},
            )
            check_container(engine, container, sealed, job.spec.resources, job.command)
            if self.remote and job.in_dir is not None:
                engine.copy_in(container, job.in_dir)
            timings["verify"] = time.monotonic() - t
            t = time.monotonic()
            engine.start(container)
            end = engine.wait(container, job.deadline, out_dir=None if self.remote else job.out_dir,
                              out_cap_mb=job.out_cap)
            output = engine.logs(container)
            if self.remote:
                engine.copy_out(container, job.out_dir)
        except BaseException:
            if container is not None:
                try:
                    engine.remove(container)
                except EngineUnavailable:
                    pass
            raise
        engine.remove(container)
        timings["run"] = time.monotonic() - t
        return Finished(end.exit_code, end.oom_killed, end.timed_out, output, self.where, timings,
                        end.over_cap)

    def cleanup(self, experiment_id: str) -> list[str]:
        return self.engine.remove_experiment_containers(experiment_id)


def transfer(source: Engine, target: Engine, image_id: str) -> None:
    """Stream `docker save` of `image_id` from one engine into `docker load` of another; check the ID.

    Raises:
        IdentityMismatch: the target reports another ID afterwards.
    """
    import os
    import threading

    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def produce() -> None:
        with open(write_fd, "wb") as sink:
            try:
                source.save([image_id], sink)
            except BaseException as exc:  # reported below, after the reader has finished
                failure.append(exc)

    writer = threading.Thread(target=produce, daemon=True)
    writer.start()
    with open(read_fd, "rb") as stream:
        target.load_stream(iter(lambda: stream.read(1 << 20), b""))
    writer.join()
    if failure:
        raise failure[0]
    if target.image_id(image_id) != image_id:
        raise IdentityMismatch("transferred image", image_id, target.image_id(image_id) or "nothing")
