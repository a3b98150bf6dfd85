"""Docker adapter for the base image: build, pull by digest, find, tag, inspect, read a file.

The base-image half of the Docker adapter (docker_engine.py holds the experiment half). Everything
talks to the engine through docker-py's low-level APIClient, and every docker error is translated
by docker_engine.engine_errors: engine failures become EngineUnavailable, a failed import or build
BaseImageError.
"""

from __future__ import annotations

import collections
import contextlib
import io
import re
import tarfile
from collections.abc import Callable, Mapping
from typing import IO, Any

import docker
import requests

from executor.docker_engine import engine_errors
from executor.errors import BaseImageError

BUILD_TAIL_LINES = 60
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # the classic builder colours stderr lines


def connect(engine: Any = None, *, timeout: int = 300) -> docker.APIClient:
    """A low-level client from what the caller has: None (DOCKER_HOST or the default socket), an
    APIClient, a DockerClient, or anything with an `.api` APIClient (executor.docker_engine.Engine).

    Raises:
        EngineUnavailable: nothing answers.
    """
    if engine is not None:
        api = getattr(engine, "api", engine)
        if not isinstance(api, docker.APIClient):
            raise TypeError(f"not a docker client: {engine!r}")
        return api
    with engine_errors("connecting"):
        api = docker.APIClient(**docker.utils.kwargs_from_env(), version="auto", timeout=timeout)
        api.ping()
        return api


# -- images -----------------------------------------------------------------------------------------

def inspect(api: docker.APIClient, ref: str) -> dict[str, Any] | None:
    """The engine's inspect record of `ref` (name or ID), or None when it has no such image."""
    with engine_errors(f"inspecting {ref}"):
        try:
            return api.inspect_image(ref)
        except docker.errors.ImageNotFound:
            return None
        except docker.errors.APIError as exc:  # an unparsable reference is "not present" too
            if exc.status_code == 400:
                return None
            raise


def pull_digest(api: docker.APIClient, ref: str) -> bool:
    """Try to pull a `repo@sha256:` reference; False when no registry gives it to us."""
    repo, _, digest = ref.rpartition("@")
    try:
        api.pull(repo, tag=digest)
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        return False
    return inspect(api, ref) is not None


_LABEL_STEP = re.compile(r"#\(nop\)\s+LABEL\s+(.*)$", re.DOTALL)
_LABEL_PAIR = re.compile(r"\"?([\w.\-/]+)\"?=(?:'([^']*)'|\"([^\"]*)\"|(\S*))")


def own_labels(history: list[dict[str, Any]]) -> dict[str, str]:
    """The labels set by the run of LABEL steps at the top of an image's history (newest first).

    The classic builder adds a build's `labels` as final LABEL steps (20.10: one step per label;
    later engines: one step with quoted pairs), so these are the labels of the build that made
    this very image, as opposed to labels inherited from the image it was built FROM.
    """
    found: dict[str, str] = {}
    for step in history:
        match = _LABEL_STEP.search(step.get("CreatedBy") or "")
        if not match:
            break
        for key, single, double, bare in _LABEL_PAIR.findall(match.group(1)):
            found.setdefault(key, single or double or bare)
    return found


def find_built(api: docker.APIClient, labels: Mapping[str, str | None]) -> str | None:
    """The ID of the newest image that its own build labelled with `labels`, or None.

    A value of None accepts any value for that key. Further LABEL-only steps on top are accepted:
    they change neither the files nor the environment. A label filter alone is not enough: labels are
    inherited, so every image built FROM the base, and every intermediate image of such a build
    (a multi-stage build's first stage, say), carries them too; and with all=True (needed to find
    a base that later builds made a parent) the builder's own intermediate images match as well.
    """
    first = next((k, v) for k, v in labels.items() if v is not None)
    with engine_errors(f"looking for an image labelled {first[0]}={first[1]}"):
        found = api.images(all=True, filters={"label": f"{first[0]}={first[1]}"})
        for img in sorted(found, key=lambda img: img.get("Created", 0), reverse=True):
            try:
                own = own_labels(api.history(img["Id"]))
            except docker.errors.NotFound:
                continue
            if all(k in own and (v is None or own[k] == v) for k, v in labels.items()):
                return img["Id"]
    return None


def tag(api: docker.APIClient, image: str, name: str) -> None:
    repo, _, tag_ = name.rpartition(":")
    with engine_errors(f"tagging {image} as {name}"):
        api.tag(image, repo, tag_, force=True)


def build(api: docker.APIClient, context: IO[bytes], *, dockerfile: str, tag: str, buildargs: Mapping[str, str],
          labels: Mapping[str, str], nocache: bool = False,
          on_line: Callable[[str], None] = lambda line: None) -> str:
    """Build with the classic builder from a context tar, offline; returns the new image ID.

    Every `stream` line goes to `on_line`.

    Raises:
        BaseImageError: the build reports an error (with the tail of its log).
        EngineUnavailable: the engine goes away.
    """
    tail: collections.deque[str] = collections.deque(maxlen=BUILD_TAIL_LINES)
    image_id = None
    pending = ""  # a record may end mid-line (stderr of a RUN step, for one)

    def emit(text: str) -> None:
        for line in text.splitlines():
            if line.strip():
                tail.append(line)
                on_line(line)

    with engine_errors("building the base image", image_errors=True):
        records = api.build(
            fileobj=context, custom_context=True, dockerfile=dockerfile, tag=tag, decode=True,
            rm=True, forcerm=True, pull=False, nocache=nocache, network_mode="none",
            buildargs=dict(buildargs), labels=dict(labels), use_config_proxy=False,
        )
        for rec in records:
            if "stream" in rec:
                complete, _, pending = (pending + _ANSI.sub("", str(rec["stream"]))).rpartition("\n")
                emit(complete)
            if "error" in rec or "errorDetail" in rec:
                emit(pending)
                pending = ""
                message = rec.get("error") or (rec.get("errorDetail") or {}).get("message") or "unknown error"
                tail.append(message)
                raise BaseImageError(f"building the base image failed: {message.strip()}", "\n".join(tail))
            aux = rec.get("aux")
            if isinstance(aux, dict) and aux.get("ID"):
                image_id = aux["ID"]
    emit(pending)
    if image_id is None:
        raise BaseImageError("building the base image reported no image ID", "\n".join(tail))
    return image_id


def read_file(api: docker.APIClient, image: str, path: str, *, limit: int = 64 * 1024 * 1024) -> bytes:
    """The bytes of one regular file in an image, read through a created (never started) container.

    Raises:
        BaseImageError: the image has no such regular file.
    """
    with engine_errors(f"reading {path} from {image}"):
        container = api.create_container(image, command=["/sealab-never-started"], network_disabled=True,
                                         labels={"sealab.purpose": "read-file"})["Id"]
        try:
            try:
                stream, _stat = api.get_archive(container, path)
            except docker.errors.NotFound as exc:
                raise BaseImageError(f"{image} has no {path}") from exc
            buf = io.BytesIO()
            for chunk in stream:
                buf.write(chunk)
                if buf.tell() > limit + 1024 * 1024:
                    raise BaseImageError(f"{path} in {image} is larger than {limit} bytes")
        finally:
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_container(container, force=True)
    buf.seek(0)
    with tarfile.open(fileobj=buf, mode="r:") as tar:
        member = tar.next()
        if member is None or not member.isfile():
            raise BaseImageError(f"{path} in {image} is not a regular file")
        extracted = tar.extractfile(member)
        assert extracted is not None
        return extracted.read()
