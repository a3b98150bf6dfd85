"""`sealab export` / `sealab import`: experiments, their images and their base in one self-contained tar.

The archive holds four members:

    manifest.json   format version, sealab version, the experiment IDs, the image IDs, and the
                    sha256 of each other member
    records.json    the ledger records of the experiments, unchanged
    bases.json      the BaseImage records of their bases
    images.tar      one `docker save` of the base image(s) and the experiment images, by ID, so the
                    archive keeps their IDs and stores shared layers once

Importing checks every sha256 before touching anything, loads the images, checks that the engine now
holds every listed image under exactly its ID, names the experiment images as `sealab exec` does, and
adds the bases and the records the ledger does not hold yet (each through begin + finish, so each
gets its links in the hash chain). `verify` and `reproduce` also need the experiments' commits in the
workspace's git repository: fetching or cloning them is the user's job.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from executor import owner
from executor.docker_engine import Engine
from executor.errors import BaseImageError, IdentityMismatch, RecordError, WorkspaceError
from executor.image.seal import image_tag
from executor.ledger import Ledger
from executor.record import ExperimentRecord, Finish
from executor.types import BaseImage

FORMAT_VERSION = 1
MANIFEST, RECORDS, BASES, IMAGES = "manifest.json", "records.json", "bases.json", "images.tar"
CHUNK = 1 << 20
Progress = Callable[[str], None]


def _quiet(line: str) -> None:
    pass


def _sealab_version() -> str:
    try:
        return metadata.version("sealab")
    except metadata.PackageNotFoundError:
        return "unknown"


class _HashingWriter:
    """A file wrapper that hashes and counts what passes through it."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh, self.sha, self.size = fh, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.fh.write(data)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
    tar.addfile(info, io.BytesIO(data))


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True).encode() + b"\n"


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def export_archive(ledger: Ledger, engine: Engine, refs: list[str], out: Path,
                   progress: Progress = _quiet) -> dict[str, Any]:
    """Write the experiments `refs` (IDs or unambiguous prefixes) with their images into the tar `out`.

    Returns the manifest plus `path` and `size`.

    Raises:
        WorkspaceError: an unknown experiment, one still running or never sealed, or an experiment
            image no longer in the engine.
        BaseImageError: a base image not recorded or not in the engine.
    """
    if not refs:
        raise WorkspaceError("name at least one experiment to export")
    records: list[ExperimentRecord] = []
    for ref in refs:
        rec = ledger.experiment(ref)
        if rec is None:
            raise WorkspaceError(f"no experiment {ref} in {ledger.path}")
        if not rec.finished:
            raise WorkspaceError(f"experiment {rec.id} is still running; export it once it has finished")
        if not rec.image_id or not rec.base_image_id:
            raise WorkspaceError(f"experiment {rec.id} was never sealed into an image: nothing to export")
        if rec.id not in {r.id for r in records}:
            records.append(rec)
    bases: list[BaseImage] = []
    for rec in records:
        if rec.base_image_id in {b.image_id for b in bases}:
            continue
        base = ledger.base(rec.base_image_id)  # type: ignore[arg-type]  (checked above)
        if base is None:
            raise BaseImageError(f"base image {str(rec.base_image_id)[:19]} of experiment {rec.id} is not recorded "
                                 f"in {ledger.path}")
        if engine.image_id(base.image_id) != base.image_id:
            raise BaseImageError(f"base image {base.image_id[:19]} is not in the engine; nothing to export")
        bases.append(base)
    images = [b.image_id for b in bases]
    for rec in records:
        if rec.image_id in images:
            continue
        if engine.image_id(rec.image_id) != rec.image_id:
            raise WorkspaceError(f"image {str(rec.image_id)[:19]} of experiment {rec.id} is not in the engine; "
                                 f"`sealab seal {rec.commit[:12]}` recreates it")
        images.append(rec.image_id)  # type: ignore[arg-type]  (checked above)

    records_bytes = _json_bytes([r.to_dict() for r in records])  # as stored: the codec is exact both ways
    bases_bytes = _json_bytes([b.to_dict() for b in bases])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}-", suffix=".images.tar") as images_tmp:
        progress(f"saving {len(images)} image(s) ({len(bases)} base, {len(images) - len(bases)} experiment)")
        writer = _HashingWriter(images_tmp)
        engine.save(images, writer)
        images_tmp.flush()
        progress(f"saved {writer.size / 1e6:.0f} MB in {time.monotonic() - started:.1f} s; writing {out}")
        manifest = {
            "format": FORMAT_VERSION,
            "sealab_version": _sealab_version(),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "experiments": [r.id for r in records],
            "base_images": [b.image_id for b in bases],
            "images": images,
            "sha256": {IMAGES: "sha256:" + writer.sha.hexdigest(), RECORDS: _sha256(records_bytes),
                       BASES: _sha256(bases_bytes)},
        }
        partial = out.with_name(f".{out.name}.partial")
        try:
            with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
                _add_bytes(tar, MANIFEST, _json_bytes(manifest))
                _add_bytes(tar, RECORDS, records_bytes)
                _add_bytes(tar, BASES, bases_bytes)
                info = tarfile.TarInfo(IMAGES)
                info.size, info.mode, info.mtime = writer.size, 0o644, int(time.time())
                images_tmp.seek(0)
                tar.addfile(info, images_tmp)
            os.replace(partial, out)
        finally:
            partial.unlink(missing_ok=True)
    return {**manifest, "path": str(out), "size": out.stat().st_size, "seconds": time.monotonic() - started}


def _chunks(fh: IO[bytes]) -> Iterator[bytes]:
    while chunk := fh.read(CHUNK):
        yield chunk


def _open_archive(path: Path) -> tuple[tarfile.TarFile, dict[str, tarfile.TarInfo]]:
    try:
        tar = tarfile.open(path, "r:")
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
    except (OSError, tarfile.TarError) as exc:
        raise WorkspaceError(f"{path}: not a readable sealab archive ({exc})") from exc
    missing = [name for name in (MANIFEST, RECORDS, BASES, IMAGES) if name not in members]
    if missing:
        tar.close()
        raise WorkspaceError(f"{path}: not a sealab archive (no {', '.join(missing)})")
    return tar, members


# What an imported record must hold besides being a record (the codec's REQUIRED keys): import seals
# nothing, so the image and the run spec it was sealed with must be there.
_IMPORT_NEEDS = ("image_id", "run_spec")
_VALUED = ("status", "decision", "record_version")  # fields whose kind is a set of values


def _check_records(path: Path, records: Any) -> list[ExperimentRecord]:
    """The records of the archive, decoded (ExperimentRecord.from_dict), or WorkspaceError (one line,
    exit 2) unless `records` is a list of finished records that import can use: an archive edited by
    hand can have checksums that match and records that do not."""
    if not isinstance(records, list):
        raise WorkspaceError(f"{path}: {RECORDS} is not a list of records")
    decoded = []
    for n, data in enumerate(records):
        if not isinstance(data, dict):
            raise WorkspaceError(f"{path}: record {n} of {RECORDS} is not a JSON object")
        where = f"{path}: record {n} ({data.get('id')!r}) of {RECORDS}"
        try:
            record = ExperimentRecord.from_dict(data)
            for name in _IMPORT_NEEDS:
                if getattr(record, name) is None:
                    raise RecordError(name, "a string" if name == "image_id" else "a table", None, record.id)
            if not record.finished:
                raise RecordError("status", "a finished status", record.status.value, record.id)
        except RecordError as exc:  # a value of the wrong kind is named by its type, a wrong value by itself
            found = repr(exc.actual)[:60] if exc.field in _VALUED else type(exc.actual).__name__
            raise WorkspaceError(f"{where} has no valid {exc.field} (expected {exc.expected}, found {found})") from None
        decoded.append(record)
    return decoded


def import_archive(ledger: Ledger, engine: Engine, path: Path, progress: Progress = _quiet) -> dict[str, Any]:
    """See _import_archive; a truncated or damaged tar is a one-line WorkspaceError (exit 2), nothing imported."""
    try:
        return _import_archive(ledger, engine, path, progress)
    except (tarfile.TarError, EOFError) as exc:
        raise WorkspaceError(f"{path}: the archive is truncated or damaged ({exc}); nothing was imported") from exc


def _import_archive(ledger: Ledger, engine: Engine, path: Path, progress: Progress = _quiet) -> dict[str, Any]:
    """Import an archive written by `export_archive` into this workspace's engine and ledger.

    Returns `{"experiments", "images", "imported", "skipped", "bases_added", "seconds"}`.

    Raises:
        WorkspaceError: not a sealab archive, or a format this sealab does not know.
        IdentityMismatch: a member's sha256 differs from the manifest's (nothing is imported), or the
            engine holds a listed image under another ID after loading.
    """
    started = time.monotonic()
    tar, members = _open_archive(path)
    with tar:
        try:
            manifest = json.loads(tar.extractfile(members[MANIFEST]).read())
            version = manifest.get("format")
        except (ValueError, AttributeError):
            raise WorkspaceError(f"{path}: {MANIFEST} is not a JSON object") from None
        if version != FORMAT_VERSION:
            raise WorkspaceError(f"{path}: archive format {version!r}; this sealab reads format {FORMAT_VERSION}")
        for key, kind in (("experiments", list), ("images", list), ("sha256", dict)):
            value = manifest.get(key)
            if not isinstance(value, kind) or not all(isinstance(v, str) for v in value if kind is list) \
                    or (kind is dict and not all(isinstance(v, str) for v in value.values())):
                raise WorkspaceError(f"{path}: {MANIFEST} has no valid {key!r} (expected a "
                                     f"{'list of strings' if kind is list else 'table of sha256 strings'}, "
                                     f"found {type(value).__name__})")
        expected = manifest["sha256"]
        contents: dict[str, bytes] = {}
        for name in (RECORDS, BASES, IMAGES):
            fh = tar.extractfile(members[name])
            sha = hashlib.sha256()
            for chunk in _chunks(fh):
                sha.update(chunk)
                if name != IMAGES:
                    contents[name] = contents.get(name, b"") + chunk
            actual = "sha256:" + sha.hexdigest()
            if actual != expected.get(name):
                raise IdentityMismatch(f"{path}: sha256 of {name} (archive damaged or altered; nothing imported)",
                                       str(expected.get(name)), actual)
        try:
            records = json.loads(contents[RECORDS])
            bases = [BaseImage.from_dict(b) for b in json.loads(contents[BASES])]
        except (ValueError, TypeError, KeyError) as exc:
            raise WorkspaceError(f"{path}: unreadable records or bases ({exc})") from exc
        records = _check_records(path, records)
        if [r.id for r in records] != manifest.get("experiments"):
            raise WorkspaceError(f"{path}: {RECORDS} does not hold the experiments its manifest lists")

        progress(f"loading {len(manifest['images'])} image(s) ({members[IMAGES].size / 1e6:.0f} MB)")
        engine.load_stream(_chunks(tar.extractfile(members[IMAGES])))
    for image in manifest["images"]:
        held = engine.image_id(image)
        if held != image:
            raise IdentityMismatch(f"image loaded from {path}", image, held or "not in the engine")
    progress(f"loaded in {time.monotonic() - started:.1f} s; every image has its recorded ID")
    for rec in records:
        engine.tag(rec.image_id, image_tag(rec.commit, rec.image_id))

    current = ledger.current_base()
    bases_added = [b.image_id for b in bases if ledger.base(b.image_id) is None]
    if current is None:
        for base in bases:  # the last one becomes the workspace's current base
            ledger.set_base(base)
    elif bases_added:
        for base in bases:
            if base.image_id in bases_added:
                ledger.set_base(base)
        ledger.set_base(current)  # keep the workspace's current base
    imported, skipped = [], []
    for rec in records:
        known = ledger.get(rec.id)
        if known is not None and known.get("id") == rec.id:
            skipped.append(rec.id)
            continue
        ledger.begin(rec, owner.token())  # the whole record, as `running` ...
        ledger.finish(rec.id, Finish(rec.status, rec.reason))  # ... then its own status: as it was written
        imported.append(rec.id)
    return {"experiments": manifest["experiments"], "images": manifest["images"], "imported": imported,
            "skipped": skipped, "bases_added": bases_added, "seconds": time.monotonic() - started}
