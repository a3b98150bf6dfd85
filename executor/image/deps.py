"""A repository's own Python dependencies, from its committed lock: exact versions, sha256-checked wheels.

    locked = lock_of(files)              # the commit's uv.lock + pyproject.toml, or requirements.txt
    wheels = fetch(locked, cache_dir)    # its wheels for the base's Python and platform (pip, hashes checked)
    install(wheels, tree)                # installed with no network under tree/opt/sealab/deps

`uv export --locked` turns uv.lock into hashed requirement lines (uv does the reading of its own lock,
and refuses a lock that no longer matches pyproject.toml); torch and what only torch needs (CUDA
libraries, triton) are pruned, because the base brings its own torch, whose version must be the lock's
(`check_torch`). A requirements.txt must carry a `--hash` on every requirement. pip downloads with
`--require-hashes --only-binary=:all:` for cp311 manylinux x86_64 and installs with `--no-index`.
Every failure is one line naming the package and what to do.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from executor.errors import BaseImageError
from executor.image.assemble import PIP_PLATFORMS
from executor.types import canonical_json, sha256_hex

UV_LOCK, PYPROJECT, REQUIREMENTS = "uv.lock", "pyproject.toml", "requirements.txt"
LOCK_FILES = (UV_LOCK, PYPROJECT, REQUIREMENTS)  # the top-level files a lock is read from
SITE = "opt/sealab/deps"  # where the packages lie in the base; first on its PYTHONPATH
PYTHON_VERSION = "3.11"
PLATFORMS = (*PIP_PLATFORMS, "any")  # the tags a wheel of the base may carry
# The environment markers of the image's interpreter (bookworm's CPython 3.11.2 on x86-64 Linux): a lock's
# `; python_full_version >= '3.12'` entries are decided for the image, never for the host running sealab.
IMAGE_MARKERS = {"python_version": PYTHON_VERSION, "python_full_version": "3.11.2", "implementation_name": "cpython",
                 "implementation_version": "3.11.2", "platform_python_implementation": "CPython",
                 "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
                 "platform_release": "", "platform_version": "", "extra": ""}
TORCH_ONLY = re.compile(r"^(torch|triton|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+|pytorch-triton)$")
Progress = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class Locked:
    """What a commit's lock says the base's Python packages are."""

    source: str  # "uv.lock" or "requirements.txt"
    digest: str  # "sha256:<hex>" over the lock files' bytes (lock_digest)
    requirements: str  # hashed requirement lines, torch and its accelerator libraries left out
    torch: str | None  # the torch version the lock pins, or None when it has no torch
    indexes: tuple[str, ...] = ()  # package indexes the lock names beside pip's own (a CUDA torch's, e.g.)

    @property
    def packages(self) -> list[str]:
        """`name==version` of each requirement, in order."""
        return [line.split(" ", 1)[0].rstrip("\\") for line in self.requirements.splitlines()
                if line and not line[0].isspace() and not line.startswith("#")]


def lock_digest(files: Mapping[str, bytes]) -> str | None:
    """"sha256:<hex>" over the lock files among `files` (path → bytes); None without a lock. Pure."""
    names = (PYPROJECT, UV_LOCK) if UV_LOCK in files else (REQUIREMENTS,) if REQUIREMENTS in files else ()
    if not names:
        return None
    return "sha256:" + sha256_hex(canonical_json({n: sha256_hex(files[n]) for n in names if n in files}))


def lock_of(files: Mapping[str, bytes], cache_dir: Path) -> Locked | None:
    """The lock of a commit whose top-level files are `files` (path → bytes); None when it has none.

    Raises:
        BaseImageError: uv.lock without pyproject.toml, a lock uv refuses (out of date with
            pyproject.toml, unreadable), or a requirements.txt line without --hash.
    """
    digest = lock_digest(files)
    if digest is None:
        return None
    if UV_LOCK in files:
        if PYPROJECT not in files:
            raise BaseImageError("the commit has uv.lock but no pyproject.toml: commit both (uv export needs them)")
        requirements = _uv_export(files, cache_dir)
        return Locked(UV_LOCK, digest, requirements, _uv_torch(files[UV_LOCK]),
                      lock_indexes(files, names(requirements)))
    return _requirements(files[REQUIREMENTS].decode(errors="replace"), digest)


def _uv_export(files: Mapping[str, bytes], cache_dir: Path, *, prune: bool = True) -> str:
    """uv's hashed requirement lines of the lock: without torch and what only torch needs (`prune`),
    or everything."""
    from uv import find_uv_bin  # the uv the sealab package depends on

    with tempfile.TemporaryDirectory(prefix="sealab-lock-") as tmp:
        for name in (PYPROJECT, UV_LOCK):
            (Path(tmp) / name).write_bytes(files[name])
        argv = [find_uv_bin(), "export", "--locked", "--offline", "--no-dev", "--no-emit-project",
                *(("--prune", "torch") if prune else ()), "--format", "requirements-txt", "--no-header",
                "--no-annotate", "--python", sys.executable, "--no-python-downloads", "--quiet"]
        done = subprocess.run(argv, cwd=tmp, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              env={**os.environ, "UV_CACHE_DIR": str(cache_dir / "uv")})
    if done.returncode != 0:
        said = [line.removeprefix("error: ") for line in done.stderr.splitlines() if line.strip()]
        # offline, uv re-resolves only a lock that pyproject.toml no longer matches, and cannot
        if any("needs to be updated" in line or "network was disabled" in line for line in said):
            raise BaseImageError("the commit's uv.lock does not match its pyproject.toml: run `uv lock` and commit "
                                 "uv.lock")
        raise BaseImageError(f"uv could not read the commit's uv.lock: {said[-1] if said else done.returncode}")
    return for_image(_without_torch(done.stdout) if prune else done.stdout)


def for_image(requirements: str) -> str:
    """The entries of hashed requirement lines whose environment marker holds in the image (IMAGE_MARKERS),
    their markers dropped: what pip then downloads does not depend on the host's Python.

    Raises:
        BaseImageError: a marker that cannot be read.
    """
    kept = []
    for block in _blocks(requirements):
        first, _, rest = block.partition("\n")
        continued = first.rstrip().endswith("\\")
        head = first.rstrip().removesuffix("\\").rstrip()
        if not marker_holds(head):
            continue
        spec = head.split(";", 1)[0].strip()
        kept.append(f"{spec} \\\n{rest}" if continued else (f"{spec}\n{rest}" if rest else spec))
    return "\n".join(kept) + ("\n" if kept else "")


def marker_holds(line: str) -> bool:
    """Whether a requirement line's `; marker` (if any, before its --hash options) holds in the image."""
    requirement = line.split(" --hash", 1)[0]
    if ";" not in requirement:
        return True
    from packaging.markers import InvalidMarker, Marker  # the PyPA's reading of PEP 508 markers

    text = requirement.split(";", 1)[1].strip()
    try:
        return Marker(text).evaluate(IMAGE_MARKERS)
    except InvalidMarker as exc:
        raise BaseImageError(f"the lock's marker {text!r} cannot be read: {exc}") from None


def torch_requirements(files: Mapping[str, bytes], cache_dir: Path, locked: Locked) -> str:
    """The hashed requirement lines of the lock's torch and of what only torch needs (its CUDA libraries,
    triton, …): what a CUDA base installs as its torch layer at the lock's pins. Empty when the lock
    pins no torch; requirements.txt: its torch-only lines, each of which must carry --hash. `locked` is
    lock_of(files): its requirements are the rest of the lock, exported once.

    Raises:
        BaseImageError: as lock_of, or a requirements.txt torch line without --hash.
    """
    if UV_LOCK in files and PYPROJECT in files:
        others = names(locked.requirements)
        return "".join(b + "\n" for b in _blocks(_uv_export(files, cache_dir, prune=False))
                       if _block_name(b) not in others)
    if REQUIREMENTS not in files:
        return ""
    kept = []
    for line, spec in _requirement_lines(files[REQUIREMENTS].decode(errors="replace")):
        if not TORCH_ONLY.fullmatch(package_name(re.split(r"[=<>!~\[\s]", spec)[0])):
            continue
        if "--hash=" not in line:
            raise BaseImageError(f"requirements.txt: {spec} has no --hash; a CUDA base installs the lock's torch at its "
                                 "pins: regenerate it with hashes (uv pip compile --generate-hashes)")
        kept.append(f"{spec} " + " ".join(re.findall(r"--hash[= ]\S+", line)))
    return "".join(k + "\n" for k in kept)


def lock_indexes(files: Mapping[str, bytes], wanted: set[str]) -> tuple[str, ...]:
    """The registries uv.lock says the packages `wanted` come from (`source = { registry = URL }`), e.g. the
    PyTorch index of a `torch==2.9.1+cu128`; pip looks there too. Empty for requirements.txt: its own
    `--index-url`/`--extra-index-url` lines are read by requirement_indexes."""
    if UV_LOCK not in files:
        return ()
    try:
        packages = tomllib.loads(files[UV_LOCK].decode()).get("package", [])
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BaseImageError(f"the commit's uv.lock is not valid TOML: {exc}") from None
    found = {str((p.get("source") or {}).get("registry")) for p in packages
             if package_name(str(p.get("name", ""))) in wanted
             and isinstance(p.get("source"), dict) and (p.get("source") or {}).get("registry")}
    return tuple(sorted(found))


def requirement_indexes(text: str) -> tuple[str, ...]:
    """The `--index-url`/`--extra-index-url` URLs a requirements.txt names (pure)."""
    return tuple(sorted(set(re.findall(r"^\s*(?:--index-url|--extra-index-url|-i)[=\s]+(\S+)", text, re.MULTILINE))))


def _blocks(requirements: str) -> list[str]:
    """A requirements text's entries: each first line with its indented continuation lines."""
    return [b for b in re.split(r"\n(?=\S)", requirements.strip()) if b and not b.startswith("#")]


def _block_name(block: str) -> str:
    return package_name(re.split(r"[=\s;\[]", block)[0])


def package_name(name: str) -> str:
    """A package's name as PEP 503 normalises it (`Nvidia_NCCL-cu12` → `nvidia-nccl-cu12`; pure)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def names(requirements: str) -> set[str]:
    """The normalised names of the entries of requirement lines (pure)."""
    return {_block_name(b) for b in _blocks(requirements)}


def _uv_torch(lock: bytes) -> str | None:
    try:
        packages = tomllib.loads(lock.decode()).get("package", [])
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BaseImageError(f"the commit's uv.lock is not valid TOML: {exc}") from None
    versions = sorted({str(p.get("version")) for p in packages if p.get("name") == "torch"})
    if len(versions) > 1:
        raise BaseImageError(f"the commit's uv.lock pins torch at {len(versions)} versions ({', '.join(versions)}): "
                             "the base has one torch; pin one in pyproject.toml and run `uv lock`")
    return versions[0] if versions else None


def _requirement_lines(text: str) -> list[tuple[str, str]]:
    """(line, spec) of each requirement of a requirements.txt (pip's format: `\\` continues a line) whose
    marker holds in the image; `spec` is the line without its marker and hashes.

    Raises:
        BaseImageError: an option other than where to look for packages.
    """
    out = []
    for raw in re.sub(r"\\\r?\n", " ", text).splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            if line.split()[0] in ("--index-url", "-i", "--extra-index-url", "--find-links", "-f"):
                continue  # where to look: the indexes are looked at too (requirement_indexes); the hashes decide
            raise BaseImageError(f"requirements.txt: `{line[:60]}` is not a pinned requirement; sealab reads only "
                                 "`name==version --hash=sha256:...` lines (uv pip compile --generate-hashes)")
        if marker_holds(line):  # else not for the image's Python or platform
            out.append((line, line.split("--hash", 1)[0].split(";", 1)[0].strip()))
    return out


def _requirements(text: str, digest: str) -> Locked:
    """A hashed requirements.txt as a Locked."""
    kept, torch = [], None
    for line, spec in _requirement_lines(text):
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*===?\s*([^\s,;]+)", spec)
        if match is None:
            raise BaseImageError(f"requirements.txt: {spec!r} is not pinned with ==; pin every package "
                                 "(uv pip compile --generate-hashes)")
        name = package_name(match[1])
        if TORCH_ONLY.fullmatch(name):
            torch = match[3] if name == "torch" else torch
            continue
        if "--hash=" not in line:
            raise BaseImageError(f"requirements.txt: {match[1]}=={match[3]} has no --hash; regenerate it with "
                                 "hashes (uv pip compile --generate-hashes) or commit uv.lock")
        hashes = re.findall(r"--hash[= ](\S+)", line)
        kept.append(f"{spec} \\\n" + " \\\n".join(f"    --hash={h}" for h in hashes))
    return Locked(REQUIREMENTS, digest, "\n".join(kept) + ("\n" if kept else ""), torch, requirement_indexes(text))


def _without_torch(requirements: str) -> str:
    """uv's export without the accelerator libraries that only a CUDA torch pulls in (they come with the
    base's torch when it is a CUDA one); `--prune torch` already removed torch's own dependencies."""
    kept = [b for b in _blocks(requirements) if not TORCH_ONLY.fullmatch(_block_name(b))]
    return "\n".join(kept) + ("\n" if kept else "")


def public_version(version: str) -> str:
    """`2.13.0+cpu` → `2.13.0`: the part a lock pins (PyPI's torch has no local tag)."""
    return version.split("+", 1)[0]


def check_torch(locked: Locked | None, base_torch: str | None, wheels_dir: Path) -> None:
    """Refuse a base whose torch is not the lock's.

    Raises:
        BaseImageError: the lock pins another torch than the base's wheel, naming the wheel to provide.
    """
    if locked is None or locked.torch is None or base_torch is None:
        return
    check_torch_version(locked.torch, base_torch, locked.source, wheels_dir)


def check_torch_version(locked: str, base_torch: str, source: str, wheels_dir: Path) -> None:
    """`check_torch` on versions: raises BaseImageError naming the wheel to provide when they differ."""
    want = public_version(locked)
    if want != public_version(base_torch):
        raise BaseImageError(
            f"{source} pins torch {locked} but the base's torch wheel is {base_torch}: put a torch-{want} wheel for "
            f"cp311 x86_64 into {wheels_dir} (for a CPU base: pip download --no-deps --only-binary=:all: "
            f"--python-version 3.11 --platform manylinux_2_28_x86_64 -d {wheels_dir} torch=={want} "
            f"--index-url https://download.pytorch.org/whl/cpu), or pin torch=={public_version(base_torch)} in "
            "pyproject.toml and run `uv lock`")


def fetch(locked: Locked, cache_dir: Path, progress: Progress, *, kind: str = "deps") -> list[Path]:
    """The lock's wheels for the base (cp311, manylinux x86_64), downloaded once into cache_dir/<kind>/<key>/.

    pip checks every wheel against its sha256 in the requirements (--require-hashes); what it downloads
    is shown as it goes (one progress line a wheel: its name and size), and a second call with the same
    requirements reuses the directory without touching the network.

    Raises:
        BaseImageError: a package has no wheel for the platform, a hash does not match, or pip fails
            (one line naming the package).
    """
    if not locked.requirements.strip():
        return []
    key = sha256_hex(canonical_json({"requirements": locked.requirements, "python": PYTHON_VERSION,
                                     "platforms": list(PLATFORMS), "indexes": list(locked.indexes)}))[:16]
    store = cache_dir / kind / key
    listing = store / "wheels.json"
    if listing.is_file():
        names = json.loads(listing.read_text())
        if all((store / n).is_file() for n in names):
            progress(kind, f"{len(names)} wheels of {locked.source}, downloaded before ({store})")
            return [store / n for n in names]
    store.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=store.parent))
    try:
        (tmp / "requirements.txt").write_text(locked.requirements)
        progress(kind, f"downloading {len(locked.packages)} packages of {locked.source} with pip: "
                       + " ".join(locked.packages))
        argv = [sys.executable, "-m", "pip", "download", "--require-hashes", "--no-deps", "--only-binary=:all:",
                "--python-version", PYTHON_VERSION, "--implementation", "cp", "--dest", str(tmp / "wheels"),
                "--progress-bar", "off", "--disable-pip-version-check", "--retries", "2", "--timeout", "60",
                *(a for p in PLATFORMS for a in ("--platform", p)),
                *(a for url in locked.indexes for a in ("--extra-index-url", url)),
                "-r", str(tmp / "requirements.txt")]
        started = time.monotonic()
        code, log = _streamed(argv, {**os.environ, "PIP_FIND_LINKS": "", "PIP_NO_INDEX": ""},
                              lambda line: progress(kind, line))
        if code != 0:
            raise BaseImageError(pip_failure(log, locked.source, locked.indexes), log[-4000:])
        names = sorted(p.name for p in (tmp / "wheels").glob("*.whl"))
        (tmp / "wheels" / "wheels.json").write_text(json.dumps(names, indent=1) + "\n")
        shutil.rmtree(store, ignore_errors=True)
        (tmp / "wheels").replace(store)
        size = sum((store / n).stat().st_size for n in names)
        progress(kind, f"{len(names)} wheels, {size / 1e6:.0f} MB, into {store} in {time.monotonic() - started:.0f} s")
        return [store / n for n in names]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


SHOWN = ("Downloading ", "File was already downloaded")  # one line a wheel: its name and size


def _streamed(argv: Sequence[str], env: Mapping[str, str], on_line: Callable[[str], None]) -> tuple[int, str]:
    """Run pip, passing each line that says what it fetches to `on_line`; (exit code, the output's end)."""
    tail: list[str] = []
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                          text=True, errors="replace", env=dict(env)) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            tail = (tail + [line])[-200:]
            if line.strip().startswith(SHOWN):
                on_line(line.strip())
        code = proc.wait()
    return code, "\n".join(tail)


def pip_failure(log: str, source: str, indexes: Sequence[str] = ()) -> str:
    """pip download's failure as one line naming the package and what to do (pure)."""
    unreachable = [url for url in indexes if _host(url) and _host(url) in log and any(
        sign in log for sign in ("NewConnectionError", "Failed to establish a new connection", "Max retries exceeded",
                                 "Temporary failure in name resolution", "Name or service not known",
                                 "Could not fetch URL", "ConnectTimeout", "ReadTimeout"))]
    if unreachable:
        return (f"{source}: pip could not reach {unreachable[0]}, the index the lock takes torch from: run `sealab base` "
                "where it answers, or pin a torch that PyPI serves (its Linux wheel is the CUDA build) and run `uv lock`")
    missing = re.search(r"No matching distribution found for (\S+)", log)
    if missing:
        return (f"{source}: no wheel of {missing[1]} for Python {PYTHON_VERSION} on manylinux x86_64 (sealed runs "
                "install wheels only, nothing is compiled): pin a version that publishes one, or drop the package")
    mismatch = re.search(r"(\S+==\S+) from \S+[^\n]*\n\s*Expected sha256 (\w+)\n\s*Got\s+(\w+)", log)
    if mismatch:
        return (f"{source}: the wheel of {mismatch[1]} has sha256 {mismatch[3][:16]}…, the lock says "
                f"{mismatch[2][:16]}…: the lock or the index changed; regenerate the lock and commit it")
    if "THESE PACKAGES DO NOT MATCH THE HASHES" in log:
        return f"{source}: a downloaded wheel does not match its hash in the lock; regenerate the lock and commit it"
    errors = [line.removeprefix("ERROR: ") for line in log.splitlines() if line.startswith("ERROR:")]
    return f"pip could not download the wheels of {source}: {errors[-1] if errors else log.strip()[-200:]}"


def _host(url: str) -> str:
    match = re.match(r"^[a-z+]+://([^/:]+)", url)
    return match[1] if match else ""


def install(wheels: Sequence[Path], tree: Path) -> None:
    """Install the wheels under tree/opt/sealab/deps as they will lie in the image (no network, no
    compile, reproducible .pyc files: assemble.install_wheels)."""
    from executor.image.assemble import install_wheels

    install_wheels(wheels, tree, SITE)
