"""Pure sealing: a commit + a base + a run spec → the exact bytes of an image, and so its ID.

Nothing here talks to git or Docker; the bytes are written by layer.py's layer writer and config
builder (the ones the offline base uses too), so the same inputs give the same image ID on any machine.
With `hide_val` the layer also holds an OCI whiteout of the base's validation split
(/opt/sealab/data/.wh.val.bin), so the experiment image has no val.bin: train.py can neither train
on it nor look targets up, and the metric is computed by the orchestrator (executor/evaluate.py).
"""

from __future__ import annotations

import os
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from executor.errors import SourceError
from executor.git_source import CommitFacts
from executor.image.layer import Entry, image_config, image_id, write_archive, write_layer
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
# A harness that declares this line can start its eval phase ahead (`prepare.py --logits ... --wait`).
EVAL_WAITS_MARKER = b"\nEVAL_WAITS = True"
IN_MEMORY_MAX = 16 << 20  # a layer of up to this many bytes of files is built in memory; a larger one in a file


def scored_by_orchestrator(facts: CommitFacts) -> bool:
    """Whether the commit's harness leaves the metric to the orchestrator (and so hides val.bin)."""
    harness = next((f for f in facts.files if f.path == HARNESS_PATH and f.kind == "file"), None)
    return harness is not None and EVALUATOR_MARKER in harness.read()


def eval_waits(facts: CommitFacts) -> bool:
    """Whether the commit's harness can start its eval phase ahead, waiting for the model (`--wait`)."""
    harness = next((f for f in facts.files if f.path == HARNESS_PATH and f.kind == "file"), None)
    return harness is not None and EVAL_WAITS_MARKER in harness.read()


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Sealed:
    """An experiment image as bytes, with the ID it must have once loaded. Its layer is bytes, or (a
    tree past IN_MEMORY_MAX) a temporary file removed with this object."""

    image_id: str
    config: bytes
    layer: bytes | Path
    labels: dict[str, str]
    base_diff_ids: tuple[str, ...]
    cmd: tuple[str, ...] = CMD  # what the image runs when a job gives no command
    diff_id: str = ""  # the layer's ("sha256:…"), known once written

    @property
    def tag(self) -> str:
        return image_tag(self.labels[REVISION], self.image_id)

    def layer_bytes(self) -> bytes:
        return self.layer.read_bytes() if isinstance(self.layer, Path) else self.layer

    def write_archive(self, out: IO[bytes]) -> None:
        """The `docker load` archive (the base's layers listed, only the new one held) into `out`, streamed."""
        diff = self.diff_id or "sha256:" + sha256_hex(self.layer_bytes())
        write_archive(out, self.config, [*((d, None) for d in self.base_diff_ids), (diff, self.layer)], self.tag)

    def archive(self) -> bytes:
        import io

        buf = io.BytesIO()
        self.write_archive(buf)
        return buf.getvalue()


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
    harness = LAUNCHER if spec.command is not None else files[HARNESS_PATH].read()
    return {
        REVISION: facts.sha,
        "sealab.tree": facts.tree,
        "sealab.base": base.image_id,
        "sealab.run-spec": spec.digest(),
        "sealab.harness": "sha256:" + sha256_hex(harness),
        "sealab.train": files[TRAIN_PATH].blob,
        "sealab.data": base.data_digest,
    }


def human(size: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def check_tree_size(facts: CommitFacts, spec: RunSpec) -> None:
    """The commit's files must fit [resources] tree_mb (a checkpoint or dataset committed by mistake is
    refused before anything is read).

    Raises:
        SourceError: over the cap, naming the largest files and what to do.
    """
    total, cap = sum(f.length for f in facts.files), spec.resources.tree_cap
    if total <= cap:
        return
    largest = sorted(facts.files, key=lambda f: f.length, reverse=True)[:3]
    raise SourceError(f"commit {facts.sha[:12]}", f"its files hold {human(total)}, over [resources] tree_mb = {cap >> 20}; the largest: "
                      + ", ".join(f"{f.path} ({human(f.length)})" for f in largest)
                      + ". Keep such files out of git (git rm --cached, .gitignore; data belongs in [data] dirs), "
                        "or raise tree_mb in sealab.toml")


def seal(facts: CommitFacts, base: BaseImage, spec: RunSpec, *, hide_val: bool | None = None) -> Sealed:
    """Assemble the experiment image for `facts` on `base` under `spec`; `hide_val` (default: whether the
    commit's harness is `scored_by_orchestrator`) whites out val.bin."""
    check_tree_size(facts, spec)
    if hide_val is None:
        hide_val = spec.command is None and scored_by_orchestrator(facts)
    labels = labels_for(facts, base, spec)
    entries = [Entry(f"/workspace/{f.path}", mode=f.mode, stream=f.open, size=f.length) if f.git_dir is not None
               else Entry(f"/workspace/{f.path}", f.data, f.mode, f.kind) for f in facts.files]
    entries.append(Entry(RUN_SPEC_PATH, spec.canonical() + b"\n"))
    cmd = CMD
    if spec.command is not None:
        entries.append(Entry(LAUNCHER_PATH, LAUNCHER))
        cmd = LAUNCH_CMD
    if hide_val:
        entries.append(Entry(VAL_WHITEOUT, b"", 0o644))
    layer: bytes | Path
    if sum(f.length for f in facts.files) <= IN_MEMORY_MAX:
        import io

        buf = io.BytesIO()
        diff = write_layer(entries, buf)
        layer = buf.getvalue()
    else:  # a large tree: its blobs streamed from git into a file, never whole in memory
        fd, name = tempfile.mkstemp(prefix="sealab-layer-", suffix=".tar")
        layer = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                diff = write_layer(entries, out)
        except BaseException:
            layer.unlink(missing_ok=True)
            raise
    config = image_config(
        diff_ids=[*base.diff_ids, diff], env=base.env, cmd=cmd, labels=labels,
        architecture=base.architecture, os=base.os, user=USER, workdir=WORKDIR,
    )
    sealed = Sealed(image_id(config), config, layer, labels, base.diff_ids, cmd, diff)
    if isinstance(layer, Path):
        weakref.finalize(sealed, layer.unlink, missing_ok=True)
    return sealed
