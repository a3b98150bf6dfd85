"""The one description of how an experiment's container is confined, and the one check of it.

`Hardening.of(resources)` is the value every backend starts from: rendered as Docker API arguments
(this machine's engine and a remote one), as `docker create` options (the Slurm node), as a
Kubernetes security context; and, before anything starts, compared field by field with what the
engine says it created (`problems`, on `docker inspect`'s JSON here; on the Slurm node, the same fields
printed by docker's templates and compared with `expected_lines`). A field added here is applied and
checked by every backend at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from executor.types import Resources

CONTAINER_USER = "1000:1000"
HOME_DIR = "/home/sealab"


@dataclass(frozen=True, slots=True)
class Hardening:
    pids: int
    memory_mb: int
    cpus: float
    tmp_mb: int
    home_mb: int
    user: str = CONTAINER_USER
    read_only: bool = True
    network: str = "none"
    cap_drop: tuple[str, ...] = ("ALL",)
    security_opt: tuple[str, ...] = ("no-new-privileges",)
    init: bool = True  # a real PID 1 reaps and forwards signals, so nothing outlives the kill
    privileged: bool = False

    @classmethod
    def of(cls, resources: Resources) -> Hardening:
        return cls(pids=resources.pids, memory_mb=resources.memory_mb, cpus=resources.cpus,
                   tmp_mb=resources.tmp_mb, home_mb=resources.home_mb)

    @property
    def nano_cpus(self) -> int:
        return int(round(self.cpus * 1e9))

    @property
    def uid(self) -> int:
        return int(self.user.split(":", 1)[0])

    def tmpfs(self) -> dict[str, str]:
        """The /tmp and HOME tmpfs mounts with their options (size, owner, mode)."""
        return {"/tmp": f"rw,nosuid,nodev,size={self.tmp_mb}m,mode=1777",
                HOME_DIR: f"rw,nosuid,nodev,size={self.home_mb}m,uid={self.uid},gid={self.uid},mode=0700"}

    # -- what the engine reports back ---------------------------------------------------------------
    def fields(self) -> dict[str, Any]:
        """The checked fields as `docker inspect` names them (HostConfig's, and Config.User as `User`)."""
        memory = self.memory_mb << 20
        return {"User": self.user, "ReadonlyRootfs": self.read_only, "NetworkMode": self.network,
                "CapDrop": list(self.cap_drop), "Privileged": self.privileged,
                "SecurityOpt": list(self.security_opt), "PidsLimit": self.pids, "Memory": memory,
                "MemorySwap": memory, "NanoCpus": self.nano_cpus, "Init": self.init, "Tmpfs": self.tmpfs()}

    def expected_lines(self) -> list[str]:
        """`FIELD=value` as docker's `{{…}}` / `{{json …}}` templates print each field (see `template`)."""
        return [f"{name}={go_value(value)}" for name, value in self.fields().items()]

    def problems(self, inspect: dict[str, Any]) -> list[tuple[str, str, str]]:
        """(field, expected, actual) for every checked field that a container's `docker inspect` JSON
        does not match; empty when it is confined as asked."""
        host, config = inspect.get("HostConfig") or {}, inspect.get("Config") or {}
        out = []
        for name, wanted in self.fields().items():
            actual = config.get("User") if name == "User" else host.get(name)
            if go_value(actual) != go_value(wanted):
                out.append((name, go_value(wanted), go_value(actual)))
        return out

    # -- renderings ---------------------------------------------------------------------------------
    def docker_api(self) -> dict[str, Any]:
        """Keyword arguments of docker-py's `create_host_config` (the user goes to `create_container`)."""
        return {"read_only": self.read_only, "network_mode": self.network, "cap_drop": list(self.cap_drop),
                "security_opt": list(self.security_opt), "pids_limit": self.pids,
                "mem_limit": self.memory_mb << 20, "memswap_limit": self.memory_mb << 20,
                "nano_cpus": self.nano_cpus, "tmpfs": self.tmpfs(), "init": self.init,
                "privileged": self.privileged}

    def docker_cli(self) -> list[str]:
        """The same as `docker create` options."""
        args = ["--read-only"] if self.read_only else []
        args += ["--network", self.network]
        for cap in self.cap_drop:
            args += ["--cap-drop", cap]
        for opt in self.security_opt:
            args += ["--security-opt", opt]
        args += ["--user", self.user, "--pids-limit", str(self.pids), "--memory", f"{self.memory_mb}m",
                 "--memory-swap", f"{self.memory_mb}m", "--cpus", f"{self.cpus:g}"]
        args += ["--init"] if self.init else []
        args += ["--privileged"] if self.privileged else []
        for target, options in self.tmpfs().items():
            args += ["--tmpfs", f"{target}:{options}"]
        return args

    def k8s_security_context(self) -> dict[str, Any]:
        """Keyword arguments of the Kubernetes client's V1SecurityContext (capabilities as a list to
        drop; the caller wraps it in V1Capabilities). Kubernetes has no per-pod pids limit or init: the
        node's podPidsLimit applies, and the wrapper is PID 1."""
        return {"read_only_root_filesystem": self.read_only, "run_as_non_root": True, "run_as_user": self.uid,
                "run_as_group": self.uid, "privileged": self.privileged,
                "allow_privilege_escalation": "no-new-privileges" not in self.security_opt,
                "drop": list(self.cap_drop)}


def gpu_requests(gpus: int) -> list[tuple[int, list[list[str]]]]:
    """The (Count, Capabilities) device requests of a Docker container of a run with `gpus` GPUs: one
    request for that many GPUs, or none (pure). Applied by docker_engine.create, checked before start
    by backends.interface.check_container."""
    return [(gpus, [["gpu"]])] if gpus > 0 else []


def go_value(value: Any) -> str:
    """A value as docker's Go templates print it: booleans `true`/`false`, numbers plainly, lists and
    maps as compact JSON (maps with sorted keys, as Go's encoder writes them), None as `<no value>`."""
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, dict)):
        if isinstance(value, dict):
            value = dict(sorted(value.items()))
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def template(name: str) -> str:
    """The `docker inspect --format` template that prints field `name` as `go_value` renders it."""
    if name == "User":
        return "{{.Config.User}}"
    if name in ("CapDrop", "SecurityOpt", "Tmpfs"):
        return "{{json .HostConfig.%s}}" % name
    return "{{.HostConfig.%s}}" % name
