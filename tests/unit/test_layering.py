"""Dependencies go one way: agent → executor, policies; policies → executor.types and the config validator;
executor → nothing of ours. Each outside library is reached through its adapter module(s) only, and git
through one seam per direction: executor/git_source.py reads, agent/gitops.py writes."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imports(package: str, *, members: bool = False) -> dict[str, set[str]]:
    """Each module file's imported names; with `members`, `from M import x` also gives `M.x` (a module
    imported from its package, e.g. `from executor import record`)."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                if members:
                    names |= {f"{node.module}.{alias.name}" for alias in node.names}
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize("package, allowed", [
    ("executor", ("executor",)),
    ("policies", ("policies", "executor.types", "executor.config", "executor.errors")),
])
def test_trusted_side_imports_nothing_upstream(package, allowed):
    """The executor imports nothing from agent/ or policies/; policies import only executor.types and the config validator (executor.config, its errors) of ours."""
    ours = ("executor", "agent", "policies")
    for path, names in imports(package).items():
        for name in names:
            if name.split(".")[0] in ours:
                assert name == allowed[0] or name.startswith(allowed[0] + ".") or name in allowed[1:], (path, name)


# Each outside library (and the standard library's doors to other programs and to SQLite) with the
# only modules that may import it: its adapters. A new importer fails the test below; add it here only
# if talking to that library is the module's own job.
ADAPTERS = {
    # GitPython and its object database: reads in git_source (the executor's), writes in gitops (the agent's).
    "git": ("agent/gitops.py", "executor/git_source.py"),
    "gitdb": ("agent/gitops.py", "executor/git_source.py"),
    "docker": ("executor/docker_engine.py", "executor/image/docker_build.py"),  # the engine; a classic build
    "anthropic": ("agent/llm.py",),
    "kubernetes": ("executor/backends/k8s.py",),
    "sqlite3": ("executor/ledger.py",),  # the read-only reader of `sealab serve` too (ledger.reading)
    "subprocess": (
        "executor/backends/slurm.py",  # the Slurm client commands: sbatch, squeue, scontrol, scancel
        "executor/image/assemble.py",  # pip installs the torch wheels into the image tree; compileall
        "executor/image/base.py",      # pip download gathers the wheels of the base image
        "executor/image/deps.py",      # uv export reads a repository's uv.lock; pip downloads its wheels
        "executor/image/rootfs.py",    # mmdebstrap builds the Debian root filesystem
    ),
}
GIT_MODULES = ADAPTERS["git"]


def _ours() -> dict[str, set[str]]:
    return {**imports("executor"), **imports("agent"), **imports("policies")}


@pytest.mark.parametrize("library", sorted(ADAPTERS))
def test_each_outside_library_is_imported_by_its_adapters_only(library):
    """Exactly the listed adapter modules import each outside library (git and gitdb: git_source reads,
    gitops writes; docker, anthropic, kubernetes, sqlite3, and subprocess only where a module's job is to
    run another program); a new importer, or an adapter that no longer needs it, fails."""
    users = sorted(p for p, names in _ours().items() if any(n.split(".")[0] == library for n in names))
    assert users == sorted(ADAPTERS[library])


def _names_in(node: ast.AST) -> set[str]:
    """Every name and attribute named below `node`, string annotations (`"git.Repo"`) parsed too."""
    found = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            found.add(sub.id)
        elif isinstance(sub, ast.Attribute):
            found.add(sub.attr)
        elif isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            try:
                found |= _names_in(ast.parse(sub.value, mode="eval"))
            except SyntaxError:
                pass
    return found


def _is_repo(node: ast.AST) -> bool:
    """`Repo` or `anything.Repo`."""
    return (isinstance(node, ast.Name) and node.id == "Repo") or (isinstance(node, ast.Attribute) and node.attr == "Repo")


def git_objects_outside_the_seam(root: Path = ROOT) -> list[tuple[str, int, str]]:
    """(module, line, what), sorted, for each place outside the two git modules that types something as
    a GitPython `Repo`, calls `Repo(...)` or `Repo.…(...)`, or reaches into a handle's `_repo`."""
    found = []
    for package in ("executor", "agent", "policies"):
        for path in sorted((root / package).rglob("*.py")):
            module = str(path.relative_to(root))
            if module in GIT_MODULES:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                annotations = []
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    every = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs,
                             *filter(None, [node.args.vararg, node.args.kwarg])]
                    annotations = [a.annotation for a in every if a.annotation] + ([node.returns] if node.returns else [])
                elif isinstance(node, ast.AnnAssign):
                    annotations = [node.annotation]
                if any("Repo" in _names_in(a) for a in annotations):
                    found.append((module, node.lineno, "typed Repo"))
                if isinstance(node, ast.Call) and (_is_repo(node.func) or (
                        isinstance(node.func, ast.Attribute) and _is_repo(node.func.value))):
                    found.append((module, node.lineno, "calls Repo"))
                if isinstance(node, ast.Attribute) and node.attr == "_repo":
                    found.append((module, node.lineno, "reaches into _repo"))
    return sorted(found)


def test_no_git_repo_object_outside_the_git_seam():
    """No module but executor/git_source.py and agent/gitops.py has a parameter, return or attribute typed
    `git.Repo`, calls `Repo(...)` (or `Repo.init`, `Repo.clone_from`), or reads a Repository handle's
    GitPython object: everyone else holds the opaque handle and calls the seam's named functions."""
    assert git_objects_outside_the_seam() == []


def test_the_git_seam_check_sees_what_it_forbids(tmp_path):
    """The check above is not vacuous: a module typing a parameter and an attribute as `git.Repo` (one
    as a string), calling `git.Repo(...)` and `Repo.init(...)`, and reading `handle._repo` is flagged
    at each place."""
    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / "sneaky.py").write_text(
        "import git\n"
        "from dataclasses import dataclass\n"
        "def f(repo: git.Repo | None) -> None:\n"
        "    git.Repo('.')\n"
        "@dataclass\n"
        "class C:\n"
        "    repo: 'git.Repo'\n"
        "def g(handle):\n"
        "    git.Repo.init('.')\n"
        "    return handle._repo\n")
    assert git_objects_outside_the_seam(tmp_path) == [
        ("agent/sneaky.py", 3, "typed Repo"), ("agent/sneaky.py", 4, "calls Repo"), ("agent/sneaky.py", 7, "typed Repo"),
        ("agent/sneaky.py", 9, "calls Repo"), ("agent/sneaky.py", 10, "reaches into _repo")]


def test_no_import_cycle():
    """No module of executor/, agent/ or policies/ reaches itself through imports (function-level ones
    included): interfaces do not import the factories that pick their implementations."""
    def module(path: str) -> str:
        parts = Path(path).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    found = {module(p): names for package in ("executor", "agent", "policies")
             for p, names in imports(package, members=True).items()}
    graph = {name: {n for n in names if n in found and n != name} for name, names in found.items()}

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        seen = set()
        while stack:
            node, trail = stack.pop()
            for nxt in sorted(graph[node]):
                if nxt == start:
                    return trail + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, trail + [nxt]))
        return None

    cycles = [c for c in map(cycle_from, sorted(graph)) if c]
    assert not cycles, " -> ".join(cycles[0])
