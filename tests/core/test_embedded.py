"""The embedded default: no DATABASE_URL/REDIS_URL, the product starts its own servers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from browser.core import embedded
from tests.conftest import FIXTURE_CORPUS, ROOT

pytestmark = pytest.mark.slow


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update({"BROWSER_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)})
    return env


def _manage(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=_env(data_dir), capture_output=True, text=True, timeout=600
    )


def test_embedded_servers_start_reuse_and_stop(data_dir: Path) -> None:
    try:
        first = embedded.ensure(data_dir)
        assert embedded.pg_running(data_dir) and embedded.redis_running(data_dir)
        assert embedded.ensure(data_dir) == first  # reused, same ports
        embedded.stop(data_dir)
        assert not embedded.pg_running(data_dir) and not embedded.redis_running(data_dir)
        assert embedded.ensure(data_dir) == first  # restarted on the remembered ports, data kept
    finally:
        embedded.stop(data_dir)


def test_manage_py_runs_on_the_embedded_servers(data_dir: Path) -> None:
    try:
        migrate = _manage(data_dir, "migrate", "-v0")
        assert migrate.returncode == 0, migrate.stderr
        imported = _manage(data_dir, "import_corpus", str(FIXTURE_CORPUS), "--name", "emb", "--inline")
        assert imported.returncode == 0, imported.stderr
        assert "contexts" in imported.stdout
        listed = _manage(data_dir, "shell", "-c", "from browser.corpora.models import Corpus; "
                         "c = Corpus.objects.get(name='emb'); print(c.status, c.n_contexts > 100)")
        assert listed.stdout.split()[-2:] == ["ready", "True"], listed.stdout + listed.stderr
    finally:
        embedded.stop(data_dir)


def test_database_commands_start_the_servers_and_embedded_stop_stops_them(data_dir: Path) -> None:
    """Item 18: a command that needs the database starts the servers; `manage.py embedded stop`
    (documented in the README) stops them."""
    try:
        status = _manage(data_dir, "embedded", "status")
        assert status.returncode == 0 and "postgres: stopped" in status.stdout, status.stdout + status.stderr
        shown = _manage(data_dir, "showmigrations", "core")
        assert shown.returncode == 0, shown.stderr
        assert embedded.pg_running(data_dir) and embedded.redis_running(data_dir)
        status = _manage(data_dir, "embedded", "status")
        assert "postgres: running" in status.stdout and "redis: running" in status.stdout, status.stdout
        stopped = _manage(data_dir, "embedded", "stop")
        assert stopped.returncode == 0, stopped.stderr
        assert not embedded.pg_running(data_dir) and not embedded.redis_running(data_dir)
        assert "postgres: stopped" in stopped.stdout and "redis: stopped" in stopped.stdout
    finally:
        embedded.stop(data_dir)


def test_test_suite_stops_the_servers_it_started(data_dir: Path) -> None:
    """Item 18: a test session on the embedded default leaves no server running when it ends."""
    test_id = f"{ROOT / 'tests' / 'accounts' / 'test_accounts.py'}::test_tokens_are_stored_hashed_and_revocable"
    try:
        ran = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_id],
                             cwd=ROOT, env=_env(data_dir), capture_output=True, text=True, timeout=600)
        assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
        assert (data_dir / "postgres" / "PG_VERSION").exists()  # the session did start them
        assert not embedded.pg_running(data_dir) and not embedded.redis_running(data_dir)
    finally:
        embedded.stop(data_dir)
