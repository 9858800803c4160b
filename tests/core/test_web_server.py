"""Item 15: where requests waited under load. The web processes keep their database connections
between requests, and a worker yields the CPU to them (its harvest runs at a lower priority)."""

from __future__ import annotations

import http.client
import os
from pathlib import Path

import psycopg
import pytest

from tests.conftest import database_url, project_env, start_worker, stop_worker
from workers.bench.load import free_port, start_web, stop

pytestmark = pytest.mark.slow


def _app_backends() -> int:
    """Client connections to the test database other than this test's own."""
    with psycopg.connect(database_url().rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        name = database_url().rsplit("/", 1)[1]
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND backend_type = "
                           "'client backend' AND pid <> pg_backend_pid()", [name]).fetchone()
    assert row is not None
    return int(row[0])


def test_web_workers_reuse_their_database_connection(transactional_db: None, tmp_path: Path) -> None:
    from django.db import connection

    connection.close()  # this test's own connection out of the count
    before = _app_backends()
    port = free_port()
    web = start_web(env=project_env(), port=port, workers=1, threads=1, log=tmp_path / "web.log")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for _ in range(6):
            conn.request("GET", "/api/v1/models/")
            response = conn.getresponse()
            assert response.status == 200
            response.read()
        # One worker with one thread: its one connection is still open after six requests.
        assert _app_backends() - before == 1
    finally:
        stop(web)


def test_worker_runs_at_a_lower_cpu_priority(transactional_db: None) -> None:
    proc = start_worker("nice", env={"BROWSER_WORKER_NICE": "7"})
    try:
        nice = int(Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
        assert nice == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 7)
    finally:
        stop_worker(proc)
