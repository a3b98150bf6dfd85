"""The errors sealab raises when the harness itself fails (not when an experiment fails).

    SealabError                     root: catch this to catch everything we raise
    ├── ConfigError                 sealab.toml missing or malformed        (path, problem)
    ├── WorkspaceError              not a sealab workspace / not a git repository
    ├── SourceError                 unknown commit, unreadable tree           (ref, problem)
    ├── EngineUnavailable           Docker daemon unreachable or API error    (problem)
    ├── BaseImageError              base image missing or its build failed    (problem, log_tail)
    ├── IdentityMismatch            an image is not the one the commit implies (what, expected, actual)
    └── LedgerError                 the state database cannot be used         (problem)
        └── RecordError             a ledger record that is not one           (field, expected, actual)

Experiment outcomes (crash, timeout, oom, rejected, ...) are not errors: they are statuses in a record.
Every error renders as one line that says what happened and, where possible, what to do.
"""

from __future__ import annotations


class SealabError(Exception):
    """Root of every error sealab raises on purpose; its str() is a one-line message for the user."""

    exit_code = 1


class ConfigError(SealabError):
    exit_code = 2

    def __init__(self, path: str, problem: str) -> None:
        self.path, self.problem = path, problem
        super().__init__(f"{path}: {problem}")


class WorkspaceError(SealabError):
    exit_code = 2


class SourceError(SealabError):
    exit_code = 2

    def __init__(self, ref: str, problem: str) -> None:
        self.ref, self.problem = ref, problem
        super().__init__(f"{ref}: {problem}")


class EngineUnavailable(SealabError):
    exit_code = 3

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"Docker engine unavailable: {problem} (is dockerd running? check DOCKER_HOST)")


class NoGpu(EngineUnavailable):
    """The run asks for GPUs and the engine has none to give: an `infra_error` of the host, not of train.py."""

    def __init__(self, problem: str) -> None:  # the whole line: the engine answers, it is not unavailable
        self.problem = problem
        SealabError.__init__(self, problem)


class BaseImageError(SealabError):
    exit_code = 3

    def __init__(self, problem: str, log_tail: str = "") -> None:
        self.problem, self.log_tail = problem, log_tail
        super().__init__(problem)


class IdentityMismatch(SealabError):
    exit_code = 4

    def __init__(self, what: str, expected: str, actual: str) -> None:
        self.what, self.expected, self.actual = what, expected, actual
        super().__init__(f"{what}: expected {expected}, found {actual}")


class LedgerError(SealabError):
    exit_code = 5


class LedgerGone(LedgerError):
    """The ledger file was removed or replaced under a running command: its writes stopped (exit 5)."""


class RecordError(LedgerError):
    """A record that does not decode (see executor.record.ExperimentRecord.from_dict): one field named,
    with what it should hold and what it holds."""

    def __init__(self, field: str, expected: str, actual: object, record_id: str | None = None) -> None:
        self.field, self.expected, self.actual, self.record_id = field, expected, actual, record_id
        shown = repr(actual)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        where = f"record {record_id}: " if record_id else ""
        super().__init__(f"{where}{field}: expected {expected}, got {shown}")
