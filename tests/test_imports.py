"""The package's module graph: no import cycles (function-level imports included).

Data flow one way — formula → schema → statistics → criterion → fit → results →
presentation — so a module never needs one that needs it back. The test reads
every ``from .x import`` / ``from . import x`` in the package's source (also those
inside functions, which are dependencies too) and looks for a cycle.
"""

import ast
from pathlib import Path

import jaxmlm

PACKAGE = Path(jaxmlm.__file__).parent


def _graph() -> dict[str, set[str]]:
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0])
                else:
                    deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxmlm."):
                deps.add(node.module.split(".")[1])
        graph[path.stem] = {d for d in deps if d in modules and d != path.stem}
    graph.pop("__init__", None)  # the package's public names: it may import anything
    for deps in graph.values():
        deps.discard("__init__")
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        state[m] = 2
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_the_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_reads_function_level_imports():
    graph = _graph()
    assert "_frontend" in graph["_results"]  # a top-level import
    assert "_confint" in graph["_results"]  # imported inside a method


def test_no_import_cycles():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle)
