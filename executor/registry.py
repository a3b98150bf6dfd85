"""Push experiment images to a registry and get them back by manifest digest, never by tag.

`sealab push ID --registry HOST[:PORT]/REPO` records `registry_digest: "HOST:PORT/REPO@sha256:…"`;
`sealab reproduce HOST:PORT/REPO@sha256:…` finds that record and, when the engine no longer holds
its image, pulls exactly that manifest and checks the pulled image's ID is the recorded one. A tag
moved in the registry changes nothing: tags are only a vehicle for the push.
"""

from __future__ import annotations

import re

from executor.docker_engine import Engine
from executor.errors import IdentityMismatch, SealabError, WorkspaceError
from executor.ledger import Ledger
from executor.record import ExperimentRecord

_REPO = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")
_HOST = re.compile(r"[A-Za-z0-9.-]+(?::[0-9]+)?")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class RegistryError(SealabError):
    """The registry (or the engine talking to it) refused a push or a pull."""

    exit_code = 3


class BadReference(SealabError):
    """A registry or `repo@sha256:…` argument that is not well formed."""

    exit_code = 2


def parse_registry(registry: str) -> str:
    """Check `HOST[:PORT]/REPO` (no tag, no digest) and return it."""
    host, _, repo = registry.partition("/")
    if not (_HOST.fullmatch(host) and _REPO.fullmatch(repo)):
        raise BadReference(f"{registry}: expected HOST[:PORT]/REPO (lowercase repository, no tag or digest)")
    return registry


def parse_digest_ref(ref: str) -> tuple[str, str]:
    """Split `HOST[:PORT]/REPO@sha256:…` into the repository and the digest."""
    repo, _, digest = ref.partition("@")
    if not _DIGEST.fullmatch(digest):
        raise BadReference(f"{ref}: expected REPO@sha256:<64 hex digits>")
    return parse_registry(repo), digest


def push_experiment(engine: Engine, ledger: Ledger, experiment: str, registry: str) -> ExperimentRecord:
    """Push the image of `experiment` to `registry` (HOST[:PORT]/REPO) and record its digest reference.

    Returns the record with its `registry_digest`, `HOST[:PORT]/REPO@sha256:…`.

    Raises:
        WorkspaceError: unknown experiment, or one that has no image.
        RecordError: the experiment's record does not decode.
        BadReference: a malformed registry.
        IdentityMismatch: the experiment's image is not in the engine.
        RegistryError: the push failed.
    """
    repo = parse_registry(registry)
    record = ledger.experiment(experiment)
    if record is None:
        raise WorkspaceError(f"no experiment {experiment} in {ledger.path}")
    image_id = record.image_id
    if not image_id:
        raise WorkspaceError(f"experiment {record.id} has no image (it was never sealed)")
    if engine.image_id(image_id) != image_id:
        raise IdentityMismatch(f"image of experiment {record.id}", image_id,
                               "not in the engine (run `sealab seal` on its commit)")
    tag = f"{record.commit[:12]}-{image_id.removeprefix('sha256:')[:12]}"
    engine.tag(image_id, f"{repo}:{tag}")
    digest, problem = engine.push_image(repo, tag)
    if problem or not digest:
        raise RegistryError(f"push of {record.id} to {repo} failed: {problem}")
    return ledger.record_push(record.id, f"{repo}@{digest}")


def ensure_by_digest(engine: Engine, ref: str, expected_image_id: str) -> bool:
    """Make the engine hold `expected_image_id`, pulling `ref` (REPO@sha256:…) by digest when it does not.

    Returns whether it pulled.

    Raises:
        BadReference: `ref` is not REPO@sha256:….
        RegistryError: the pull failed (e.g. the registry has no such manifest).
        IdentityMismatch: what the digest names is another image than the recorded one.
    """
    repo, digest = parse_digest_ref(ref)
    if engine.image_id(expected_image_id) == expected_image_id:
        return False
    problem = engine.pull_by_digest(repo, digest)
    if problem:
        raise RegistryError(f"pull of {ref} failed: {problem}")
    pulled = engine.image_id(f"{repo}@{digest}")
    if pulled != expected_image_id:
        raise IdentityMismatch(f"image pulled from {ref}", expected_image_id, pulled or "nothing")
    return True
