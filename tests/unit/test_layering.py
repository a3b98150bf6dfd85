"""Dependencies go one way: agent → executor, policies; policies → executor.types and the config validator; executor → nothing of ours."""

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


def test_one_module_per_outside_library():
    """Only agent/llm.py imports anthropic, and only the two Docker adapter modules import docker."""
    everything = {**imports("executor"), **imports("agent"), **imports("policies")}
    users = {lib: sorted(p for p, names in everything.items() if any(n.split(".")[0] == lib for n in names))
             for lib in ("anthropic", "docker")}
    assert users["anthropic"] == ["agent/llm.py"]
    assert users["docker"] == ["executor/docker_engine.py", "executor/image/docker_build.py"]


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
