"""Docker adapter for experiment images and containers: load, inspect, create, start, wait, collect.

The base image's builds live beside it in docker_build.py; both translate errors only through
`engine_errors` here. It never pulls, never uses `containers.run`, and never refers to an image by tag when creating a
container: the caller passes the image ID it verified. Docker and requests errors become
EngineUnavailable here and nowhere else.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Sequence

import docker
import requests
from docker.types import DeviceRequest

from executor.errors import BaseImageError, EngineUnavailable, IdentityMismatch, NoGpu
from executor.hardening import Hardening, gpu_requests
from executor.types import Resources

OUT_DIR = "/out"
IN_DIR = "/in"
LABEL_EXPERIMENT = "sealab.experiment"
LABEL_READER = "sealab.reader"  # a never-started container that only reads a file of an image


@contextlib.contextmanager
def engine_errors(doing: str = "", *, image_errors: bool = False) -> Iterator[None]:
    """Translate docker-py, transport and socket errors into sealab errors: the one choke point.

    An API error while importing or building an image (`image_errors=True`) is the image's fault and
    becomes BaseImageError; every other error of the engine becomes EngineUnavailable.
    """
    prefix = f"{doing}: " if doing else ""
    try:
        yield
    except docker.errors.BuildError as exc:
        raise BaseImageError(f"{prefix}{exc.msg}", build_log_text(exc.build_log)) from exc
    except docker.errors.APIError as exc:
        problem = f"{prefix}{exc.explanation or exc}"
        if image_errors:
            raise BaseImageError(problem) from exc
        raise EngineUnavailable(problem[:300]) from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EngineUnavailable(f"{prefix}{first}"[:300]) from exc


def build_log_text(log: Any) -> str:
    """The last 8 kB of a classic-builder log (a list of stream/error records)."""
    lines = [str(rec.get("stream") or rec.get("error") or "") if isinstance(rec, dict) else str(rec)
             for rec in log or ()]
    return "".join(lines)[-8000:]


# what an engine says when a container's device request for GPUs finds no runtime that serves it
NO_GPU_SIGNS = ("could not select device driver", "nvidia-container-cli", "unknown or invalid runtime name: nvidia")


def no_gpu(gpus: int, said: str) -> str:
    """The one line for a run that asks for GPUs on an engine that has none to give (pure)."""
    first = said.splitlines()[0] if said else ""
    return (f"the run asks for {gpus} GPU{'s' if gpus > 1 else ''} ([resources] gpus = {gpus}) but this Docker engine "
            f"cannot give one ({first[:160]}): install the NVIDIA driver and container toolkit on the host "
            "(docs/cloud-gpu.md), or set gpus = 0 to train on the CPU")


@dataclass(frozen=True, slots=True)
class Exit:
    """How a container ended, as the engine saw it."""

    exit_code: int | None  # None: still running when the deadline passed
    oom_killed: bool
    timed_out: bool
    over_cap: str | None = None  # the run broke a cap the orchestrator enforces (/out's size): why


class Engine:
    """A connection to one Docker engine."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self.api = client.api

    @classmethod
    def connect(cls, base_url: str | None = None, timeout: int = 120, tls: bool = False,
                cert_path: str | None = None) -> Engine:
        """Connect to DOCKER_HOST (or `base_url`) and check the engine answers.

        `ssh://user@host` goes through the system's ssh client (its config and keys); `tls=True`
        verifies the engine against `cert_path` (ca.pem, cert.pem, key.pem; default $DOCKER_CERT_PATH
        or ~/.docker), as `docker --tlsverify` does.

        Raises:
            EngineUnavailable: nothing answers there.
        """
        where = f"{base_url}: " if base_url else ""
        with engine_errors(where.rstrip(": ")):
            if base_url and tls:
                certs = Path(cert_path or os.environ.get("DOCKER_CERT_PATH") or Path.home() / ".docker")
                config = docker.tls.TLSConfig(client_cert=(str(certs / "cert.pem"), str(certs / "key.pem")),
                                              ca_cert=str(certs / "ca.pem"), verify=True)
                client = docker.DockerClient(base_url=base_url, timeout=timeout, tls=config)
            elif base_url:
                client = docker.DockerClient(base_url=base_url, timeout=timeout,
                                             use_ssh_client=base_url.startswith("ssh://"))
            else:
                client = docker.DockerClient.from_env(timeout=timeout)
            client.ping()
            return cls(client)

    def ping(self) -> None:
        """Raises EngineUnavailable unless the engine answers now."""
        with engine_errors():
            self.api.ping()

    # -- images -------------------------------------------------------------------------------------
    def image_id(self, ref: str) -> str | None:
        """The ID `ref` (a name or an ID) resolves to now, or None."""
        with engine_errors():
            try:
                return self.api.inspect_image(ref)["Id"]
            except docker.errors.ImageNotFound:
                return None

    def image_labels(self, image: str) -> dict[str, str]:
        with engine_errors():
            return self.api.inspect_image(image)["Config"].get("Labels") or {}

    def load(self, archive: bytes, expected_id: str) -> None:
        """Load a `docker save` archive and check the engine now holds exactly `expected_id`.

        Raises:
            IdentityMismatch: the engine reports another ID for what it loaded.
        """
        with engine_errors():
            images = self.client.images.load(archive)
        loaded = sorted({img.id for img in images})
        if loaded != [expected_id]:
            raise IdentityMismatch("loaded image", expected_id, ", ".join(loaded) or "nothing")

    def load_written(self, write: Callable[[IO[bytes]], None], expected_id: str) -> None:
        """Load the archive that `write(out)` produces, streamed to the engine through a pipe (never whole
        in memory), and check the engine now holds `expected_id`.

        Raises:
            IdentityMismatch: the engine does not hold `expected_id` afterwards.
            BaseImageError: the engine rejected the archive.
        """
        read_fd, write_fd = os.pipe()
        failure: list[BaseException] = []

        def produce() -> None:
            with open(write_fd, "wb") as sink:
                try:
                    write(sink)
                except BaseException as exc:  # raised below, after the engine has answered
                    failure.append(exc)

        writer = threading.Thread(target=produce, name="sealab-archive-writer", daemon=True)
        writer.start()
        try:
            with open(read_fd, "rb") as stream:
                self.load_stream(iter(lambda: stream.read(1 << 20), b""))
        finally:
            writer.join()
        if failure and not isinstance(failure[0], BrokenPipeError):
            raise failure[0]
        held = self.image_id(expected_id)
        if held != expected_id:
            raise IdentityMismatch("loaded image", expected_id, held or "nothing")

    def tag(self, image: str, name: str) -> None:
        repo, _, tag = name.rpartition(":")
        with engine_errors():
            self.api.tag(image, repo, tag, force=True)

    def remove_image(self, ref: str) -> None:
        with engine_errors():
            with contextlib.suppress(docker.errors.ImageNotFound):
                self.api.remove_image(ref, force=True)

    # -- containers ---------------------------------------------------------------------------------
    def create(self, image_id: str, *, name: str, resources: Resources, out_dir: Path | None,
               env: dict[str, str], labels: dict[str, str], command: Sequence[str] | None = None,
               in_dir: Path | None = None) -> str:
        """Create (not start) a hardened container from an image ID; returns the container ID.

        The host environment is never passed: `env` is the whole environment besides the image's.
        `out_dir` is bind-mounted at /out; None (a remote engine) gives /out a volume of its own, read
        back with `copy_out`. `in_dir` is bind-mounted read-only at /in; with `out_dir=None` /in is a
        volume instead, filled with `copy_in` before the start. `command` replaces the image's CMD.
        """
        binds = {}
        volumes = None
        if out_dir is not None:
            binds[str(out_dir)] = {"bind": OUT_DIR, "mode": "rw"}
            if in_dir is not None:
                binds[str(in_dir)] = {"bind": IN_DIR, "mode": "ro"}
        else:
            volumes = [OUT_DIR] + ([IN_DIR] if in_dir is not None else [])
        hardening = Hardening.of(resources)
        host_config = self.api.create_host_config(
            **hardening.docker_api(),
            binds=binds or None,
            device_requests=[DeviceRequest(count=count, capabilities=caps)
                             for count, caps in gpu_requests(resources.gpus)] or None,
            shm_size="1g" if resources.gpus else None,
        )
        with engine_errors():
            try:
                created = self.api.create_container(
                    image_id, command=list(command) if command else None, user=hardening.user, environment=env,
                    labels=labels, name=name, network_disabled=True, host_config=host_config, volumes=volumes,
                )
            except docker.errors.ImageNotFound:
                raise IdentityMismatch("image to start", image_id, "gone from the engine") from None
        return created["Id"]

    def run_networked(self, image_id: str, command: Sequence[str], *, binds: dict[str, tuple[str, str]],
                      env: dict[str, str], user: str, on_line: Callable[[str], None]) -> int:
        """Run `command` in a plain container WITH the default network (only `sealab base --prepare`
        does: a build step, never an experiment); `binds` maps host paths to (container path, mode).
        Streams its output lines to `on_line`, removes it, and returns its exit code."""
        host_config = self.api.create_host_config(
            binds={host: {"bind": target, "mode": mode} for host, (target, mode) in binds.items()},
            tmpfs={"/tmp": "size=1g", "/home/sealab": "size=1g"}, read_only=True, cap_drop=["ALL"],
            security_opt=["no-new-privileges"], init=True)
        with engine_errors():
            created = self.api.create_container(image_id, command=list(command), user=user, environment=env,
                                                working_dir="/workspace", host_config=host_config,
                                                labels={"sealab.phase": "prepare"})
            container = created["Id"]
            try:
                self.api.start(container)
                pending = b""
                for chunk in self.api.attach(container, stream=True, logs=True):
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        on_line(line.decode(errors="replace").rstrip("\r"))
                if pending:
                    on_line(pending.decode(errors="replace"))
                return int(self.api.wait(container)["StatusCode"])
            finally:
                with contextlib.suppress(docker.errors.APIError):
                    self.api.remove_container(container, force=True)

    def inspect(self, container: str) -> dict:
        """The engine's whole description of a container (`docker inspect`)."""
        with engine_errors():
            return self.api.inspect_container(container)

    def start(self, container: str, *, gpus: int = 0) -> None:
        """Start a created container. With `gpus` > 0 (its HostConfig requests that many), an engine
        without a GPU runtime refuses the start: NoGpu (an EngineUnavailable) says so in one line, and what to do."""
        try:
            with engine_errors():
                self.api.start(container)
        except EngineUnavailable as exc:
            if gpus > 0 and any(sign in exc.problem for sign in NO_GPU_SIGNS):
                raise NoGpu(no_gpu(gpus, exc.problem)) from exc
            raise

    def wait(self, container: str, deadline_s: float, *, out_dir: Path | None = None,
             out_cap_mb: int | None = None, poll_s: float = 0.25) -> Exit:
        """Wait for the container to exit; kill it once `deadline_s` seconds have passed.

        With `out_dir` (the host side of the /out bind mount) and `out_cap_mb`, a watchdog measures
        /out every `poll_s` seconds and kills the container as soon as it holds more than the cap
        (`over_cap` says so; also set when a run that exited on its own left more than the cap).
        A bind mount has no size limit of its own, so this bounds it: the excess is what one
        writer manages within one poll.
        """
        if out_dir is None or out_cap_mb is None:
            return self._wait_plain(container, deadline_s)
        cap = out_cap_mb << 20
        deadline = time.monotonic() + deadline_s
        over: str | None = None
        timed_out = False
        while not self._exited_within(container, min(poll_s, max(0.0, deadline - time.monotonic()))):
            if dir_usage(out_dir, stop_above=cap) > cap:
                self.kill(container)
                over = f"/out exceeded its cap of {out_cap_mb} MB; killed"
                break
            if time.monotonic() >= deadline:
                self.kill(container)
                timed_out = True
                break
        if over is None and not timed_out and dir_usage(out_dir, stop_above=cap) > cap:
            over = f"/out exceeded its cap of {out_cap_mb} MB"
        with engine_errors():
            state = self.api.inspect_container(container)["State"]
        return Exit(None if timed_out else state.get("ExitCode"), bool(state.get("OOMKilled")), timed_out, over)

    def _exited_within(self, container: str, seconds: float) -> bool:
        """Whether the container exits within `seconds` (it may have already)."""
        with engine_errors():
            try:
                self.api.wait(container, timeout=max(0.05, seconds))
                return True
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError) as exc:
                if "timed out" not in str(exc).lower() and not isinstance(exc, requests.exceptions.ReadTimeout):
                    raise
                return False

    def _wait_plain(self, container: str, deadline_s: float) -> Exit:
        with engine_errors():
            try:
                self.api.wait(container, timeout=max(1, deadline_s))
                timed_out = False
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError) as exc:
                if "timed out" not in str(exc).lower() and not isinstance(exc, requests.exceptions.ReadTimeout):
                    raise
                timed_out = True
        if timed_out:
            self.kill(container)
        with engine_errors():
            state = self.api.inspect_container(container)["State"]
        return Exit(None if timed_out else state.get("ExitCode"), bool(state.get("OOMKilled")), timed_out)

    def kill(self, container: str) -> None:
        with engine_errors():
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                self.api.kill(container)
            with contextlib.suppress(docker.errors.NotFound):
                self.api.wait(container, timeout=30)

    def logs(self, container: str) -> bytes:
        """The whole output at once: only for small outputs (a base's preparation); runs use log_chunks."""
        with engine_errors():
            return self.api.logs(container, stdout=True, stderr=True)

    def log_chunks(self, container: str) -> Iterator[bytes]:
        """A stopped container's stdout and stderr as they were interleaved, streamed in chunks (never the
        whole output in memory)."""
        with engine_errors():
            yield from self.api.logs(container, stdout=True, stderr=True, stream=True, follow=False)

    def remove(self, container: str) -> None:
        """Force-remove a container with its anonymous volumes (a remote run's /in and /out)."""
        with engine_errors():
            with contextlib.suppress(docker.errors.NotFound):
                self.api.remove_container(container, force=True, v=True)

    def copy_in(self, container: str, src_dir: Path, dest: str = IN_DIR) -> None:
        """Put the files of `src_dir` into `dest` of a created container (a tar over the API)."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for path in sorted(src_dir.iterdir()):
                info = tar.gettarinfo(str(path), arcname=path.name)
                info.uid = info.gid = 1000
                info.uname = info.gname = ""
                with path.open("rb") as f:
                    tar.addfile(info, f)
        with engine_errors(f"copying inputs into {dest}"):
            self.api.put_archive(container, dest, buf.getvalue())

    def copy_out(self, container: str, dest_dir: Path, src: str = OUT_DIR, limit_mb: int = 4096) -> None:
        """Copy the regular files of `src` of a (stopped) container into `dest_dir`, flat, at most `limit_mb`."""
        with engine_errors(f"copying {src} out"):
            try:
                stream, _stat = self.api.get_archive(container, src)
            except docker.errors.NotFound:
                return
            data = b"".join(stream)
        if len(data) > limit_mb << 20:
            raise EngineUnavailable(f"{src} of the run holds more than {limit_mb} MB; not copied")
        dest_dir.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if member.isfile() and name and member.name.count("/") == 1:
                    extracted = tar.extractfile(member)
                    if extracted is not None:
                        (dest_dir / name).write_bytes(extracted.read())

    def experiment_containers(self) -> list[tuple[str, str]]:
        """(container ID, experiment ID) of every container sealab created on this engine."""
        with engine_errors():
            return [(c["Id"], c["Labels"][LABEL_EXPERIMENT])
                    for c in self.api.containers(all=True, filters={"label": LABEL_EXPERIMENT})]

    def remove_experiment_containers(self, experiment_id: str | None = None) -> list[str]:
        """Force-remove the containers of one experiment (or of all, with None); returns their IDs."""
        label = LABEL_EXPERIMENT if experiment_id is None else f"{LABEL_EXPERIMENT}={experiment_id}"
        with engine_errors():
            found = [c["Id"] for c in self.api.containers(all=True, filters={"label": label})]
        for container in found:
            self.remove(container)
        return found

    # -- archives (sealab export / import) ----------------------------------------------------------
    def save(self, images: list[str], fileobj: Any, chunk_size: int = 1 << 20) -> int:
        """Stream one `docker save` tar of all `images` (IDs: the archive keeps them) into `fileobj`.

        Saved together, layers the images share are stored once. Returns the number of bytes written.
        """
        written = 0
        with engine_errors("saving images"):
            res = self.api._get(self.api._url("/images/get"), params={"names": list(images)}, stream=True,
                                timeout=None)
            self.api._raise_for_status(res)
            for chunk in res.iter_content(chunk_size, decode_unicode=False):
                fileobj.write(chunk)
                written += len(chunk)
        return written

    def load_stream(self, chunks: Any) -> list[str]:
        """`docker load` a tar given as a file object or an iterable of byte chunks (see load_stream)."""
        return load_stream(self.api, chunks)

    def child_images(self, image_id: str) -> list[str]:
        """IDs of the images (intermediate ones included) whose parent is `image_id`."""
        with engine_errors():
            return sorted({img["Id"] for img in self.api.images(all=True) if img.get("ParentId") == image_id})

    # -- registry (sealab push / reproduce by repo@sha256:…) ----------------------------------------
    def push_image(self, repo: str, tag: str) -> tuple[str | None, str | None]:
        """Push the local `repo:tag` to its registry: `(manifest digest, None)` or `(None, one-line error)`."""
        digest: str | None = None
        with engine_errors(f"pushing {repo}:{tag}"):
            try:
                for rec in self.api.push(repo, tag, stream=True, decode=True):
                    if rec.get("error") or rec.get("errorDetail"):
                        problem = (rec.get("errorDetail") or {}).get("message") or rec.get("error")
                        return None, " ".join(str(problem).split())[:300]
                    aux = rec.get("aux") or {}
                    if aux.get("Digest"):
                        digest = str(aux["Digest"])
            except docker.errors.APIError as exc:
                return None, " ".join(str(exc.explanation or exc).split())[:300]
        return (digest, None) if digest else (None, "the engine reported no manifest digest")

    def pull_by_digest(self, repo: str, digest: str) -> str | None:
        """Pull `repo@digest` (by digest, never by tag): None, or a one-line error."""
        if not digest.startswith("sha256:"):
            return f"{digest}: not a sha256 digest"
        with engine_errors(f"pulling {repo}@{digest}"):
            try:
                for rec in self.api.pull(repo, tag=digest, stream=True, decode=True):
                    if rec.get("error") or rec.get("errorDetail"):
                        problem = (rec.get("errorDetail") or {}).get("message") or rec.get("error")
                        return " ".join(str(problem).split())[:300]
            except docker.errors.APIError as exc:
                return " ".join(str(exc.explanation or exc).split())[:300]
        return None

    def repo_digests(self, image: str) -> list[str]:
        """The `repo@sha256:…` references the engine knows for `image` (empty when it is absent)."""
        with engine_errors():
            try:
                return list(self.api.inspect_image(image).get("RepoDigests") or [])
            except docker.errors.ImageNotFound:
                return []

    # -- files of an image (the trusted scorer's validation split, executor/valdata.py) -------------
    def read_file(self, image_id: str, path: str, limit_mb: int = 1024) -> bytes:
        """The bytes of the regular file `path` inside `image_id`, read without running anything.

        A container is created from the image (never started: no command runs, no network) only to
        `get_archive` the file, then removed.

        Raises:
            BaseImageError: the image has no regular file at `path`, or it is over `limit_mb`.
            IdentityMismatch: the image is gone from the engine.
            EngineUnavailable: any other engine error.
        """
        with engine_errors(f"reading {path} of {image_id[:19]}"):
            try:
                container = self.api.create_container(image_id, command=["/nonexistent"], network_disabled=True,
                                                      labels={LABEL_READER: "1"})["Id"]
            except docker.errors.ImageNotFound:
                raise IdentityMismatch("image to read", image_id, "gone from the engine") from None
            try:
                try:
                    stream, stat = self.api.get_archive(container, path)
                except docker.errors.NotFound:
                    raise BaseImageError(f"{image_id[:19]} has no {path}") from None
                if stat.get("size", 0) > limit_mb << 20:
                    raise BaseImageError(f"{path} of {image_id[:19]} is over {limit_mb} MB")
                data = b"".join(stream)
            finally:
                with contextlib.suppress(docker.errors.NotFound):
                    self.api.remove_container(container, force=True, v=True)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            member = tar.next()
            extracted = tar.extractfile(member) if member is not None and member.isfile() else None
            if extracted is None:
                raise BaseImageError(f"{path} of {image_id[:19]} is not a regular file")
            return extracted.read()


def load_stream(api: docker.APIClient, chunks: Any) -> list[str]:
    """`docker load` a tar given as a file object or an iterable of byte chunks, without holding it in
    memory; returns what the engine says it loaded (image IDs, or names for tagged images).

    Raises:
        BaseImageError: the engine rejected the archive.
    """
    loaded: list[str] = []
    with engine_errors("loading images", image_errors=True):
        res = api._post(api._url("/images/load"), data=chunks, params={"quiet": True}, stream=True, timeout=None)
        api._raise_for_status(res)
        for line in api._stream_helper(res, decode=True):
            if "errorDetail" in line or "error" in line:
                problem = (line.get("errorDetail") or {}).get("message") or line.get("error")
                raise BaseImageError(f"loading images: {problem}")
            text = str(line.get("stream") or "").strip()
            for prefix in ("Loaded image ID: ", "Loaded image: "):
                if text.startswith(prefix):
                    loaded.append(text[len(prefix):])
    return loaded


def dir_usage(path: Path, stop_above: int | None = None) -> int:
    """Bytes a directory tree takes, for the /out cap: each entry counts at least one 4 KiB block (a
    flood of empty files counts too) and a sparse file its apparent size; symlinks are not followed.
    Stops counting once past `stop_above`. Unreadable entries count as nothing (run as root, or as
    the owner of the tree, to see all of it)."""
    total, pending = 0, [str(path)]
    while pending:
        try:
            entries = os.scandir(pending.pop())
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                total += max(st.st_size, st.st_blocks * 512, 4096)
                if stop_above is not None and total > stop_above:
                    return total
                if stat.S_ISDIR(st.st_mode):
                    pending.append(entry.path)
    return total


def prepare_out_dir(path: Path) -> None:
    """Create the one writable directory of a run, writable by the container's uid 1000 only."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(path, 1000, 1000)
        path.chmod(0o755)
    else:
        path.chmod(0o777)
