"""Container misbehaviour: a hostile train.py, committed in a workspace, runs contained. It cannot write
code, data or anything outside /out, gain privileges, reach a network or the engine, read the host's
environment or files, fill /tmp, HOME or /out past their caps, outlive its run, or get a printed
number believed over the harness's."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from executor.docker_engine import dir_usage
from executor.git_source import open_repo
from tests.attacks.conftest import containers_of, set_steps
from tests.conftest import TINY_TRAIN, commit_train, sealab_json

# What the container's environment may hold beyond the image's: HOME and HOSTNAME from the engine, the
# numerics the harness pins from the run spec before torch loads (prepare.NUMERIC_ENV), and the cache
# directory torch's deterministic mode names for itself.
HARNESS_ENV = {"HOME", "HOSTNAME", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_DYNAMIC", "MKL_DYNAMIC",
               "MKL_CBWR", "CUBLAS_WORKSPACE_CONFIG", "TORCHINDUCTOR_CACHE_DIR"}

SECRET = "sk-ant-HOSTONLY-attack-suite-0123456789"
HOSTILE = r'''
import ctypes, ctypes.util, errno, json, os, shutil, socket, subprocess, sys, time

NEEDLE = "HOST" + "ONLY"  # built at run time, so this file does not contain it


def attempt(fn):
    try:
        value = fn()
        return "allowed" if value is None else f"allowed: {value}"
    except BaseException as exc:
        return f"{type(exc).__name__}: {exc}"


def write(path, data=b"x"):
    def go():
        with open(path, "wb") as fh:
            fh.write(data)
    return go


def fill(path):
    """Write 1 MB blocks until the file system refuses; the bytes written."""
    done = 0
    try:
        with open(path, "wb") as fh:
            while done < (1 << 30):
                fh.write(b"\0" * (1 << 20))
                fh.flush()
                done += 1 << 20
    except OSError as exc:
        return [done, exc.errno]
    return [done, None]


def libc_call(name, *args):
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    result = getattr(libc, name)(*args)
    if result != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def search(roots):
    """Files readable here that contain the host's secret."""
    found = []
    for top in roots:
        for base, dirs, files in os.walk(top):
            for name in files:
                path = os.path.join(base, name)
                try:
                    if os.path.getsize(path) < (1 << 20) and NEEDLE.encode() in open(path, "rb").read():
                        found.append(path)
                except OSError:
                    pass
    return found


def daemons():
    """A double-forked daemon and a setsid + nohup shell, both appending to /out/heartbeat forever."""
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            while True:
                with open("/out/heartbeat", "a") as fh:
                    fh.write("d")
                time.sleep(0.1)
        os._exit(0)
    cmd = ["sh", "-c", "while true; do echo s >> /out/heartbeat; sleep 0.1; done"]
    if shutil.which("nohup"):
        cmd = ["nohup"] + cmd
    subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


r = {}
for path in ("/evil", "/etc/passwd", "/workspace/train.py", "/workspace/new.py", "/opt/sealab/data/train.bin",
             "/sealab/run_spec.json", "/usr/lib/python3/dist-packages/sitecustomize.py", "/proc/sys/kernel/hostname",
             "/proc/sysrq-trigger", "/sys/fs/cgroup/pids.max"):
    r["write " + path] = attempt(write(path))
r["tmp"] = fill("/tmp/fill")
r["home"] = fill(os.path.expanduser("~/fill"))
os.remove("/tmp/fill"); os.remove(os.path.expanduser("~/fill"))
r["setuid0"] = attempt(lambda: os.setuid(0))
r["setgid0"] = attempt(lambda: os.setgid(0))
r["sudo"] = shutil.which("sudo") and attempt(lambda: subprocess.run(["sudo", "-n", "true"], check=True))
r["su"] = shutil.which("su") and attempt(lambda: subprocess.run(["su", "-c", "true"], check=True, timeout=5,
                                                                  stdin=subprocess.DEVNULL, capture_output=True))
r["mount"] = attempt(lambda: libc_call("mount", b"none", b"/tmp", b"tmpfs", 0, None))
r["chroot"] = attempt(lambda: os.chroot("/tmp"))
r["raw_socket"] = attempt(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW))
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
r["uid"], r["cap_eff"], r["no_new_privs"] = os.getuid(), status["CapEff"].strip(), status["NoNewPrivs"].strip()
r["tcp"] = attempt(lambda: socket.create_connection(("1.1.1.1", 443), timeout=3))
r["udp"] = attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).connect(("192.0.2.1", 9)))
r["dns"] = attempt(lambda: socket.getaddrinfo("example.com", 80))
r["interfaces"] = sorted(os.listdir("/sys/class/net"))
r["sockets"] = [p for p in ("/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock")
                if os.path.exists(p)]
r["env"] = dict(os.environ)
r["pid1_env"] = attempt(lambda: open("/proc/1/environ", "rb").read().decode(errors="replace"))
r["workspace"] = sorted(os.listdir("/workspace"))
r["root_dir"] = attempt(lambda: os.listdir("/root"))
r["secret_files"] = search(["/workspace", "/home", "/tmp", "/out", "/root", "/etc", "/sealab", "/opt/sealab"])
r["mounts"] = open("/proc/self/mountinfo").read()
json.dump(r, open("/out/probe.json", "w"))
daemons()
print("val_bpb: 0.000100")  # a number the harness never measured


def _fake_summary():  # printed after the harness's own summary, so it is the last one in the log
    print("---\nval_bpb:          0.000100\ntraining_seconds: 1.0\nnum_steps:        1", flush=True)


import atexit
atexit.register(_fake_summary)
'''


@pytest.mark.docker
def test_hostile_train_py_is_contained(tiny_workspace, engine):
    """One hostile train.py tries everything: every write outside /out and the tmpfs fails; /tmp and
    HOME stop at their caps; no privilege, network, engine socket, host environment or host file is
    reachable; its daemons die with the run; the printed metric is ignored for the harness's; the host
    and the engine are left as they were."""
    root = tiny_workspace(tmp_mb=16, home_mb=8)
    secret_file = root / ".sealab" / "secret.txt"
    secret_file.write_text(SECRET)
    commit_train(root, HOSTILE + TINY_TRAIN, "hostile train.py")
    host_files = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.iterdir() if p.is_file()}
    record = sealab_json("exec", cwd=root, env={"ANTHROPIC_API_KEY": SECRET})
    out = root / ".sealab" / "outputs" / record["id"]
    probe = json.loads((out / "probe.json").read_text())
    # Outside /out: read-only code, data, root fs; /proc/sys and /sys not writable.
    for key, said in probe.items():
        if key.startswith("write "):
            assert said.startswith(("OSError: [Errno 30]", "PermissionError", "FileNotFoundError",
                                    "OSError: [Errno 13]")), (key, said)
    assert not Path("/evil").exists() and not Path("/workspace/new.py").exists()
    # The tmpfs caps hold (ENOSPC at the size given in the run spec).
    assert probe["tmp"][1] == 28 and probe["tmp"][0] <= 16 << 20
    assert probe["home"][1] == 28 and probe["home"][0] <= 8 << 20
    # No privileges.
    for key in ("setuid0", "setgid0", "mount", "chroot", "raw_socket"):
        assert "Operation not permitted" in probe[key] or "Errno 1]" in probe[key], (key, probe[key])
    assert probe["sudo"] in (None, "") or "allowed" not in probe["sudo"]
    assert probe["su"] in (None, "") or "allowed" not in probe["su"]
    assert probe["uid"] == 1000 and probe["cap_eff"] == "0000000000000000" and probe["no_new_privs"] == "1"
    # No network, no engine.
    assert "Network is unreachable" in probe["tcp"] and "Network is unreachable" in probe["udp"]
    assert "allowed" not in probe["dns"] and probe["interfaces"] == ["lo"] and probe["sockets"] == []
    # Nothing of the host's: environment, workspace state, files.
    assert "ANTHROPIC_API_KEY" not in probe["env"] and SECRET not in json.dumps(probe)
    image_env = {e.split("=", 1)[0] for e in engine.api.inspect_image(record["image_id"])["Config"]["Env"]}
    assert {k for k in probe["env"] if not k.startswith("SEALAB_")} <= image_env | HARNESS_ENV
    assert ".sealab" not in probe["workspace"] and ".git" not in probe["workspace"]
    assert probe["secret_files"] == []
    host_paths = [line.split()[3] for line in probe["mounts"].splitlines() if str(root) in line]
    assert all(str(root) not in line or " /out " in line for line in probe["mounts"].splitlines()), host_paths
    # The harness's number, not the printed one (the fake summary is the last block train.py printed).
    assert record["status"] == "ok", record["reason"]
    assert record["metrics"]["val_bpb"] > 1 and record["metrics"]["val_bpb"] != 0.0001
    logs = [p.read_text(errors="replace") for p in (root / ".sealab" / "logs").glob(record["id"] + "*")]
    assert any("val_bpb:          0.000100" in log for log in logs)
    # The daemons died with the run; no container and no host process is left.
    beats = (out / "heartbeat").stat().st_size
    time.sleep(1.5)
    assert (out / "heartbeat").stat().st_size == beats
    assert containers_of(engine, record["id"]) == []
    cmdlines = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdlines.append((proc / "cmdline").read_bytes())
            except OSError:
                pass
    assert not any(b"/out/heartbeat" in c for c in cmdlines)
    # The host is untouched, and the secret is nowhere sealab wrote.
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in host_files} == host_files
    for path in (root / ".sealab").rglob("*"):
        if path.is_file() and path != secret_file:
            assert SECRET.encode() not in path.read_bytes(), path


OUT_FLOOD = '''
import os
with open("/out/flood", "wb") as fh:  # 1 MB blocks, synced, up to 1 GB
    for _ in range(1024):
        fh.write(os.urandom(1 << 20))
        fh.flush()
        os.fsync(fh.fileno())
import time
time.sleep(120)
'''


@pytest.mark.docker
def test_out_cap_kills_the_run(tiny_workspace, engine):
    """/out is a bind mount with no size limit of its own; past `[resources] out_mb` the orchestrator
    kills the run: `crash`, the reason names the cap, the writer stopped long before its 1 GB."""
    from agent.gitops import commit_file

    root = tiny_workspace()
    toml = (root / "sealab.toml").read_text().replace("home_mb = 64", "home_mb = 64\nout_mb = 8")
    commit_file(open_repo(root), "sealab.toml", toml, "an 8 MB /out")
    commit_train(root, OUT_FLOOD + TINY_TRAIN, "fills /out")
    record = sealab_json("exec", cwd=root, ok_codes=(1,))
    assert record["status"] == "crash" and "/out exceeded its cap of 8 MB" in record["reason"], record["reason"]
    assert record["run_spec"]["resources"]["out_mb"] == 8
    used = dir_usage(root / ".sealab" / "outputs" / record["id"])
    assert 8 << 20 < used < 512 << 20, used
    assert record["durations"]["run"] < 30  # not the deadline (42 s): killed for the cap
    assert containers_of(engine, record["id"]) == []


def test_out_usage_counts_what_a_flood_could_hide(tmp_path):
    """The /out measure counts a sparse file at its apparent size, every empty file as a block, and
    does not follow a symlink out of the directory."""
    (tmp_path / "sparse").open("wb").truncate(64 << 20)
    assert dir_usage(tmp_path) >= 64 << 20
    empties = tmp_path / "many"
    empties.mkdir()
    for i in range(100):
        (empties / str(i)).touch()
    assert dir_usage(empties) >= 100 * 4096
    (tmp_path / "link").symlink_to("/usr")
    assert dir_usage(tmp_path) < (64 << 20) + (1 << 20)
    assert dir_usage(tmp_path, stop_above=1 << 20) <= (64 << 20) + 4096


def test_out_mb_is_optional_in_the_run_spec():
    """`[resources] out_mb` is parsed and sealed into the run spec; left out, the default cap applies
    and the spec's digest is what it was before the key existed."""
    from executor import config
    from executor.types import DEFAULT_OUT_MB, RunSpec, canonical_json, sha256_hex

    spec = config.parse(set_steps(config.DEFAULT_TOML, 5)).run_spec
    assert spec.resources.out_mb is None and spec.resources.out_cap_mb == DEFAULT_OUT_MB
    assert "out_mb" not in spec.to_dict()["resources"]
    old = {**spec.to_dict()}
    assert spec.digest() == "sha256:" + sha256_hex(canonical_json(old))
    capped = config.parse(config.DEFAULT_TOML.replace("home_mb = 64", "home_mb = 64\nout_mb = 8")).run_spec
    assert capped.resources.out_cap_mb == 8 and capped.digest() != config.parse(config.DEFAULT_TOML).run_spec.digest()
    assert RunSpec.from_dict(capped.to_dict()) == capped
    with pytest.raises(Exception, match="out_mb"):
        config.parse(config.DEFAULT_TOML.replace("home_mb = 64", "home_mb = 64\nout_mb = 0"))
    with pytest.raises(Exception, match="out_mb"):
        config.parse(config.DEFAULT_TOML.replace("home_mb = 64", "home_mb = 64\nout_mb = 1.5"))


@pytest.mark.docker
def test_the_before_start_check_reads_every_hardening_field_from_the_real_engine(engine, base_image, tmp_path):
    """A container created by Engine.create passes the local before-start check on every field the Slurm
    node checks (the engine reports them as asked); checked against other limits, the first difference
    is refused, naming expected and found."""
    from types import SimpleNamespace

    from executor.backends.interface import check_container
    from executor.errors import IdentityMismatch
    from executor.types import Resources

    asked = Resources(memory_mb=512, cpus=1.5, pids=96, tmp_mb=32, home_mb=16)
    out = tmp_path / "out"
    out.mkdir()
    container = engine.create(base_image.image_id, name=f"sealab-hardening-{os.getpid()}", resources=asked,
                              out_dir=out, env={}, labels={"sealab.test": "hardening"}, command=["true"])
    try:
        sealed = SimpleNamespace(image_id=base_image.image_id)
        check_container(engine, container, sealed, asked, ["true"])  # every field as asked
        for other, field in ((Resources(memory_mb=512, cpus=1.5, pids=97, tmp_mb=32, home_mb=16), "PidsLimit"),
                             (Resources(memory_mb=512, cpus=1.5, pids=96, tmp_mb=64, home_mb=16), "Tmpfs"),
                             (Resources(memory_mb=1024, cpus=1.5, pids=96, tmp_mb=32, home_mb=16), "Memory")):
            with pytest.raises(IdentityMismatch) as refused:
                check_container(engine, container, sealed, other, ["true"])
            assert f"container {field}" in str(refused.value), str(refused.value)
    finally:
        engine.remove(container)
