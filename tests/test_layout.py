"""The layout holds: imports flow one way (no cycle between modules, imports inside functions
included; nothing in ``model_interface`` imports ``runners``), and the library imports none of
the runner's heavy dependencies."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from runners.config.paths import PROJECT_ROOT

PACKAGES = ("model_interface", "runners")


def module_names() -> dict[str, Path]:
    """Every module of the project's packages, by dotted name (a package by its __init__)."""
    modules = {}
    for package in PACKAGES:
        for path in (PROJECT_ROOT / package).rglob("*.py"):
            parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """Module -> the project's modules it imports, anywhere in its code (an import of a package's
    module counts as an arrow to that module, not to the packages around it)."""
    modules = module_names()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                named = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from . import x, from ..y import z
                    anchor = package.rsplit(".", node.level - 1)[0]
                    base = f"{anchor}.{base}" if base else anchor
                # `from pkg import module` names pkg.module; `from module import name`, module.
                named = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            else:
                continue
            graph[name] |= {target for target in map(resolve, named) if target not in (None, name)}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_cycle() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_library_imports_nothing_of_the_runner() -> None:
    graph = import_graph()
    upward = sorted(
        (module, target)
        for module, targets in graph.items()
        if module.startswith("model_interface")
        for target in targets
        if target.startswith("runners")
    )
    assert upward == []
    assert graph["runners.run"] >= {
        "runners.execution.plan",
        "runners.execution.scoring",
    }  # the reader sees edges


@pytest.mark.slow
def test_importing_the_library_loads_no_hydra_pandas_or_matplotlib() -> None:
    code = (
        "import sys, model_interface, model_interface.backends.hf, model_interface.backends.vllm;"
        "print(sorted(m for m in ('hydra', 'omegaconf', 'pandas', 'matplotlib', 'runners')"
        " if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def readme_layout() -> list[str]:
    """The module paths of README's layout block (Development), in its order."""
    text = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    development = text[text.index("## Development") :]
    start = development.index("```text\n") + len("```text\n")
    block = development[start : development.index("\n```", start)]
    return [line.split()[0] for line in block.splitlines() if line.strip()]


def test_the_readme_lists_every_module_and_runners_imports_flow_down_it() -> None:
    listed = readme_layout()
    modules = module_names()
    assert sorted(listed) == sorted(
        str(path.relative_to(PROJECT_ROOT)) for path in modules.values()
    )
    position = {
        name: listed.index(str(path.relative_to(PROJECT_ROOT))) for name, path in modules.items()
    }
    upward = sorted(
        f"{module} imports {target}, listed above it"
        for module, targets in import_graph().items()
        if module.startswith("runners")
        for target in targets
        if target.startswith("runners") and position[target] < position[module]
    )
    assert upward == []
