"""The Docker backends: `local` (this machine's engine, /in and /out bind-mounted) and `docker-host`
(a remote engine over ssh:// or TCP with TLS: the image is loaded there and verified there, /in and
/out travel as archives). Both start the container through executor/docker_engine.py, hardened as
executor/hardening.py says, and check it before it starts (interface.check_container).
"""

from __future__ import annotations

import time

from executor.backends.interface import Finished, Job, Started, check_container, ensure_image, verify_image
from executor.docker_engine import LABEL_EXPERIMENT, Engine, prepare_out_dir
from executor.errors import EngineUnavailable, IdentityMismatch


class DockerBackend:
    """A Docker engine: this machine's (`local`, /in and /out bind-mounted) or a remote one
    (`docker-host`: the image is loaded there and verified there; /in and /out travel as archives)."""

    def __init__(self, engine: Engine, *, remote: bool = False, where: str = "local",
                 source: Engine | None = None) -> None:
        self.engine, self.remote, self.where, self.source = engine, remote, where, source
        self.name = "docker-host" if remote else "local"

    def ensure_base(self, base_id: str) -> None:
        """A remote engine gets the base once, streamed from this machine's engine (same ID, checked)."""
        if self.engine.image_id(base_id) == base_id:
            return
        if self.source is None or self.source.image_id(base_id) != base_id:
            raise IdentityMismatch(f"base image on {self.where}", base_id, "absent there and here")
        transfer(self.source, self.engine, base_id)

    def run(self, job: Job) -> Finished:
        return self.finish(self.start(job))

    def start(self, job: Job) -> Started:
        """Load and verify the image, create the container, check it and start it; `finish` waits for it
        (the deadline counts from then). A started phase that will not be waited for is `abandon`ed."""
        engine, sealed = self.engine, job.sealed
        timings: dict[str, float] = {}
        t = time.monotonic()
        if self.remote:
            self.ensure_base(sealed.labels["sealab.base"])
        displaced = ensure_image(engine, sealed)
        timings["load"] = time.monotonic() - t
        t = time.monotonic()
        verify_image(engine, sealed)
        prepare_out_dir(job.out_dir)
        container: str | None = None
        try:
            container = engine.create(
                sealed.image_id, name=job.name, resources=job.spec.resources,
                out_dir=None if self.remote else job.out_dir.resolve(),
                in_dir=job.in_dir.resolve() if job.in_dir is not None else None, command=job.command,
                env=dict(job.env), labels={LABEL_EXPERIMENT: job.experiment_id, "sealab.phase": job.phase,
                                           "sealab.commit": sealed.labels.get("org.opencontainers.image.revision", "")},
            )
            check_container(engine, container, sealed, job.spec.resources, job.command)
            if self.remote and job.in_dir is not None:
                engine.copy_in(container, job.in_dir)
            timings["verify"] = time.monotonic() - t
            t = time.monotonic()
            engine.start(container, gpus=job.spec.resources.gpus)
            timings["start"] = time.monotonic() - t
        except BaseException:
            if container is not None:
                self._remove(container)
            raise
        return Started(job, container, timings, displaced)

    def finish(self, started: Started) -> Finished:
        """Wait for a started phase (killing it at its deadline), collect its output and /out, remove it."""
        engine, job, container = self.engine, started.job, started.container
        timings = dict(started.timings)
        t = time.monotonic()
        try:
            end = engine.wait(container, job.deadline, out_dir=None if self.remote else job.out_dir,
                              out_cap_mb=job.out_cap)
            output = job.store_output(engine.log_chunks(container))
            if self.remote:
                engine.copy_out(container, job.out_dir)
        except BaseException:
            self._remove(container)
            raise
        engine.remove(container)
        timings["run"] = time.monotonic() - t + timings.pop("start", 0.0)
        return Finished(end.exit_code, end.oom_killed, end.timed_out, output, self.where, timings,
                        end.over_cap, started.displaced)

    def abandon(self, started: Started) -> None:
        """Remove a started phase that will not be waited for (errors ignored: `recover` removes leftovers)."""
        self._remove(started.container)

    def _remove(self, container: str) -> None:
        try:
            self.engine.remove(container)
        except EngineUnavailable:
            pass

    def cleanup(self, experiment_id: str) -> list[str]:
        return self.engine.remove_experiment_containers(experiment_id)


def transfer(source: Engine, target: Engine, image_id: str) -> None:
    """Stream `docker save` of `image_id` from one engine into `docker load` of another; check the ID.

    Raises:
        IdentityMismatch: the target reports another ID afterwards.
    """
    target.load_written(lambda sink: source.save([image_id], sink), image_id)
