"""A throwaway single-node Slurm with fake GPUs, and a local registry, for the slurm backend's tests.

Slurm 22.05 from Debian (`slurmctld slurmd slurm-client munge`, installed by `./dev test`): one node
with two fake GPUs (character devices under the cluster's folder, declared as GRES `gpu`), more CPUs
and memory than the machine has (`SlurmdParameters=config_overrides`: Slurm schedules, Docker limits),
`KillWait=5` so a cancel is quick, free ports so a leftover cluster cannot clash. munged is started
first when it is not answering (without it slurmctld retries for minutes) and is left running: it is
a system daemon. `Cluster.stop` is idempotent: it cancels every job, then kills slurmctld and slurmd
by their pidfiles.

The registry is Debian's `docker-registry` on 127.0.0.1 (an insecure registry by default for the
engine), as in tests/integration/test_registry.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

SLURM_BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol", "sinfo", "munge", "munged")
REGISTRY_BIN = "/usr/bin/docker-registry"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def missing_slurm() -> list[str]:
    """The Slurm and munge programs this machine lacks (empty: a cluster can start)."""
    paths = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [name for name in SLURM_BINARIES if shutil.which(name, path=paths) is None]


def _wait_for(check, seconds: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
            raise RuntimeError(f"{what} within {seconds:g} s\n{tail}")
        time.sleep(0.2)


def ensure_munge() -> None:
    """Start munged (as the munge user) unless it already answers: slurmctld needs it first."""
    def answers() -> bool:
        return subprocess.run(["munge", "-n"], capture_output=True).returncode == 0

    if answers():
        return
    run_dir = Path("/run/munge")
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(run_dir, "munge", "munge")
    subprocess.run(["runuser", "-u", "munge", "--", shutil.which("munged", path="/usr/sbin:/sbin") or "munged"],
                   check=True, capture_output=True)
    _wait_for(answers, 20, "munged did not answer")


@dataclass
class Cluster:
    """A running single-node cluster; `env` is what clients (sbatch, squeue, …) need."""

    root: Path
    node: str
    gpus: int
    stopped: bool = field(default=False)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True, check=check, timeout=60)

    def node_state(self) -> str:
        return self.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip()

    def jobs(self) -> list[str]:
        """IDs of the jobs in the queue (pending, running or completing)."""
        return self.run("squeue", "-h", "-o", "%i", check=False).stdout.split()

    def stop(self) -> None:
        """Cancel every job, then stop slurmctld and slurmd (idempotent)."""
        if self.stopped:
            return
        self.stopped = True
        jobs = self.jobs()
        if jobs:
            self.run("scancel", *jobs, check=False)
            deadline = time.monotonic() + 15
            while self.jobs() and time.monotonic() < deadline:
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld"):
            _kill_pidfile(self.root / f"{name}.pid")


def _kill_pidfile(pidfile: Path, grace_s: float = 10) -> None:
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def slurm_conf(root: Path, node: str, *, gpus: int, cpus: int, memory_mb: int, ctld_port: int, slurmd_port: int) -> str:
    return f"""\
ClusterName=sealabci
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
AuthType=auth/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
MailProg=/bin/true
KillWait=5
MinJobAge=600
ReturnToService=2
SchedulerParameters=sched_interval=2
GresTypes=gpu
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} Gres=gpu:{gpus} State=UNKNOWN
PartitionName=main Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def start_cluster(root: Path, *, gpus: int = 2, cpus: int = 8, memory_mb: int = 32000) -> Cluster:
    """Start munged (if needed), slurmctld and slurmd in `root` (a fresh folder) and wait for the node to be idle.

    Raises:
        RuntimeError: a daemon did not come up (with the tail of its log).
    """
    node = socket.gethostname().split(".")[0]
    for sub in ("state", "spool", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    devices = []
    for index in range(gpus):
        device = root / f"gpu{index}"
        if not device.exists():
            os.mknod(device, 0o666 | 0o020000, os.makedev(1, 3))  # char devices stand in for /dev/nvidia*
        devices.append(device)
    (root / "slurm.conf").write_text(slurm_conf(root, node, gpus=gpus, cpus=cpus, memory_mb=memory_mb,
                                                ctld_port=free_port(), slurmd_port=free_port()))
    (root / "gres.conf").write_text(f"NodeName={node} Name=gpu File={root}/gpu[0-{gpus - 1}]\n")
    cluster = Cluster(root, node, gpus)
    ensure_munge()
    sbin = "/usr/sbin:/sbin:" + os.environ.get("PATH", "")
    for daemon in ("slurmctld", "slurmd"):
        binary = shutil.which(daemon, path=sbin) or daemon
        proc = cluster.run(binary, "-f", str(cluster.conf), check=False)
        if proc.returncode != 0:
            cluster.stop()
            raise RuntimeError(f"{daemon} failed to start: {proc.stderr.strip()[-2000:]}")
    try:
        _wait_for(lambda: cluster.node_state() == "idle", 60, "the Slurm node did not become idle",
                  root / "log" / "slurmctld.log")
    except RuntimeError:
        cluster.stop()
        raise
    return cluster


@dataclass
class Registry:
    """A local registry v2; `address` is HOST:PORT."""

    address: str
    proc: subprocess.Popen
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def registry_binary() -> str | None:
    return shutil.which("docker-registry") or (REGISTRY_BIN if os.path.exists(REGISTRY_BIN) else None)


def start_registry(root: Path) -> Registry:
    """Serve a registry from `root` on a free port of 127.0.0.1.

    Raises:
        RuntimeError: it did not answer within 30 s.
    """
    binary = registry_binary()
    if binary is None:
        raise RuntimeError("docker-registry is not installed (apt-get install docker-registry)")
    port = free_port()
    config = root / "config.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
                      f"    rootdirectory: {root / 'data'}\n"
                      f"  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n")
    log = root / "registry.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([binary, "serve", str(config)], stdout=sink, stderr=subprocess.STDOUT)
    registry = Registry(f"127.0.0.1:{port}", proc, log)

    def answers() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://{registry.address}/v2/", timeout=2).close()
            return True
        except OSError:
            return False

    try:
        _wait_for(answers, 30, "docker-registry did not answer", log)
    except RuntimeError:
        registry.stop()
        raise
    return registry
