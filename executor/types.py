"""Frozen value types shared by the executor: run specs, base images, identities, results. No I/O here."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Mapping


def canonical_json(value: Any) -> bytes:
    """The one serialisation used wherever bytes are hashed: sorted keys, no whitespace, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


BACKENDS = ("local", "docker-host", "slurm", "kubernetes")  # [backend] name; executor/backends/factory.py makes them


class Status(StrEnum):
    RUNNING = "running"  # only while an executor process owns the record
    OK = "ok"
    CRASH = "crash"
    TIMEOUT = "timeout"
    OOM = "oom"
    REJECTED = "rejected"
    INTERRUPTED = "interrupted"
    INFRA_ERROR = "infra_error"


CONFIG_NAME = "sealab.toml"  # a workspace's settings file, at the top of its work tree (executor.config reads it)
DEFAULT_OUT_MB = 256  # the /out cap when sealab.toml sets no [resources] out_mb
DEFAULT_LOG_MB = 64  # the cap on a run's stored output when sealab.toml sets no [resources] log_mb
DEFAULT_TREE_MB = 512  # the cap on a commit's files when sealab.toml sets no [resources] tree_mb


@dataclass(frozen=True, slots=True)
class Resources:
    """Limits for one experiment container."""

    memory_mb: int = 4096
    cpus: float = 2.0
    pids: int = 256
    gpus: int = 0
    tmp_mb: int = 512
    home_mb: int = 64
    out_mb: int | None = None  # cap on /out (a bind mount, enforced by the orchestrator); None: DEFAULT_OUT_MB
    log_mb: int | None = None  # cap on the stored output (head and tail kept); None: DEFAULT_LOG_MB
    tree_mb: int | None = None  # cap on the bytes of the commit's files sealed; None: DEFAULT_TREE_MB

    def __post_init__(self) -> None:  # one canonical form, so equal specs hash equally
        for name, kind in (("memory_mb", int), ("cpus", float), ("pids", int), ("gpus", int),
                           ("tmp_mb", int), ("home_mb", int)):
            object.__setattr__(self, name, kind(getattr(self, name)))
        for name in ("out_mb", "log_mb", "tree_mb"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, int(getattr(self, name)))

    @property
    def out_cap_mb(self) -> int:
        return DEFAULT_OUT_MB if self.out_mb is None else self.out_mb

    @property
    def log_cap(self) -> int:
        """The stored output's cap in bytes."""
        return (DEFAULT_LOG_MB if self.log_mb is None else self.log_mb) << 20

    @property
    def tree_cap(self) -> int:
        """The cap on the commit's files, in bytes."""
        return (DEFAULT_TREE_MB if self.tree_mb is None else self.tree_mb) << 20


@dataclass(frozen=True, slots=True)
class RunSpec:
    """Everything besides the commit that decides how an experiment runs; sealed into the image."""

    budget_s: float = 60.0  # training time budget, read by the harness
    grace_s: float = 60.0  # start-up + evaluation allowance; killed at budget + grace
    seed: int = 42
    metric: str = "val_bpb"
    steps: int | None = None  # a fixed number of training steps instead of the clock (deterministic on a CPU)
    direction: str = "minimize"
    resources: Resources = field(default_factory=Resources)
    # the container's command for an adopted repository ([harness] command, e.g. python3 train.py), run
    # by the image's launcher (executor/image/launch.py); None: the scaffold's harness, prepare.py
    command: tuple[str, ...] | None = None

    def __post_init__(self) -> None:  # one canonical form, so equal specs hash equally
        object.__setattr__(self, "budget_s", float(self.budget_s))
        object.__setattr__(self, "grace_s", float(self.grace_s))
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "steps", None if self.steps is None else int(self.steps))
        object.__setattr__(self, "command", None if self.command is None else tuple(str(a) for a in self.command))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if data["steps"] is None:
            del data["steps"]  # so specs written before `steps` existed keep their digest
        if data["command"] is None:
            del data["command"]  # likewise for `command`
        else:
            data["command"] = list(data["command"])
        for name in ("out_mb", "log_mb", "tree_mb"):
            if data["resources"][name] is None:
                del data["resources"][name]  # likewise for `out_mb`, `log_mb` and `tree_mb`
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSpec:
        fields = dict(data)
        fields["resources"] = Resources(**fields.get("resources", {}))
        return cls(**fields)

    def canonical(self) -> bytes:
        return canonical_json(self.to_dict())

    def digest(self) -> str:
        return "sha256:" + sha256_hex(self.canonical())

    @property
    def deadline_s(self) -> float:
        return self.budget_s + self.grace_s


@dataclass(frozen=True, slots=True)
class BaseImage:
    """A built base environment, described by what an experiment image inherits from it."""

    image_id: str  # "sha256:<hex>", the engine's ID of the base
    diff_ids: tuple[str, ...]  # the base's layers, bottom first
    env: tuple[str, ...]
    cmd: tuple[str, ...]
    recipe: str  # hash of the inputs that built it; an unchanged recipe reuses the image
    data_digest: str  # "sha256:<hex>" of the data manifest baked into it
    source: str  # what it was built from ("offline:bookworm" or the --from image)
    architecture: str = "amd64"
    os: str = "linux"
    # what the repository's own files added (executor/image/extend.py); None for the plain base
    deps: str | None = None  # "sha256:<hex>" of the lock files the Python packages came from
    torch: str | None = None  # the torch the base has, e.g. "2.13.0+cpu"
    cuda: str | None = None  # the CUDA its torch was built for ("13.0"); None: a CPU torch or --from
    data_dirs: tuple[tuple[str, str], ...] = ()  # ([data] dir as written, "sha256:<hex>" of its tree)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("deps", "torch", "cuda"):  # so bases recorded before these existed keep their form
            if data[key] is None:
                del data[key]
        if not data["data_dirs"]:
            del data["data_dirs"]
        else:
            data["data_dirs"] = [list(pair) for pair in data["data_dirs"]]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BaseImage:
        fields = dict(data)
        for key in ("diff_ids", "env", "cmd"):
            fields[key] = tuple(fields[key])
        fields["data_dirs"] = tuple(tuple(pair) for pair in fields.get("data_dirs", ()))
        return cls(**fields)
