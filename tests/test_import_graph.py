"""The import graph of the project's own modules has no cycle (issue 15): every import counts,
at module level or inside a function, so a lazy import does not hide one."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("workers", "browser")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")
            if "migrations" not in p.parts}


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The project modules ``path`` imports (``from a import b`` counts a.b when it is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {m for m in found if m in known and m != name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph = {name: _imports(path, name, known) for name, path in modules.items()}
    # Importing a.b.c runs a and a.b first; a package importing its submodules is no cycle of
    # itself, so the parent packages are left out of the edges.
    return {name: {m for m in deps if not name.startswith(m + ".")} for name, deps in graph.items()}


def test_the_scan_finds_imports_inside_functions() -> None:
    graph = _graph()
    assert "workers.pipeline.harvest" in graph["workers.tasks"]  # imported inside the task bodies only


def test_the_workers_and_browser_import_graph_has_no_cycle() -> None:
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()) or [])


def test_shard_tasks_are_queued_in_one_place() -> None:
    """Only ``workers.queueing`` sends harvest tasks; the command, the API request path, the
    stalled-run check and the benchmarks call it."""
    senders = []
    for name, path in _modules().items():
        text = path.read_text()
        if name not in {"workers.queueing", "workers.celery"} and (  # celery: the route, not a send
                "harvest_shards.apply_async" in text or "harvest_shards.delay" in text
                                           or '"workers.tasks.harvest_shards"' in text):
            senders.append(name)
    assert senders == []
    callers = {name for name, path in _modules().items() if "run_queue_shards(" in path.read_text()}
    assert {"workers.management.commands.harvest", "workers.tasks", "workers.bench.load"} <= callers
