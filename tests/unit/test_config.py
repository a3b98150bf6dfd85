"""sealab.toml validation (pure)."""

import re
from dataclasses import fields

import pytest

from executor.config import DEFAULT_TOML, parse
from executor.errors import ConfigError
from executor.types import Resources


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
    ("[budget]\ngrace_seconds = -1", "budget.grace_seconds must not be negative: -1"),
    ("[budget]\ntrain_seconds = -1", "budget.train_seconds must be more than 0 (a run needs time to train): -1"),
    ("[metric]\ndirection = 'up'", "metric.direction"),
    ("[base]\ntorch = 'rocm'", "base.torch"),
    ("[base]\ntorch = true", "base.torch"),
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


def test_every_commented_option_of_the_scaffold_is_valid():
    """Uncommenting every optional setting the scaffolded sealab.toml shows still gives a valid file, and
    each one reaches the settings (steps, out_mb, the base image, the backend's url)."""
    text = DEFAULT_TOML.replace("# steps = 200", "steps = 200").replace("# out_mb = 256", "out_mb = 256") \
        .replace("# from = ", "from = ").replace("# url = ", "url = ")
    assert text.count("\n# ") < DEFAULT_TOML.count("\n# ")
    cfg = parse(text)
    assert cfg.run_spec.steps == 200 and cfg.run_spec.resources.out_mb == 256
    assert cfg.base_from == "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"
    assert cfg.backend == "local" and cfg.backend_options == (("url", "ssh://me@gpu-box"),)


@pytest.mark.parametrize("name", [f.name for f in fields(Resources)])
def test_every_resource_limit_refuses_zero_unless_zero_means_none(name):
    """Docker (and Kubernetes) read 0 as "no limit" for memory, cpus, pids and the tmpfs sizes, and the
    orchestrator needs room in /out: each of those refuses 0 with its lower bound and why. Only gpus = 0
    is valid (no GPU), and it refuses a negative count."""
    if name == "gpus":
        assert parse("[resources]\ngpus = 0").run_spec.resources.gpus == 0
        with pytest.raises(ConfigError, match=r"resources\.gpus must not be negative: -1"):
            parse("[resources]\ngpus = -1")
        return
    with pytest.raises(ConfigError) as info:
        parse(f"[resources]\n{name} = 0", "ws/sealab.toml")
    assert re.fullmatch(rf"ws/sealab\.toml: resources\.{name} must be at least [0-9.]+ \(.+\): 0", str(info.value))


def test_resources_of_the_file_are_the_run_spec_resources():
    """[resources] accepts exactly the fields of executor.types.Resources: a new limit cannot be added to
    the run spec without a TOML key (and a bound) here."""
    from executor.config import _Resources

    assert set(_Resources.model_fields) == {f.name for f in fields(Resources)}
    assert all(info.metadata for info in _Resources.model_fields.values())  # every one has a bound


@pytest.mark.parametrize("text, line", [
    ("[budget]\ntrain_seconds = 'ten'", "budget.train_seconds has the wrong type: expected a number, found 'ten'"),
    ("[resources]\npids = true", "resources.pids has the wrong type: expected an integer, found True"),
    ("[resources]\nmemory_mb = 4096.0", "resources.memory_mb has the wrong type: expected an integer, found 4096.0"),
    ("[base]\nfrom = 3", "base.from has the wrong type: expected a string, found 3"),
    ("budget = 3", "[budget] has the wrong type: expected a table, found 3"),
    ("[backend]\nurl = [1]", "backend.url must be a string, number or boolean: [1]"),
    ("[backend]\nname = 'aws'", "backend.name must be 'local', 'docker-host', 'slurm' or 'kubernetes', not 'aws'"),
    ("[resources]\ncpus = inf", "resources.cpus must be a finite number, not inf"),
])
def test_a_wrong_value_names_the_field_what_was_expected_and_what_was_found(text, line):
    """A value of the wrong type (or outside its choices) is one line: the file, the dotted field, what
    it must be and the value found; never pydantic's own multi-line report."""
    with pytest.raises(ConfigError) as info:
        parse(text, "sealab.toml")
    assert str(info.value) == f"sealab.toml: {line}"
    assert info.value.path == "sealab.toml" and info.value.exit_code == 2


def test_unknown_sections_and_keys_list_the_known_ones():
    """A typo'd section or key is named with the ones that exist (an unknown key is reported before
    anything else in the file)."""
    with pytest.raises(ConfigError) as info:
        parse("[budget]\ntrain_seconds = 'ten'\ntrain_secs = 1")
    assert str(info.value) == \
        "sealab.toml: unknown key budget.train_secs (known: train_seconds, grace_seconds, steps)"
    with pytest.raises(ConfigError) as info:
        parse("[resource]\ncpus = 1")
    assert str(info.value) == ("sealab.toml: unknown section [resource] "
                               "(known: metric, budget, run, resources, policy, base, harness, data, backend)")
    with pytest.raises(ConfigError, match="unknown key budget.budget_s"):
        parse("[budget]\nbudget_s = 10")  # the run spec's own name is no TOML key


def test_an_adopted_command_and_data_dirs_are_read_and_checked():
    """[harness] command is split like a shell line into the run spec (so it is part of the image ID);
    [data] dirs must lie under ~; without [budget] grace_seconds an adopted command's deadline is measured."""
    cfg = parse('[harness]\ncommand = "python3 train.py --tag \'a b\'"\n[data]\ndirs = ["~/.cache/x", "~/.cache/x/"]\n')
    assert cfg.run_spec.command == ("python3", "train.py", "--tag", "a b")
    assert cfg.data_dirs == ("~/.cache/x",)
    assert cfg.measured_grace
    assert not parse('[harness]\ncommand = "python3 train.py"\n[budget]\ngrace_seconds = 9\n').measured_grace
    assert parse("").run_spec.command is None and not parse("").measured_grace
    assert parse('[harness]\ncommand = "python3 a.py"').run_spec.digest() != \
        parse('[harness]\ncommand = "python3 b.py"').run_spec.digest()
    assert parse("").run_spec.to_dict().keys() == parse(DEFAULT_TOML).run_spec.to_dict().keys()
    assert "command" not in parse("").run_spec.to_dict()  # specs written before it keep their digest
    for text, said in (('[harness]\ncommand = ""', "harness.command must name a program"),
                       ('[harness]\ncommand = "a \'b"', "harness.command is not a shell-quoted command"),
                       ('[data]\ndirs = ["/data"]', "data.dirs[0] must be a directory under ~"),
                       ('[data]\ndirs = ["~/../etc"]', "data.dirs[0] must be a directory under ~"),
                       ('[data]\ndirs = "~/.cache/x"', "data.dirs has the wrong type: expected an array")):
        with pytest.raises(ConfigError) as info:
            parse(text)
        assert said in str(info.value)


def test_base_torch_is_cpu_unless_the_file_says_cuda():
    """[base] torch chooses the base's torch build: the wheel directory's CPU torch by default, PyPI's CUDA torch
    when it says "cuda"."""
    assert parse(DEFAULT_TOML).torch == "cpu"
    assert parse(DEFAULT_TOML.replace('# torch = "cuda"', 'torch = "cuda"')).torch == "cuda"
    assert parse("[base]\ntorch = 'cpu'\n").torch == "cpu"
