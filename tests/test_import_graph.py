"""The import graph of the project's own modules has no cycle (issue 15): every import counts,
at module level or inside a function, so a lazy import does not hide one. And the web side's apps
meet in one direction: no app imports another's views or APIs (only the URL configurations route
to them), and catalog, which composes the pages, reaches the other apps through their selectors,
services and serializers only."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("workers", "browser")


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(root: Path = ROOT) -> dict[str, Path]:
    return {_module_name(p, root): p for package in PACKAGES for p in (root / package).rglob("*.py")
            if "migrations" not in p.parts}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _nodes(tree: ast.AST, *, types: bool) -> list[ast.AST]:
    """Every node of ``tree``; with ``types=False`` without the bodies of ``if TYPE_CHECKING:``
    (names imported there exist for annotations only and cannot read or write anything)."""
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if not types and isinstance(node, ast.If) and _is_type_checking(node):
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))
    return out


def _imports(path: Path, name: str, known: set[str], *, types: bool = True) -> set[str]:
    """The project modules ``path`` imports (``from a import b`` counts a.b when it is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _nodes(ast.parse(path.read_text()), types=types):
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


# ---- the web side's layers ----------------------------------------------------------------------
COMPOSER = "catalog"  # composes pages (home, unit, compare) from the other apps
COMPOSED = ("corpora", "examples", "labels", "runs", "search", "graphs", "exports", "imports")
PUBLIC = ("selectors", "services", "serializers")  # what an app offers the composer


def _app(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "browser" and len(parts) > 2 else None


def _is_interface(module: str) -> bool:
    """A view or API module (``views``, ``apis``, ``steer_views``, ``toy_apis``, ...)."""
    return any(part in ("views", "apis") or part.endswith(("_views", "_apis")) for part in module.split(".")[2:])


def _layer_violations(root: Path = ROOT) -> list[str]:
    modules = _modules(root)
    known = set(modules)
    out = []
    for name, path in sorted(modules.items()):
        app = _app(name)
        for dep in sorted(_imports(path, name, known, types=False)):
            dep_app = _app(dep)
            if dep_app is None or dep_app == app:
                continue
            if _is_interface(dep) and not name.endswith("urls"):
                out.append(f"{name} imports {dep}: apps meet through selectors and services, not views or APIs")
            elif app == COMPOSER and dep_app in COMPOSED and dep.split(".")[2] not in PUBLIC:
                out.append(f"{name} imports {dep}: {COMPOSER} reaches {dep_app} through its {'/'.join(PUBLIC)}")
    return out


def test_apps_meet_through_selectors_and_services() -> None:
    assert _layer_violations() == []


def test_the_layer_rule_catches_the_old_layout(tmp_path: Path) -> None:
    """The layout before issue 15: catalog's unit page called labels' view helper and its page
    selectors read corpora's models; a type-only import and the URL configuration are fine."""
    files = {
        "browser/catalog/views.py": "from browser.labels.views import label_panel\n"
                                    "from browser.labels.selectors import unit_labels\n",
        "browser/catalog/page_selectors.py": "from typing import TYPE_CHECKING\n"
                                             "from browser.corpora.models import Corpus\n"
                                             "if TYPE_CHECKING:\n    from browser.labels.models import Label\n",
        "browser/catalog/steer_apis.py": "def f():\n    from browser.runs.apis import JobSerializer\n",
        "browser/urls.py": "from browser.labels import views\n",
        "browser/api/urls.py": "from browser.runs import apis\n",
        "browser/labels/views.py": "", "browser/labels/selectors.py": "", "browser/labels/models.py": "",
        "browser/corpora/models.py": "", "browser/runs/apis.py": "",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    found = [v.split(":")[0] for v in _layer_violations(tmp_path)]
    assert found == ["browser.catalog.page_selectors imports browser.corpora.models",
                     "browser.catalog.steer_apis imports browser.runs.apis",
                     "browser.catalog.views imports browser.labels.views"]
