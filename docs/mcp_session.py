"""A `sealab mcp` session as a coding agent would hold it, printed as a transcript (the README's).

    .venv/bin/python docs/mcp_session.py DIR      # DIR: a new directory

It scaffolds a workspace at DIR (`sealab init`) whose sealab.toml trains a fixed 30 steps (so a run's
metric is the same on every CPU run, and the baseline's noise floor is min_delta), commits that, builds
or reuses the base (`sealab base`), then starts `sealab mcp` there over stdio with the official MCP
SDK's client, as an agent does, and makes the calls of the README's transcript: status, read_file, a
bad edit, a policy-rejected edit, three experiments (a learning rate that helps: kept; a typo: crash,
discarded; a learning rate that hurts: discarded), a log tail, results. Each call and its answer (long
answers cut) is printed; progress notifications show as `…` lines, once per new message. Compare it
with your own: commits, ids and times differ; on a CPU the metrics should not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client

SEALAB = str(Path(sys.executable).with_name("sealab"))


def cut(text: str, lines: int = 14, width: int = 110) -> str:
    rows = [r if len(r) <= width else r[: width - 1] + "…" for r in text.splitlines()]
    return "\n".join(rows if len(rows) <= lines else rows[:lines] + [f"… ({len(rows) - lines} more lines)"])


async def call(session: ClientSession, tool: str, args: dict, *, lines: int = 14, progress: bool = False) -> str:
    print(f"→ {tool} {json.dumps(args)}")
    seen: list[str] = []

    async def on_progress(value, total, message):
        line = (message or "").rsplit(" (", 1)[0]
        if line and line not in seen:  # each new line once (the ticks repeat it with the seconds so far)
            seen.append(line)
            print(f"  … {message}")

    result = await session.call_tool(tool, args, progress_callback=on_progress if progress else None)
    text = "".join(c.text for c in result.content if getattr(c, "type", "") == "text")
    print(("← ERROR " if result.is_error else "← ") + cut(text, lines))
    print()
    return text


def scaffold(root: Path) -> None:
    """A new workspace at `root` with a 30-step budget, committed, and its base."""
    subprocess.run([SEALAB, "init", str(root)], check=True, stdout=subprocess.DEVNULL)
    toml = (root / "sealab.toml").read_text()
    assert "# steps = 200 " in toml, "the scaffold's sealab.toml has no `# steps = 200` line to turn on"
    (root / "sealab.toml").write_text(toml.replace("# steps = 200 ", "steps = 30     "))
    subprocess.run(["git", "-C", str(root), "commit", "-qam", "a fixed 30-step budget"], check=True)
    subprocess.run([SEALAB, "base"], cwd=root, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def transcript(root: Path, tag: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    params = StdioServerParameters(command=SEALAB, args=["mcp", "--tag", tag], cwd=str(root), env=env)
    async with stdio_client(params, errlog=open(os.devnull, "w")) as (read, write, *_):
        async with ClientSession(read, write) as s:
            init = await s.initialize()
            tools = await s.list_tools()
            print("```text")
            print(f"(connected to {init.server_info.name}; tools: {', '.join(t.name for t in tools.tools)})\n")
            await call(s, "status", {}, lines=20)
            await call(s, "read_file", {"path": "train.py"}, lines=6)
            await call(s, "edit_train_py", {"old": "MATRIX_LR = 0.123", "new": "MATRIX_LR = 0.04"})  # not there
            await call(s, "edit_train_py", {"old": "import torch\n", "new": "import socket\nimport torch\n"})
            await call(s, "run_experiment", {"description": "open a socket"})
            await call(s, "edit_train_py", {"discard": True})
            await call(s, "edit_train_py", {"old": "MATRIX_LR = 0.01 ", "new": "MATRIX_LR = 0.005 "})
            await call(s, "run_experiment", {"description": "MATRIX_LR 0.01 -> 0.005"}, lines=24, progress=True)
            await call(s, "edit_train_py", {"old": "def train(h):\n", "new": "def train(h):\n    model = undefined_name\n"})
            crashed = json.loads(await call(s, "run_experiment", {"description": "a typo"}, lines=8, progress=True))
            await call(s, "log_tail", {"experiment_id": crashed["experiment_id"], "lines": 10}, lines=20)
            await call(s, "edit_train_py", {"old": "UNEMBEDDING_LR = 0.01 ", "new": "UNEMBEDDING_LR = 0.004 "})
            await call(s, "run_experiment", {"description": "UNEMBEDDING_LR 0.01 -> 0.004"}, lines=8, progress=True)
            await call(s, "results", {}, lines=10)
            print("```")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="a new directory for the workspace")
    parser.add_argument("--tag", default="agent", help="the run's tag (branch sealab/TAG)")
    args = parser.parse_args()
    if args.directory.exists():
        parser.error(f"{args.directory} exists: give a new directory")
    scaffold(args.directory)
    anyio.run(transcript, args.directory, args.tag)


if __name__ == "__main__":
    main()
