"""The slurm backend against a real single-node Slurm (2 fake GPUs) and a local registry.

Each job pulls its image by digest, checks the ID and the created container on the node, runs it
hardened with one GPU index of the allocation, and reports back through the shared file system.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import threading
import time
from pathlib import Path

import git
import pytest

from executor.git_source import open_repo
from tests.conftest import sealab_json, unavailable
from tests.slurm_cluster import missing_slurm, registry_binary, start_cluster, start_registry

pytestmark = pytest.mark.docker

REPO = "sealab-slurm"


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """One node, two fake GPUs, for the session; stopped (jobs cancelled, daemons killed) at the end."""
    missing = missing_slurm()
    if missing:
        unavailable(f"Slurm is not installed (missing {', '.join(missing)}; apt-get install slurmctld slurmd "
                    "slurm-client munge, or ./dev test)")
    if os.geteuid() != 0:
        unavailable("the test Slurm cluster needs root (slurmd, mknod)")
    cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def slurm_registry(tmp_path_factory, engine):
    if registry_binary() is None:
        unavailable("docker-registry is not installed (apt-get install docker-registry)")
    registry = start_registry(tmp_path_factory.mktemp("slurm-registry"))
    yield registry.address
    registry.stop()


@pytest.fixture(scope="session")
def backend(engine, slurm_cluster, slurm_registry):
    from executor.backends.factory import make_backend

    return make_backend("slurm", engine, {"registry": f"{slurm_registry}/{REPO}", "gpu_mode": "env",
                                          "slurm_conf": str(slurm_cluster.conf), "poll_s": 0.5})


def workspace(root: Path, base_image, *, steps: int | None = None, budget: float = 60, grace: float = 60,
              backend: str = "", out_mb: int | None = None) -> Path:
    """A scaffolded workspace asking for one GPU and one CPU, training `steps` steps (or `budget` seconds);
    `backend`: a [backend] table for its sealab.toml."""
    from agent.gitops import commit_file, set_constant
    from executor.ledger import Ledger
    from agent.create import init

    ws = init(root)
    Ledger(ws.ledger_path).set_base(base_image)
    toml = (ws.root / "sealab.toml").read_text()
    for key, value in (("train_seconds", budget), ("grace_seconds", grace), ("gpus", 1), ("cpus", 1),
                       ("memory_mb", 2048)):
        toml = set_constant(toml, key, f"{value:g}")
    if steps is not None:
        toml = toml.replace(f"grace_seconds = {grace:g}", f"grace_seconds = {grace:g}\nsteps = {steps}", 1)
    if out_mb is not None:
        toml = toml.replace("[resources]\n", f"[resources]\nout_mb = {out_mb}\n", 1)
    if backend:
        toml, count = re.subn(r'^\[backend\]\nname = "local".*\n', backend, toml, count=1, flags=re.MULTILINE)
        assert count == 1, "the scaffold's [backend] table moved"
    commit_file(ws.git, "sealab.toml", toml, "slurm test settings")
    return ws.root


def execute_in_thread(root: Path, ref: str, engine, backend, records: dict, ids: list | None = None):
    """Run `execute` on its own ledger connection in a thread; the record (or the exception) lands in `records`."""
    from executor.ledger import Ledger
    from executor.run import execute
    from executor.workspace import Workspace

    def work() -> None:
        ledger = Ledger(Workspace.open(root).ledger_path)
        try:
            records[ref] = execute(Workspace.open(root), ref, engine, ledger, backend=backend,
                                   on_record=ids.append if ids is not None else None).to_dict()
        except BaseException as exc:  # reported by the test
            records[ref] = exc
        finally:
            ledger.close()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def job_dir(root: Path, experiment_id: str) -> Path:
    return root / ".sealab" / "slurm" / f"{experiment_id}-train"


def status_of(root: Path, experiment_id: str) -> dict:
    return json.loads((job_dir(root, experiment_id) / "status.json").read_text())


def containers_of(engine, experiment_id: str) -> list[str]:
    return [c["Id"] for c in engine.api.containers(all=True, filters={"label": f"sealab.experiment={experiment_id}"})]


@pytest.fixture(scope="module")
def round_of_four(tmp_path_factory, base_image, engine, backend):
    """Four commits submitted at once, each asking for one of the node's two GPUs."""
    from agent.gitops import commit_file, set_constant

    root = workspace(tmp_path_factory.mktemp("slurm-round") / "ws", base_image, steps=5)
    repo = open_repo(root)
    train = (root / "train.py").read_text()
    commits = [commit_file(repo, "train.py", set_constant(train, "SCALAR_LR", lr), f"SCALAR_LR = {lr}")
               for lr in ("0.4", "0.45", "0.55", "0.6")]
    records: dict = {}
    started = time.monotonic()
    threads = [execute_in_thread(root, sha, engine, backend, records) for sha in commits]
    for thread in threads:
        thread.join(timeout=600)
    wall = time.monotonic() - started
    failures = {sha: exc for sha, exc in records.items() if isinstance(exc, BaseException)}
    assert not failures, failures
    return root, [records[sha] for sha in commits], wall


def test_round_of_four_on_two_fake_gpus(round_of_four, engine, slurm_registry):
    """4 jobs at once on 2 GPUs: running jobs never share an index; each pulled by digest, verified on the node, ok."""
    root, records, wall = round_of_four
    assert [r["status"] for r in records] == ["ok"] * 4, [(r["status"], r["reason"]) for r in records]
    statuses = [status_of(root, r["id"]) for r in records]
    for record, status in zip(records, statuses):
        assert record["backend"] == "slurm" and 0 < record["metrics"]["val_bpb"] < 20
        assert record["metrics"]["steps"] == 5
        assert status["state"] == "done" and status["image_id"] == record["image_id"]
        assert status["gpus"] in ("0", "1")
        assert record["placement"] == f"slurm:{status['slurm_job']}@{status['node']} gpus={status['gpus']}"
        assert {"queue", "load", "verify", "run", "total"} <= set(record["durations"])
        # Pulled by digest from the registry, and the digest names the sealed image here too.
        log = (job_dir(root, record["id"]) / f"slurm-{status['slurm_job']}.out").read_text()
        pulled = [line.split()[2] for line in log.splitlines() if line.startswith("sealab: pulling ")]
        assert len(pulled) == 1 and pulled[0].startswith(f"{slurm_registry}/{REPO}@sha256:")
        assert pulled[0] in engine.repo_digests(record["image_id"])
        assert f"sealab: verified {pulled[0]} is {record['image_id']}" in log
        assert containers_of(engine, record["id"]) == []
    # Any two jobs (train or eval phase) whose containers ran at the same time had different GPUs.
    runs = [json.loads(path.read_text()) for path in sorted((root / ".sealab" / "slurm").glob("*/status.json"))]
    assert len(runs) >= 4 and all(run["state"] == "done" for run in runs)
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            if a["t_started"] < b["t_ended"] and b["t_started"] < a["t_ended"]:
                assert a["gpus"] != b["gpus"], (a, b)
    print(f"\n4 experiments ({len(runs)} jobs) on 2 fake GPUs: {wall:.1f} s; containers ran "
          + ", ".join(f"gpu {r['gpus']} {r['t_started'] % 1000:.1f}-{r['t_ended'] % 1000:.1f}" for r in runs))


def test_verify_holds_for_slurm_records(round_of_four):
    """`sealab verify --all` re-derives each slurm-run record's image ID from git and finds no mismatch."""
    root, records, _ = round_of_four
    report = sealab_json("verify", "--all", cwd=root)
    assert report["checked"] >= 4 and report["mismatches"] == []


def test_scancel_stops_the_container(tmp_path, base_image, engine, backend, slurm_cluster):
    """scancel of a running job: its trap kills and removes the container within seconds; the record is not ok."""
    root = workspace(tmp_path / "ws", base_image, budget=300, grace=60)
    ids: list[str] = []
    records: dict = {}
    head = git.Repo(root).head.commit.hexsha
    thread = execute_in_thread(root, head, engine, backend, records, ids)
    deadline = time.monotonic() + 240
    while not (ids and containers_of(engine, ids[0])) or not _running(engine, ids[0]):
        assert time.monotonic() < deadline, "the experiment's container never started"
        assert thread.is_alive(), records
        time.sleep(0.5)
    jobs = [line.split("|") for line in slurm_cluster.run("squeue", "-h", "-o", "%i|%j").stdout.split()]
    job_id = next(i for i, name in jobs if name == f"sealab-{ids[0]}-train")
    slurm_cluster.run("scancel", job_id)
    cancelled = time.monotonic()
    while containers_of(engine, ids[0]):
        assert time.monotonic() - cancelled < 15, "the container outlived scancel"
        time.sleep(0.2)
    thread.join(timeout=60)
    assert not thread.is_alive()
    from executor.errors import EngineUnavailable

    assert isinstance(records[head], EngineUnavailable) and "cancelled" in str(records[head])
    record = sealab_json("status", cwd=root)[0]
    assert record["id"] == ids[0] and record["status"] == "infra_error" and "scancel" in record["reason"]
    assert status_of(root, ids[0])["state"] == "cancelled"


def test_deadline_kills_the_container_on_the_node(tmp_path, base_image, engine, slurm_cluster, slurm_registry):
    """`sealab exec --backend slurm` (options from [backend]): past budget + grace the node kills the container."""
    table = (f'[backend]\nname = "slurm"\nregistry = "{slurm_registry}/{REPO}"\ngpu_mode = "env"\n'
             f'slurm_conf = "{slurm_cluster.conf}"\npoll_s = 0.5\n')
    root = workspace(tmp_path / "ws", base_image, budget=1, grace=2, backend=table)
    from agent.gitops import commit_file

    # (a train.py that stops at its budget may end inside budget + grace on a fast machine: this one never does)
    commit_file(open_repo(root), "train.py", "import time\ntime.sleep(600)\n", "sleeps past the deadline")
    record = sealab_json("exec", "--backend", "slurm", cwd=root, ok_codes=(1,))
    assert record["status"] == "timeout" and record["exit_code"] is None, record["reason"]
    assert record["backend"] == "slurm" and record["placement"].startswith("slurm:")
    status = status_of(root, record["id"])
    assert status["timed_out"] is True and 3 <= status["t_ended"] - status["t_started"] < 30
    assert containers_of(engine, record["id"]) == []


def test_out_cap_is_enforced_on_the_node(tmp_path, base_image, engine, backend):
    """A run writing more to /out than [resources] out_mb (the 2.6 MB model vs 1 MB) is a crash saying so."""
    root = workspace(tmp_path / "ws", base_image, steps=5, out_mb=1)
    records: dict = {}
    head = git.Repo(root).head.commit.hexsha
    execute_in_thread(root, head, engine, backend, records).join(timeout=300)
    record = records[head]
    assert not isinstance(record, BaseException), record
    assert record["status"] == "crash" and "/out exceeded its cap of 1 MB" in record["reason"], record["reason"]
    assert status_of(root, record["id"])["over_cap"].startswith("/out exceeded its cap of 1 MB")
    assert containers_of(engine, record["id"]) == []


def _running(engine, experiment_id: str) -> bool:
    found = engine.api.containers(filters={"label": f"sealab.experiment={experiment_id}", "status": "running"})
    return bool(found)


def _impostor(engine, repo: str) -> tuple[str, str]:
    """Push a one-file image to `repo`; returns its ID and its `repo@sha256:…`."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        payload = f"not the experiment {time.time_ns()}\n".encode()
        info = tarfile.TarInfo("impostor.txt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    engine.api.import_image_from_data(data.getvalue(), repository=repo, tag="impostor")
    image_id = engine.image_id(f"{repo}:impostor")
    digest, problem = engine.push_image(repo, "impostor")
    assert problem is None and digest
    return image_id, f"{repo}@{digest}"


def test_node_rejects_another_image_behind_the_digest(tmp_path, base_image, engine, backend, slurm_registry,
                                                      monkeypatch):
    """Handed a digest of another image, the node pulls it, sees a foreign ID and creates nothing: `rejected`."""
    root = workspace(tmp_path / "ws", base_image, steps=5)
    impostor_id, impostor_ref = _impostor(engine, f"{slurm_registry}/{REPO}")
    monkeypatch.setattr(backend, "publish", lambda job: impostor_ref)
    ids: list[str] = []
    records: dict = {}
    head = git.Repo(root).head.commit.hexsha
    try:
        execute_in_thread(root, head, engine, backend, records, ids).join(timeout=300)
    finally:
        engine.remove_image(impostor_id)
    record = records[head]
    assert not isinstance(record, BaseException), record
    assert record["status"] == "rejected" and "nothing was started" in record["reason"]
    assert record["image_id"] in record["reason"] and impostor_id in record["reason"]
    status = status_of(root, record["id"])
    assert status["state"] == "rejected" and status["actual"] == impostor_id
    assert not (job_dir(root, record["id"]) / "container.txt").exists()  # never got as far as docker create
    assert containers_of(engine, record["id"]) == []


def test_node_hardening_equals_engine_create(tmp_path, engine, base_image):
    """The job's `docker create` options give the container Engine.create gives, field for field (no Slurm needed)."""
    import subprocess

    from executor.backends.interface import Job
    from executor.docker_engine import prepare_out_dir
    from executor.image.seal import REVISION, Sealed
    from executor.backends.slurm import INSPECT_FORMAT, create_args, expected_container
    from executor.types import Resources, RunSpec

    spec = RunSpec(budget_s=5, grace_s=5, resources=Resources(memory_mb=768, cpus=1.5, pids=99, tmp_mb=32, home_mb=8))
    (tmp_path / "in").mkdir()
    sealed = Sealed(base_image.image_id, b'{"config": {"Cmd": ["true"]}}', b"", {REVISION: "0" * 40}, ())
    job = Job("feedface01", "eval", sealed, spec, tmp_path / "out", env={"SEALAB_EXPERIMENT": "feedface01"},
              command=("python3", "-c", "print('<&> é')"), in_dir=tmp_path / "in")
    prepare_out_dir(job.out_dir)
    created = []
    try:
        created.append(engine.create(base_image.image_id, name=f"{job.name}-api", resources=spec.resources,
                                     out_dir=job.out_dir.resolve(), in_dir=job.in_dir.resolve(), command=job.command,
                                     env=dict(job.env), labels={"sealab.experiment": job.experiment_id}))
        cli = subprocess.run(["docker", "create", *create_args(job), base_image.image_id, *job.command],
                             capture_output=True, text=True, check=True)
        created.append(cli.stdout.strip())
        for container in created:
            shown = subprocess.run(["docker", "inspect", "--format", INSPECT_FORMAT, container],
                                   capture_output=True, text=True, check=True).stdout
            assert sorted(filter(None, shown.splitlines())) == expected_container(job).splitlines()
    finally:
        for container in created:
            engine.remove(container)


def test_node_rejects_a_container_unlike_the_expected(tmp_path, base_image, engine, backend, monkeypatch):
    """A created container whose inspected hardening differs from the expected is removed unstarted: `rejected`."""
    import executor.backends.slurm

    root = workspace(tmp_path / "ws", base_image, steps=5)
    honest = executor.backends.slurm.expected_container
    monkeypatch.setattr(executor.backends.slurm, "expected_container",
                        lambda job: honest(job).replace("PidsLimit=256", "PidsLimit=64"))
    records: dict = {}
    head = git.Repo(root).head.commit.hexsha
    execute_in_thread(root, head, engine, backend, records).join(timeout=300)
    record = records[head]
    assert not isinstance(record, BaseException), record
    assert record["status"] == "rejected", record["reason"]
    assert "PidsLimit=64" in record["reason"] and "PidsLimit=256" in record["reason"]
    status = status_of(root, record["id"])
    assert status["state"] == "rejected" and status["what"].startswith(f"container sealab-{record['id']}-train")
    assert containers_of(engine, record["id"]) == []
    assert not (root / ".sealab" / "outputs" / record["id"] / "result.json").exists()  # never started


def test_nvidia_mode_pins_the_allocated_devices(tmp_path, base_image, engine, slurm_cluster, slurm_registry):
    """gpu_mode nvidia: the created container requests exactly SLURM_JOB_GPUS (checked on the node); without an
    NVIDIA runtime here, the start then fails: infra_error, nothing left behind."""
    from executor.backends.factory import make_backend

    nvidia = make_backend("slurm", engine, {"registry": f"{slurm_registry}/{REPO}", "gpu_mode": "nvidia",
                                            "slurm_conf": str(slurm_cluster.conf), "poll_s": 0.5})
    root = workspace(tmp_path / "ws", base_image, steps=5)
    records: dict = {}
    head = git.Repo(root).head.commit.hexsha
    execute_in_thread(root, head, engine, nvidia, records).join(timeout=300)
    from executor.errors import EngineUnavailable

    assert isinstance(records[head], EngineUnavailable) and "docker start" in str(records[head])
    record = sealab_json("status", cwd=root)[0]
    assert record["status"] == "infra_error"
    status = status_of(root, record["id"])
    assert status["state"] == "error" and status["gpus"] in ("0", "1")
    shown = (job_dir(root, record["id"]) / "container.txt").read_text()
    assert "ReadonlyRootfs=true" in shown  # the hardening check passed, then the GPU check, then start failed
    assert containers_of(engine, record["id"]) == []


def test_research_loop_with_two_workers_on_slurm(tmp_path, base_image, engine, slurm_cluster, slurm_registry):
    """`sealab run --workers 2 --backend slurm`: the loop's rounds go through Slurm jobs; the two runs of a
    round hold distinct GPUs at once, and the loop's guarantees (attribution, CAS refs, verify) hold."""
    from tests.conftest import sealab
    from tests.integration.test_loop import check_run_consistency

    table = (f'[backend]\nname = "slurm"\nregistry = "{slurm_registry}/{REPO}"\ngpu_mode = "env"\n'
             f'slurm_conf = "{slurm_cluster.conf}"\npoll_s = 0.5\n')
    root = workspace(tmp_path / "ws", base_image, steps=3, backend=table)
    policy = tmp_path / "policy.toml"
    shipped = open(__import__("policies").policy_path("default")).read()
    policy.write_text(re.sub(r"\[acceptance\][^\[]*", '[acceptance]\nmin_delta = 0.0001\nnoise_runs = 1\nz = 1.0\n'
                             'reason = "tests: one baseline run"\n\n', shipped, count=1))
    from agent.gitops import commit_file

    toml = (root / "sealab.toml").read_text().replace('name = "default"', f'name = "{policy}"')
    commit_file(open_repo(root), "sealab.toml", toml, "one baseline run")
    proc = sealab("run", "--workers", "2", "--experiments", "2", "--proposer", "offline", "--tag", "s", cwd=root,
                  timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = check_run_consistency(root, "s", engine)
    pair = [r for r in records if r.get("proposal")]
    assert len(pair) == 2 and all(r["backend"] == "slurm" and r["status"] == "ok" for r in pair), pair
    a, b = (status_of(root, r["id"]) for r in pair)
    assert a["t_started"] < b["t_ended"] and b["t_started"] < a["t_ended"], "the round's two jobs did not overlap"
    assert {a["gpus"], b["gpus"]} == {"0", "1"}
