"""The slurm backend without a cluster: its options, the job script it writes, and how it reads a job's end."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from executor.backends.factory import make_backend
from executor.backends.interface import Job
from executor.errors import ConfigError, IdentityMismatch
from executor.image.seal import REVISION, Sealed
from executor.backends.slurm import (NODE_BODY, SlurmBackend, SlurmOptions, SlurmUnavailable, expected_container,
                            finished_from, job_script, node_timings)
from executor.types import Resources, RunSpec

IMAGE = "sha256:" + "ab" * 32
REF = "127.0.0.1:5000/sealab@sha256:" + "cd" * 32


def make_job(tmp_path: Path, gpus: int = 1, **job) -> Job:
    sealed = Sealed(IMAGE, json.dumps({"config": {"Cmd": ["python3", "/workspace/prepare.py"]}}).encode(), b"",
                    {REVISION: "1" * 40}, ())
    spec = RunSpec(budget_s=60, grace_s=30, resources=Resources(gpus=gpus, cpus=1.5, memory_mb=2048))
    return Job("0123456789", "train", sealed, spec, tmp_path / ".sealab" / "outputs" / "0123456789",
               env={"SEALAB_EXPERIMENT": "0123456789"}, **job)


def options(**extra) -> SlurmOptions:
    return SlurmOptions.parse({"registry": "127.0.0.1:5000/sealab", **extra})


@pytest.mark.parametrize("given, problem", [
    ({}, "needs [backend] registry"),
    ({"registry": "127.0.0.1:5000/Sealab:latest"}, "backend.registry"),
    ({"registry": "r.example/x", "gpu_mode": "cuda"}, "gpu_mode must be one of nvidia, env"),
    ({"registry": "r.example/x", "poll_s": 0}, "poll_s must be a positive number"),
    ({"registry": "r.example/x", "partiton": "gpu"}, "unknown [backend] option(s) for slurm: partiton"),
    ({"registry": "r.example/x", "partition": 3}, "backend.partition must be a string"),
])
def test_bad_options_are_one_line_config_errors(given, problem):
    """A missing registry, a typo'd key or a wrong value in [backend] is a ConfigError naming it."""
    with pytest.raises(ConfigError, match=problem.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        SlurmOptions.parse(given)


def test_make_backend_reads_the_backend_table():
    """make_backend("slurm", …) builds a SlurmBackend from [backend] (the `name` key is not an option)."""
    backend = make_backend("slurm", object(), {"name": "slurm", "registry": "r.example:5000/exp", "gpu_mode": "env",
                                               "partition": "gpu", "poll_s": 1})
    assert isinstance(backend, SlurmBackend) and backend.name == "slurm"
    assert backend.options == SlurmOptions("r.example:5000/exp", partition="gpu", gpu_mode="env", poll_s=1)


def test_job_script_asks_for_what_the_run_spec_says(tmp_path):
    """#SBATCH: the job's name, one GPU per GPU asked, its CPUs and memory, deadline + margin, TERM before the limit."""
    job = make_job(tmp_path)
    script = job_script(job, REF, options(partition="gpu"), tmp_path / "jobdir")
    sbatch = [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH ")]
    assert sbatch == ["--job-name=sealab-0123456789-train", f"--output={tmp_path}/jobdir/slurm-%j.out",
                      f"--chdir={tmp_path}/jobdir", "--export=NIL", "--no-requeue", "--signal=B:TERM@60",
                      "--time=6:30", "--nodes=1", "--ntasks=1", "--cpus-per-task=2", "--mem=2048M", "--gres=gpu:1",
                      "--partition=gpu"]
    assert f"REF={REF}" in script and f"EXPECTED={IMAGE}" in script and "DEADLINE_NS=90000000000" in script
    assert script.endswith(NODE_BODY)
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)  # it parses


def test_gres_default_override_and_none(tmp_path):
    """No GPUs asked: no --gres; GPUs asked: gpu:<n>, or the configured gres."""
    def gres(job: Job, opts: SlurmOptions) -> list[str]:
        return [line for line in job_script(job, REF, opts, tmp_path).splitlines() if "--gres" in line]

    assert gres(make_job(tmp_path, gpus=0), options()) == []
    assert gres(make_job(tmp_path, gpus=2), options()) == ["#SBATCH --gres=gpu:2"]
    assert gres(make_job(tmp_path, gpus=1), options(gres="gpu:a100:1")) == ["#SBATCH --gres=gpu:a100:1"]


def test_expected_container_pins_image_command_and_hardening(tmp_path):
    """What the node compares against: the sealed ID, the image's CMD (or the job's), Engine.create's hardening."""
    lines = expected_container(make_job(tmp_path, in_dir=tmp_path / "in")).splitlines()
    assert lines == sorted(lines)
    for line in (f"Image={IMAGE}", 'Cmd=["python3","/workspace/prepare.py"]', "User=1000:1000",
                 "ReadonlyRootfs=true", "NetworkMode=none", 'CapDrop=["ALL"]', "Privileged=false",
                 'SecurityOpt=["no-new-privileges"]', "Memory=2147483648", "MemorySwap=2147483648",
                 "NanoCpus=1500000000", "Init=true", "Label=0123456789",
                 f"Bind={tmp_path}/.sealab/outputs/0123456789:/out:rw", f"Bind={tmp_path}/in:/in:ro"):
        assert line in lines
    with_command = expected_container(make_job(tmp_path, command=("python3", "-m", "x")))
    assert 'Cmd=["python3","-m","x"]' in with_command.splitlines()


def test_a_path_with_a_colon_cannot_be_bind_mounted(tmp_path):
    """docker -v cannot express a path holding ':'; the job is refused before anything is submitted."""
    with pytest.raises(ConfigError, match="cannot hold"):
        expected_container(make_job(tmp_path / "a:b"))


def test_status_file_becomes_finished_or_an_error():
    """done → Finished (timed out: no exit code); rejected → IdentityMismatch; cancelled, error → SlurmUnavailable."""
    done = {"state": "done", "node": "n1", "gpus": "1", "exit_code": 0, "oom_killed": False, "timed_out": False,
            "over_cap": ""}
    end = finished_from(done, b"log", "42", {"run": 3.0})
    assert (end.exit_code, end.oom_killed, end.timed_out, end.output, end.over_cap) == (0, False, False, b"log", None)
    assert end.placement == "slurm:42@n1 gpus=1" and end.timings == {"run": 3.0}
    late = finished_from({**done, "exit_code": 137, "timed_out": True, "gpus": ""}, b"", "43", {})
    assert late.exit_code is None and late.timed_out and late.placement == "slurm:43@n1"
    oom = finished_from({**done, "exit_code": 137, "oom_killed": True}, b"", "44", {})
    assert oom.oom_killed and oom.exit_code == 137
    with pytest.raises(IdentityMismatch) as refused:
        finished_from({"state": "rejected", "what": "image pulled as R on n1", "expected": IMAGE, "actual": "sha256:f"},
                      b"", "45", {})
    assert (refused.value.expected, refused.value.actual) == (IMAGE, "sha256:f")
    with pytest.raises(SlurmUnavailable, match="job 46 was cancelled on n1"):
        finished_from({"state": "cancelled", "node": "n1"}, b"", "46", {})
    with pytest.raises(SlurmUnavailable, match="docker pull R failed"):
        finished_from({"state": "error", "node": "n1", "reason": "docker pull R failed on n1"}, b"", "47", {})


def test_node_timings():
    """queue = submit to job start; load = push + pull; verify and run measured on the node."""
    status = {"t_begin": 105.0, "t_pulled": 107.0, "t_verified": 107.5, "t_started": 107.6, "t_ended": 117.6}
    assert node_timings(status, 100.0, 3.0) == pytest.approx({"queue": 5.0, "load": 5.0, "verify": 0.5, "run": 10.0})
    assert node_timings({}, 100.0, 3.0) == {"queue": 0.0, "load": 3.0, "verify": 0.0, "run": 0.0}


class FakeSlurm(SlurmBackend):
    """A SlurmBackend whose Slurm commands are answered by a script, and which pushes nothing."""

    def __init__(self, answers):
        super().__init__(engine=None, options=options(poll_s=0.01))
        self.answers, self.calls = answers, []

    def publish(self, job):
        return REF

    def slurm(self, *args):
        self.calls.append(args)
        answer = self.answers(args)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def test_ctrl_c_while_waiting_cancels_the_job(tmp_path):
    """KeyboardInterrupt while the job is queued: scancel, then the interrupt goes on."""
    backend = FakeSlurm(lambda args: {"sbatch": "77;cluster\n", "squeue": KeyboardInterrupt(), "scancel": ""}[args[0]])
    with pytest.raises(KeyboardInterrupt):
        backend.run(make_job(tmp_path))
    assert [c[0] for c in backend.calls] == ["sbatch", "squeue", "scancel"] and backend.calls[-1] == ("scancel", "77")
    assert (tmp_path / ".sealab" / "slurm" / "0123456789-train" / "job.sh").is_file()


def test_job_gone_without_a_status_is_infra_error(tmp_path, monkeypatch):
    """A job that left the queue without status.json (node failure, killed) is SlurmUnavailable with its state."""
    monkeypatch.setattr("executor.backends.slurm.time.sleep", lambda s: None)
    backend = FakeSlurm(lambda args: {"sbatch": "78\n", "squeue": "",
                                      "scontrol": "JobId=78 JobState=NODE_FAIL Reason=NodeDown ExitCode=0:0"}[args[0]])
    gone = r"job 78 ended without .*status.json \(JobState=NODE_FAIL Reason=NodeDown"
    with pytest.raises(SlurmUnavailable, match=gone):
        backend.run(make_job(tmp_path))


def test_cleanup_cancels_only_the_experiments_jobs():
    """cleanup(eid) scancels the jobs named sealab-<eid>-… and nothing else."""
    listing = "5|sealab-0123456789-train\n6|sealab-9876543210-train\n7|sealab-0123456789-eval\n8|other\n"
    backend = FakeSlurm(lambda args: listing if args[0] == "squeue" else "")
    assert backend.cleanup("0123456789") == ["slurm:5", "slurm:7"]
    assert backend.calls[-1] == ("scancel", "5", "7")


def test_job_directories_go_under_the_workspace_state(tmp_path):
    """Train and eval jobs of an experiment get sibling directories in .sealab/slurm, or under jobs_dir."""
    from executor.backends.slurm import jobs_root

    state = tmp_path / "ws" / ".sealab"
    assert jobs_root(state / "outputs" / "0123456789", None) == state / "slurm"
    assert jobs_root(state / "outputs" / "0123456789" / "eval-out", None) == state / "slurm"
    assert jobs_root(tmp_path / "elsewhere" / "out", None) == tmp_path / "elsewhere" / "slurm-jobs"
    assert jobs_root(state / "outputs" / "x", "/shared/jobs") == Path("/shared/jobs")


def shellcheck() -> str:
    import shutil

    from tests.conftest import unavailable

    return shutil.which("shellcheck") or unavailable("shellcheck is not installed (apt-get install shellcheck)")


def test_the_node_script_passes_shellcheck(tmp_path):
    """The job's body (executor/backends/slurm_node.sh) and a whole job script as written for a GPU run pass
    shellcheck with no finding (warnings included)."""
    body = Path(__file__).resolve().parents[2] / "executor" / "backends" / "slurm_node.sh"
    assert NODE_BODY == body.read_text()
    script = tmp_path / "job.sh"
    script.write_text(job_script(make_job(tmp_path), REF, options(), tmp_path / "job"))
    for path in (body, script):
        proc = subprocess.run([shellcheck(), "--severity=style", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout
