"""Declarative policies (TOML files beside this module) that gate what the research loop may run.

Pure decision code: of ours, `executor.types` and executor.config's validator only; no I/O but reading a policy file.
`default.toml` documents the schema; `strict.toml` tightens it. See `policies.rules` for the API.
"""

from __future__ import annotations

from policies.rules import (
    ALLOW,
    CONFIG_PATH,
    POLICY_DIR,
    Acceptance,
    DiffLimit,
    Drift,
    Forbidden,
    Gates,
    Policy,
    PolicyError,
    Retry,
    RunLimits,
    Scope,
    Stop,
    Verdict,
    added_lines,
    changed_lines,
    check_proposal,
    check_run_spec,
    decide,
    load_policy,
    noise_floor,
    parse_policy,
    pick_winner,
    policy_digest,
    policy_path,
    raised_limits,
    should_stop,
)

__all__ = [
    "ALLOW", "CONFIG_PATH", "POLICY_DIR", "Acceptance", "DiffLimit",
    "Drift", "Forbidden", "Gates", "Policy",
    "PolicyError", "Retry", "RunLimits", "Scope", "Stop", "Verdict", "added_lines", "changed_lines",
    "check_proposal", "check_run_spec", "decide", "load_policy", "noise_floor", "parse_policy",
    "pick_winner", "policy_digest", "policy_path", "raised_limits", "should_stop",
]
