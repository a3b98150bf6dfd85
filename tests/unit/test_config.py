"""sealab.toml validation (pure)."""

import pytest

from executor.config import DEFAULT_TOML, parse
from executor.errors import ConfigError


def test_default_config_parses():
    """The scaffolded sealab.toml is valid and gives the documented defaults."""
    cfg = parse(DEFAULT_TOML)
    assert cfg.run_spec.metric == "val_bpb" and cfg.run_spec.direction == "minimize"
    assert cfg.run_spec.deadline_s == 120.0 and cfg.policy == "default"


@pytest.mark.parametrize("text, fragment", [
    ("[budget\ntrain_seconds = 1", "not valid TOML"),
    ("[bugdet]\ntrain_seconds = 1", "unknown section [bugdet]"),
    ("[budget]\ntrain_secs = 1", "unknown key budget.train_secs"),
    ("[budget]\ntrain_seconds = 'ten'", "wrong type"),
    ("[budget]\ntrain_seconds = -1", "must not be negative"),
    ("[metric]\ndirection = 'up'", "metric.direction"),
    ("[resources]\nmemory_mb = 1", "memory_mb"),
    ("[resources]\npids = true", "wrong type"),
])
def test_malformed_config_is_one_line_error(text, fragment):
    """Each malformed setting is refused with a one-line message naming it."""
    with pytest.raises(ConfigError) as info:
        parse(text, "sealab.toml")
    assert fragment in str(info.value) and "\n" not in str(info.value)
