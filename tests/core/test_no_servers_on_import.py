"""Item 18: importing the settings or the compute core starts no server; nothing outlives its user."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from browser.core import embedded
from tests.conftest import ROOT


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"}}
    env.update({"BROWSER_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)})
    return env


def _processes_under(data_dir: Path) -> list[str]:
    """Command lines of running processes that name the data dir (postgres -D DIR, redis --dir DIR)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(data_dir) in cmdline:
                found.append(f"{entry.name}: {cmdline}")
    return found


def _assert_nothing_running(data_dir: Path) -> None:
    assert _processes_under(data_dir) == []
    assert not (data_dir / "postgres" / "postmaster.pid").exists()
    assert not (data_dir / "redis" / "redis.pid").exists()
    assert not embedded.pg_running(data_dir) and not embedded.redis_running(data_dir)


def test_compute_core_imports_without_django_or_celery(data_dir: Path) -> None:
    code = ("import sys, workers.compute.hooks, workers.compute.stats; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in {'django', 'celery', 'browser'}))")
    try:
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(data_dir),
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "[]"
        _assert_nothing_running(data_dir)
    finally:
        embedded.stop(data_dir)


@pytest.mark.parametrize("args", [["--help"], ["bench", "--help"], ["embedded", "status"]])
def test_commands_that_need_no_database_start_no_server(data_dir: Path, args: list[str]) -> None:
    try:
        out = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=_env(data_dir),
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        _assert_nothing_running(data_dir)
    finally:
        embedded.stop(data_dir)


def test_celery_finds_the_app_in_the_workers_package() -> None:
    """`celery -A workers` keeps working although `workers/__init__.py` no longer imports the app."""
    from celery.app.utils import find_app

    import workers.celery

    assert find_app("workers") is workers.celery.app
