"""Pure sealing: a commit + a base + a run spec → the exact bytes of an image, and so its ID.

Nothing here talks to git or Docker; the bytes are written by layer.py's layer writer and config
builder (the ones the offline base uses too), so the same inputs give the same image ID on any machine.
With `hide_val` the layer also holds an OCI whiteout of the base's validation split
(/opt/sealab/data/.wh.val.bin), so the experiment image has no val.bin: train.py can neither train
on it nor look targets up, and the metric is computed by the orchestrator (executor/evaluate.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from executor.errors import SourceError
from executor.git_source import CommitFacts
from executor.image.layer import Entry, image_config, image_id, layer_tar, load_archive
from executor.types import BaseImage, RunSpec, sha256_hex

TRAIN_PATH = "train.py"
HARNESS_PATH = "prepare.py"
RUN_SPEC_PATH = "/sealab/run_spec.json"
CMD = ("python3", "/workspace/prepare.py")
# An adopted repository's run ([harness] command in the run spec) starts under the launcher, whose
# bytes go into the image (launch.py's docstring says what it does).
LAUNCHER_PATH = "/sealab/launch.py"
LAUNCHER = (Path(__file__).with_name("launch.py")).read_bytes()
LAUNCH_CMD = ("python3", LAUNCHER_PATH)
USER = "1000:1000"  # the container user (uid 1000 owns /home/sealab and /out in the base)
WORKDIR = "/workspace"
REVISION = "org.opencontainers.image.revision"
TAG_REPO = "sealab/exp"
# The whiteout of the base's validation split: an empty file named .wh.<name> beside it hides it in
# every image sealed with hide_val (OCI image spec, "Whiteouts"; docker load honours it).
VAL_WHITEOUT = "/opt/sealab/data/.wh.val.bin"
# A harness that declares this line has the eval phase (`prepare.py --logits`): its images are sealed
# without the validation split and the orchestrator scores the model (executor/evaluate.py). The
# choice is a pure function of the commit, so records sealed before it existed re-derive unchanged.
EVALUATOR_MARKER = b'\nEVALUATOR = "orchestrator"'


def scored_by_orchestrator(facts: CommitFacts) -> bool:
    """Whether the commit's harness leaves the metric to the orchestrator (and so hides val.bin)."""
    harness = next((f for f in facts.files if f.path == HARNESS_PATH and f.kind == "file"), None)
    return harness is not None and EVALUATOR_MARKER in harness.data


@dataclass(frozen=True, slots=True)
class Sealed:
    """An experiment image as bytes, with the ID it must have once loaded."""

    image_id: str
    config: bytes
    layer: bytes
    labels: dict[str, str]
    base_diff_ids: tuple[str, ...]
    cmd: tuple[str, ...] = CMD  # what the image runs when a job gives no command

    @property
    def tag(self) -> str:
        return image_tag(self.labels[REVISION], self.image_id)

    def archive(self) -> bytes:
        return load_archive(self.config, self.layer, self.base_diff_ids, self.tag)


def image_tag(commit: str, image: str) -> str:
    """The name an experiment image goes by: its commit and the start of its ID."""
    return f"{TAG_REPO}:{commit[:12]}-{image.removeprefix('sha256:')[:12]}"


def labels_for(facts: CommitFacts, base: BaseImage, spec: RunSpec) -> dict[str, str]:
    """The provenance labels of an experiment image; all of them are covered by its ID.

    Raises:
        SourceError: the commit lacks the harness or train.py.
    """
    files = {f.path: f for f in facts.files}
    for needed in (TRAIN_PATH,) if spec.command is not None else (HARNESS_PATH, TRAIN_PATH):
        if needed not in files or files[needed].kind != "file":
            raise SourceError(facts.sha, f"commit has no {needed}; a sealab workspace needs it")
    harness = LAUNCHER if spec.command is not None else files[HARNESS_PATH].data
    return {
        REVISION: facts.sha,
        "sealab.tree": facts.tree,
        "sealab.base": base.image_id,
        "sealab.run-spec": spec.digest(),
        "sealab.harness": "sha256:" + sha256_hex(harness),
        "sealab.train": files[TRAIN_PATH].blob,
        "sealab.data": base.data_digest,
    }


def seal(facts: CommitFacts, base: BaseImage, spec: RunSpec, *, hide_val: bool | None = None) -> Sealed:
    """Assemble the experiment image for `facts` on `base` under `spec`; `hide_val` (default: whether the
    commit's harness is `scored_by_orchestrator`) whites out val.bin."""
    if hide_val is None:
        hide_val = spec.command is None and scored_by_orchestrator(facts)
    labels = labels_for(facts, base, spec)
    entries = [Entry(f"/workspace/{f.path}", f.data, f.mode, f.kind) for f in facts.files]
    entries.append(Entry(RUN_SPEC_PATH, spec.canonical() + b"\n"))
    cmd = CMD
    if spec.command is not None:
        entries.append(Entry(LAUNCHER_PATH, LAUNCHER))
        cmd = LAUNCH_CMD
    if hide_val:
        entries.append(Entry(VAL_WHITEOUT, b"", 0o644))
    layer = layer_tar(entries)
    config = image_config(
        diff_ids=[*base.diff_ids, "sha256:" + sha256_hex(layer)], env=base.env, cmd=cmd, labels=labels,
        architecture=base.architecture, os=base.os, user=USER, workdir=WORKDIR,
    )
    return Sealed(image_id(config), config, layer, labels, base.diff_ids, cmd)
