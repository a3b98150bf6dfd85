"""executor/hardening.py: one confinement, rendered for each engine and checked field by field (pure)."""

import json

import pytest

from executor.hardening import HOME_DIR, Hardening, go_value, template
from executor.types import Resources

H = Hardening.of(Resources(memory_mb=2048, cpus=1.5, pids=128, tmp_mb=256, home_mb=32))


def inspect_of(h: Hardening) -> dict:
    """`docker inspect` JSON of a container created as `h` asks (the shape the Engine API returns)."""
    fields = h.fields()
    return {"Image": "sha256:x", "Config": {"User": fields.pop("User"), "Cmd": ["python3"]},
            "HostConfig": {**fields, "Binds": None, "ShmSize": 67108864}}


def test_a_container_created_as_asked_has_no_problems():
    assert H.problems(inspect_of(H)) == []


@pytest.mark.parametrize("where, name, value", [
    ("HostConfig", "PidsLimit", 0), ("HostConfig", "PidsLimit", None), ("HostConfig", "Memory", 4 << 30),
    ("HostConfig", "MemorySwap", -1), ("HostConfig", "NanoCpus", 0), ("HostConfig", "ReadonlyRootfs", False),
    ("HostConfig", "NetworkMode", "bridge"), ("HostConfig", "CapDrop", []), ("HostConfig", "Privileged", True),
    ("HostConfig", "SecurityOpt", None), ("HostConfig", "Init", None), ("Config", "User", "0:0"),
    ("HostConfig", "Tmpfs", {"/tmp": "rw,size=99999m", HOME_DIR: "rw"}),
])
def test_every_weakened_field_is_named_with_expected_and_found(where, name, value):
    """Each field the Slurm node checks is checked here too: a change of any one is reported."""
    seen = inspect_of(H)
    seen[where][name] = value
    problems = H.problems(seen)
    assert [p[0] for p in problems] == [name]
    assert problems[0][1] == go_value(H.fields()[name]) and problems[0][2] == go_value(value)


def test_the_renderings_say_the_same_limits():
    """The Docker API arguments, the docker CLI options and the expected inspect lines agree."""
    api, cli = H.docker_api(), H.docker_cli()
    assert api["mem_limit"] == api["memswap_limit"] == 2048 << 20 and api["nano_cpus"] == 1_500_000_000
    assert api["pids_limit"] == 128 and api["tmpfs"] == H.tmpfs() and api["read_only"] and api["init"]
    pairs = dict(zip(cli, cli[1:]))
    assert pairs["--memory"] == pairs["--memory-swap"] == "2048m" and pairs["--cpus"] == "1.5"
    assert pairs["--pids-limit"] == "128" and pairs["--user"] == "1000:1000" and pairs["--network"] == "none"
    assert {"--read-only", "--init"} <= set(cli) and "--privileged" not in cli
    assert [cli[i + 1] for i, a in enumerate(cli) if a == "--tmpfs"] == [f"{k}:{v}" for k, v in H.tmpfs().items()]
    lines = dict(line.split("=", 1) for line in H.expected_lines())
    assert lines["Memory"] == str(2048 << 20) and lines["NanoCpus"] == "1500000000" and lines["Init"] == "true"
    assert json.loads(lines["Tmpfs"]) == H.tmpfs() and lines["CapDrop"] == '["ALL"]'
    assert "size=256m" in H.tmpfs()["/tmp"] and "size=32m" in H.tmpfs()[HOME_DIR]


def test_kubernetes_gets_the_same_confinement():
    ctx = H.k8s_security_context()
    assert ctx["read_only_root_filesystem"] and not ctx["privileged"] and not ctx["allow_privilege_escalation"]
    assert ctx["run_as_user"] == ctx["run_as_group"] == 1000 and ctx["drop"] == ["ALL"]


def test_templates_print_what_go_value_renders():
    """The Slurm node's inspect templates: JSON for lists and maps, plain for the rest."""
    assert template("Tmpfs") == "{{json .HostConfig.Tmpfs}}" and template("User") == "{{.Config.User}}"
    assert template("PidsLimit") == "{{.HostConfig.PidsLimit}}"
    assert go_value({"b": "1", "a": "2"}) == '{"a":"2","b":"1"}' and go_value(True) == "true"
