"""The web side never imports torch or transformers; the compute core never imports Django or
Celery; rows are written only by services."""

from __future__ import annotations

import ast
import re
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
SQL_CALLS = {"execute", "executemany", "copy"}
SQL_WRITES = ("INSERT", "UPDATE", "DELETE", "TRUNCATE", "MERGE")
COPY_IN = re.compile(r"COPY\s+[^(\s]\S*(\s*\([^)]*\))?\s+FROM\b")  # into a table; COPY (SELECT ...) TO reads
# Calls the scan would take for row writes that are not (file, call as written).
NOT_ROWS = {("workers/pipeline/search.py", "index.save")}  # a usearch index serialized to bytes


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


def _sql_write(node: ast.Call) -> bool:
    """Raw SQL that writes or locks rows: ``cursor.execute("UPDATE ...")``, ``... FOR UPDATE``, COPY FROM."""
    if not (isinstance(node.func, ast.Attribute) and node.func.attr in SQL_CALLS and node.args):
        return False
    sql = node.args[0]
    if isinstance(sql, ast.JoinedStr):  # an f-string: its literal parts
        text = "".join(v.value for v in sql.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
    elif isinstance(sql, ast.Constant) and isinstance(sql.value, str):
        text = sql.value
    else:
        return False
    text = " ".join(text.split()).upper()
    return (text.startswith(SQL_WRITES) or COPY_IN.match(text) is not None
            or " FOR UPDATE" in text or " FOR NO KEY UPDATE" in text)


def _writes(path: Path, *, creates_only: bool) -> list[str]:
    """The model writes in ``path``: creates (any receiver: managers and related managers), and
    unless ``creates_only`` also queryset updates, deletes and row locks, instance save()/delete(),
    raw SQL writes and locks, and ``copy_rows``."""
    found = []
    where = str(path).removeprefix(f"{ROOT}/")
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        if not creates_only and (_sql_write(node) or isinstance(node.func, ast.Name) and node.func.id == "copy_rows"):
            found.append(f"{where}:{node.lineno} {'copy_rows' if isinstance(node.func, ast.Name) else 'sql'}")
            continue
        if not isinstance(node.func, ast.Attribute) or (where, ast.unparse(node.func)) in NOT_ROWS:
            continue
        method, receiver = node.func.attr, node.func.value
        if method in CREATES or not creates_only and (
                (method in QUERYSET_WRITES and _from_a_manager(receiver))
                or (method in ("save", "delete") and not node.args and not _from_a_manager(receiver))):
            found.append(f"{where}:{node.lineno} {method}")
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


def test_the_workers_write_rows_only_through_services() -> None:
    """workers/ (tasks, pipeline, commands, the demo) writes, deletes and locks rows only by calling
    services. The benchmarks are left out of this (not of the creates rule above): they fill and drop
    their own synthetic data (bench users, the bench model's millions of units and labels) with
    set-based SQL and COPY, as a test fixture would, and no product path writes those rows so."""
    outside = [w for p in _sources("workers") if not _is_service(p) and "bench" not in p.relative_to(ROOT).parts
               for w in _writes(p, creates_only=False)]
    assert outside == []


def test_the_write_scan_sees_the_old_workers_layout(tmp_path: Path) -> None:
    """Write paths of workers/ that issue 15 moved into services, as they were, and raw SQL writes."""
    old = tmp_path / "tasks.py"
    old.write_text("def f(job, run, model, tokenizer, row, cursor):\n"
                   "    Job.objects.filter(pk=job.pk).update(params={**job.params, 'run_id': run.pk})\n"
                   "    Run.objects.filter(pk=run.pk, status=Run.Status.QUEUED).update(status=Run.Status.HARVESTING)\n"
                   "    job.save(update_fields=['params', 'total'])\n"
                   "    Model.objects.filter(pk=model.pk).update(tokenizer=tokenizer)\n"
                   "    Corpus.objects.filter(name='demo').delete()\n"
                   "    cursor.execute(f'DELETE FROM catalog_unit WHERE id IN ({units})', [1])\n"
                   "    cursor.execute('SELECT id FROM catalog_unit WHERE id = %s FOR UPDATE', [1])\n"
                   "    copy_rows('labels_label', [], [], [])\n"
                   "    raw.copy(f'COPY \"{table}\" ({column_list}) FROM STDIN (FORMAT BINARY)')\n"
                   "    raw.copy(f'COPY ({sql}) TO STDOUT (FORMAT binary)', params)\n"
                   "    cursor.execute('SET LOCAL synchronous_commit = off')\n"
                   "    index.save()\n"
                   "    stats.update(loss=1.0)\n")
    found = [w.split(" ")[-1] for w in _writes(old, creates_only=False)]
    assert sorted(found) == sorted(["update", "update", "save", "update", "delete", "sql", "sql", "copy_rows",
                                    "sql", "save"])


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
