"""Where a sealed image runs: one small interface, and the Docker engine behind it.

    run(Job) -> Finished         verify the image where it will run, start it hardened, wait for it
                                 (killing it at the deadline), collect its output and /out, clean up

A backend raises IdentityMismatch when what it would start is not the sealed image (nothing was
started), and EngineUnavailable when the engine fails. Backends: `local` (this machine's engine),
`docker-host` (a remote engine, over ssh:// or TCP with TLS: the image is loaded and verified there,
/in and /out travel as archives), `slurm` (executor/backends/slurm.py) and `kubernetes` (executor/backends/k8s.py).
The orchestrator, not the backend, decides what the result means (executor/run.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Protocol, Sequence

import structlog

from executor.capped_log import CappedLog
from executor.docker_engine import Engine
from executor.errors import IdentityMismatch
from executor.hardening import Hardening, gpu_requests
from executor.image.seal import Sealed
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
    log_path: Path | None = None  # where the run's output is stored, capped ([resources] log_mb); None: not stored

    @property
    def out_cap(self) -> int:
        return self.spec.resources.out_cap_mb if self.out_cap_mb is None else self.out_cap_mb

    @property
    def name(self) -> str:
        return f"sealab-{self.experiment_id}-{self.phase}"

    def store_output(self, chunks: Iterable[bytes]) -> bytes:
        """Stream the run's output into `log_path` under its cap; returns its end (capped_log.TAIL_BYTES)."""
        log = CappedLog(self.log_path, self.spec.resources.log_cap)
        try:
            log.extend(chunks)
        except BaseException:
            log.abandon()
            raise
        return log.close()

    @property
    def deadline(self) -> float:
        return self.spec.deadline_s if self.deadline_s is None else self.deadline_s


@dataclass(frozen=True, slots=True)
class Finished:
    """How a run ended, as the backend saw it."""

    exit_code: int | None  # None: killed at the deadline
    oom_killed: bool
    timed_out: bool
    output: bytes  # the end of stdout + stderr (untrusted text; at most capped_log.TAIL_BYTES), all of it capped in job.log_path
    placement: str = ""  # where it ran: engine, node, GPU indices
    timings: Mapping[str, float] = field(default_factory=dict)  # seconds: load, verify, run
    over_cap: str | None = None  # why it was stopped for exceeding a cap of the backend's (e.g. /out)
    displaced: str | None = None  # a foreign image that held the sealed image's name until this run took it back


@dataclass(frozen=True, slots=True)
class Started:
    """A phase whose container was checked and started, not yet waited for (a backend that can start a
    phase ahead of time: the local engine's; executor/run.py starts the eval phase before training)."""

    job: Job
    container: str
    timings: Mapping[str, float]
    displaced: str | None = None


class Backend(Protocol):
    name: str

    def run(self, job: Job) -> Finished: ...

    def cleanup(self, experiment_id: str) -> list[str]: ...


def ensure_image(engine: Engine, sealed: Sealed) -> str | None:
    """Make the engine hold the sealed image under its name, loading it if needed. Returns the ID of a
    foreign image whose hold on the name it ended (None: nothing displaced).

    The name is only a convenience (containers are created by ID and checked), so when the sealed image is
    gone and its name leads elsewhere (an image removed, a stale or planted tag), the commit's image is
    loaded again from what was re-derived from git (same ID, checked) and takes its name back; the caller
    records the foreign image as a warning. While the sealed image is still there, a name leading elsewhere
    is someone retagging it under a run: refused.

    Raises:
        IdentityMismatch: the name is held by another image while the sealed one is present, or the engine
            loaded something else.
    """
    holder = engine.image_id(sealed.tag)
    present = engine.image_id(sealed.image_id) is not None
    if holder not in (None, sealed.image_id) and present:
        raise IdentityMismatch(f"image {sealed.tag}", sealed.image_id,
                               f"{holder} (the name was moved to another image; `sealab verify --all` lists such "
                               f"names: remove the other image, or `docker tag {sealed.image_id} {sealed.tag}` "
                               "if you moved it yourself)")
    if not present:
        engine.load_written(sealed.write_archive, sealed.image_id)
    if engine.image_id(sealed.tag) != sealed.image_id:
        engine.tag(sealed.image_id, sealed.tag)
    displaced = holder if holder not in (None, sealed.image_id) else None
    if displaced:
        structlog.get_logger().warning("displaced", name=sealed.tag, foreign=displaced, image=sealed.image_id,
                                       note="the name led to a foreign image; the commit was sealed again and took it back")
    return displaced


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
    wanted, granted = gpu_requests(resources.gpus), (inspect.get("HostConfig") or {}).get("DeviceRequests") or []
    if [(r.get("Count"), r.get("Capabilities")) for r in granted] != wanted:
        raise IdentityMismatch("container GPU requests", repr(wanted), repr([(r.get("Count"), r.get("Capabilities"))
                                                                           for r in granted]))
