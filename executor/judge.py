"""What an experiment's ending means: pure functions from what the backend and the harness said to a
status, a reason and the metrics. No I/O here (executor/run.py orchestrates and writes the record), so
every path of the judgement has a fast test (tests/unit/test_classify.py, test_summary.py, test_judge.py).

    out_of_scope(changed, editable)     the paths a commit may not change, as git says it changed them
    classify(exit, oom, timeout, ...)   the train phase's status from its end and its result.json
    judge(end, result, scored, ...)     that status combined with the trusted scorer's and the caps
    eval_outcome(end, spec)             how an eval phase ended, before its logits are scored
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Sequence

from executor.backends.interface import Finished
from executor.summary import last_values, parse_summary
from executor.types import RunSpec, Status

RESULT_FILE = "result.json"


@dataclass(frozen=True, slots=True)
class Outcome:
    status: Status
    reason: str | None = None
    metrics: dict[str, Any] | None = None
    exit_code: int | None = None


def out_of_scope(changed: Sequence[str], editable: Sequence[str] | None) -> list[str]:
    """The changed paths no `editable` glob allows (none when `editable` is None: no scope)."""
    if editable is None:
        return []
    return [path for path in changed if not any(fnmatchcase(path, g) for g in editable)]


def judge(end: Finished, result: dict | None, scored: Outcome | None, spec: RunSpec, *, orchestrated: bool,
          trusted: bool, train_blob: str | None, data_digest: str, deadline: str | None = None) -> Outcome:
    """The experiment's outcome: the train phase classified (classify), then the scorer's verdict when
    the orchestrator scores (`scored`: its outcome, None when the eval phase did not run), then the
    backend's caps (a run stopped over a cap is a crash whatever it reported)."""
    if scored is not None:
        value = (scored.metrics or {}).get("val_bpb") if scored.status == Status.OK else None
        # (a placeholder lets classify check the blob and the data; a failed scoring replaces it below)
        result = {**(result or {}), spec.metric: value if value is not None else 0.0}
    outcome = classify(end.exit_code, end.oom_killed, end.timed_out, result, spec, train_blob, data_digest,
                       last_line(end.output), trusted, network_note(end.output), deadline)
    if scored is not None and outcome.status == Status.OK:
        outcome = (Outcome(Status.OK, None, {**(outcome.metrics or {}), **(scored.metrics or {})},
                           outcome.exit_code) if scored.status == Status.OK else scored)
    elif orchestrated and outcome.status == Status.OK:
        outcome = Outcome(Status.CRASH, "the harness saved no model for the evaluator", exit_code=end.exit_code)
    if end.over_cap and outcome.status in (Status.OK, Status.CRASH):
        outcome = Outcome(Status.CRASH, end.over_cap, exit_code=end.exit_code)
    return outcome


def eval_outcome(end: Finished, spec: RunSpec) -> Outcome | None:
    """How the eval phase's container ended, when that already decides the experiment; None when its
    logits are to be scored."""
    if end.timed_out:
        return Outcome(Status.TIMEOUT, f"the eval phase was killed at its deadline ({spec.grace_s:g} s = grace)")
    if end.oom_killed:
        return Outcome(Status.OOM, f"the eval phase was killed by the memory limit ({spec.resources.memory_mb} MB)")
    if end.exit_code != 0 or end.over_cap:
        said = end.over_cap or last_line(end.output)[:200]
        return Outcome(Status.CRASH, f"the eval phase exited {end.exit_code}: {said}", exit_code=end.exit_code)
    return None


def classify(exit_code: int | None, oom: bool, timed_out: bool, result: dict | None,
             spec: RunSpec, train_blob: str | None, data_digest: str, last_line: str = "",
             trusted: bool = True, network: str = "", deadline: str | None = None) -> Outcome:
    """Turn how a container ended and what the harness wrote into a status (pure).

    `last_line` (the log's last line, e.g. the exception) is quoted in a crash's reason.
    `trusted=False`: the result was printed by editable code (see `summary_result`), so it cannot
    carry the train.py blob and data digest that sealab's harness reports; those checks are skipped.
    `network`: appended to a crash's reason (`network_note`); `deadline`: how the deadline was set, when
    it was not budget + grace (executor/deadline.py).
    """
    if timed_out:
        return Outcome(Status.TIMEOUT, f"killed at the deadline ({deadline or f'{spec.deadline_s:g} s = budget + grace'})")
    if oom:
        return Outcome(Status.OOM, f"killed by the memory limit ({spec.resources.memory_mb} MB)", exit_code=exit_code)
    if exit_code != 0:
        said = f": {last_line[:200]}" if last_line else ""
        return Outcome(Status.CRASH, f"exit code {exit_code}{said}{network}", exit_code=exit_code)
    if result is None:
        printed = "" if trusted else f" and printed no --- summary or `{spec.metric}: <number>` line"
        return Outcome(Status.CRASH, f"the harness wrote no {RESULT_FILE}{printed}", exit_code=exit_code)
    value = result.get(spec.metric)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return Outcome(Status.CRASH, f"metric {spec.metric} missing or not finite: {value!r}", exit_code=exit_code)
    if trusted and result.get("train_py_blob") != train_blob:
        return Outcome(Status.REJECTED, f"the container ran train.py blob {result.get('train_py_blob')}, "
                       f"the commit has {train_blob}", exit_code=exit_code)
    if trusted and result.get("data_digest") != data_digest:
        return Outcome(Status.REJECTED, f"the container read data {result.get('data_digest')}, "
                       f"the base has {data_digest}", exit_code=exit_code)
    keys = (spec.metric, "training_seconds", "total_seconds", "steps", "tokens", "tokens_per_s", "num_params",
            "mfu_percent", "device")
    metrics = {k: result[k] for k in keys if k in result}
    metrics["hyperparameters"] = result.get("hyperparameters", {})
    gpu = gpu_of(result)
    if gpu:
        metrics["gpu"] = gpu
    losses = loss_trace(result.get("losses"))
    if losses:
        metrics["losses"] = losses
    if not trusted:
        metrics["metric_source"] = "summary"
    return Outcome(Status.OK, None, metrics, exit_code)


NETWORK_SIGNS = ("Temporary failure in name resolution", "Name or service not known", "socket.gaierror",
                 "Network is unreachable", "Failed to establish a new connection", "NewConnectionError",
                 "MaxRetryError", "requests.exceptions.ConnectionError", "httpx.ConnectError", "OfflineModeIsEnabled",
                 "LocalEntryNotFoundError", "couldn't connect to 'https://huggingface.co'", "urlopen error",
                 "No address associated with hostname")


def network_note(output: bytes) -> str:
    """"; sealed runs have no network: …" when a run's output shows it tried to reach one, else "" (pure)."""
    lines = output.decode(errors="replace").splitlines()
    hit = next((line.strip() for line in reversed(lines) if any(sign in line for sign in NETWORK_SIGNS)), None)
    if hit is None:
        return ""
    return (f"; sealed runs have no network, and it tried to reach one ({hit[:120]}). Capture what it downloads: "
            "run it once on the host (or `sealab base --prepare CMD`), list its cache directory under [data] dirs "
            "in sealab.toml (Hugging Face: ~/.cache/huggingface) and run `sealab base` again")


def last_line(output: bytes) -> str:
    """The last non-empty line a run printed (untrusted text: stored and shown, never interpreted)."""
    lines = [line.strip() for line in output.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else ""


SUMMARY_KEYS = ("peak_vram_mb", "peak_memory_mb", "training_seconds", "total_seconds", "num_steps", "mfu_percent",
                "total_tokens_M")


def summary_result(output: bytes, metric: str) -> dict | None:
    """A result built from what a run printed (REPORTED BY EDITABLE CODE): its last `---` summary block,
    or, with no `---` line, the last `metric: number` line (and the usual summary keys the same way)."""
    text = output.decode(errors="replace")
    block = parse_summary(text)
    if block is None:
        block = last_values(text, (metric, *SUMMARY_KEYS))
        if metric not in block:
            return None
    result = {metric: block.get(metric), "peak_memory_mb": block.get("peak_vram_mb") or block.get("peak_memory_mb"),
              "training_seconds": block.get("training_seconds"), "total_seconds": block.get("total_seconds"),
              "steps": block.get("num_steps"), "mfu_percent": _number(block.get("mfu_percent")),
              "metric_source": "summary"}
    tokens_m, seconds = _number(block.get("total_tokens_M")), _number(block.get("training_seconds"))
    if tokens_m is not None and seconds:
        result["tokens"] = round(tokens_m * 1e6)
        result["tokens_per_s"] = tokens_m * 1e6 / seconds
    return {k: v for k, v in result.items() if v is not None}


def _number(value: Any) -> float | None:
    """A finite, non-negative number, or None (what a summary line may say is anything)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return value


def cpu_of(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """The CPU the harness says the train phase ran on (model, ISA level, torch, threads), or None.
    Written by the experiment's own process, so it is a statement of the run, not a proof: what
    `reproduce` uses it for is to say when bit-exactness is expected."""
    cpu = (result or {}).get("cpu")
    if not isinstance(cpu, dict):
        return None
    kept: dict[str, Any] = {k: str(cpu[k])[:200] for k in ("model", "isa", "torch") if k in cpu}
    if isinstance(cpu.get("threads"), int):
        kept["threads"] = cpu["threads"]
    return kept


GPU_TEXT = ("name", "capability", "cuda", "driver", "driver_cuda")


def gpu_of(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """The GPUs the harness says the train phase ran on (device name, count, compute capability, memory,
    CUDA, driver), or None on a CPU; like cpu_of, a statement of the run, kept short and typed."""
    gpu = (result or {}).get("gpu")
    if not isinstance(gpu, dict):
        return None
    kept: dict[str, Any] = {k: str(gpu[k])[:200] for k in GPU_TEXT if gpu.get(k) is not None}
    for key in ("count", "memory_mb"):
        if isinstance(gpu.get(key), int) and not isinstance(gpu.get(key), bool):
            kept[key] = gpu[key]
    return kept or None


LOSS_TRACE_MAX = 1000  # as the harness keeps them (prepare.py): a longer or ill-typed list is not kept


def loss_trace(value: Any) -> list[float] | None:
    """The per-step training losses a step-budget run reported (result.json "losses"), or None when there
    are none or they are not a list of at most LOSS_TRACE_MAX finite numbers."""
    if not isinstance(value, list) or not value or len(value) > LOSS_TRACE_MAX:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        return None
    return [float(v) for v in value]
