"""sealab.toml: parse and validate into frozen settings. Every problem is a one-line ConfigError."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from executor.errors import ConfigError, WorkspaceError
from executor.types import Resources, RunSpec

CONFIG_NAME = "sealab.toml"


@dataclass(frozen=True, slots=True)
class Config:
    run_spec: RunSpec
    policy: str = "default"
    wheels: str = "/opt/wheels"
    base_from: str | None = None
    metric_source: str = "result.json"  # "summary": printed by editable code (adopted autoresearch repos)
    backend: str = "local"  # where experiments run: see executor/backends/interface.py
    backend_options: tuple[tuple[str, Any], ...] = ()  # the rest of [backend], sorted


_NUMBER = (int, float)
_SCHEMA: dict[str, dict[str, tuple[type | tuple[type, ...], str]]] = {
    "metric": {"name": (str, "name"), "direction": (str, "direction")},
    "budget": {"train_seconds": (_NUMBER, "budget_s"), "grace_seconds": (_NUMBER, "grace_s"), "steps": (int, "steps")},
    "run": {"seed": (int, "seed")},
    "resources": {f.name: ((int,) if f.type.startswith("int") else _NUMBER, f.name) for f in fields(Resources)},
    "policy": {"name": (str, "policy")},
    "base": {"wheels": (str, "wheels"), "from": (str, "base_from")},
    "harness": {"metric_source": (str, "metric_source")},
}
# Lower bounds (inclusive, or exclusive where marked) of the numeric settings. Zero is refused where the
# engine reads it as "no limit" (Docker: cpus, tmpfs sizes, memory; Kubernetes alike): a limit of 0 would
# lift the limit, not tighten it.
_MINIMUM: dict[tuple[str, str], tuple[float, bool, str]] = {  # (section, key): (bound, exclusive, why)
    ("budget", "train_seconds"): (0, True, "a run needs time to train"),
    ("budget", "steps"): (1, False, "a run trains at least one step"),
    ("resources", "memory_mb"): (64, False, "0 is no limit to the engine; below 64 MB Python does not start"),
    ("resources", "cpus"): (0.01, False, "0 is no limit to the engine"),
    ("resources", "pids"): (16, False, "0 is no limit to the engine; a Python with torch needs threads"),
    ("resources", "tmp_mb"): (1, False, "a tmpfs of size 0 has no limit"),
    ("resources", "home_mb"): (1, False, "a tmpfs of size 0 has no limit"),
    ("resources", "out_mb"): (1, False, "the run writes its result there"),
}
METRIC_SOURCES = ("result.json", "summary")
BACKENDS = ("local", "docker-host", "slurm", "kubernetes")  # executor/backends/factory.py makes them


def of_commit(files: Any, sha: str) -> Config:
    """The settings committed in `sha` (whose blobs are `files`, each with .path and .data): what a run
    of that commit uses, never the work tree's.

    Raises:
        WorkspaceError: the commit has no sealab.toml.
        ConfigError: it has one, and it is not valid.
    """
    toml = next((f.data for f in files if f.path == CONFIG_NAME), None)
    if toml is None:
        raise WorkspaceError(f"commit {sha[:12]} has no {CONFIG_NAME}: a run uses the commit's own settings; "
                             f"commit one (git add {CONFIG_NAME} && git commit)")
    return parse(toml, f"{CONFIG_NAME} at {sha[:12]}")


def parse(text: bytes | str, source: str = CONFIG_NAME) -> Config:
    """Validate sealab.toml content.

    Raises:
        ConfigError: not TOML, an unknown section or key, a wrong type or an out-of-range value.
    """
    try:
        raw = tomllib.loads(text.decode() if isinstance(text, bytes) else text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(source, f"not valid TOML: {exc}") from None
    spec: dict[str, Any] = {}
    resources: dict[str, Any] = {}
    other: dict[str, Any] = {}
    backend = raw.pop("backend", {})
    if not isinstance(backend, dict):
        raise ConfigError(source, "[backend] must be a table")
    for key, value in backend.items():
        if not isinstance(value, (str, int, float, bool)):
            raise ConfigError(source, f"backend.{key} must be a string, number or boolean: {value!r}")
    backend_name = backend.pop("name", "local")
    if backend_name not in BACKENDS:
        raise ConfigError(source, f"backend.name must be one of {', '.join(BACKENDS)}, not {backend_name!r}")
    other["backend"], other["backend_options"] = backend_name, tuple(sorted(backend.items()))
    for section, values in raw.items():
        if section not in _SCHEMA:
            raise ConfigError(source, f"unknown section [{section}] (known: {', '.join(_SCHEMA)}, backend)")
        if not isinstance(values, dict):
            raise ConfigError(source, f"[{section}] must be a table")
        for key, value in values.items():
            if key not in _SCHEMA[section]:
                raise ConfigError(source, f"unknown key {section}.{key} (known: {', '.join(_SCHEMA[section])})")
            kind, name = _SCHEMA[section][key]
            if isinstance(value, bool) or not isinstance(value, kind):
                raise ConfigError(source, f"{section}.{key} has the wrong type: {value!r}")
            if isinstance(value, (int, float)) and value < 0:
                raise ConfigError(source, f"{section}.{key} must not be negative: {value!r}")
            _check_minimum(source, section, key, value)
            target = resources if section == "resources" else spec if section in ("metric", "budget", "run") else other
            target["metric" if (section, key) == ("metric", "name") else name] = value
    if spec.get("direction", "minimize") not in ("minimize", "maximize"):
        raise ConfigError(source, f"metric.direction must be 'minimize' or 'maximize', not {spec['direction']!r}")
    if other.get("metric_source", METRIC_SOURCES[0]) not in METRIC_SOURCES:
        raise ConfigError(source, f"harness.metric_source must be 'result.json' or 'summary', not {other['metric_source']!r}")
    run_spec = RunSpec(**spec, resources=Resources(**resources))
    return Config(run_spec=run_spec, **other)


def _check_minimum(source: str, section: str, key: str, value: Any) -> None:
    bound = _MINIMUM.get((section, key))
    if bound is None or not isinstance(value, (int, float)):
        return
    least, exclusive, why = bound
    if value < least or (exclusive and value == least):
        raise ConfigError(source, f"{section}.{key} must be {'more than' if exclusive else 'at least'} "
                                  f"{least:g} ({why}): {value!r}")


def load(path: Path) -> Config:
    """Read and validate a sealab.toml file."""
    try:
        return parse(path.read_bytes(), str(path))
    except FileNotFoundError:
        raise ConfigError(str(path), "not found (is this a sealab workspace? run `sealab init DIR`)") from None


DEFAULT_TOML = """\
# sealab workspace settings. Committed with the workspace: a run uses the file as it is in the commit.

[metric]
name = "val_bpb"          # the number prepare.py writes to result.json
direction = "minimize"    # lower is better

[budget]
train_seconds = 60        # training time budget of one experiment, read by the harness
grace_seconds = 60        # start-up + evaluation allowance: the container is killed at train + grace
# steps = 200             # train a fixed number of steps instead (deterministic on a CPU: `sealab reproduce` is exact)

[run]
seed = 42

[resources]
memory_mb = 4096          # hard memory limit of the container (no swap)
cpus = 2                  # CPU quota
pids = 256                # process/thread limit
gpus = 0                  # GPUs per experiment (needs the NVIDIA container toolkit)
tmp_mb = 512              # size of the /tmp tmpfs
home_mb = 64              # size of the HOME tmpfs
# out_mb = 256            # cap on what a run may write to /out (default 256; the run is killed past it)

[policy]
name = "default"          # a file in policies/

[base]
wheels = "/opt/wheels"    # local wheel directory that holds torch for the offline base
# from = "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"   # build the base on this image instead

[backend]
name = "local"            # where experiments run: local, docker-host, slurm or kubernetes (see README)
# url = "ssh://me@gpu-box"  # docker-host: the remote engine (ssh:// or tcp:// with TLS)
"""
