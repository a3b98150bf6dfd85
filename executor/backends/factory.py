"""Which backend runs an experiment: `make_backend(name, …)` from `[backend]` of sealab.toml or
--backend. Kept apart from the interface (executor/backends/interface.py), which the Slurm and Kubernetes
adapters build on, so that nothing imports in a circle.
"""

from __future__ import annotations

from typing import Mapping

from executor.backends.interface import Backend
from executor.backends.local import DockerBackend
from executor.config import BACKENDS
from executor.docker_engine import Engine
from executor.errors import ConfigError


def make_backend(name: str, engine: Engine | None, options: Mapping[str, object] | None = None) -> Backend:
    """The backend called `name`, configured from `[backend]` of sealab.toml (or --backend).

    Raises:
        ConfigError: an unknown backend, or one whose settings are missing.
        EngineUnavailable: the remote engine does not answer.
    """
    options = dict(options or {})
    if name == "local":
        if engine is None:
            engine = Engine.connect()
        return DockerBackend(engine)
    if name == "docker-host":
        url = options.get("url")
        if not isinstance(url, str) or not url:
            raise ConfigError("sealab.toml", 'backend "docker-host" needs [backend] url = "ssh://user@host" or "tcp://host:2376"')
        tls = bool(options.get("tls", url.startswith("tcp://")))
        cert_path = options.get("cert_path")
        remote = Engine.connect(base_url=url, tls=tls, cert_path=str(cert_path) if cert_path else None)
        return DockerBackend(remote, remote=True, where=url, source=engine)
    if name == "slurm":
        from executor.backends.slurm import SlurmBackend  # imported when chosen: the adapters' clients load slowly

        return SlurmBackend.from_options(engine or Engine.connect(), options)
    if name == "kubernetes":
        from executor.backends.k8s import KubernetesBackend

        return KubernetesBackend.from_options(options, engine)
    raise ConfigError("sealab.toml", f"unknown backend {name!r} (known: {', '.join(BACKENDS)})")
