"""Item 15: where requests waited under load. A gunicorn worker whose threads are all busy takes no
more connections (requests wait in one queue for whichever worker frees a thread, not behind a busy
one), the web processes keep their database connections between requests, and a worker yields the
CPU to them (its harvest runs at a lower priority)."""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
from pathlib import Path

import psycopg
import pytest

from browser.accounts.services import token_create
from browser.catalog.models import Model, Source, Unit
from browser.catalog.services import units_ensure
from browser.labels.services import label_save
from tests.conftest import Cast, database_url, project_env, start_worker, stop_worker
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


def _waiting_on_locks() -> int:
    with psycopg.connect(database_url(), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'").fetchone()
    assert row is not None
    return int(row[0])


def test_a_busy_web_worker_takes_no_request_that_an_idle_one_can_serve(cast: Cast, transactional_db: None,
                                                                       tmp_path: Path) -> None:
    """Two workers of one thread each; one is stuck on a row lock. Every other request, each on a
    connection of its own, is served by the idle worker instead of waiting behind the stuck one."""
    source = Source.objects.create(model=Model.objects.create(
        name="m", kind="encoder", architecture="bert", location="-", n_layers=1, d_model=4, d_mlp=4),
        name="blocks.0.mlp.hook_post", hook_point="blocks.0.mlp.hook_post", layer=0, kind="neurons", n_units=4)
    units_ensure(source=source)
    label = label_save(unit=Unit.objects.get(source=source, index=0), user=cast.owner, text="one", revision=0)
    _, token = token_create(user=cast.owner, owner=cast.owner, name="t")
    port = free_port()
    web = start_web(env=project_env(), port=port, workers=2, threads=1, log=tmp_path / "web.log")
    lock = psycopg.connect(database_url())
    stuck: dict[str, int] = {}

    def edit() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.request("PATCH", f"/api/v1/labels/{label.pk}/", body=json.dumps({"text": "two", "revision": 1}),
                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        stuck["status"] = conn.getresponse().status

    try:
        lock.execute("SELECT id FROM labels_label WHERE id = %s FOR UPDATE", [label.pk])
        editor = threading.Thread(target=edit, daemon=True)
        editor.start()
        deadline = time.monotonic() + 60
        while _waiting_on_locks() == 0:
            assert time.monotonic() < deadline, "the edit never reached the lock"
            time.sleep(0.1)
        for _ in range(8):  # at even odds each, one of them would land on the stuck worker
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
            conn.request("GET", "/api/v1/models/")
            assert conn.getresponse().status == 200
            conn.close()
        lock.rollback()
        editor.join(timeout=60)
        assert stuck == {"status": 200}
    finally:
        lock.close()
        stop(web)
