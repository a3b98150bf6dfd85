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
    ("[resources]\ncpus = 0", "resources.cpus must be at least 0.01 (0 is no limit to the engine): 0"),
    ("[resources]\ntmp_mb = 0", "resources.tmp_mb must be at least 1"),
    ("[resources]\nhome_mb = 0", "resources.home_mb must be at least 1"),
    ("[resources]\nmemory_mb = 0", "resources.memory_mb must be at least 64"),
    ("[resources]\npids = 0", "resources.pids must be at least 16"),
    ("[resources]\nout_mb = 0", "resources.out_mb must be at least 1"),
    ("[budget]\ntrain_seconds = 0", "budget.train_seconds must be more than 0"),
    ("[budget]\nsteps = 0", "budget.steps must be at least 1"),
])
def test_malformed_config_is_one_line_error(text, fragment):
    """Each malformed setting is refused with a one-line message naming it."""
    with pytest.raises(ConfigError) as info:
        parse(text, "sealab.toml")
    assert fragment in str(info.value) and "\n" not in str(info.value)
