"""`sealab base --prepare CMD`: the repository's one-time preparation, run in its base WITH network.

autoresearch-style repositories download and tokenize their data once (`python prepare.py`) into
directories under ~/.cache, which `[data] dirs` then captures into the base. This runs that step in a
container of the workspace's base (its locked packages installed), with the default network, the
commit's files read-only at /workspace (exported from git, never the working tree), an empty HOME,
and each [data] directory of this machine bind-mounted read-write where the repository computes it
under HOME, as the host user. It is a build step: experiments never get a network.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from executor.docker_engine import Engine
from executor.errors import BaseImageError
from executor.git_source import CommitFacts
from executor.image.capture import host_path
from executor.types import BaseImage

CONTAINER_HOME = "/home/sealab"


def run_prepare(engine: Engine, base: BaseImage, facts: CommitFacts, command: str, data_dirs: Sequence[str],
                on_line: Callable[[str], None], home: Path | None = None) -> None:
    """Run `command` (a shell-quoted line) for the commit; its [data] dirs fill on this machine.

    Raises:
        BaseImageError: no [data] dirs are configured, the command is empty, or it exits non-zero.
    """
    argv = shlex.split(command)
    if not argv:
        raise BaseImageError("--prepare needs a command, e.g. --prepare \"python prepare.py\"")
    if not data_dirs:
        raise BaseImageError("--prepare fills the [data] dirs of sealab.toml, and the commit lists none: add "
                             "e.g. [data] dirs = [\"~/.cache/NAME\"] and commit it")
    home = home or Path.home()
    binds: dict[str, tuple[str, str]] = {}
    for name in data_dirs:
        path = host_path(name, home)
        path.mkdir(parents=True, exist_ok=True)
        binds[str(path)] = (f"{CONTAINER_HOME}/{name.removeprefix('~/')}", "rw")
    if argv[0] == "python":  # the base has python3 only
        argv[0] = "python3"
    with tempfile.TemporaryDirectory(prefix="sealab-prepare-") as tmp:
        for f in facts.files:
            target = Path(tmp) / f.path
            target.parent.mkdir(parents=True, exist_ok=True)
            if f.kind == "symlink":
                os.symlink(os.fsdecode(f.data), target)
            elif f.kind == "file":
                with f.open() as stream, target.open("wb") as out:
                    shutil.copyfileobj(stream, out, 1 << 20)
                target.chmod(f.mode & 0o777 or 0o644)
        os.chmod(tmp, 0o755)
        binds[tmp] = ("/workspace", "ro")
        on_line(f"prepare: {shlex.join(argv)} in {base.image_id[:19]} (network on; filling "
                f"{', '.join(data_dirs)})")
        code = engine.run_networked(base.image_id, argv, binds=binds, user=f"{os.getuid()}:{os.getgid()}",
                                    env={"HOME": CONTAINER_HOME, "PYTHONDONTWRITEBYTECODE": "1"}, on_line=on_line)
    if code != 0:
        raise BaseImageError(f"--prepare {command!r} exited {code} (its output is above); fix it and run "
                             "`sealab base --prepare` again")
