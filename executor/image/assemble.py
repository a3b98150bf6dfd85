"""Deterministic assembly of the offline base image: unchanged inputs give the same image ID anywhere.

The classic builder stamps build times into every image, so the offline base is not built but written
by hand, with the layer writer and config builder that experiment images use (layer.py); this module
only decides what goes into its three layers, whose bytes depend only on their inputs:

  1. rootfs  the Debian tree from mmdebstrap, as it is (reproducible with SOURCE_DATE_EPOCH)
  2. torch   the wheels installed on the host with `pip install --target` (no network, no compile),
             then compiled to .pyc with hash-based invalidation (no mtimes), path names as in the image;
             console scripts are left out (their text depends on the host's pip and interpreter)
  3. sealab  /home/sealab and /out (uid 1000), /sealab, and /opt/sealab/data made by prepare_data.py
             from the rootfs's own standard library
Layers 2 and 3 are trees on disk streamed into tar files (layer.tree_entries, layer.write_layer):
sorted, fixed mtime, owner 0:0 (uid 1000 where the container user must write). The config is
layer.image_config's canonical JSON with a fixed `created`; its sha256 is the ID. base.py loads
the result through layer.write_archive.
`Dockerfile.train` still builds the `--from IMAGE` variant, where nothing can be made reproducible.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Callable, Sequence

from executor.errors import BaseImageError
from executor.image.layer import image_config, tree_entries, write_layer
from executor.types import sha256_hex

PYTHON = "python3.11"  # bookworm's interpreter; the wheels and the .pyc files are for it
SITE = f"usr/local/lib/{PYTHON}/dist-packages"
ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8",
       "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1", "PYTHONHASHSEED=0", "HOME=/home/sealab")
USER_DIRS = {"home/sealab": (1000, 1000), "out": (1000, 1000)}
LAYERS = ("rootfs", "torch", "sealab")
# every manylinux tag bookworm's glibc (2.36) runs: pip takes the --platform list literally, and the CUDA
# runtime wheels carry tags from manylinux1 to manylinux_2_27
PIP_PLATFORMS = (*(f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)), "manylinux2014_x86_64",
                 "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64")


def file_digest(path: Path) -> str:
    """The diff ID of a layer file already on disk (the rootfs tar), read in chunks."""
    sha = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            sha.update(chunk)
    return "sha256:" + sha.hexdigest()


def torch_tree(wheels: Sequence[Path], tree: Path) -> None:
    """Install the wheels under `tree` as they will lie in the image, with reproducible .pyc files."""
    install_wheels(wheels, tree, SITE)


def install_wheels(wheels: Sequence[Path], tree: Path, site_path: str) -> None:
    """`pip install --target tree/site_path` of the wheels (no network, no dependencies resolved), made
    reproducible: no console scripts, no host paths, hash-based .pyc files with the image's paths."""
    site = tree / site_path
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--disable-pip-version-check", "--only-binary=:all:", "--python-version", "3.11",
           "--implementation", "cp", "--target", str(site)]
    for platform in PIP_PLATFORMS:
        pip += ["--platform", platform]
    done = subprocess.run([*pip, *map(str, wheels)], capture_output=True, text=True,
                          env={**os.environ, "PIP_CONSTRAINT": "", "PIP_FIND_LINKS": ""})
    if done.returncode != 0:
        raise BaseImageError("installing the wheels for the base failed", done.stderr[-4000:])
    # Console scripts (torchrun, f2py, …) are left out: their text depends on the host's pip and
    # interpreter path, and experiments never call them; their RECORD lines go with them.
    shutil.rmtree(site / "bin", ignore_errors=True)
    for record in site.glob("*.dist-info/RECORD"):
        record.write_bytes(_without_scripts(record.read_bytes()))
    # direct_url.json names the wheel's path on the host (the cache directory, the wheel directory): gone,
    # with its RECORD line, so the layer is the same whichever directory the wheels were read from
    for direct_url in site.glob("*.dist-info/direct_url.json"):
        direct_url.unlink()
    # hash-based .pyc (no mtimes) with the paths they will have in the image; torch ships a few
    # python-3.12-only helpers that cannot compile, so compileall's exit status is not an error
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash",
                    "-s", str(tree), "-p", "/", str(site)], capture_output=True)


def _without_scripts(record: bytes) -> bytes:
    """A wheel RECORD without the lines of console scripts installed outside the package (`../…/bin/…`)
    and of direct_url.json."""
    return b"\n".join(line for line in record.split(b"\n") if not (line.startswith(b"../") and b"/bin/" in line)
                      and b".dist-info/direct_url.json," not in line)


def sealab_tree(rootfs_tar: Path, prepare_data: Path, tree: Path, scratch: Path) -> None:
    """sealab's directories and the embedded data, made from the rootfs's own standard library."""
    stdlib = scratch / "stdlib"
    prefix = f"usr/lib/{PYTHON}/"
    with tarfile.open(rootfs_tar) as tar:
        by_name = {m.name.lstrip("./"): m for m in tar}
        members = [m for name, m in by_name.items() if name.startswith(prefix) and name.endswith(".py")
                   and (m.isfile() or m.issym())]
        for member in members:  # symlinks (sitecustomize.py, _sysconfigdata…) read as their targets, like os.walk
            name = member.name.lstrip("./")
            resolved = member
            for _ in range(8):
                if not resolved.issym():
                    break
                link = resolved.linkname
                name = os.path.normpath(link.lstrip("/") if link.startswith("/") else
                                        os.path.join(os.path.dirname(name), link))
                resolved = by_name.get(name)
                if resolved is None:
                    break
            if resolved is None or not resolved.isfile():
                continue  # a dangling link: os.walk inside the image would fail to read it too
            target = stdlib / member.name.lstrip("./")[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(resolved).read())
    if not members:
        raise BaseImageError(f"{rootfs_tar} holds no /{prefix}: not a bookworm python3 root file system")
    spec = importlib.util.spec_from_file_location("sealab_prepare_data", prepare_data)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build(str(tree / "opt/sealab/data"), root=str(stdlib), python=rootfs_python_version(rootfs_tar))
    for name in ("home/sealab", "out", "sealab"):
        (tree / name).mkdir(parents=True, exist_ok=True)


def rootfs_python_version(rootfs_tar: Path) -> str:
    """The rootfs interpreter's version as `platform.python_version()` prints it there (from dpkg's
    status: python3.11-minimal 3.11.2-6+deb12u6 → 3.11.2), so the data manifest matches a build inside."""
    with tarfile.open(rootfs_tar) as tar:
        member = next((m for m in tar if m.name.lstrip("./") == "var/lib/dpkg/status"), None)
        status = tar.extractfile(member).read().decode() if member else ""
    for stanza in status.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line.startswith(" "))
        if fields.get("Package") == f"{PYTHON}-minimal":
            return fields["Version"].split("-")[0].split("+")[0]
    raise BaseImageError(f"{rootfs_tar} has no {PYTHON}-minimal package: not a bookworm python3 root file system")


def config_bytes(diff_ids: Sequence[str], labels: dict[str, str]) -> bytes:
    """The canonical image config of the assembled base (layer.image_config with the base's settings)."""
    return image_config(diff_ids=diff_ids, env=ENV, cmd=["python3"], labels=labels,
                        created_by=[f"sealab base layer {name}" for name in LAYERS])


def assemble(*, rootfs_tar: Path, wheels: Sequence[Path], prepare_data: Path, work: Path, labels: dict[str, str],
             progress: Callable[[str, str], None]) -> tuple[str, bytes, list[tuple[str, Path]]]:
    """Build the three layers and the config in `work`; return (image ID, config, [(diff ID, layer file)])."""
    work.mkdir(parents=True, exist_ok=True)
    layers: list[tuple[str, Path]] = [(file_digest(rootfs_tar), rootfs_tar)]
    progress("assemble", f"rootfs layer {layers[0][0][:19]}")
    for name, make, owners in (("torch", lambda t: torch_tree(wheels, t), None),
                               ("sealab", lambda t: sealab_tree(rootfs_tar, prepare_data, t, work / "scratch"),
                                USER_DIRS)):
        tree = work / f"{name}-tree"
        shutil.rmtree(tree, ignore_errors=True)
        if name == "torch":
            progress("assemble", f"torch layer: installing {len(wheels)} wheels "
                                 f"({sum(w.stat().st_size for w in wheels) / 1e6:.0f} MB) and compiling their .pyc")
        make(tree)
        progress("assemble", f"{name} layer: writing the tar")
        path = work / f"{name}.tar"
        with path.open("wb") as fh:
            diff = write_layer(tree_entries(tree, owners), fh)
        shutil.rmtree(tree, ignore_errors=True)
        layers.append((diff, path))
        progress("assemble", f"{name} layer {diff[:19]} ({path.stat().st_size / 1e6:.0f} MB)")
    shutil.rmtree(work / "scratch", ignore_errors=True)
    config = config_bytes([d for d, _ in layers], labels)
    return "sha256:" + sha256_hex(config), config, layers
