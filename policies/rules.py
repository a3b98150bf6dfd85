"""Policy rules: load a TOML policy and decide about proposals, specs, results and stopping.

Pure decision code: imports only the standard library and `executor.types`; the only I/O is reading
the policy file itself. Every rule table of a policy carries a one-line `reason`; every verdict
names the rule that decided (`"forbidden[2]"`, `"scope.editable"`, ...) and says why, in one line.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import math
import posixpath
import re
import statistics
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from executor.config import parse as parse_config
from executor.errors import ConfigError
from executor.types import Resources, RunSpec

POLICY_DIR = Path(__file__).parent
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
CONFIG_PATH = "sealab.toml"  # the workspace file whose changes can raise run limits


class PolicyError(Exception):
    """A policy that cannot be used: unknown name, bad TOML, a missing reason, an unknown key.

    Its str() is one line naming the file and the problem. Not a `SealabError` (policies may not
    import executor.errors), so the CLI must catch it explicitly; `exit_code` is 2 (bad input).
    """

    exit_code = 2

    def __init__(self, source: str, problem: str) -> None:
        self.source, self.problem = source, problem
        super().__init__(f"{source}: {problem}")


# ---------------------------------------------------------------- the policy model


@dataclass(frozen=True)
class Verdict:
    """What a check decided: `allow`, `reject` (never run it) or `park` (wait for a human)."""

    action: str  # "allow" | "reject" | "park"
    rule: str | None = None  # e.g. "forbidden[2]", "scope.editable", "gates.protected_paths"
    reason: str | None = None  # the rule's reason and the concrete fact, one line

    @property
    def allowed(self) -> bool:
        return self.action == "allow"


ALLOW = Verdict("allow")


@dataclass(frozen=True)
class Scope:
    editable: tuple[str, ...]
    protected: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class DiffLimit:
    max_changed_lines: int
    reason: str


@dataclass(frozen=True)
class Forbidden:
    pattern: str
    reason: str
    regex: re.Pattern[str] = field(compare=False, repr=False, default=None)  # type: ignore[assignment]


@dataclass(frozen=True)
class RunLimits:
    max_budget_s: float
    max_grace_s: float
    max_memory_mb: int
    max_gpus: int
    max_pids: int
    reason: str
    max_cpus: float | None = None
    max_tmp_mb: int | None = None
    max_home_mb: int | None = None
    network: bool = False


@dataclass(frozen=True)
class Acceptance:
    reason: str
    min_delta: float = 0.001
    noise_runs: int = 3
    z: float = 2.0


@dataclass(frozen=True)
class Stop:
    reason: str
    max_experiments: int | None = None
    max_hours: float | None = None
    max_cost_usd: float | None = None
    max_consecutive_crashes: int = 5
    plateau: int = 30


@dataclass(frozen=True)
class Gates:
    reason: str
    protected_paths: bool = True
    raise_limits: bool = True


@dataclass(frozen=True)
class Drift:
    reason: str
    action: str = "restore"  # "restore": put the tree back to the commit and go on; "halt": stop the run


@dataclass(frozen=True)
class Retry:
    reason: str
    infra_error: int = 2  # runs of one commit lost to the engine (`infra_error`) that are retried
    wait_s: float = 120.0  # how long to wait for the engine to answer again before each retry


@dataclass(frozen=True)
class Policy:
    name: str
    path: str
    digest: str  # "sha256:" of the file's bytes
    scope: Scope
    diff: DiffLimit
    forbidden: tuple[Forbidden, ...]
    run: RunLimits
    acceptance: Acceptance
    stop: Stop
    gates: Gates
    drift: Drift
    retry: Retry = Retry("the shipped default: an experiment lost to the engine is run again twice")

    def rules(self) -> tuple[tuple[str, str], ...]:
        """Every rule as (name, reason), in file order of sections; forbidden entries are numbered."""
        out = [("scope", self.scope.reason), ("diff", self.diff.reason)]
        out += [(f"forbidden[{i}]", f.reason) for i, f in enumerate(self.forbidden)]
        out += [("run", self.run.reason), ("acceptance", self.acceptance.reason),
                ("stop", self.stop.reason), ("gates", self.gates.reason), ("drift", self.drift.reason),
                ("retry", self.retry.reason)]
        return tuple(out)


# ---------------------------------------------------------------- loading

_INT, _NUM, _BOOL, _STR, _STRS = "int", "number", "bool", "string", "list of strings"
# section -> key -> (kind, required); a missing optional key takes the dataclass default
_SCHEMA: dict[str, dict[str, tuple[str, bool]]] = {
    "scope": {"editable": (_STRS, True), "protected": (_STRS, True), "reason": (_STR, True)},
    "diff": {"max_changed_lines": (_INT, False), "reason": (_STR, True)},
    "forbidden": {"pattern": (_STR, True), "reason": (_STR, True)},
    "run": {"max_budget_s": (_NUM, True), "max_grace_s": (_NUM, True), "max_memory_mb": (_INT, True),
            "max_gpus": (_INT, True), "max_pids": (_INT, True), "max_cpus": (_NUM, False),
            "max_tmp_mb": (_INT, False), "max_home_mb": (_INT, False), "network": (_BOOL, False),
            "reason": (_STR, True)},
    "acceptance": {"min_delta": (_NUM, False), "noise_runs": (_INT, False), "z": (_NUM, False),
                   "reason": (_STR, True)},
    "stop": {"max_experiments": (_INT, False), "max_hours": (_NUM, False), "max_cost_usd": (_NUM, False),
             "max_consecutive_crashes": (_INT, False), "plateau": (_INT, False), "reason": (_STR, True)},
    "gates": {"protected_paths": (_BOOL, False), "raise_limits": (_BOOL, False), "reason": (_STR, True)},
    "drift": {"action": (_STR, False), "reason": (_STR, True)},
    "retry": {"infra_error": (_INT, False), "wait_s": (_NUM, False), "reason": (_STR, True)},
}
_OPTIONAL_SECTIONS = ("forbidden", "retry")
# limits that must be > 0 (the rest must be >= 0)
_POSITIVE = {"max_budget_s", "max_memory_mb", "max_pids", "noise_runs", "max_experiments", "max_hours",
             "max_consecutive_crashes", "plateau", "max_changed_lines", "max_cpus"}


def policy_path(name: str) -> Path:
    """The file of shipped policy `name`; raises PolicyError naming the known policies."""
    path = POLICY_DIR / f"{name}.toml"
    if not _NAME.match(name) or not path.is_file():
        known = ", ".join(sorted(p.stem for p in POLICY_DIR.glob("*.toml")))
        raise PolicyError(str(POLICY_DIR / f"{name}.toml"), f"no policy {name!r} (known: {known})")
    return path


def load_policy(name_or_path: str) -> Policy:
    """Load a shipped policy by name (`default`, `strict`) or a policy file by path (contains `/` or
    ends in `.toml`). Raises PolicyError (one line, naming the file) on any problem."""
    if "/" in name_or_path or name_or_path.endswith(".toml"):
        path = Path(name_or_path)
        name = path.stem
    else:
        path, name = policy_path(name_or_path), name_or_path
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PolicyError(str(path), f"cannot be read: {exc.strerror or exc}") from exc
    return parse_policy(data, source=str(path), name=name)


def parse_policy(data: bytes | str, *, source: str = "<policy>", name: str = "policy") -> Policy:
    """Validate policy TOML content (what load_policy does after reading the file)."""
    raw_bytes = data.encode() if isinstance(data, str) else data
    try:
        raw = tomllib.loads(raw_bytes.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PolicyError(source, f"not valid TOML: {str(exc).splitlines()[0]}") from None

    def fail(problem: str) -> PolicyError:
        return PolicyError(source, problem)

    for section in raw:
        if section not in _SCHEMA:
            raise fail(f"unknown section [{section}] (known: {', '.join(_SCHEMA)})")
    missing = [s for s in _SCHEMA if s not in raw and s not in _OPTIONAL_SECTIONS]
    if missing:
        raise fail(f"missing section [{missing[0]}] (every policy states every rule)")

    def table(label: str, section: str, values: Any) -> dict[str, Any]:
        if not isinstance(values, dict):
            raise fail(f"{label} must be a table")
        spec = _SCHEMA[section]
        for key in values:
            if key not in spec:
                raise fail(f"unknown key {label}.{key} (known: {', '.join(spec)})")
        for key, (kind, required) in spec.items():
            if key not in values:
                if key == "reason":
                    raise fail(f"{label} has no reason (every rule must say why it exists)")
                if required:
                    raise fail(f"{label} is missing {key}")
                continue
            value = values[key]
            ok = {
                _INT: isinstance(value, int) and not isinstance(value, bool),
                _NUM: isinstance(value, (int, float)) and not isinstance(value, bool),
                _BOOL: isinstance(value, bool),
                _STR: isinstance(value, str),
                _STRS: isinstance(value, list) and all(isinstance(v, str) and v for v in value),
            }[kind]
            if not ok:
                raise fail(f"{label}.{key} must be a {kind}, not {value!r}")
            if kind in (_INT, _NUM):
                if not math.isfinite(value) or value < 0 or (key in _POSITIVE and value == 0):
                    raise fail(f"{label}.{key} must be {'positive' if key in _POSITIVE else '>= 0'}: {value!r}")
        reason = values["reason"]
        if not reason.strip() or "\n" in reason.strip():
            raise fail(f"{label}.reason must be one non-empty line")
        return {k: (tuple(v) if isinstance(v, list) else v.strip() if k == "reason" else v)
                for k, v in values.items()}

    scope = Scope(**table("[scope]", "scope", raw["scope"]))
    for pattern in scope.editable + scope.protected:
        if pattern.startswith("/") or ".." in pattern.split("/"):
            raise fail(f"[scope] pattern {pattern!r} must be relative to the workspace")
    for pattern in scope.editable:
        clash = [p for p in scope.protected if fnmatch.fnmatchcase(pattern, p)]
        if clash:
            raise fail(f"[scope] {pattern!r} is both editable and protected ({clash[0]!r})")
    diff = DiffLimit(**{"max_changed_lines": 200, **table("[diff]", "diff", raw["diff"])})

    entries = raw.get("forbidden", [])
    if not isinstance(entries, list):
        raise fail("forbidden must be an array of tables: [[forbidden]]")
    forbidden = []
    for i, entry in enumerate(entries):
        values = table(f"forbidden[{i}]", "forbidden", entry)
        try:
            regex = re.compile(values["pattern"])
        except re.error as exc:
            raise fail(f"forbidden[{i}].pattern is not a valid regex: {exc}") from None
        forbidden.append(Forbidden(values["pattern"], values["reason"], regex))

    run = RunLimits(**table("[run]", "run", raw["run"]))
    if run.network:
        raise fail("[run].network = true is not supported: experiments never have a network")
    acceptance = Acceptance(**table("[acceptance]", "acceptance", raw["acceptance"]))
    stop = Stop(**table("[stop]", "stop", raw["stop"]))
    gates = Gates(**table("[gates]", "gates", raw["gates"]))
    drift = Drift(**table("[drift]", "drift", raw["drift"]))
    if drift.action not in ("restore", "halt"):
        raise fail(f"[drift].action must be 'restore' or 'halt', not {drift.action!r}")
    extra = {"retry": Retry(**table("[retry]", "retry", raw["retry"]))} if "retry" in raw else {}
    return Policy(name=name, path=source, digest="sha256:" + hashlib.sha256(raw_bytes).hexdigest(),
                  scope=scope, diff=diff, forbidden=tuple(forbidden), run=run, acceptance=acceptance,
                  stop=stop, gates=gates, drift=drift, **extra)


def policy_digest(policy: Policy) -> str:
    """`sha256:<hex>` of the policy file's bytes, for provenance."""
    return policy.digest


# ---------------------------------------------------------------- diffs


def _lines(text: str | None) -> list[str]:
    return [] if text is None else text.splitlines()


def _opcodes(old: str | None, new: str | None) -> tuple[list[str], list[str], list[tuple]]:
    a, b = _lines(old), _lines(new)
    return a, b, difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()


def changed_lines(old: str | None, new: str | None) -> int:
    """Added plus removed lines between two versions of a file (None: absent)."""
    _, _, ops = _opcodes(old, new)
    return sum((i2 - i1) + (j2 - j1) for tag, i1, i2, j1, j2 in ops if tag != "equal")


def added_lines(old: str | None, new: str | None) -> list[tuple[int, str]]:
    """(1-based line number in the new version, text) of every line the change adds."""
    _, b, ops = _opcodes(old, new)
    return [(j + 1, b[j]) for tag, _, _, j1, j2 in ops if tag in ("insert", "replace") for j in range(j1, j2)]


def _norm(path: str) -> str | None:
    """A workspace-relative POSIX path, or None when it is absolute or escapes the workspace."""
    path = path.replace("\\", "/")
    if not path or path.startswith("/"):
        return None
    norm = posixpath.normpath(path)
    return None if norm == ".." or norm.startswith("../") or norm == "." else norm


def _matches(path: str, patterns: Sequence[str]) -> str | None:
    return next((p for p in patterns if fnmatch.fnmatchcase(path, p)), None)


# ---------------------------------------------------------------- run specs

_LIMITS = (  # (run spec field, [run] limit key)
    ("budget_s", "max_budget_s"), ("grace_s", "max_grace_s"), ("memory_mb", "max_memory_mb"),
    ("gpus", "max_gpus"), ("pids", "max_pids"), ("cpus", "max_cpus"), ("tmp_mb", "max_tmp_mb"),
    ("home_mb", "max_home_mb"),
)


def _spec_value(spec: RunSpec, key: str) -> float:
    return getattr(spec, key) if key in ("budget_s", "grace_s") else getattr(spec.resources, key)


def _fmt(value: float) -> str:
    return f"{value:g}"


def check_run_spec(policy: Policy, spec: RunSpec) -> Verdict:
    """Reject a run spec beyond the policy's absolute [run] limits; otherwise allow."""
    for key, limit_key in _LIMITS:
        limit = getattr(policy.run, limit_key)
        if limit is not None and _spec_value(spec, key) > limit:
            return Verdict("reject", f"run.{limit_key}",
                           f"{policy.run.reason}: {key} {_fmt(_spec_value(spec, key))} exceeds {_fmt(limit)}")
    return ALLOW


def raised_limits(current: RunSpec, proposed: RunSpec) -> list[str]:
    """`"budget_s 60 -> 120"` for every limit the proposed spec raises above the current one."""
    out = []
    for key, _ in _LIMITS:
        old, new = _spec_value(current, key), _spec_value(proposed, key)
        if new > old:
            out.append(f"{key} {_fmt(old)} -> {_fmt(new)}")
    return out


def _spec_from_config(text: str, current: RunSpec) -> RunSpec | None:
    """The limits of a proposed sealab.toml, read by the same validator as a run's (executor.config);
    the metric and seed stay the current ones. None when it is not valid: then it only parks."""
    try:
        proposed = parse_config(text).run_spec
    except ConfigError:
        return None
    return replace(current, budget_s=proposed.budget_s, grace_s=proposed.grace_s, resources=proposed.resources)


# ---------------------------------------------------------------- proposals


def check_proposal(policy: Policy, changes: Mapping[str, tuple[str | None, str | None]], *,
                   current_spec: RunSpec, proposed_spec: RunSpec | None = None) -> Verdict:
    """Decide about one proposal: `changes` maps a workspace-relative path to (old content or None
    if new, new content or None if deleted); entries whose old and new are equal are ignored.

    Order (the first rule that fires decides):
      1. run.max_*            reject: the proposed spec is beyond the policy's absolute limits
                              (no human approval could make it runnable, so it is never parked)
      2. gates.raise_limits   park: the proposed spec raises budget/grace/memory/cpus/pids/gpus/tmpfs
      3. gates.protected_paths park: a protected path is touched
      4. scope.editable       reject: a path that is not editable (or escapes the workspace)
      5. diff.max_changed_lines reject: too many added+removed lines in total
      6. forbidden[i]         reject: a forbidden pattern on an ADDED line
    When proposed_spec is None and the change touches sealab.toml, the proposed limits are read
    from the new sealab.toml (budget.*, resources.*; defaults for what it omits).
    """
    real: dict[str, tuple[str | None, str | None]] = {}
    for path, (old, new) in changes.items():
        if old == new:
            continue
        norm = _norm(path)
        if norm is None:
            return Verdict("reject", "scope.editable",
                           f"{policy.scope.reason}: {path!r} is not a workspace-relative path")
        real[norm] = (old, new)

    proposed = proposed_spec
    if proposed is None and CONFIG_PATH in real and real[CONFIG_PATH][1] is not None:
        proposed = _spec_from_config(real[CONFIG_PATH][1], current_spec)
    if proposed is not None:
        verdict = check_run_spec(policy, proposed)
        if not verdict.allowed:
            return verdict
        raised = raised_limits(current_spec, proposed)
        if raised and policy.gates.raise_limits:
            return Verdict("park", "gates.raise_limits", f"{policy.gates.reason}: raises {', '.join(raised)}")

    if policy.gates.protected_paths:
        touched = [(p, pat) for p in real if (pat := _matches(p, policy.scope.protected))]
        if touched:
            path, pattern = touched[0]
            return Verdict("park", "gates.protected_paths",
                           f"{policy.gates.reason}: touches protected {path} (matches {pattern!r})")

    for path in real:
        if _matches(path, policy.scope.editable) is None:
            return Verdict("reject", "scope.editable",
                           f"{policy.scope.reason}: {path} is not editable (editable: "
                           f"{', '.join(policy.scope.editable)})")

    total = sum(changed_lines(old, new) for old, new in real.values())
    if total > policy.diff.max_changed_lines:
        return Verdict("reject", "diff.max_changed_lines",
                       f"{policy.diff.reason}: {total} changed lines > {policy.diff.max_changed_lines}")

    for path, (old, new) in real.items():
        for number, line in added_lines(old, new):
            for i, rule in enumerate(policy.forbidden):
                if rule.regex.search(line):
                    shown = line.strip()
                    shown = shown if len(shown) <= 120 else shown[:117] + "..."
                    return Verdict("reject", f"forbidden[{i}]", f"{rule.reason}: {path}:{number}: {shown}")
    return ALLOW


# ---------------------------------------------------------------- results


def noise_floor(policy: Policy, baseline_values: Sequence[float]) -> float:
    """The improvement threshold: max(min_delta, z * sample stdev of the baseline repeats)
    (the stdev counts as 0 with fewer than two values). Raises ValueError on a non-finite value."""
    values = [float(v) for v in baseline_values]
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"baseline values must be finite: {values!r}")
    sigma = statistics.stdev(values) if len(values) >= 2 else 0.0
    return max(policy.acceptance.min_delta, policy.acceptance.z * sigma)


def decide(policy: Policy, *, direction: str, best: float | None, candidate: float,
           threshold: float | None = None, metric: str = "metric") -> tuple[str, str]:
    """("keep" | "discard", one-sentence reason). Keep only when the candidate beats `best` by MORE
    than `threshold` (default: the policy's min_delta) in `direction`; equal is a discard; a
    non-finite candidate is a discard; best None (nothing kept yet) keeps any finite candidate."""
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"direction must be 'minimize' or 'maximize', not {direction!r}")
    limit = policy.acceptance.min_delta if threshold is None else threshold
    if not math.isfinite(candidate):
        return "discard", f"{metric} {candidate} is not a finite number."
    if best is None:
        return "keep", f"{metric} {candidate:.6f} is the first result, so it is the baseline."
    gain = best - candidate if direction == "minimize" else candidate - best
    word = "lower" if direction == "minimize" else "higher"
    if gain > limit:
        return "keep", (f"{metric} {candidate:.6f} is {gain:.6f} {word} than the best {best:.6f}, "
                        f"more than the threshold {limit:.6f}.")
    return "discard", (f"{metric} {candidate:.6f} vs best {best:.6f}: an improvement of {gain:.6f} is not "
                       f"more than the threshold {limit:.6f}.")


def pick_winner(policy: Policy, *, direction: str, best: float | None, threshold: float | None,
                candidates: Sequence[tuple[float | None, int]]) -> int | None:
    """The index of the round's winner, or None: among the candidates `(metric or None, diff size)`
    that `decide` would keep against `best` on their own, the best metric wins; equal metrics go to
    the smaller diff, then to the earlier proposal. The order in which runs finished plays no part,
    so the choice equals that of evaluating the same proposals one after another against `best`."""
    keepers = [(value, size, i) for i, (value, size) in enumerate(candidates)
               if value is not None and decide(policy, direction=direction, best=best, candidate=value,
                                               threshold=threshold)[0] == "keep"]
    if not keepers:
        return None
    sign = 1 if direction == "minimize" else -1
    return min(keepers, key=lambda k: (sign * k[0], k[1], k[2]))[2]


def _smaller(a: float | None, b: float | None) -> tuple[float | None, str]:
    if a is None:
        return b, "policy"
    if b is None or a <= b:
        return a, "command line"
    return b, "policy"


def should_stop(policy: Policy, *, experiments: int, hours: float, cost_usd: float,
                consecutive_crashes: int, since_improvement: int, max_experiments: int | None = None,
                max_hours: float | None = None, max_cost_usd: float | None = None) -> str | None:
    """Why the loop must stop now, or None. Call it before starting each experiment with the counts
    so far. `max_*` arguments are the command line's limits; each combines with the policy's own
    (the smaller wins). A limit is reached when the count is >= it."""
    s = policy.stop
    checks: list[tuple[str, float, float | None, str]] = [
        ("stop.max_consecutive_crashes", consecutive_crashes, s.max_consecutive_crashes, "consecutive crashes"),
    ]
    for rule, count, cli, own, what in (
        ("stop.max_experiments", experiments, max_experiments, s.max_experiments, "experiments"),
        ("stop.max_hours", hours, max_hours, s.max_hours, "hours"),
        ("stop.max_cost_usd", cost_usd, max_cost_usd, s.max_cost_usd, "USD spent"),
    ):
        limit, origin = _smaller(cli, own)
        checks.append((rule, count, limit, f"{what} ({origin} limit)"))
    checks.append(("stop.plateau", since_improvement, s.plateau, "experiments without a kept improvement"))
    for rule, count, limit, what in checks:
        if limit is not None and count >= limit:
            return f"{rule}: {_fmt(count)} {what}, limit {_fmt(limit)} ({s.reason})"
    return None

