"""sealab.toml: parse and validate into frozen settings. Every problem is a one-line ConfigError.

The validator here (pydantic models built on `Table`, read through `validate`) is the one for every
TOML file sealab reads: policies/rules.py declares its rule tables with the same types and reads them
with the same `validate`, so both files report a problem alike: the file, the dotted field, what was
expected and what was found.
"""

from __future__ import annotations

import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, TypeVar, get_args, get_origin

from pydantic import AfterValidator, AllowInfNan, BaseModel, ConfigDict, Field, Strict, ValidationError

from executor.errors import ConfigError, SealabError, WorkspaceError
from executor.types import BACKENDS, Resources, RunSpec

from executor.types import CONFIG_NAME  # noqa: E402 (defined there, with no imports, for Workspace.open)


@dataclass(frozen=True, slots=True)
class Config:
    run_spec: RunSpec
    policy: str = "default"
    wheels: str = "/opt/wheels"
    base_from: str | None = None
    torch: str = "cpu"  # [base] torch: "cpu" (the wheel directory's) or "cuda" (PyPI's, pinned: executor/image/cuda.py)
    metric_source: str = "result.json"  # "summary": printed by editable code (adopted autoresearch repos)
    backend: str = "local"  # where experiments run: see executor/backends/interface.py
    backend_options: tuple[tuple[str, Any], ...] = ()  # the rest of [backend], sorted
    data_dirs: tuple[str, ...] = ()  # [data] dirs: host directories under ~ captured into the base
    grace_given: bool = False  # [budget] grace_seconds was set; else an adopted command's deadline is measured

    @property
    def measured_grace(self) -> bool:
        """Whether the kill deadline comes from the baseline runs' start-up and evaluation time
        (executor/deadline.py) rather than from [budget] grace_seconds: an adopted command that sets none."""
        return self.run_spec.command is not None and not self.grace_given


# ---------------------------------------------------------------- the validator

class Table(BaseModel):
    """A TOML table: its keys are the fields (or their aliases); any other key is refused. A field's
    `description` is why its bound (or its presence) is required, and is said in the message."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# TOML types, taken as they are: no "2" for 2, no true for 1, no 1.5 for an integer (an integer is a number).
Int = Annotated[int, Strict()]
Number = Annotated[float, Strict(), AllowInfNan(False)]
Text = Annotated[str, Strict()]
Flag = Annotated[bool, Strict()]


def _scalar(value: Any) -> Any:
    if not isinstance(value, (str, int, float, bool)):  # no table, array or date
        raise ValueError("must be a string, number or boolean")
    return value


Scalar = Annotated[Any, AfterValidator(_scalar)]
T = TypeVar("T", bound=BaseModel)
_EXPECTED = {"int_type": "an integer", "float_type": "a number", "string_type": "a string",
             "bool_type": "a boolean", "model_type": "a table", "dict_type": "a table",
             "tuple_type": "an array", "list_type": "an array"}


def validate(model: type[T], raw: dict[str, Any], source: str,
             error: Callable[[str, str], SealabError] = ConfigError) -> T:
    """`raw` (a parsed TOML document) as a `model`; the first problem raises `error(source, one line)`:
    an unknown key before anything else (a typo'd key is also a missing one)."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = min(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        raise error(source, _problem(model, first)) from None


def _problem(model: type[BaseModel], error: Any) -> str:
    """One pydantic error as a line: `budget.steps must be at least 1 (why): 0`, `unknown key diff.why
    (known: ...)`, `[diff] has no reason (why)`, `run.max_pids has the wrong type: expected ...`."""
    loc, kind, ctx = error["loc"], error["type"], error.get("ctx") or {}
    found = repr(error["input"]) if len(repr(error["input"])) <= 80 else repr(error["input"])[:77] + "..."
    label = _label(loc)
    fields = _fields(model, loc[:-1])
    info = fields.get(loc[-1]) if fields else None
    why = f" ({info.description})" if info is not None and info.description else ""
    if kind == "extra_forbidden":
        known = ", ".join(fields or ())
        return f"unknown section [{loc[0]}] (known: {known})" if len(loc) == 1 else \
            f"unknown key {label} (known: {known})"
    if kind == "missing":
        return f"missing section [{loc[0]}]{why}" if len(loc) == 1 else f"{_label(loc[:-1])} has no {loc[-1]}{why}"
    if kind in _EXPECTED:
        expected = _EXPECTED[kind]
        if kind == "tuple_type" and info is not None and _model_in(info.annotation):
            expected = f"an array of tables ([[{loc[-1]}]])"
        return f"{label} has the wrong type: expected {expected}, found {found}"
    if kind in ("greater_than_equal", "greater_than"):
        bound = ctx.get("ge", ctx.get("gt"))
        must = ("must not be negative" if bound == 0 else f"must be at least {bound:g}") \
            if kind == "greater_than_equal" else f"must be more than {bound:g}"
        return f"{label} {must}{why}: {found}"
    if kind == "literal_error":
        return f"{label} must be {ctx['expected']}, not {found}"
    if kind == "finite_number":
        return f"{label} must be a finite number, not {found}"
    if kind == "string_too_short":
        return f"{label} must not be empty"
    if kind == "value_error":
        return f"{label} {ctx['error']}: {found}"
    return f"{label}: {error['msg']}, found {found}"


def _label(loc: tuple[Any, ...]) -> str:
    """`budget.steps`, `forbidden[0].pattern`; a top-level table alone is `[diff]`."""
    if len(loc) == 1:
        return f"[{loc[0]}]"
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" if i else p for i, p in enumerate(loc))


def _fields(model: type[BaseModel] | None, path: tuple[Any, ...]) -> dict[str, Any] | None:
    """The fields (by TOML key) of the table at `path` under `model`; None where that is no table."""
    for part in path:
        if isinstance(part, str):  # an int is an entry of an array of tables: the same model
            info = _by_key(model).get(part) if model is not None else None
            model = _model_in(info.annotation) if info is not None else None
    return _by_key(model) if model is not None else None


def _by_key(model: type[BaseModel]) -> dict[str, Any]:
    return {info.alias or name: info for name, info in model.model_fields.items()}


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The table model an annotation holds (itself, or inside `X | None`, `tuple[X, ...]`)."""
    if get_origin(annotation) is None and isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for m in map(_model_in, get_args(annotation)) if m is not None), None)


# ---------------------------------------------------------------- sealab.toml
# Each field is named as in RunSpec, Resources or Config, its alias is the TOML key; what a file leaves
# out keeps the default of executor/types.py (None here only means "not given").


class _Metric(Table):
    metric: Text | None = Field(None, alias="name")
    direction: Literal["minimize", "maximize"] | None = None


class _Budget(Table):
    budget_s: Number | None = Field(None, alias="train_seconds", gt=0, description="a run needs time to train")
    grace_s: Number | None = Field(None, alias="grace_seconds", ge=0)
    steps: Int | None = Field(None, ge=1, description="a run trains at least one step")


class _Run(Table):
    seed: Int | None = Field(None, ge=0)


class _Resources(Table):
    """Zero is refused where the engine reads it as "no limit" (Docker: memory, cpus, pids, tmpfs sizes;
    Kubernetes alike): a limit of 0 would lift the limit, not tighten it. gpus = 0 is no GPU."""

    memory_mb: Int | None = Field(None, ge=64,
                                  description="0 is no limit to the engine; below 64 MB Python does not start")
    cpus: Number | None = Field(None, ge=0.01, description="0 is no limit to the engine")
    pids: Int | None = Field(None, ge=16, description="0 is no limit to the engine; a Python with torch needs threads")
    gpus: Int | None = Field(None, ge=0)
    tmp_mb: Int | None = Field(None, ge=1, description="a tmpfs of size 0 has no limit")
    home_mb: Int | None = Field(None, ge=1, description="a tmpfs of size 0 has no limit")
    out_mb: Int | None = Field(None, ge=1, description="the run writes its result there")
    log_mb: Int | None = Field(None, ge=1, le=1 << 20, description="the stored output keeps its head and tail")
    tree_mb: Int | None = Field(None, ge=1, le=1 << 20, description="the commit's files are sealed into the image")


class _Policy(Table):
    policy: Text | None = Field(None, alias="name")


class _Base(Table):
    wheels: Text | None = None
    base_from: Text | None = Field(None, alias="from")
    torch: Literal["cpu", "cuda"] | None = None


METRIC_SOURCES = ("result.json", "summary")


def _command(value: str) -> str:
    try:
        argv = shlex.split(value)
    except ValueError as exc:
        raise ValueError(f"is not a shell-quoted command ({exc})") from None
    if not argv:
        raise ValueError("must name a program, e.g. \"python3 train.py\"")
    return value


def _data_dir(value: str) -> str:
    parts = value.split("/")
    if parts[0] != "~" or len(parts) < 2 or not parts[1] or ".." in parts or "." in parts[1:]:
        raise ValueError("must be a directory under ~, written like ~/.cache/NAME (a sealed run sees it under its HOME)")
    return value.rstrip("/")


class _Harness(Table):
    metric_source: Literal[METRIC_SOURCES] | None = None  # type: ignore[valid-type]
    command: Annotated[Text, AfterValidator(_command)] | None = Field(
        None, description="the run's command line, in the image's /workspace")


class _Data(Table):
    dirs: tuple[Annotated[Text, AfterValidator(_data_dir)], ...] | None = None


class _Backend(Table):
    """`name`, and the chosen backend's own options (scalars; the backend checks them)."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, Scalar]
    backend: Literal[BACKENDS] | None = Field(None, alias="name")  # type: ignore[valid-type]


class _File(Table):
    metric: _Metric = _Metric()
    budget: _Budget = _Budget()
    run: _Run = _Run()
    resources: _Resources = _Resources()
    policy: _Policy = _Policy()
    base: _Base = _Base()
    harness: _Harness = _Harness()
    data: _Data = _Data()
    backend: _Backend = _Backend()


def of_commit(files: Any, sha: str) -> Config:
    """The settings committed in `sha` (whose blobs are `files`, each with .path and .read()): what a run
    of that commit uses, never the work tree's.

    Raises:
        WorkspaceError: the commit has no sealab.toml.
        ConfigError: it has one, and it is not valid.
    """
    toml = next((f.read() for f in files if f.path == CONFIG_NAME), None)
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
    file = validate(_File, raw, source)

    def given(*tables: Table) -> dict[str, Any]:
        return {k: v for t in tables for k, v in t.model_dump(exclude_unset=True).items() if k in type(t).model_fields}

    harness = given(file.harness)
    run_spec = RunSpec(**given(file.metric, file.budget, file.run), resources=Resources(**given(file.resources)),
                       command=shlex.split(harness.pop("command")) if "command" in harness else None)
    options = tuple(sorted((file.backend.model_extra or {}).items()))
    dirs = tuple(dict.fromkeys(file.data.dirs or ()))  # in order, each once
    return Config(run_spec=run_spec, **given(file.policy, file.base, file.backend), **harness,
                  backend_options=options, data_dirs=dirs, grace_given=file.budget.grace_s is not None)


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
# log_mb = 64             # cap on a run's stored output (default 64: its first and last 32 MB, the cut marked)
# tree_mb = 512           # cap on the commit's files sealed into an image (default 512; larger is refused)

[policy]
name = "default"          # a file in policies/

[base]
wheels = "/opt/wheels"    # local wheel directory that holds torch for the offline base
# torch = "cuda"          # PyPI's CUDA torch (pinned, ~3 GB once) instead: reproducible, runs on a CPU too
# from = "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"   # build the base on this image instead

[backend]
name = "local"            # where experiments run: local, docker-host, slurm or kubernetes (see README)
# url = "ssh://me@gpu-box"  # docker-host: the remote engine (ssh:// or tcp:// with TLS)
"""
