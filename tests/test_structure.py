"""The package's layout holds: no import cycle, SQL only in the store, one way down.

These read the source with :mod:`ast`; they fail with the offending module and line.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "flask_bgqueue"
#: Modules imported inside a function on purpose, only when configured: optional
#: dependencies (pika), brokers chosen by URL, and the dashboard (off by default); and the
#: store, by the watchdog process only when it must write (it stays small until then).
LAZY_ALLOWED = {
    "flask_bgqueue.broker.amqp",
    "flask_bgqueue.broker.memory",
    "flask_bgqueue.dashboard",
    "flask_bgqueue.store",
}
#: The modules above the facade: only they may import ``extension``.
ABOVE_EXTENSION = {"flask_bgqueue", "flask_bgqueue.testing"}
SQL = re.compile(r"exec_driver_sql|sa\.text\(|\btext\(\"|dialect\.name|\.dialect ==|dialect_name")


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts).removesuffix(".__init__")
        found[name] = path
    return found


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                lines.update(n.lineno for n in ast.walk(sub) if hasattr(n, "lineno"))
    return lines


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """``(imported package module, line, inside a function)`` for each import in ``path``."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    in_function: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(n.lineno for n in ast.walk(node) if hasattr(n, "lineno"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or node.lineno in skip:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, *([node.module] if node.module else [])])
            targets = [base, *(f"{base}.{a.name}" for a in node.names)]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            # a package importing its own submodules is not an edge back up
            if target and target != name and not target.startswith(name + "."):
                found.append((target, node.lineno, node.lineno in in_function))
    return found


def _graph() -> tuple[dict[str, set[str]], list[tuple[str, str, int]]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    lazy = []
    for name, path in modules.items():
        for target, line, inside in _imports(name, path, modules):
            graph[name].add(target)
            if inside:
                lazy.append((name, target, line))
    return graph, lazy


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_the_package_has_no_import_cycle() -> None:
    graph, _ = _graph()
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_only_the_top_imports_the_extension_facade() -> None:
    graph, _ = _graph()
    importers = sorted(m for m, targets in graph.items() if "flask_bgqueue.extension" in targets)
    assert set(importers) <= ABOVE_EXTENSION, f"modules below the facade import it: {importers}"


def test_no_package_module_is_imported_inside_a_function_to_dodge_a_cycle() -> None:
    _, lazy = _graph()
    dodges = [f"{m}:{line} imports {t}" for m, t, line in lazy if t not in LAZY_ALLOWED]
    assert not dodges, dodges


def test_sql_and_dialect_checks_live_only_in_the_store_and_the_schema() -> None:
    outside = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(("store/", "schema/")):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if SQL.search(line):
                outside.append(f"flask_bgqueue/{rel}:{number}: {line.strip()}")
    assert not outside, "\n".join(outside)
