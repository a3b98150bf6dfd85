"""What `sealab init --adopt` finds in a checkout before it writes sealab.toml (pure: reads files only).

`survey(path)` reads the checkout's files from disk (no git, no Docker) and says what the adoption's
sealab.toml should hold and why: the dependency files (pyproject.toml + uv.lock, requirements.txt),
the cache directories under ~ the code computes (`[data] dirs`), the metric train.py prints as
`name: value` and its direction (from program.md, else from known names), whether a `---` line is
printed, and what the user still has to do. `render_toml(survey)` is that sealab.toml: the layout and
comments of config.DEFAULT_TOML, with the found values, `[harness] command` and `metric_source =
"summary"`, and no `grace_seconds` (an adopted command's deadline is measured from the baseline runs).

The code is read with `ast`, never imported or run: a path is recognised only when it is computed
from the home directory by the usual spellings (os.path.expanduser, Path.home(), os.path.join, `/`,
a variable assigned one of those).
"""

from __future__ import annotations

import ast
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from executor import config
from executor.errors import WorkspaceError

COMMAND = "python3 train.py"  # the adopted run's command, in the image's /workspace
RESEARCH_FILES = ("train.py", "prepare.py", "program.md")
SKIP_DIRS = frozenset({".git", ".venv", "venv", "node_modules", "__pycache__", ".sealab"})
MAX_BYTES = 1 << 20  # a .py file larger than this is not read
HF_CACHE = "~/.cache/huggingface"
HF_MODULES = frozenset({"kernels", "huggingface_hub", "transformers", "datasets", "diffusers"})
HF_CALLS = frozenset({"from_pretrained", "hf_hub_download", "snapshot_download", "get_kernel"})

LOWER = frozenset({"val_bpb", "bpb", "loss", "val_loss", "perplexity", "ppl", "error", "err"})
HIGHER = frozenset({"accuracy", "acc", "score", "reward", "solve_rate"})
NOT_METRICS = frozenset({"learning_rate", "lr", "dropout_rate", "sample_rate", "sampling_rate", "frame_rate"})
_LOWER_SAID = r"lower is better|the lower the better|lower values? (?:is|are) better|smaller is better|" \
              r"minimi[sz]e[sd]?|lowest|as low as possible"
_HIGHER_SAID = r"higher is better|the higher the better|higher values? (?:is|are) better|larger is better|" \
               r"bigger is better|maximi[sz]e[sd]?|highest|as high as possible"
_SAID = re.compile(rf"(?P<minimize>{_LOWER_SAID})|(?P<maximize>{_HIGHER_SAID})", re.IGNORECASE)
_NEAR = 160  # characters of program.md either side of a metric's name where its direction may be said
UNSURE = "not said in program.md and not a known name: check it"  # a direction guessed
_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*):(?:\s|$)")  # a printed `name: value` line, as executor/summary.py reads it


@dataclass(frozen=True)
class Printed:
    """A `name: value` line the code prints: the name, the file, and whether a `---` line comes before it."""

    name: str
    file: str
    after_dashes: bool


@dataclass(frozen=True)
class DataDir:
    """A directory under ~ the code uses, and where that was found (`prepare.py`, `train.py: imports kernels`)."""

    path: str
    why: str
    downloads: bool = False  # filled at run time by a library's downloads (Hugging Face), not by a prepare step


@dataclass(frozen=True)
class Survey:
    """What a checkout holds, as the adoption's sealab.toml and its printout use it.

    `metric` is None when the code prints no candidate (the TOML then keeps the default's val_bpb and the
    to-do says to set it); each `*_why` is a phrase for the printout; `todo` is what the user still has to do.
    """

    research_files: tuple[str, ...]  # of RESEARCH_FILES, those the checkout has
    deps_files: tuple[str, ...]  # of pyproject.toml, uv.lock, requirements.txt, those the checkout has
    deps_why: str
    data_dirs: tuple[DataDir, ...]
    metric: str | None
    direction: str
    metric_why: str
    direction_why: str
    dashes: bool  # the code prints a `---` line before its `name: value` lines
    printed: tuple[Printed, ...]
    command: str
    todo: tuple[str, ...]

    @property
    def findings(self) -> tuple[str, ...]:
        """What was found, one line each, for `sealab init --adopt` to print."""
        data = "; ".join(f"{d.path} ({d.why})" for d in self.data_dirs) or "none found in the code"
        metric = f"{self.metric} ({self.metric_why})" if self.metric else f"none ({self.metric_why})"
        summary = "a `---` line, then the `name: value` lines" if self.dashes else \
            "`name: value` lines with no `---` line before them" if self.printed else "no `name: value` lines"
        missing = [name for name in RESEARCH_FILES if name not in self.research_files]
        return (f"research files: {', '.join(self.research_files)}"
                + (f" (no {' or '.join(missing)})" if missing else ""),
                f"dependencies: {self.deps_why}",
                f"data dirs: {data}",
                f"metric: {metric}",
                f"direction: {self.direction} ({self.direction_why})",
                f"printed summary: {summary}",
                f"command: {self.command}")


def survey(path: Path) -> Survey:
    """Survey the checkout at `path` (reads its files only).

    Raises:
        WorkspaceError: `path` is not a directory.
    """
    if not path.is_dir():
        raise WorkspaceError(f"{path} is not a directory; adopt needs a checkout")
    research = tuple(name for name in RESEARCH_FILES if (path / name).is_file())
    deps, deps_why, todo = _deps(path)
    trees = _python_files(path)
    data_dirs = _data_dirs(trees)
    printed, dashes = _printed(trees)
    program = _read(path / "program.md") if "program.md" in research else ""
    metric, metric_why, direction, direction_why = _metric(printed, program, "program.md" in research)
    filled = ", ".join(d.path for d in data_dirs if not d.downloads)
    downloads = [d for d in data_dirs if d.downloads]
    then = "" if downloads else ", then `sealab base`"
    if filled and "prepare.py" in research:
        todo.append(f"run `python prepare.py` once on this machine (it fills {filled}){then}")
    elif filled:
        todo.append(f"fill {filled} on this machine as the repository says{then}")
    elif "prepare.py" in research:
        todo.append("prepare.py fills no directory found in the code: if it writes data, add its directory to "
                    "[data] dirs in sealab.toml and commit it, then run it once and `sealab base`")
    for d in downloads:
        todo.append(f"run `python train.py` once on this machine so that what it downloads at run time is in "
                    f"{d.path} ({d.why}; a sealed run is offline), then `sealab base`")
    if metric is None:
        todo.append("set [metric] name and direction in sealab.toml to the `name: value` line train.py prints, "
                    "and commit it")
    elif direction_why == UNSURE:
        todo.append(f"check [metric] direction in sealab.toml (is a higher or a lower {metric} better?) and commit it")
    if "program.md" not in research:
        todo.append("write program.md (the agent's instructions: the goal, the metric, the rules) and commit it")
    return Survey(research_files=research, deps_files=deps, deps_why=deps_why, data_dirs=data_dirs, metric=metric,
                  direction=direction, metric_why=metric_why, direction_why=direction_why, dashes=dashes,
                  printed=printed, command=COMMAND, todo=tuple(todo))


# ---------------------------------------------------------------- dependencies

def _deps(path: Path) -> tuple[tuple[str, ...], str, list[str]]:
    """The dependency files found, a phrase saying what they are, and the to-do they imply."""
    found = tuple(name for name in ("pyproject.toml", "uv.lock", "requirements.txt") if (path / name).is_file())
    todo: list[str] = []
    parts = []
    if "pyproject.toml" in found:
        names = _pyproject_dependencies(path / "pyproject.toml")
        listed = "not valid TOML" if names is None else \
            f"{len(names)} dependencies: {', '.join(names[:6])}{', ...' if len(names) > 6 else ''}" if names \
            else "no [project] dependencies"
        if "uv.lock" in found:
            parts.append(f"pyproject.toml ({listed}) + uv.lock")
        else:
            parts.append(f"pyproject.toml ({listed}) without uv.lock")
            todo.append("run `uv lock` and commit uv.lock (the environment is installed from the lock)")
    elif "uv.lock" in found:
        parts.append("uv.lock without pyproject.toml")
    if "requirements.txt" in found:
        parts.append("requirements.txt")
    why = ", ".join(parts) if parts else \
        "none (no pyproject.toml, uv.lock or requirements.txt): a run has the base image's python3 and torch"
    return found, why, todo


def _pyproject_dependencies(path: Path) -> list[str] | None:
    """The names of [project] dependencies (without versions); None when the file is not TOML."""
    try:
        project = tomllib.loads(_read(path)).get("project", {})
    except tomllib.TOMLDecodeError:
        return None
    deps = project.get("dependencies", []) if isinstance(project, dict) else []
    return [re.split(r"[\s<>=!~;\[(]", str(d), maxsplit=1)[0] for d in deps if isinstance(d, str)]


# ---------------------------------------------------------------- the code

def _read(path: Path) -> str:
    return path.read_bytes()[:MAX_BYTES].decode(errors="replace")


def _python_files(path: Path) -> list[tuple[str, ast.Module]]:
    """The parsed .py files at the top of the checkout and one directory down, train.py first, then by
    name; a file that does not parse is left out."""
    files = sorted(p for p in path.glob("*.py") if p.is_file())
    subdirs = sorted(p for p in path.iterdir() if p.is_dir() and p.name not in SKIP_DIRS and not p.name.startswith("."))
    for sub in subdirs:
        files += sorted(p for p in sub.glob("*.py") if p.is_file())
    files.sort(key=lambda p: p.relative_to(path).as_posix() != "train.py")
    trees = []
    for file in files:
        if file.stat().st_size > MAX_BYTES:
            continue
        try:
            trees.append((file.relative_to(path).as_posix(), ast.parse(_read(file))))
        except (SyntaxError, ValueError):
            continue
    return trees


def _data_dirs(trees: list[tuple[str, ast.Module]]) -> tuple[DataDir, ...]:
    """`~/.cache/NAME` for every path under ~/.cache the code computes, then ~/.cache/huggingface when
    it uses the Hugging Face libraries; each once, in the order found."""
    found: dict[str, DataDir] = {}
    for name, tree in trees:
        paths = _HomePaths()
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                paths.assign(node.targets[0].id, node.value)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
                paths.assign(node.target.id, node.value)
        for node in ast.walk(tree):
            if isinstance(node, ast.expr):
                cache = _cache_dir(paths.value(node))
                if cache is not None and cache not in found:
                    found[cache] = DataDir(cache, f"computed in {name}")
    for name, tree in trees:
        why = _hugging_face(tree)
        if why is not None and HF_CACHE not in found:
            found[HF_CACHE] = DataDir(HF_CACHE, f"{name} {why}", downloads=True)
    return tuple(found.values())


def _cache_dir(path: str | None) -> str | None:
    """`~/.cache/NAME` for a path at or below it, which [data] dirs accepts; else None."""
    parts = (path or "").split("/")
    if len(parts) < 3 or parts[:2] != ["~", ".cache"] or parts[2] in ("", ".", "..") or \
            not re.fullmatch(r"[\w.+-]+", parts[2]):
        return None
    return f"~/.cache/{parts[2]}"


class _HomePaths:
    """Paths under ~ that expressions compute, as "~/..." strings, with the module's variables that hold one."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def assign(self, name: str, node: ast.expr) -> None:
        value = self.value(node)
        if value is not None:
            self.names[name] = value

    def value(self, node: ast.expr | None) -> str | None:
        """The path `node` computes, when it starts at the home directory ("~", "~/.cache/x"); else None."""
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value.rstrip("/") if node.value == "~" or node.value.startswith("~/") else None
        if isinstance(node, ast.Name):
            return self.names.get(node.id)
        if isinstance(node, ast.Subscript) and _dotted(node.value) == "os.environ" and \
                isinstance(node.slice, ast.Constant) and node.slice.value == "HOME":
            return "~"  # os.environ["HOME"]
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):  # Path / "x"
            return self._join(self.value(node.left), [node.right])
        if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.FormattedValue):
            base = self.value(node.values[0].value)  # f"{HOME}/.cache/x"
            rest = node.values[1:]
            if base is not None and all(isinstance(v, ast.Constant) for v in rest):
                return self._join(base, [ast.Constant("".join(v.value for v in rest).lstrip("/"))] if rest else [])
            return None
        if not isinstance(node, ast.Call):
            return None
        func = _dotted(node.func)
        if func in ("Path.home", "pathlib.Path.home") or (func in ("os.getenv", "os.environ.get") and
                                                          _constant(node.args[:1]) == "HOME"):
            return "~"
        if func in ("os.path.expanduser", "expanduser", "os.fspath", "str") and node.args:
            return self.value(node.args[0])
        if func in ("os.path.join", "join", "Path", "pathlib.Path", "os.path.abspath") and node.args:
            return self._join(self.value(node.args[0]), node.args[1:])
        if isinstance(node.func, ast.Attribute) and node.func.attr in ("expanduser", "resolve", "absolute"):
            return self.value(node.func.value)
        if isinstance(node.func, ast.Attribute) and node.func.attr == "joinpath":
            return self._join(self.value(node.func.value), node.args)
        return None

    def _join(self, base: str | None, parts: list[ast.expr]) -> str | None:
        if base is None:
            return None
        for part in parts:
            text = _constant([part]) if isinstance(part, ast.Constant) else None
            if text is None:
                break  # a computed part: the path is known up to here
            base = f"{base}/{text.strip('/')}" if text.strip("/") else base
        return base


def _constant(nodes: list[ast.expr]) -> str | None:
    return nodes[0].value if nodes and isinstance(nodes[0], ast.Constant) and isinstance(nodes[0].value, str) else None


def _dotted(node: ast.expr) -> str:
    """`os.path.join` for that attribute chain; "" for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _hugging_face(tree: ast.Module) -> str | None:
    """How a module uses the Hugging Face hub ("imports kernels", "calls from_pretrained"), or None."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in HF_MODULES:
                    return f"imports {alias.name.split('.')[0]}"
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and \
                node.module.split(".")[0] in HF_MODULES:
            return f"imports {node.module.split('.')[0]}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            called = node.func.attr if isinstance(node.func, ast.Attribute) else \
                node.func.id if isinstance(node.func, ast.Name) else None
            if called in HF_CALLS:
                return f"calls {called}"
    return None


# ---------------------------------------------------------------- the metric

def _printed(trees: list[tuple[str, ast.Module]]) -> tuple[tuple[Printed, ...], bool]:
    """The `name: value` lines the code prints (each name once, in source order, train.py first), and
    whether any file prints a `---` line."""
    found: dict[str, Printed] = {}
    dashes = False
    for name, tree in trees:
        calls = sorted((n for n in ast.walk(tree) if isinstance(n, ast.Call) and _dotted(n.func) == "print"
                        and n.args), key=lambda n: (n.lineno, n.col_offset))
        seen_dashes = False
        for call in calls:
            text = _leading_text(call.args[0])
            if text is not None and text.strip() == "---":
                seen_dashes = dashes = True
                continue
            match = _KEY.match(text or "")
            if match and match[1] not in found:
                found[match[1]] = Printed(match[1], name, seen_dashes)
    return tuple(found.values()), dashes


def _leading_text(node: ast.expr) -> str | None:
    """The literal text a print argument starts with: "val_bpb:  " for f"val_bpb:  {v:.6f}", "loss: %f" % x,
    "loss: {}".format(x); None when it does not start with literal text."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return _leading_text(node.values[0]) if node.values else None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
        return _leading_text(node.left)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
        return _leading_text(node.func.value)
    return None


def known_direction(name: str) -> str | None:
    """"minimize" or "maximize" for a metric name known to be lower- or higher-is-better; else None."""
    lowered = name.lower()
    if lowered in NOT_METRICS:
        return None
    if lowered in LOWER or lowered.endswith(tuple(f"_{n}" for n in LOWER)):
        return "minimize"
    if lowered in HIGHER or lowered.endswith(("_rate", "_accuracy", "_acc", "_score", "_reward")) or \
            lowered.startswith("success"):
        return "maximize"
    return None


def _mentions(program: str, name: str) -> list[re.Match[str]]:
    return list(re.finditer(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", program))


def _said(program: str, names: list[str]) -> dict[str, tuple[str, str]]:
    """The direction program.md states for each of `names`, and the phrase that said it: each phrase
    belongs to the mention of a name nearest to it (same paragraph, within _NEAR characters)."""
    mentions = [(m, name) for name in names for m in _mentions(program, name)]
    best: dict[str, tuple[int, str, str]] = {}
    for said in _SAID.finditer(program):
        near = []
        for mention, name in mentions:
            lo, hi = sorted((mention.start(), said.start()))
            if "\n\n" not in program[lo:hi]:
                distance = max(said.start() - mention.end(), mention.start() - said.end(), 0)
                if distance <= _NEAR:
                    near.append((distance, name))
        if near:
            distance, name = min(near)
            if name not in best or distance < best[name][0]:
                best[name] = (distance, "minimize" if said["minimize"] else "maximize", said[0])
    return {name: (direction, phrase) for name, (_, direction, phrase) in best.items()}


def _called_metric(program: str, name: str) -> bool:
    """Whether program.md calls `name` the metric ("the metric is **val_bpb**", "val_bpb is the metric")."""
    quoted = rf"[`*\"']*{re.escape(name)}(?![A-Za-z0-9_])"
    return re.search(rf"\bmetric(?:\s+is|\s*:)\s*{quoted}|(?<![A-Za-z0-9_]){re.escape(name)}[`*\"']*\s+is\s+the\s+"
                     rf"(?:\w+\s+)?metric\b", program, re.IGNORECASE) is not None


def _metric(printed: tuple[Printed, ...], program: str, has_program: bool) -> tuple[str | None, str, str, str]:
    """The metric and its direction, each with a phrase saying how it was chosen.

    A printed name that program.md calls the metric comes first, then one whose direction it states
    near it, then one it names, then one with a known direction; among equals one printed after a
    `---` line, then the first printed.
    """
    candidates = [p for p in printed if p.name.lower() not in NOT_METRICS]
    if not candidates:
        where = "program.md names none" if has_program else "there is no program.md"
        return None, f"the code prints no `name: value` line; {where}", "minimize", "the default; set it"
    said = _said(program, [p.name for p in candidates])

    def rank(item: tuple[int, Printed]) -> tuple[bool, bool, bool, bool, bool, int]:
        i, p = item
        return (_called_metric(program, p.name), p.name in said, bool(_mentions(program, p.name)),
                known_direction(p.name) is not None, p.after_dashes, -i)

    chosen = max(enumerate(candidates), key=rank)[1]
    printed_as = f"printed by {chosen.file} as `{chosen.name}: ...`" + (" after `---`" if chosen.after_dashes else "")
    metric_why = printed_as + ("; program.md calls it the metric" if _called_metric(program, chosen.name) else
                               "; named in program.md" if _mentions(program, chosen.name) else "")
    known = known_direction(chosen.name)
    if chosen.name in said:
        direction, phrase = said[chosen.name]
        why = f"program.md says \"{phrase}\" next to it"
        if known is not None and known != direction:
            why += f" (a {chosen.name} is usually {'lower' if known == 'minimize' else 'higher'}-is-better)"
        return chosen.name, metric_why, direction, why
    if known is not None:
        return chosen.name, metric_why, known, f"{'lower' if known == 'minimize' else 'higher'} is better " \
            f"for a metric named {chosen.name}"
    return chosen.name, metric_why, "minimize", UNSURE


# ---------------------------------------------------------------- sealab.toml

_HARNESS = """\
[harness]
# The metric is read from the `name: value` lines that train.py prints (autoresearch's own summary, after
# its `---` line). Those lines are REPORTED BY EDITABLE CODE: the agent can change what it prints, so the
# number is less trustworthy than a result.json written by a protected harness ("result.json").
command = {command}  # the run's command line, in the image's /workspace (part of the image's identity)
metric_source = "summary"

[data]
# Host directories under ~ that the repository's prepare step (or its first run) fills; `sealab base`
# captures them into the base image, and a sealed run sees them read-only where the code looks.
{dirs}

"""


def render_toml(found: Survey) -> str:
    """The sealab.toml adoption writes: config.DEFAULT_TOML's layout and comments with the surveyed
    metric, no grace_seconds (the deadline is measured from the baseline runs), and [harness] and [data]."""
    text = config.DEFAULT_TOML
    said = "lower is better" if found.direction == "minimize" else "higher is better"
    metric = found.metric or "val_bpb"
    source = f"the number the code prints as `{metric}: <value>`" if found.metric else "none found: set it"
    text = _replace(text, 'name = "val_bpb"          # the number prepare.py writes to result.json',
                    f"name = {json.dumps(metric)}".ljust(25) + f" # {source}")
    text = _replace(text, 'direction = "minimize"    # lower is better',
                    f"direction = {json.dumps(found.direction)}".ljust(25) + f" # {said}")
    text = _replace(text, "grace_seconds = 60        # start-up + evaluation allowance: the container is killed at "
                          "train + grace",
                    "# grace_seconds = 60      # unset: the kill deadline is measured from the baseline runs' start-up "
                    "and evaluation time")
    text = _replace(text, "# training time budget of one experiment, read by the harness",
                    "# training time budget of one experiment (SEALAB_TRAIN_SECONDS in the run)")
    if found.data_dirs:
        width = max(len(json.dumps(d.path)) for d in found.data_dirs) + 5
        dirs = "dirs = [\n" + "".join(f"    {json.dumps(d.path)},".ljust(width) + f" # {d.why}\n"
                                      for d in found.data_dirs) + "]"
    else:
        dirs = "dirs = []                 # none found in the code: add those under ~ it reads, like ~/.cache/NAME"
    harness = _HARNESS.format(command=json.dumps(found.command), dirs=dirs)
    return _replace(text, "[backend]\n", harness + "[backend]\n")


def _replace(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise AssertionError(f"config.DEFAULT_TOML changed: {old!r} is not in it once")
    return text.replace(old, new)
