"""Per-experiment overhead of the sealed executor, against a bare host run and a naive docker build.

For one fixed-work train.py (a fixed number of optimizer steps, so every run does the same work):
  (a) bare:   `python3 prepare.py` as a host subprocess (same harness, same data, host torch)
  (b) sealab: executor.run.execute() in-process: seal + load + verify + create + start + wait + collect + ledger
      (each run is a new commit, so every image is sealed and loaded afresh); also the `sealab exec` CLI
  (c) naive:  docker-py classic `images.build` of the commit's tree on the base, then the same hardened run
Prints medians and ratios; `--markdown` prints the table for docs/benchmarks.md.

`--against REV` measures instead whether a change slowed the executor down: `sealab exec` of a new
commit each time, from this tree and from REV's tree (extracted with `git archive`), alternating run
by run on the same base so that drift of the machine falls on both alike. It prints each tree's median,
the ratio this/REV, and the noise: the same ratio between the two halves of REV's own runs.

Usage: .venv/bin/python bench/overhead.py [--runs 5] [--markdown]
       .venv/bin/python bench/overhead.py --against HEAD~1 [--runs 10]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import git

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.create import init  # noqa: E402
from agent.gitops import commit_file  # noqa: E402
from executor.image.base import build_base  # noqa: E402
from executor.docker_engine import Engine, prepare_out_dir  # noqa: E402
from executor.ledger import Ledger  # noqa: E402
from executor.run import execute  # noqa: E402

FIXED_WORK = '''"""Fixed work for the overhead benchmark: the same number of steps whatever the budget."""
import torch
import torch.nn as nn
import torch.nn.functional as F

STEPS = 20  # fixed number of optimizer steps
RUN = 0  # changed per run so that every run is a new commit

def train(h):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(256, 64), nn.Linear(64, 256)).to(h.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(STEPS):
        x, y = h.get_batch(16, 128)
        loss = F.cross_entropy(model(x).view(-1, 256), y.view(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        h.step(x.numel(), loss.item())
    return model
'''

NAIVE_DOCKERFILE = b"""ARG BASE
FROM ${BASE}
COPY . /workspace/
COPY run_spec.json /sealab/run_spec.json
WORKDIR /workspace
USER 1000:1000
CMD ["python3", "/workspace/prepare.py"]
"""


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def copy_data_out(engine: Engine, image: str, dest: Path) -> None:
    """The base image's embedded data, copied to the host so the bare run reads the same bytes."""
    container = engine.api.create_container(image, command=["true"])["Id"]
    try:
        stream, _ = engine.api.get_archive(container, "/opt/sealab/data")
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            tar.extractall(dest, filter="data")
    finally:
        engine.api.remove_container(container, force=True)


def exec_from(tree: Path, ws_root: Path) -> float:
    """Seconds of one `sealab exec` of HEAD in `ws_root`, with the sealab code of `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", "import sys; from agent.cli import main; sys.exit(main())", "exec"],
                          cwd=ws_root, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"bench: sealab exec from {tree} failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
    return took


def against(rev: str, runs: int, engine: Engine, base) -> None:
    """This tree's `sealab exec` against REV's, alternating; ratio and noise."""
    tmp = Path(tempfile.mkdtemp(prefix="sealab-bench-against-"))
    old = tmp / "rev"
    old.mkdir()
    sha = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT, capture_output=True,
                         text=True)
    if sha.returncode != 0:
        sys.exit(f"bench: {rev!r} is not a commit of {ROOT}")
    archive = subprocess.run(["git", "archive", sha.stdout.strip()], cwd=ROOT, capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(old, filter="data")
    trees = {"this": ROOT, "rev": old}
    repos = {}
    for name in trees:
        ws = init(tmp / f"ws-{name}")
        Ledger(ws.ledger_path).set_base(base)
        repos[name] = (ws, ws.git)
    times: dict[str, list[float]] = {name: [] for name in trees}
    for i in range(runs + 1):  # the first round warms the page cache and is not counted
        order = list(trees) if i % 2 else list(reversed(trees))
        for name in order:
            ws, repo = repos[name]
            commit_file(repo, "train.py", FIXED_WORK.replace("RUN = 0", f"RUN = {i + 1}"), f"run {i + 1}")
            took = exec_from(trees[name], ws.root)
            if i:
                times[name].append(took)
    this, before = median(times["this"]), median(times["rev"])
    half = len(times["rev"]) // 2
    noise = median(times["rev"][:half]) / median(times["rev"][half:]) if half else float("nan")
    print(f"machine: {platform.node()} · {os.cpu_count()} CPUs; {runs} runs each, alternating")
    print(f"this tree: median {this:.3f} s (range {min(times['this']):.3f}-{max(times['this']):.3f})")
    print(f"{rev} ({sha.stdout.strip()[:12]}): median {before:.3f} s "
          f"(range {min(times['rev']):.3f}-{max(times['rev']):.3f})")
    print(f"ratio this/{rev}: {this / before:.3f}; noise (REV's first half / second half): {noise:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--against", metavar="REV", help="compare `sealab exec` with REV's tree instead")
    args = parser.parse_args()

    engine = Engine.connect()
    base = build_base(source=None, engine_client=engine)
    if args.against:
        against(args.against, args.runs, engine, base)
        return
    tmp = Path(tempfile.mkdtemp(prefix="sealab-bench-"))
    ws = init(tmp / "ws")
    ledger = Ledger(ws.ledger_path)
    ledger.set_base(base)
    repo = git.Repo(ws.root)
    commit_file(ws.git, "train.py", FIXED_WORK, "fixed work")
    copy_data_out(engine, base.image_id, tmp)
    spec_path = tmp / "run_spec.json"
    spec_path.write_text(json.dumps(ws.config().run_spec.to_dict()))

    times: dict[str, list[float]] = {"bare": [], "sealab": [], "sealab_cli": [], "naive": []}
    seal_verify: list[float] = []
    sealab_bin = str(Path(sys.executable).with_name("sealab"))
    for i in range(args.runs):
        # (a) bare host subprocess, same harness and data
        out = tmp / f"bare-out-{i}"
        out.mkdir()
        env = {**os.environ, "SEALAB_RUN_SPEC": str(spec_path), "SEALAB_DATA": str(tmp / "data"),
               "SEALAB_OUT": str(out), "OMP_NUM_THREADS": "2"}
        t = time.perf_counter()
        subprocess.run([sys.executable, "prepare.py"], cwd=ws.root, env=env, check=True, capture_output=True)
        times["bare"].append(time.perf_counter() - t)

        # (b) sealab in-process, a new commit each run
        commit_file(ws.git, "train.py", FIXED_WORK.replace("RUN = 0", f"RUN = {i + 1}"), f"run {i + 1}")
        t = time.perf_counter()
        record = execute(ws, "HEAD", engine, ledger).to_dict()
        times["sealab"].append(time.perf_counter() - t)
        assert record["status"] == "ok", record["reason"]
        seal_verify.append(sum(record["durations"].get(k, 0.0) for k in ("seal", "load", "verify")))

        # (b') the same through the CLI (process start-up and imports included)
        commit_file(ws.git, "train.py", FIXED_WORK.replace("RUN = 0", f"RUN = {i + 100}"), f"cli run {i + 1}")
        t = time.perf_counter()
        subprocess.run([sealab_bin, "exec"], cwd=ws.root, check=True, capture_output=True)
        times["sealab_cli"].append(time.perf_counter() - t)

        # (c) naive: classic docker build of the commit's tree per experiment, then the same hardened run
        commit = repo.head.commit
        t = time.perf_counter()
        context = io.BytesIO()
        with tarfile.open(fileobj=context, mode="w") as tar:
            for name, data in [("Dockerfile", NAIVE_DOCKERFILE), ("run_spec.json", spec_path.read_bytes())] + [
                    (b.path, b.data_stream.read()) for b in commit.tree.traverse() if b.type == "blob"]:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        context.seek(0)
        image, _ = engine.client.images.build(fileobj=context, custom_context=True, rm=True, forcerm=True,
                                              network_mode="none", buildargs={"BASE": base.image_id},
                                              labels={"org.opencontainers.image.revision": commit.hexsha})
        out = tmp / f"naive-out-{i}"
        prepare_out_dir(out)
        container = engine.create(image.id, name=f"sealab-bench-naive-{i}", resources=ws.config().run_spec.resources,
                                  out_dir=out, env={}, labels={"sealab.bench": "naive"})
        engine.start(container)
        end = engine.wait(container, 300)
        engine.remove(container)
        times["naive"].append(time.perf_counter() - t)
        assert end.exit_code == 0
        engine.remove_image(image.id)

    bare = median(times["bare"])
    rows = [(name, median(ts), median(ts) - bare, median(ts) / bare) for name, ts in times.items()]
    machine = f"{platform.node()} · {os.cpu_count()} CPUs · {platform.machine()} · Docker " \
              f"{engine.client.version()['Version']}"
    if args.markdown:
        print(f"Machine: {machine}; {args.runs} runs each; fixed-work train.py (20 steps, same harness and data).\n")
        print("| path | median s | overhead over bare s | ratio to bare |")
        print("|---|---|---|---|")
        for name, med, over, ratio in rows:
            print(f"| {name} | {med:.3f} | {over:+.3f} | {ratio:.2f} |")
        print(f"\nseal + verify inside sealab (median): {median(seal_verify):.3f} s")
    else:
        print(f"machine: {machine}; runs: {args.runs}")
        for name, med, over, ratio in rows:
            print(f"{name:>11}: median {med:.3f} s  overhead {over:+.3f} s  ratio {ratio:.2f}")
        print(f"seal+verify median {median(seal_verify):.3f} s")
    ok = median(times["sealab"]) - bare <= 0.5 and median(times["sealab"]) < median(times["naive"])
    print("target (sealab overhead <= 0.5 s and below naive):", "met" if ok else "NOT met")


if __name__ == "__main__":
    main()
