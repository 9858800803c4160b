from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_CORPUS = ROOT / "fixtures" / "shakespeare-small.jsonl"


def database_url() -> str:
    """The URL of the database the tests use (pytest-django's test database)."""
    s = connection.settings_dict
    auth = s["USER"] + (f":{s['PASSWORD']}" if s["PASSWORD"] else "")
    return f"postgresql://{auth}@{s['HOST']}:{s['PORT'] or 5432}/{s['NAME']}"


def project_env(**extra: str) -> dict[str, str]:
    from django.conf import settings

    env = dict(os.environ)
    env.update({"DATABASE_URL": database_url(), "REDIS_URL": settings.REDIS_URL, "PYTHONPATH": str(ROOT)})
    env.update(extra)
    return env


@pytest.fixture
def minilm(db: None) -> object:
    from workers.pipeline.models import model_get_or_register

    return model_get_or_register("minilm-l6")


@pytest.fixture
def worker(transactional_db: None) -> Iterator[subprocess.Popen[bytes]]:
    """A real Celery worker process against the real broker and the test database."""
    from workers.celery import app

    with app.connection_for_write() as conn:
        for queue in ("gpu", "default"):
            conn.default_channel.queue_purge(queue)
    log = open(ROOT / ".pytest_cache" / "worker.log", "wb") if (ROOT / ".pytest_cache").exists() else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers", "worker", "-Q", "gpu,default", "--pool", "solo",
         "-n", f"test-{os.getpid()}@%h", "--loglevel", "info", "--without-mingle", "--without-gossip"],
        cwd=ROOT, env=project_env(), stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while not app.control.ping(destination=[f"test-{os.getpid()}@{os.uname().nodename}"], timeout=0.5):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the test worker did not start")
    yield proc
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: object) -> None:
    """Tests create many users; the production hasher is slow on purpose."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # type: ignore[attr-defined]
