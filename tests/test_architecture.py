"""The web side never imports torch or transformers; the compute core never imports Django or
Celery; rows are written only by services."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, project_env


def test_web_side_loads_no_torch() -> None:
    code = (
        "import sys, django; django.setup(); import browser.urls; "
        "from django.test import Client; "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    env = project_env(DJANGO_SETTINGS_MODULE="browser.settings")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compute_core_has_no_django() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "workers" / "compute").rglob("*.py")
        if "django" in path.read_text() or "celery" in path.read_text()
    ]
    assert offenders == []


# ---- writes go through services (issue 15) ------------------------------------------------------
CREATES = {"create", "bulk_create", "bulk_update", "update_or_create", "get_or_create"}
QUERYSET_WRITES = {"update", "delete", "select_for_update"}


def _from_a_manager(node: ast.expr) -> bool:
    """Whether a call's receiver starts at a model manager (``Model.objects...``)."""
    while True:
        if isinstance(node, ast.Attribute):
            if node.attr == "objects":
                return True
            node = node.value
        elif isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Subscript):
            node = node.value
        else:
            return False


def _writes(path: Path, *, creates_only: bool) -> list[str]:
    """The model writes in ``path``: creates (any receiver: managers and related managers), and
    unless ``creates_only`` also queryset updates, deletes and row locks, and instance save()/delete()."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        method, receiver = node.func.attr, node.func.value
        if method in CREATES or not creates_only and (
                (method in QUERYSET_WRITES and _from_a_manager(receiver))
                or (method in ("save", "delete") and not node.args and not _from_a_manager(receiver))):
            found.append(f"{str(path).removeprefix(f'{ROOT}/')}:{node.lineno} {method}")
    return found


def _is_service(path: Path) -> bool:
    return path.stem == "services" or "services" in path.parts


def _sources(*packages: str) -> list[Path]:
    return [p for package in packages for p in sorted((ROOT / package).rglob("*.py")) if "migrations" not in p.parts]


def test_rows_are_created_only_by_services() -> None:
    """The issue's check, ``grep -rn "objects.create|bulk_create|update_or_create" workers browser``,
    shows only services (tests and migrations are not scanned)."""
    outside = [w for p in _sources("browser", "workers") if not _is_service(p) for w in _writes(p, creates_only=True)]
    assert outside == []


def test_the_web_side_writes_rows_only_in_services() -> None:
    """browser/: every update, delete, lock and save of a model row is in a services module (the
    COPY helper ``core/copy.py`` is what those services call)."""
    outside = [w for p in _sources("browser") if not _is_service(p) and p != ROOT / "browser" / "core" / "copy.py"
               for w in _writes(p, creates_only=False)]
    assert outside == []


def test_the_write_scan_sees_the_old_layout(tmp_path: Path) -> None:
    """Write paths issue 15 moved into services (supernodes, source maps, blobs), as they were."""
    old = tmp_path / "supernodes.py"
    old.write_text("def f(graph, node, supernode):\n"
                   "    Supernode.objects.select_for_update().filter(graph=graph).first()\n"
                   "    node.save(update_fields=['nodes'])\n"
                   "    SupernodeRevision.objects.create(graph=graph)\n"
                   "    supernode.delete()\n"
                   "    SourceMap.objects.filter(source=1).exclude(state=2).delete()\n"
                   "    SourceMap.objects.update_or_create(source=1)\n"
                   "    Blob.objects.filter(pk__in=[1]).delete()\n"
                   "    cache.delete('key')\n"
                   "    {}.update(a=1)\n")
    found = [w.split(" ")[-1] for w in _writes(old, creates_only=False)]
    assert sorted(found) == sorted(["select_for_update", "save", "create", "delete", "delete", "update_or_create",
                                    "delete"])
    assert [w.split(" ")[-1] for w in _writes(old, creates_only=True)] == ["create", "update_or_create"]
