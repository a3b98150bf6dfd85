"""Build sealab's embedded offline dataset: the CPython standard library's own .py sources.

Usage: python3 prepare_data.py OUTDIR

Runs once, at base-image build time, inside the image, with nothing but the standard library.
The text is real and already on every machine that has Python, so no download is ever needed.

Files: every *.py under sysconfig's "stdlib" path, recursively, leaving out site-packages/,
dist-packages/, any test/ or tests/ directory and idlelib/idle_test/. Paths are relative POSIX
paths, sorted. A file goes to validation iff int(sha256(path)[:8], 16) % 10 == 0, else to train.

Writes into OUTDIR:
  train.bin, val.bin  each file's raw bytes followed by one b"\\n", in sorted path order
  manifest.json       canonical JSON (sorted keys, no whitespace, no trailing newline) of
                      {"source", "python", "files": [{"path", "bytes", "sha256", "split"}],
                       "train": {"file", "bytes", "sha256"}, "val": {...}}
The data digest used everywhere in sealab is "sha256:" + sha256(manifest.json bytes).
Same interpreter and stdlib -> byte-identical outputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import sysconfig

SOURCE = "cpython-stdlib"
SPLITS = ("train", "val")
EXCLUDED_DIR_NAMES = {"site-packages", "dist-packages", "test", "tests"}
EXCLUDED_DIR_PATHS = {"idlelib/idle_test"}


def split_of(relpath: str) -> str:
    """The split of one file, decided by its relative path alone."""
    return "val" if int(hashlib.sha256(relpath.encode()).hexdigest()[:8], 16) % 10 == 0 else "train"


def list_sources(root: str) -> list[str]:
    """Relative POSIX paths of the .py files under `root` that belong in the dataset, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = [d for d in dirnames
                       if d not in EXCLUDED_DIR_NAMES and rel_dir + d not in EXCLUDED_DIR_PATHS]
        found.extend(rel_dir + f for f in filenames if f.endswith(".py"))
    return sorted(found)


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


def build(outdir: str, root: str | None = None, python: str | None = None) -> dict:
    """Write train.bin, val.bin and manifest.json into `outdir`; return the manifest.

    `root`: the standard library to read (default: this interpreter's); `python`: its version, as
    recorded in the manifest (default: this interpreter's)."""
    root = root or sysconfig.get_paths()["stdlib"]
    os.makedirs(outdir, exist_ok=True)
    files = []
    totals = {s: {"file": f"{s}.bin", "bytes": 0, "sha256": hashlib.sha256()} for s in SPLITS}
    outs = {s: open(os.path.join(outdir, f"{s}.bin"), "wb") for s in SPLITS}
    try:
        for rel in list_sources(root):
            with open(os.path.join(root, *rel.split("/")), "rb") as f:
                data = f.read()
            split = split_of(rel)
            files.append({"path": rel, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                          "split": split})
            chunk = data + b"\n"
            outs[split].write(chunk)
            totals[split]["bytes"] += len(chunk)
            totals[split]["sha256"].update(chunk)
    finally:
        for f in outs.values():
            f.close()
    manifest = {"source": SOURCE, "python": python or platform.python_version(), "files": files}
    for s in SPLITS:
        manifest[s] = {**totals[s], "sha256": totals[s]["sha256"].hexdigest()}
    with open(os.path.join(outdir, "manifest.json"), "wb") as f:
        f.write(canonical(manifest))
    return manifest


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python3 prepare_data.py OUTDIR", file=sys.stderr)
        return 2
    manifest = build(argv[1])
    digest = hashlib.sha256(canonical(manifest)).hexdigest()
    n_val = sum(f["split"] == "val" for f in manifest["files"])
    print(f"prepare_data: {len(manifest['files'])} files of Python {manifest['python']} stdlib "
          f"(train {manifest['train']['bytes']} B, val {manifest['val']['bytes']} B in {n_val} files) "
          f"-> {argv[1]} data sha256:{digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
