"""A user's own repository, sealed as it is (real engine, real uv and pip, real git): its lock, its data.

tests/fixtures/lockrepo is shaped like karpathy/autoresearch: pyproject.toml + uv.lock (pyarrow,
requests, tqdm beyond torch), a prepare.py that writes parquet shards and a tokenizer into
~/.cache/tinyresearch, a train.py that reads them and prints the `---` summary. It is adopted with
`sealab init --adopt`, prepared with `sealab base --prepare` (network on, build step only), and run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import git
import pytest

from agent.gitops import commit_file
from executor.git_source import open_repo
from executor.image import deps, extend
from executor.image.base import default_cache_dir
from executor.image.launch import environment
from executor.scored_summary import RECORDED_HEADER
from executor.summary import parse_summary
from executor.types import BaseImage, RunSpec
from tests.conftest import sealab, sealab_json

pytestmark = pytest.mark.docker

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
STEPS = 30


def _repository(path: Path, fixture: str) -> Path:
    """The fixture as a user's git repository (its own history, branch master)."""
    shutil.copytree(FIXTURES / fixture, path)
    repo = git.Repo.init(path, initial_branch="master")
    repo.index.add([p.name for p in path.iterdir() if p.name != ".git"])
    actor = git.Actor("someone", "someone@example.com")
    repo.index.commit("tinyresearch", author=actor, committer=actor)
    return path


@pytest.fixture(scope="module")
def adopted(tmp_path_factory, engine, base_image):
    """(workspace, env, base record): lockrepo adopted, set to fixed steps, prepared and based."""
    top = tmp_path_factory.mktemp("own")
    home = top / "home"
    home.mkdir()
    env = {"HOME": str(home), "SEALAB_CACHE_DIR": str(default_cache_dir())}  # the session's plain base
    root = _repository(top / "tinyresearch", "lockrepo")
    sealab("init", "--adopt", str(root), env=env, check=True)
    toml = (root / "sealab.toml").read_text().replace("# steps = 200", f"steps = {STEPS}", 1)
    assert f"steps = {STEPS}" in toml
    commit_file(open_repo(root), "sealab.toml", toml, "fixed steps")
    done = sealab("base", "--prepare", "python prepare.py", "--json", cwd=root, env=env, timeout=900)
    assert done.returncode == 0, done.stderr
    assert "wrote 3 shards" in done.stderr
    return root, env, BaseImage.from_dict(json.loads(done.stdout))


def _host_run(cache: Path, root: Path, home: Path, tmp: Path) -> float:
    """The same commit run bare on the host: the lock's wheels installed into a directory of its own, the
    environment the launcher gives a sealed run."""
    files = {p.name: p.read_bytes() for p in root.iterdir() if p.is_file()}
    locked = deps.lock_of(files, cache)
    wheels = deps.fetch(locked, cache, lambda step, line: None)
    target = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(target),
                    *map(str, wheels)], check=True, capture_output=True)
    spec = json.loads(RunSpec(steps=STEPS, command=("python3", "train.py")).canonical())
    run_env = environment(spec, {"PATH": os.environ["PATH"], "HOME": str(home), "PYTHONPATH": str(target),
                                 "PYTHONHASHSEED": "0"})
    out = subprocess.run([sys.executable, "train.py"], cwd=root, env=run_env, capture_output=True, text=True,
                         check=True).stdout
    return parse_summary(out)["val_bpb"]


def test_adopt_base_exec_runs_the_repository_sealed_like_a_bare_host_run(adopted, tmp_path):
    """adopt → base → exec gives `ok` with the lock's packages and the captured shards, and the metric of a
    bare host run of the same commit, bit for bit; the record names the torch it had; reproduce is exact."""
    root, env, base = adopted
    cfg = (root / "sealab.toml").read_text()
    assert 'command = "python3 train.py"' in cfg and '"~/.cache/tinyresearch"' in cfg
    assert base.deps == deps.lock_digest({n: (root / n).read_bytes() for n in ("pyproject.toml", "uv.lock")})
    assert [name for name, _ in base.data_dirs] == ["~/.cache/tinyresearch"] and base.torch == "2.13.0+cpu"
    rec = sealab_json("exec", cwd=root, env=env)
    assert rec["status"] == "ok", rec["reason"]
    assert rec["metrics"]["metric_source"] == "summary" and rec["metrics"]["steps"] == STEPS
    log = (root / rec["log_path"]).read_text().splitlines()  # train.py's summary, then sealab's repeating it
    assert log[-7:-4] == [RECORDED_HEADER, f"val_bpb: {rec['metrics']['val_bpb']:.6f}", "metric_source: summary"]
    assert rec["data_digest"] == base.data_digest
    host = _host_run(Path(env["SEALAB_CACHE_DIR"]), root, Path(env["HOME"]), tmp_path)
    assert rec["metrics"]["val_bpb"] == host
    assert rec["cpu"]["torch"] == "2.13.0+cpu" and rec["cpu"]["threads"] == 2  # what the launcher saw
    again = sealab("reproduce", rec["id"], cwd=root, env=env)
    assert again.returncode == 0 and again.stdout.startswith("exact:"), again.stdout + again.stderr
    checked = sealab("verify", rec["id"], cwd=root, env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_base_rebuilt_from_scratch_has_the_same_id(adopted, engine, base_image):
    """The deps and data layers rebuilt (reinstalled, recaptured, reloaded) on the plain base give the same ID."""
    from executor.image import capture, docker_build
    from executor.image.base import _HashCache, _tmp_dir

    root, env, base = adopted
    cache = Path(env["SEALAB_CACHE_DIR"])
    api = docker_build.connect(engine)
    labels = docker_build.inspect(api, base.image_id)["Config"]["Labels"]
    assert labels["sealab.core"] == base_image.image_id and labels["sealab.deps"] == base.deps
    locked = deps.lock_of({n: (root / n).read_bytes() for n in ("pyproject.toml", "uv.lock")}, cache)
    hashes = _HashCache(cache / "wheels" / "sha256.json")
    wheels = [(p.name, hashes.sha256(p), p) for p in deps.fetch(locked, cache, lambda step, line: None)]
    snaps = [capture.snapshot("~/.cache/tinyresearch", Path(env["HOME"]))]
    core_labels = docker_build.inspect(api, base_image.image_id)["Config"]["Labels"] or {}
    rebuilt = extend.extend(api, base_image, core_labels, locked, wheels, snaps, cache_dir=cache,
                            tmp_dir=_tmp_dir(cache), tag="sealab/base-test-rebuilt:latest", rebuild=True,
                            progress=lambda step, line: None)
    assert rebuilt.image_id == base.image_id
    assert rebuilt.data_dirs == base.data_dirs and rebuilt.data_digest == base.data_digest


def test_a_cache_file_changed_afterwards_never_reaches_a_run_under_the_old_digest(adopted):
    """After `sealab base`, a shard changed on the host: runs read the captured snapshot (same metric, same
    data digest); `sealab base` again captures the new bytes as a new base with a new data digest."""
    root, env, base = adopted
    first = sealab_json("exec", cwd=root, env=env)
    shard = Path(env["HOME"]) / ".cache" / "tinyresearch" / "shard_00000.parquet"
    shutil.copyfile(Path(env["HOME"]) / ".cache" / "tinyresearch" / "shard_00001.parquet", shard)
    unaffected = sealab_json("exec", cwd=root, env=env)
    assert unaffected["status"] == "ok" and unaffected["metrics"]["val_bpb"] == first["metrics"]["val_bpb"]
    assert unaffected["data_digest"] == first["data_digest"] == base.data_digest
    rebased = sealab_json("base", cwd=root, env=env)
    assert rebased["image_id"] != base.image_id and rebased["data_digest"] != base.data_digest
    after = sealab_json("exec", cwd=root, env=env)
    assert after["status"] == "ok" and after["data_digest"] == rebased["data_digest"]
    assert after["metrics"]["val_bpb"] != first["metrics"]["val_bpb"]  # the run read the new shard


def test_a_package_without_a_wheel_is_one_line_naming_it(tmp_path):
    env = {"HOME": str(tmp_path), "SEALAB_CACHE_DIR": str(default_cache_dir())}
    root = tmp_path / "ws"
    sealab("init", str(root), env=env, check=True)
    commit_file(open_repo(root), "requirements.txt", "sgmllib3k==1.0.0 --hash=sha256:" + "0" * 64 + "\n",
                "an sdist-only package")
    done = sealab("base", cwd=root, env=env, timeout=600)
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "requirements.txt: no wheel of sgmllib3k==1.0.0 for Python 3.11 on manylinux x86_64" in lines[-1]


def test_a_missing_cache_directory_is_one_line_saying_how_to_fill_it(tmp_path):
    env = {"HOME": str(tmp_path), "SEALAB_CACHE_DIR": str(default_cache_dir())}
    root = tmp_path / "ws"
    sealab("init", str(root), env=env, check=True)
    toml = (root / "sealab.toml").read_text() + '\n[data]\ndirs = ["~/.cache/absent"]\n'
    commit_file(open_repo(root), "sealab.toml", toml, "a data dir nobody filled")
    done = sealab("base", cwd=root, env=env)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert f"[data] directory ~/.cache/absent ({tmp_path}/.cache/absent) does not exist" in line
    assert "python prepare.py" in line


def test_a_higher_is_better_metric_printed_without_a_summary_block_is_adopted_with_no_hand_edits(tmp_path):
    """tests/fixtures/maze prints `solve_rate: …` as its last lines, with no `---`: adopted as it is, it runs
    sealed under the launcher and its record holds solve_rate, to be maximized."""
    env = {"HOME": str(tmp_path / "home"), "SEALAB_CACHE_DIR": str(default_cache_dir())}
    root = _repository(tmp_path / "maze", "maze")
    adopted = sealab("init", "--adopt", str(root), env=env, check=True)
    assert "solve_rate" in adopted.stdout
    cfg = (root / "sealab.toml").read_text()
    assert 'name = "solve_rate"' in cfg and 'direction = "maximize"' in cfg
    sealab("base", cwd=root, env=env, check=True, timeout=900)
    rec = sealab_json("exec", cwd=root, env=env)
    assert rec["status"] == "ok", rec["reason"]
    assert isinstance(rec["metrics"]["solve_rate"], float) and rec["metrics"]["metric_source"] == "summary"
    assert rec["run_spec"]["command"] == ["python3", "train.py"] and rec["run_spec"]["direction"] == "maximize"
    assert rec["cpu"]["torch"] == "2.13.0+cpu"  # the launcher's report of the run
