from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from rest_framework.test import APIClient

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_CORPUS = ROOT / "fixtures" / "shakespeare-small.jsonl"
# Queues unique to this test session, so that sessions sharing one Redis (several checkouts,
# CI jobs) never take each other's tasks. Worker subprocesses inherit it through project_env.
QUEUE_PREFIX = f"test{os.getpid()}."
os.environ["BROWSER_QUEUE_PREFIX"] = QUEUE_PREFIX
# Test workers keep the CPU priority of the suite: a niced worker on a busy machine would miss the
# tests' deadlines (the product's default lowers it; see docs/settings.md).
os.environ.setdefault("BROWSER_WORKER_NICE", "0")
# Under pytest-xdist (`make test` runs two processes) each process is one of XDIST_WORKERS sharing the
# machine: it gets its share of the cores for torch, numba and the worker subprocesses it starts
# (which inherit the variable), instead of every process spinning one thread per core. Its test
# database gets pytest-django's _gwN suffix; its Celery queues and cache keys are its own (below).
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if XDIST_WORKER:
    XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // XDIST_WORKERS)))
    if "torch" in sys.modules:  # imported by a plugin before this file: the variable came too late
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def _own_cache_keys() -> None:
    """Cache keys (throttle counters, page fragments) of this session only: two sessions sharing one
    Redis database (the processes of one xdist run, or several checkouts) would otherwise count each
    other's requests against the same users' rate limits."""
    from django.conf import settings
    from django.test.utils import override_settings

    caches = {name: {**conf, "KEY_PREFIX": f"{conf.get('KEY_PREFIX', '')}.{QUEUE_PREFIX}"}
              for name, conf in settings.CACHES.items()}
    override_settings(CACHES=caches).enable()  # for the whole session; clears the cache handlers


_own_cache_keys()


@pytest.fixture(scope="session", autouse=True)
def _session_queues() -> None:
    from workers.celery import configure_queues

    configure_queues(QUEUE_PREFIX)


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
def corpus(minilm: object, tmp_path: Path) -> object:
    """The test lines (tests/texts.py), three times each, in 16-token MiniLM contexts."""
    from django.core.management import call_command

    from browser.corpora.models import Corpus
    from tests.texts import TEXTS

    folder = tmp_path / "texts"
    folder.mkdir()
    for i, text in enumerate(TEXTS):
        (folder / f"{i}.txt").write_text(" ".join([text] * 3))
    call_command("import_corpus", str(folder), name="lines", context_length=16, inline=True)
    return Corpus.objects.get(name="lines")


@pytest.fixture
def tiny(db: None, tmp_path: Path) -> object:
    """A tiny seeded BERT (fixtures/tiny.py), registered as "tiny"."""
    from fixtures.tiny import build_tiny_bert
    from workers.pipeline.models import model_register

    return model_register(location=str(build_tiny_bert(tmp_path / "tiny")), name="tiny")


def purge_queues() -> None:
    from browser.search.services import embed_task_started
    from workers.celery import app, queue

    with app.connection_for_write() as conn:
        for name in ("gpu", "default"):
            conn.default_channel.queue_purge(queue(name))
    embed_task_started()  # the embedding task a label write queued is gone with the queues


def start_worker(name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a real Celery worker (solo pool, this session's queues) and wait until it answers."""
    from workers.celery import app, worker_argv

    log_dir = ROOT / ".pytest_cache"
    log_name = f"worker-{name}{'-' + XDIST_WORKER if XDIST_WORKER else ''}.log"
    log = open(log_dir / log_name, "wb") if log_dir.exists() else subprocess.DEVNULL
    node = f"{name}-{os.getpid()}"
    proc = subprocess.Popen(
        worker_argv(node=node), cwd=ROOT, env=project_env(**(env or {})), stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 90
    while not app.control.ping(destination=[f"{node}@{os.uname().nodename}"], timeout=0.5):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the test worker {name} did not start")
    return proc


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def worker(transactional_db: None) -> Iterator[subprocess.Popen[bytes]]:
    """A real Celery worker process against the real broker and the test database."""
    purge_queues()
    proc = start_worker("test")
    yield proc
    stop_worker(proc)


@dataclass
class Cast:
    """The fixed cast of permission tests: an owner, a collaborator (another annotator), an
    outsider (a viewer) and a curator; anonymous is a client without credentials."""

    owner: Any
    collaborator: Any
    outsider: Any
    curator: Any

    def client(self, who: str) -> APIClient:
        client = APIClient()
        if who != "anonymous":
            from browser.accounts.services import token_create

            user = getattr(self, who)
            _, raw = token_create(user=user, owner=user, name="test")
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        return client


@pytest.fixture
def cast(db: None) -> Cast:
    from browser.accounts.services import user_create

    return Cast(
        owner=user_create(username="owner", password="owner-pass-123", role="annotator"),
        collaborator=user_create(username="collaborator", password="collab-pass-123", role="annotator"),
        outsider=user_create(username="outsider", password="outsider-pass-123", role="viewer"),
        curator=user_create(username="curator", password="curator-pass-123", role="curator"),
    )


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: object) -> None:
    """Tests create many users; the production hasher is slow on purpose."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # type: ignore[attr-defined]


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """An empty BROWSER_DATA_DIR for embedded servers, outside pytest's basetemp: pytest makes its
    root mode 700 again at each session's start, and the embedded PostgreSQL (run as a system user
    when we are root) must traverse every parent of its data while other sessions run."""
    import shutil
    import tempfile

    from browser.core import embedded

    path = Path(tempfile.mkdtemp(prefix="browser-data-")) / "data"
    yield path
    embedded.stop(path)
    shutil.rmtree(path.parent, ignore_errors=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop the embedded PostgreSQL and Redis if this session started them (the embedded default,
    with DATABASE_URL/REDIS_URL unset); servers that were already running are left alone."""
    from browser.core import embedded

    embedded.stop_started()
