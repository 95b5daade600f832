"""The shape of course_utils: imports flow one way (no cycles, function-level imports included), short functions.

Import rules (CONTRIBUTING.md): ``validate``/``layers`` → ``attention`` → ``moe`` → ``model`` → the chapters'
modules; a lower module never imports a higher one, not even inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "course_utils"
MAX_FUNCTION_LINES = 80

# Functions still over the limit, each with the reason; remove an entry when the function is split.
# serving.py is being rewritten into a package (schemas, routes, auth, scheduling as separate pieces).
KNOWN_LONG_FUNCTIONS: dict = {}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """module -> the course_utils modules it imports anywhere in its body (top level or inside functions)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node)
                # `from . import moe` imports the submodule, not the package's __init__; `from .moe import X` the module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                # the nearest course_utils module the name refers to (a name inside a module -> that module)
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != module and target.startswith("course_utils."):
                    graph[module].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_import_graph_sees_function_level_imports():
    graph = import_graph()
    assert "course_utils.layers" in graph["course_utils.model"] and "course_utils.moe" in graph["course_utils.model"]
    assert "course_utils.moe" in graph["course_utils.distributed"]


def test_no_import_cycle_in_course_utils():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_lower_layers_import_nothing_above_them():
    graph = import_graph()
    assert graph["course_utils.validate"] == set()
    assert graph["course_utils.layers"] <= {"course_utils.validate"}
    assert "course_utils.model" not in graph["course_utils.moe"]


def _logic_lines(node) -> int:
    """The def line plus the body after the docstring: the formatter lays a long signature out one argument per
    line, and documentation is not logic, so neither counts towards the limit."""
    body = node.body
    if (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(getattr(body[0], "value", None), ast.Constant)
        and isinstance(body[0].value.value, str)
        and len(body) > 1
    ):
        body = body[1:]
    return node.end_lineno - body[0].lineno + 2


def long_functions() -> dict[tuple[str, str], int]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = _logic_lines(node)
                if n > MAX_FUNCTION_LINES:
                    found[(path.relative_to(PACKAGE).as_posix(), node.name)] = n
    return found


def test_no_function_over_80_lines():
    found = long_functions()
    new = {k: n for k, n in found.items() if k not in KNOWN_LONG_FUNCTIONS}
    assert not new, f"functions over {MAX_FUNCTION_LINES} lines (split them): {new}"
    fixed = set(KNOWN_LONG_FUNCTIONS) - set(found)
    assert not fixed, f"no longer over the limit, remove from KNOWN_LONG_FUNCTIONS: {sorted(fixed)}"


MAX_DEFERRED_PLACES = 10  # CONTRIBUTING: function-level imports of heavy optional libraries, outside the checks


def deferred_imports() -> dict[tuple[str, str], list[str]]:
    """(file, function) -> the reasons of its function-level imports (the text after `noqa: PLC0415 —`)."""
    found: dict[tuple[str, str], list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for fn in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    _, _, reason = lines[node.lineno - 1].partition("noqa: PLC0415")
                    key = (path.relative_to(PACKAGE).as_posix(), fn.name)
                    found.setdefault(key, []).append(reason.strip(" —-"))
    return found


def test_deferred_imports_are_few_and_each_says_why():
    found = deferred_imports()
    assert found, "the scan finds none: it no longer sees function-level imports"
    unexplained = {k: r for k, r in found.items() if not all(len(x) > 8 for x in r)}
    assert not unexplained, f"a function-level import without `# noqa: PLC0415 — <reason>`: {unexplained}"
    outside_checks = sorted(k for k in found if not k[0].startswith("checks/"))
    assert len(outside_checks) <= MAX_DEFERRED_PLACES, f"{len(outside_checks)} places defer imports: {outside_checks}"
