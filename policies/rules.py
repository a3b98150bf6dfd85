"""Policy rules: load a TOML policy and decide about proposals, specs, results and stopping.

Pure decision code: of ours it imports only `executor.types` and executor.config's validator (and its
errors), which reads a policy file as it reads sealab.toml; the only I/O is reading the policy file itself.
Every rule table of a policy carries a one-line `reason`; every verdict names the rule that decided
(`"forbidden[2]"`, `"scope.editable"`, ...) and says why, in one line.
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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Literal, Mapping, Sequence

from pydantic import AfterValidator, Field

from executor.config import Flag, Int, Number, Table, Text, validate
from executor.config import parse as parse_config
from executor.errors import ConfigError, SealabError
from executor.types import RunSpec

POLICY_DIR = Path(__file__).parent
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
CONFIG_PATH = "sealab.toml"  # the workspace file whose changes can raise run limits


class PolicyError(SealabError):
    """A policy that cannot be used: unknown name, bad TOML, a missing reason, an unknown key.

    Its str() is one line naming the file and the problem; bad input, so exit code 2."""

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


def _one_line(reason: str) -> str:
    if not reason.strip() or "\n" in reason.strip():
        raise ValueError("must be one non-empty line")
    return reason.strip()


def _regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"is not a valid regex ({exc})") from None
    return pattern


# The tables of a policy file, read by executor.config's validator: a key a table does not declare,
# a value of the wrong type or out of range, and a table without its one-line reason fail to load.
Reason = Annotated[Text, AfterValidator(_one_line), Field(description="every rule must say why it exists")]
Globs = tuple[Annotated[Text, Field(min_length=1)], ...]
_STATED = "every policy states every rule"


class Scope(Table):
    editable: Globs
    protected: Globs
    reason: Reason


class DiffLimit(Table):
    max_changed_lines: Int = Field(200, gt=0)
    reason: Reason


class Forbidden(Table):
    pattern: Annotated[Text, AfterValidator(_regex)]
    reason: Reason

    @property
    def regex(self) -> re.Pattern[str]:
        return re.compile(self.pattern)  # re caches what it compiled


class RunLimits(Table):
    max_budget_s: Number = Field(gt=0)
    max_grace_s: Number = Field(ge=0)
    max_memory_mb: Int = Field(gt=0)
    max_gpus: Int = Field(ge=0)
    max_pids: Int = Field(gt=0)
    max_cpus: Number | None = Field(None, gt=0)
    max_tmp_mb: Int | None = Field(None, ge=0)
    max_home_mb: Int | None = Field(None, ge=0)
    network: Flag = False
    reason: Reason


class Acceptance(Table):
    min_delta: Number = Field(0.001, ge=0)
    noise_runs: Int = Field(3, gt=0)
    z: Number = Field(2.0, ge=0)
    confirm_runs: Int = Field(0, ge=0, le=20)  # reruns of a would-be keep before it is kept (agent/confirm.py)
    reason: Reason


class Stop(Table):
    max_experiments: Int | None = Field(None, gt=0)
    max_hours: Number | None = Field(None, gt=0)
    max_cost_usd: Number | None = Field(None, ge=0)
    max_consecutive_crashes: Int = Field(5, gt=0)
    plateau: Int = Field(30, gt=0)
    reason: Reason


class Gates(Table):
    protected_paths: Flag = True
    raise_limits: Flag = True
    reason: Reason


class Drift(Table):
    action: Literal["restore", "halt"] = "restore"  # restore: put the tree back to the commit and go on; halt: stop
    reason: Reason


class Retry(Table):
    infra_error: Int = Field(2, ge=0)  # runs of one commit lost to the engine (`infra_error`) that are retried
    wait_s: Number = Field(120.0, ge=0)  # how long to wait for the engine to answer again before each retry
    reason: Reason


class Rules(Table):
    """A policy file: one table per rule; [[forbidden]] and [retry] may be left out."""

    scope: Scope = Field(description=_STATED)
    diff: DiffLimit = Field(description=_STATED)
    forbidden: tuple[Forbidden, ...] = ()
    run: RunLimits = Field(description=_STATED)
    acceptance: Acceptance = Field(description=_STATED)
    stop: Stop = Field(description=_STATED)
    gates: Gates = Field(description=_STATED)
    drift: Drift = Field(description=_STATED)
    retry: Retry = Retry(reason="the shipped default: an experiment lost to the engine is run again twice")


class Policy(Rules):
    """The rules of one policy file, and which file: its name, path and `sha256:` digest of its bytes."""

    name: str
    path: str
    digest: str

    def rules(self) -> tuple[tuple[str, str], ...]:
        """Every rule as (name, reason), in file order of sections; forbidden entries are numbered."""
        out = [("scope", self.scope.reason), ("diff", self.diff.reason)]
        out += [(f"forbidden[{i}]", f.reason) for i, f in enumerate(self.forbidden)]
        out += [("run", self.run.reason), ("acceptance", self.acceptance.reason),
                ("stop", self.stop.reason), ("gates", self.gates.reason), ("drift", self.drift.reason),
                ("retry", self.retry.reason)]
        return tuple(out)


# ---------------------------------------------------------------- loading


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
    rules = validate(Rules, raw, source, PolicyError)
    for pattern in rules.scope.editable + rules.scope.protected:
        if pattern.startswith("/") or ".." in pattern.split("/"):
            raise PolicyError(source, f"[scope] pattern {pattern!r} must be relative to the workspace")
    for pattern in rules.scope.editable:
        clash = [p for p in rules.scope.protected if fnmatch.fnmatchcase(pattern, p)]
        if clash:
            raise PolicyError(source, f"[scope] {pattern!r} is both editable and protected ({clash[0]!r})")
    if rules.run.network:
        raise PolicyError(source, "run.network = true is not supported: experiments never have a network")
    return Policy(name=name, path=source, digest="sha256:" + hashlib.sha256(raw_bytes).hexdigest(),
                  **{key: getattr(rules, key) for key in Rules.model_fields})


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

