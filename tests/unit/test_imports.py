"""The package's import structure: the worker's whole import closure stays inside the worker and
the shared wire, and no module of tcletd imports itself back through others."""

from __future__ import annotations

import ast
import itertools
import json
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from support import ROOT

PACKAGE = ROOT / "tcletd"
# What a worker may load of tcletd: the package itself, its own modules and the shared wire.
WORKER_MAY_LOAD = ("tcletd.worker", "tcletd.shared")
WORKER_MUST_NOT_LOAD = ("tcletd.host", "tcletd.policy", "tcletd.api", "tcletd.cli")


def _within(module: str, packages: Sequence[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_worker_imports_nothing_from_host() -> None:
    """A fresh interpreter that imports the worker's entry point loads nothing of the host, the
    policy engine, the API or the CLI: the whole closure, not just direct imports."""
    code = (
        "import json, sys, tcletd.worker.main\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'tcletd')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    loaded: list[str] = json.loads(out.stdout)
    assert "tcletd.worker.main" in loaded, loaded  # the listing sees the worker's modules
    forbidden = [m for m in loaded if _within(m, WORKER_MUST_NOT_LOAD)]
    assert forbidden == [], f"the worker loads {forbidden}"
    outside = [m for m in loaded if m != "tcletd" and not _within(m, WORKER_MAY_LOAD)]
    assert outside == [], f"the worker loads {outside}, outside {WORKER_MAY_LOAD}"


# ---- the import graph ---------------------------------------------------------------------------


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _nodes(body: Sequence[ast.AST]) -> Iterator[ast.AST]:
    """Every node of a module, in functions and classes too, except under ``if TYPE_CHECKING:``
    (its ``else:`` runs, so it counts)."""
    for node in body:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _nodes(node.orelse)
            continue
        yield node
        yield from _nodes(list(ast.iter_child_nodes(node)))


def _known(name: str) -> str | None:
    """The tcletd module that importing ``name`` runs last: itself, or the nearest package or
    module above it that exists (``tcletd.x.y`` where ``y`` is a name in ``tcletd.x``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> dict[str, int]:
    """The tcletd modules ``module`` imports, each with the line of its first import."""
    is_package = path.name == "__init__.py"
    found: dict[str, int] = {}
    for node in _nodes(ast.parse(path.read_text(), str(path)).body):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                here = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(here[: len(here) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            # A submodule imported by name is that module; any other name is its package's.
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                names.append(sub if sub in MODULES else source)
        else:
            continue
        for name in names:
            target = _known(name) if name.split(".")[0] == "tcletd" else None
            if target is not None and target != module:
                found.setdefault(target, node.lineno)
    return found


def _find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle of the graph as a path that ends where it starts, or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for nxt in sorted(graph.get(node, {})):
            if nxt in on_path:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in done:
                cycle = visit(nxt)
                if cycle is not None:
                    return cycle
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            cycle = visit(start)
            if cycle is not None:
                return cycle
    return None


def test_the_import_graph_sees_the_package_and_finds_a_cycle() -> None:
    """Guards the test below against passing on an empty graph or a blind search."""
    graph = {module: _imports(module, path) for module, path in MODULES.items()}
    assert {"tcletd", "tcletd.api", "tcletd.worker.main", "tcletd.host.host"} <= set(graph)
    assert any(target.startswith("tcletd.host") for target in graph["tcletd.api"]), graph
    assert any(target.startswith("tcletd.shared") for target in graph["tcletd.worker.main"])
    assert _find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1, "d": 1}}) == [
        "a",
        "b",
        "c",
        "a",
    ]
    assert _find_cycle({"a": {"b": 1, "c": 1}, "b": {"c": 1}, "c": {}}) is None


def test_tcletd_has_no_import_cycle() -> None:
    """Module-level imports and imports inside functions alike (only ``if TYPE_CHECKING:``
    ones are left out): a cycle is a module that needs itself to be imported first."""
    graph = {module: _imports(module, path) for module, path in MODULES.items()}
    cycle = _find_cycle(graph)
    if cycle is not None:
        steps = [
            f"{a} imports {b} ({MODULES[a].relative_to(ROOT)}:{graph[a][b]})"
            for a, b in itertools.pairwise(cycle)
        ]
        raise AssertionError("import cycle:\n  " + "\n  ".join(steps))
