"""What a repository's own dependencies and data cost `sealab base`: cold, and reused unchanged.

In one run, with a fresh temporary cache dir and a temporary HOME (so pip's own cache is cold too):
  plain     build_base() with no files and no data dirs: the plain base. The cache dir is seeded with the
            default cache's rootfs tar, torch's dependency wheels and its assembled-image map, so the first
            call reuses the plain base the engine holds (or assembles it once, timed apart); the reuse time
            of later calls is the baseline
  deps      files = tests/fixtures/lockrepo's top-level files (uv.lock + pyproject.toml: pyarrow, requests,
            tqdm beyond torch): cold (uv export, pip download into an empty cache, install, write the
            layer, load), then unchanged lock (reuse: stat and recipe only)
  data      SIZE MB of random bytes in FILES files under HOME/.cache/benchdata (written in 1 MB chunks),
            data_dirs=["~/.cache/benchdata"]: cold capture (MB/s), then unchanged (reuse); the process's
            peak RSS (ru_maxrss) before and after the capture shows whether it streams
Reuse times are medians of --rounds calls, the three cases interleaved round by round so that drift of
the machine falls on all alike; overheads are against the plain base's reuse in the same rounds.
The images it created are removed at the end (never the plain base, nor one the engine held before).

Usage: .venv/bin/python bench/own_repo.py [--size-mb 1000] [--files 10] [--rounds 9] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from executor.docker_engine import Engine  # noqa: E402
from executor.image.base import build_base, default_cache_dir  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "lockrepo"
DATA_DIR = "~/.cache/benchdata"
TAG = "sealab-bench/own-repo:latest"  # never sealab/base:latest: the bench leaves the user's base alone
CHUNK = 1 << 20


class Events:
    """progress(step, detail) with the time of each call, to split a cold build into its phases."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, str]] = []

    def __call__(self, step: str, detail: str) -> None:
        self.events.append((time.perf_counter(), step, detail))

    def first(self, step: str, starts: str) -> float | None:
        return next((t for t, s, d in self.events if s == step and d.startswith(starts)), None)


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def seed_cache(cache: Path, api) -> None:
    """The plain base's inputs from the default cache (rootfs tar linked, wheels copied) and a map entry
    for every plain base the engine holds (its label sealab.recipe), nothing of a repository's own (no
    deps/, extended/, uv/): the plain base is reused when the engine has it, and the rest is cold."""
    default = default_cache_dir()
    for tar in (default / "rootfs").glob("*.tar"):
        (cache / "rootfs").mkdir(parents=True, exist_ok=True)
        (cache / "rootfs" / tar.name).symlink_to(tar)
    if (default / "wheels").is_dir():
        shutil.copytree(default / "wheels", cache / "wheels")
    (cache / "assembled").mkdir(parents=True)
    for img in api.images(filters={"label": "sealab.source=offline:bookworm"}):
        labels = img.get("Labels") or {}
        if "sealab.core" not in labels and labels.get("sealab.recipe", "").startswith("sha256:"):
            recipe = labels["sealab.recipe"]
            (cache / "assembled" / f"{recipe.removeprefix('sha256:')}.json").write_text(
                json.dumps({"image_id": img["Id"], "recipe": recipe}))


def write_data(root: Path, size_mb: int, count: int) -> int:
    """`count` files of random bytes totalling `size_mb` MB (10^6 bytes), written 1 MB at a time."""
    root.mkdir(parents=True)
    total = size_mb * 1_000_000
    per = total // count
    for i in range(count):
        size = per if i < count - 1 else total - per * (count - 1)
        with (root / f"shard_{i:03d}.bin").open("wb") as fh:
            while size > 0:
                n = min(CHUNK, size)
                fh.write(os.urandom(n))
                size -= n
    return total


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - t, result


def span(events: Events, a: tuple[str, str], b: tuple[str, str]) -> float | None:
    ta, tb = events.first(*a), events.first(*b)
    return tb - ta if ta is not None and tb is not None else None


def fmt(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or platform.machine())
    try:
        docker = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True,
                                text=True, timeout=30).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        docker = "?"
    return f"{cpu}, {os.cpu_count()} CPUs, Docker {docker}, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1000, help="MB of data to capture (default 1000)")
    parser.add_argument("--files", type=int, default=10, help="number of data files (default 10)")
    parser.add_argument("--rounds", type=int, default=9, help="reuse calls per case (default 9)")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    engine = Engine.connect()
    api = engine.api
    before = {img["Id"] for img in api.images(all=True)}
    wheels_dir = Path(os.environ.get("SEALAB_WHEELS", "/opt/wheels"))
    files = {p.name: p.read_bytes() for p in sorted(FIXTURE.iterdir()) if p.is_file()}
    tmp = Path(tempfile.mkdtemp(prefix="sealab-bench-own-"))
    cache, home = tmp / "cache", tmp / "home"
    home.mkdir()
    seed_cache(cache, api)
    old_home = os.environ.get("HOME")
    os.environ["HOME"] = str(home)  # pip's and anything else's ~/.cache start empty too
    created: set[str] = set()
    plain_id = None
    try:
        def base(**kw):
            events = Events()
            took, image = timed(build_base, engine, wheels_dir=wheels_dir, cache_dir=cache, tag=TAG,
                                progress=events, home=home, **kw)
            return took, image, events

        first_s, plain, first_ev = base()
        plain_id = plain.image_id
        assembled = first_ev.first("recipe", "assembled") is not None

        # data first, while the process's peak RSS is still that of imports and the plain base
        write_s, size = timed(write_data, home / ".cache" / "benchdata", args.size_mb, args.files)
        rss_before = maxrss_mb()
        data_cold_s, data_img, data_ev = base(data_dirs=[DATA_DIR])
        rss_after = maxrss_mb()
        created.add(data_img.image_id)
        assert data_img.data_dirs and data_img.data_dirs[0][0] == DATA_DIR, data_img
        capture_s = span(data_ev, ("data", "capturing"), ("assemble", "data layer"))
        archive_s = span(data_ev, ("assemble", "data layer"), ("assemble", "loading"))
        data_load_s = span(data_ev, ("assemble", "loading"), ("recipe", "extended"))

        deps_cold_s, deps_img, deps_ev = base(files=files)
        created.add(deps_img.image_id)
        assert deps_img.deps is not None, deps_img
        download_s = span(deps_ev, ("deps", "downloading"), ("assemble", "installing"))
        install_s = span(deps_ev, ("assemble", "installing"), ("assemble", "loading"))
        deps_load_s = span(deps_ev, ("assemble", "loading"), ("recipe", "extended"))
        deps_layer_mb = next((float(d.rsplit("(", 1)[1].split()[0]) for _, s, d in deps_ev.events
                              if s == "assemble" and d.startswith("deps layer")), None)
        n_wheels = next((d for _, s, d in deps_ev.events if s == "deps" and " wheels, " in d), "")

        reuse: dict[str, list[float]] = {"plain": [], "deps": [], "data": []}
        cases = {"plain": {}, "deps": {"files": files}, "data": {"data_dirs": [DATA_DIR]}}
        for i in range(args.rounds):
            order = list(cases)[i % 3:] + list(cases)[:i % 3]
            if order[-1] == "plain":  # end on an extended base: removing it by ID takes the bench's tag along
                order[-2], order[-1] = order[-1], order[-2]
            for name in order:
                took, image, events = base(**cases[name])
                assert events.first("recipe", "assembl") is None and events.first("assemble", "") is None, \
                    f"{name}: rebuilt on reuse"
                expected = {"plain": plain_id, "deps": deps_img.image_id, "data": data_img.image_id}[name]
                assert image.image_id == expected, (name, image.image_id, expected)
                reuse[name].append(took)
        med = {k: statistics.median(v) for k, v in reuse.items()}
    finally:
        if old_home is not None:
            os.environ["HOME"] = old_home
        for image_id in created - before - {plain_id}:
            try:
                api.remove_image(image_id, force=True)
            except Exception as exc:  # noqa: BLE001 - a bench reports and goes on cleaning
                print(f"bench: could not remove {image_id[:19]}: {exc}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)

    mb = size / 1e6
    rows = [
        ("plain base, first call" + (" (assembled)" if assembled else " (reused)"), first_s, None, ""),
        (f"plain base, reused (median of {args.rounds})", med["plain"], 0.0, "baseline"),
        (f"+ fixture deps, cold ({n_wheels.split(',')[0] if n_wheels else 'wheels'}: uv export, pip download, "
         "install, layer, load)", deps_cold_s, deps_cold_s - med["plain"],
         f"download {fmt(download_s, 1)} s, install + layer {fmt(install_s, 1)} s "
         f"({fmt(deps_layer_mb, 0)} MB), docker load {fmt(deps_load_s, 1)} s"),
        (f"+ fixture deps, unchanged lock (median of {args.rounds})", med["deps"], med["deps"] - med["plain"],
         "goal < 1 s over plain"),
        (f"+ {mb:.0f} MB data in {args.files} files, cold", data_cold_s, data_cold_s - med["plain"],
         f"{mb / data_cold_s:.0f} MB/s overall"
         + (f"; capture {capture_s:.1f} s ({mb / capture_s:.0f} MB/s), image archive {fmt(archive_s, 1)} s, "
            f"docker load {fmt(data_load_s, 1)} s" if capture_s else "")),
        (f"+ {mb:.0f} MB data, unchanged (median of {args.rounds})", med["data"], med["data"] - med["plain"],
         "stat snapshot only"),
    ]
    rss = (f"peak RSS (ru_maxrss) {rss_before:.0f} MB before the capture, {rss_after:.0f} MB after "
           f"(+{rss_after - rss_before:.0f} MB for {mb:.0f} MB captured)")
    ranges = "; ".join(f"{k} {min(v):.3f}–{max(v):.3f}" for k, v in reuse.items())
    if args.markdown:
        print("| case | seconds | over plain reuse s | notes |\n|---|---|---|---|")
        for name, s, over, note in rows:
            print(f"| {name} | {s:.3f} | {'' if over is None else f'{over:+.3f}'} | {note} |")
        print(f"\n{rss}. Reuse ranges (s): {ranges}. Data written in {write_s:.1f} s (page cache warm). "
              f"Machine: {machine()}.")
    else:
        for name, s, over, note in rows:
            print(f"{name}: {s:.3f} s" + ("" if over is None else f" ({over:+.3f} over plain reuse)")
                  + (f"  [{note}]" if note else ""))
        print(rss)
        print(f"reuse ranges (s): {ranges}")
        print(f"machine: {machine()}")


if __name__ == "__main__":
    main()
