"""/out through a log: a wrapper that prints a run's /out after the run, and its decoder (pure).

A backend whose /out vanishes with the container (a Kubernetes pod's emptyDir) runs the harness
under WRAPPER, sealab's own code passed in the container's command (the image stays the sealed
one). The wrapper is PID 1 of the container: it starts the harness, waits for it, then SIGKILLs
every other process of the container (so nothing the run started can print afterwards) and prints,
as the last lines of the log:

    ==sealab-out v1 begin==
    <base64 of a gzip'd tar of the regular files at the top of /out, 76 characters a line>
    ==sealab-out v1 end files=N bytes=B sha256=HEX==

or one line `==sealab-out v1 over-cap files=N bytes=B cap=C==` (more than C bytes of files) or
`==sealab-out v1 error WHY==`, and exits with the harness's exit status. A run can print marker
lines of its own, but only before the wrapper's: `unpack` reads the block that ends the log and
nothing else, and reports any defect as a problem (text), never as an exception.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import tarfile
import zlib
from dataclasses import dataclass, field

MARK = "==sealab-out v1"
_BEGIN = f"{MARK} begin==".encode()
_END = re.compile(rb"==sealab-out v1 end files=(\d{1,9}) bytes=(\d{1,12}) sha256=([0-9a-f]{64})==")
_OVER = re.compile(rb"==sealab-out v1 over-cap files=(\d{1,9}) bytes=(\d{1,15}) cap=(\d{1,15})==")
_ERROR = re.compile(rb"==sealab-out v1 error (.{0,300})==")

# Run as `python3 -I -S -c WRAPPER CAP_BYTES HARNESS_ARGV...`: isolated (no PYTHON* variables, no
# site-packages, no .pth files), standard library only, so nothing in the image but the interpreter
# can change what it does.
WRAPPER = r'''
import base64, hashlib, io, os, signal, subprocess, sys, tarfile
cap, cmd, out = int(sys.argv[1]), sys.argv[2:], "/out"
def stop(*_):
    try:
        os.kill(-1, signal.SIGKILL)  # as PID 1: every process of the container but this one
    except OSError:
        pass
signal.signal(signal.SIGTERM, stop)  # the deadline or a deletion: stop the run, still report /out
try:
    child, rc = subprocess.Popen(cmd).pid, 255
except OSError as exc:
    print(f"sealab: cannot start {cmd[:1]}: {exc}", file=sys.stderr, flush=True)
    child, rc = None, 127
while child is not None:
    try:
        pid, status = os.wait()  # reaps orphans too, as an init must
    except ChildProcessError:
        break
    if pid == child:
        rc = os.waitstatus_to_exitcode(status)
        break
stop()
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
sys.stdout.write("\n")
try:
    names = sorted(n for n in os.listdir(out)
                   if os.path.isfile(os.path.join(out, n)) and not os.path.islink(os.path.join(out, n)))
    total = sum(os.path.getsize(os.path.join(out, n)) for n in names)
    if total > cap:
        sys.stdout.write(f"==sealab-out v1 over-cap files={len(names)} bytes={total} cap={cap}==\n")
    else:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for n in names:
                tar.add(os.path.join(out, n), arcname=n, recursive=False)
        data = buf.getvalue()
        text = base64.b64encode(data).decode()
        sys.stdout.write("==sealab-out v1 begin==\n")
        for i in range(0, len(text), 76):
            sys.stdout.write(text[i:i + 76] + "\n")
        sys.stdout.write(f"==sealab-out v1 end files={len(names)} bytes={len(data)} "
                         f"sha256={hashlib.sha256(data).hexdigest()}==\n")
except Exception as exc:
    why = " ".join(f"{type(exc).__name__}: {exc}".replace("==", "=").split())[:200]
    sys.stdout.write(f"==sealab-out v1 error {why}==\n")
sys.stdout.flush()
sys.exit(rc if 0 <= rc < 256 else 128 - rc if rc < 0 else 255)
'''


def wrap(command: list[str] | tuple[str, ...], cap_bytes: int) -> list[str]:
    """The container command that runs `command` under the wrapper, with /out capped at `cap_bytes`."""
    return ["python3", "-I", "-S", "-c", WRAPPER, str(int(cap_bytes)), *command]


@dataclass(frozen=True, slots=True)
class Unpacked:
    """A log split into the run's own output and the files of its /out."""

    output: bytes  # everything before the wrapper's block (the whole log when there is none)
    files: dict[str, bytes] = field(default_factory=dict)
    problem: str | None = None  # why /out could not be recovered; None: `files` is all of it


def unpack(log: bytes, cap_bytes: int) -> Unpacked:
    """Read the /out archive that ends `log` (pure; any defect is a `problem`, never an exception)."""
    body = log.rstrip(b"\r\n ")
    start = body.rfind(b"\n") + 1
    last = body[start:].rstrip(b"\r")
    if m := _OVER.fullmatch(last):
        return Unpacked(_before(log, start), problem=f"/out held {int(m[2])} bytes in {int(m[1])} files, over the "
                        f"{int(m[3])} bytes that travel through the pod log (log_out_mb)")
    if m := _ERROR.fullmatch(last):
        return Unpacked(_before(log, start), problem=f"the wrapper could not archive /out: "
                        f"{m[1].decode(errors='replace')}")
    m = _END.fullmatch(last)
    if m is None:
        return Unpacked(log, problem="the log does not end with the /out archive (the wrapper did not finish)")
    begin = body.rfind(b"\n" + _BEGIN + b"\n", 0, start)
    if begin < 0:
        return Unpacked(log, problem="the /out archive at the end of the log has no begin marker")
    output = log[:begin]
    try:
        data = base64.b64decode(b"".join(body[begin + len(_BEGIN) + 2:start].split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        return Unpacked(output, problem=f"the /out archive is not valid base64: {exc}")
    if len(data) != int(m[2]) or hashlib.sha256(data).hexdigest() != m[3].decode():
        return Unpacked(output, problem=f"the /out archive is truncated or altered: {len(data)} bytes, sha256 "
                        f"{hashlib.sha256(data).hexdigest()[:16]}…, the end marker says {int(m[2])} bytes, "
                        f"{m[3].decode()[:16]}…")
    files, problem = _untar(data, cap_bytes)
    if problem is None and len(files) != int(m[1]):
        problem = f"the /out archive holds {len(files)} files, the end marker says {int(m[1])}"
    return Unpacked(output, files if problem is None else {}, problem)


def _before(log: bytes, start: int) -> bytes:
    return log[:max(0, start - 1)]


def _untar(data: bytes, cap_bytes: int) -> tuple[dict[str, bytes], str | None]:
    """The regular, flat-named files of a gzip'd tar, at most `cap_bytes` in all."""
    files: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar:
                name = member.name
                if not member.isfile() or "/" in name or "\\" in name or name in ("", ".", ".."):
                    return {}, f"the /out archive holds {name!r}, not a plain file name"
                total += member.size
                if total > cap_bytes:
                    return {}, f"the /out archive unpacks to more than {cap_bytes} bytes"
                extracted = tar.extractfile(member)
                files[name] = extracted.read() if extracted is not None else b""
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        return {}, f"the /out archive is not a readable tar: {exc}"
    return files, None
