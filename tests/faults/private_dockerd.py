"""A second, private dockerd that a test may kill and restart, leaving the shared daemon alone.

Recipe (../shared/notes/distributed-engines.md, section 1, "Two-node swarm on one host"): the daemon runs
in its own network namespace (entered with `nsenter --net=…`, never `ip netns exec`, which remounts
/sys and kills dockerd), with its own `--data-root`, `--exec-root`, socket and pidfile, and shares the
host's containerd under containerd namespaces of its own. `--bridge none` is safe only because of the
namespace: in the host's, moby would delete the shared daemon's docker0. No veth is needed: sealab's
containers have no network (`network_mode=none`) and the daemon pulls nothing.

Everything is named after a short `name`, so `cleanup(name)` can undo a crashed earlier run too:
kill the daemon by its pidfile, unmount and delete its folders, delete the namespace, and remove the
containerd namespaces (their leftover containers, snapshots and content first).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

CONTAINERD = "/var/run/docker/containerd/containerd.sock"


class PrivateDockerd:
    def __init__(self, name: str, root: Path | None = None) -> None:
        self.name = name
        self.root = root or Path("/tmp") / name  # short: a unix socket path has at most 107 bytes
        self.sock = self.root / "docker.sock"
        self.pidfile = self.root / "docker.pid"
        self.netns = name
        self.log = self.root / "dockerd.log"
        self.proc: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"unix://{self.sock}"

    def docker(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(["/usr/bin/docker", "-H", self.host, *args], capture_output=True, text=True, **kwargs)

    def start(self, timeout: float = 60) -> None:
        """Start (or restart) the daemon and wait until it answers."""
        self.root.mkdir(parents=True, exist_ok=True)
        if not Path(f"/var/run/netns/{self.netns}").exists():
            subprocess.run(["ip", "netns", "add", self.netns], check=True)
            subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up"], check=True)
        cmd = ["nsenter", f"--net=/var/run/netns/{self.netns}", "dockerd",
               "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
               "-H", self.host, "--pidfile", str(self.pidfile),
               "--containerd", CONTAINERD, "--containerd-namespace", f"{self.name}",
               "--containerd-plugins-namespace", f"{self.name}p",
               "--bridge", "none", "--iptables=false", "--ip6tables=false", "--ip-masq=false", "--ip-forward=false"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"private dockerd exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            if self.sock.exists() and self.docker("version", "--format", "{{.Server.Version}}").returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"private dockerd did not answer in {timeout:g} s: {self.log.read_text()[-2000:]}")

    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 60) -> None:
        """Send `sig` to the daemon (SIGKILL: a crash; SIGTERM: a restart) and wait until it is gone."""
        pid = self.pid() or (self.proc.pid if self.proc else None)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            if self.proc is not None:
                self.proc.poll()
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        with contextlib.suppress(FileNotFoundError):
            self.pidfile.unlink()

    def load_from(self, image_id: str) -> None:
        """`docker save IMAGE | docker -H <private> load`: the same image ID there."""
        save = subprocess.Popen(["/usr/bin/docker", "save", image_id], stdout=subprocess.PIPE)
        load = subprocess.run(["/usr/bin/docker", "-H", self.host, "load", "-q"], stdin=save.stdout,
                              capture_output=True, text=True)
        save.stdout.close()
        if save.wait() != 0 or load.returncode != 0:
            raise RuntimeError(f"could not copy {image_id[:19]}: {load.stderr[-500:]}")
        got = self.docker("image", "inspect", "--format", "{{.Id}}", image_id)
        if got.stdout.strip() != image_id:
            raise RuntimeError(f"the private daemon holds {got.stdout.strip()!r}, not {image_id}")

    def cleanup(self) -> None:
        """Undo everything, whatever state it is in (idempotent)."""
        self.kill()
        for _ in range(5):  # a killed daemon may leave its mounts behind, some stacked twice
            mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                      if line.split()[1].startswith(f"{self.root}/")]
            if not mounts:
                break
            for mount in sorted(mounts, key=len, reverse=True):
                subprocess.run(["umount", "-l", mount], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)
        if Path(f"/var/run/netns/{self.netns}").exists():
            subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        for ns in (self.name, f"{self.name}p"):
            remove_containerd_namespace(ns)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie counts as gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def remove_containerd_namespace(ns: str) -> None:
    """`ctr namespaces rm`, after removing what would make it refuse (tasks, containers, images, leases,
    snapshots, content)."""
    ctr = ["ctr", "-a", CONTAINERD, "-n", ns]
    listed = subprocess.run(["ctr", "-a", CONTAINERD, "namespaces", "ls", "-q"], capture_output=True, text=True)
    if ns not in listed.stdout.split():
        return
    for task in _lines(ctr + ["tasks", "ls", "-q"]):
        subprocess.run(ctr + ["tasks", "kill", "-s", "SIGKILL", task], capture_output=True)
        subprocess.run(ctr + ["tasks", "rm", "-f", task], capture_output=True)
    for kind in ("containers", "images", "leases"):
        for item in _lines(ctr + [kind, "ls", "-q"]):
            subprocess.run(ctr + [kind, "rm", item], capture_output=True)
    for snap in _lines(ctr + ["snapshots", "ls"])[1:]:
        subprocess.run(ctr + ["snapshots", "rm", snap.split()[0]], capture_output=True)
    for blob in _lines(ctr + ["content", "ls", "-q"]):
        subprocess.run(ctr + ["content", "rm", blob], capture_output=True)
    subprocess.run(["ctr", "-a", CONTAINERD, "namespaces", "rm", ns], capture_output=True)


def _lines(cmd: list[str]) -> list[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return [line for line in proc.stdout.splitlines() if line.strip()] if proc.returncode == 0 else []
