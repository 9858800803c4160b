"""PostgreSQL and Redis really restarted mid-run (issue 8): the run completes after they return,
with results equal row for row to an uninterrupted run, and readers never see half of it.

The servers are this module's own embedded PostgreSQL and Redis under a temporary data
directory (the shared ones are never stopped). Everything else runs as the product runs:
``manage.py migrate``, ``import_corpus`` and ``harvest`` (queued) as subprocesses, and a real
Celery worker, all pointed at the private servers. The server is stopped for real (``pg_ctl
stop -m fast``, Redis ``SHUTDOWN``) and started again on the same port and data directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from browser.core import embedded
from tests.conftest import ROOT
from tests.texts import TEXTS
from workers.celery import worker_argv

pytestmark = pytest.mark.slow
PREFIX = f"restarts{os.getpid()}."
# Short leases, so that the shard cut by an outage is redone within seconds; an idle worker looks
# for stalled runs every two seconds. One thread: the machines running this have two busy cores.
ENV = {"BROWSER_SHARD_LEASE_S": "2", "BROWSER_RESUME_EVERY_S": "2", "BROWSER_QUEUE_PREFIX": PREFIX,
       "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "BROWSER_LOG_LEVEL": "INFO"}
# The whole of MiniLM (about half a second a shard here) over about 70 contexts: a run of a
# few seconds, in shards of two batches, long enough to stop a server while shards remain.
HARVEST = ["--model", "minilm-l6", "--hooks", "blocks.5.mlp.hook_post", "--k", "4", "--batch-size", "4",
           "--shard-contexts", "8"]
DOWN_S = 3.0
FINISHED = ("done", "failed", "cancelled")


@dataclass
class Private:
    """This module's own servers, and the product's commands run against them."""

    data_dir: Path
    urls: embedded.Endpoints
    worker: subprocess.Popen[bytes] | None = None
    worker_log: Path | None = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(ENV, DATABASE_URL=self.urls.database_url, REDIS_URL=self.urls.redis_url, PYTHONPATH=str(ROOT))
        return env

    def manage(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env(), capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, f"manage.py {' '.join(args)}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        return done.stdout

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.urls.database_url, autocommit=True, connect_timeout=5)

    def query(self, sql: str, params: list[object]) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            return conn.execute(sql, params).fetchall()

    def start_worker(self) -> None:
        self.worker_log = self.data_dir / "worker.log"
        self.worker = subprocess.Popen(
            worker_argv(node=f"restarts-{os.getpid()}", queues=(f"{PREFIX}gpu", f"{PREFIX}default")),
            cwd=ROOT, env=self.env(), stdout=self.worker_log.open("wb"), stderr=subprocess.STDOUT,
        )

    def stop_worker(self) -> None:
        if self.worker is None or self.worker.poll() is not None:
            return
        self.worker.terminate()
        try:
            self.worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.worker.kill()
            self.worker.wait()

    def worker_output(self) -> str:
        return self.worker_log.read_text(errors="replace") if self.worker_log else ""

    def worker_tail(self) -> str:
        return self.worker_output()[-6000:]


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Private]:
    data_dir = tmp_path_factory.mktemp("restarts") / "data"
    try:
        servers = Private(data_dir, embedded.ensure(data_dir))
        servers.manage("migrate", "-v0")
        texts = data_dir / "texts"
        texts.mkdir()
        for i, text in enumerate(TEXTS):
            (texts / f"{i}.txt").write_text(" ".join([text] * 36))
        # One corpus a run: the same texts, so the same contexts, under three names (a run with the
        # same model, corpus and config would not be computed twice).
        for name in ("reference", "pg", "redis"):
            servers.manage("import_corpus", str(texts), "--name", name, "--inline")
        servers.start_worker()
        yield servers
    finally:
        if "servers" in locals():
            servers.stop_worker()
        embedded.stop(data_dir)


@pytest.fixture(scope="module")
def reference(private: Private) -> list[tuple[Any, ...]]:
    """The rows of the same harvest run uninterrupted, in one process."""
    private.manage("harvest", *HARVEST, "--corpus", "reference", "--inline")
    return _rows(private, _run_of(private, "reference"))


def _run_of(private: Private, corpus: str) -> int:
    rows = private.query("SELECT r.id FROM runs_run r JOIN corpora_corpus c ON c.id = r.corpus_id "
                         "WHERE c.name = %s", [corpus])
    assert len(rows) == 1, rows
    return int(rows[0][0])


def _rows(private: Private, run_id: int) -> list[tuple[Any, ...]]:
    """Every statistic and example of the run, ordered, with contexts by their index in the
    corpus (the corpora differ, their contexts do not). Units are shared: same model, same hook."""
    stats = private.query(
        "SELECT unit_id, n_tokens, fire_count, density, mean, max, hist, hist_stride FROM examples_unitstats "
        "WHERE run_id = %s ORDER BY unit_id", [run_id])
    examples = private.query(
        'SELECT e.unit_id, e.kind, e.bucket, e.rank, c.index, e.max_value, e.max_pos, e."values" '
        "FROM examples_example e JOIN corpora_context c ON c.id = e.context_id "
        "WHERE e.run_id = %s ORDER BY e.unit_id, e.kind, e.bucket, e.rank", [run_id])
    assert stats and examples
    return [*stats, *examples]


@dataclass
class Reader:
    """A reader on its own connection, counting the run's examples as often as it can, through
    the outage too (it reconnects); every count it saw is kept."""

    private: Private
    run_id: int
    seen: set[int] = field(default_factory=set)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                with self.private.connect() as conn:
                    while not self.stop.is_set():
                        rows = conn.execute("SELECT count(*) FROM examples_example WHERE run_id = %s",
                                            [self.run_id]).fetchall()
                        self.seen.add(int(rows[0][0]))
                        time.sleep(0.02)
            except psycopg.OperationalError:
                time.sleep(0.2)  # the server is down: try again

    def close(self) -> set[int]:
        self.stop.set()
        self.thread.join(timeout=30)
        return self.seen


def _until(check: Callable[[], Any], what: str, private: Private, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if private.worker is not None and private.worker.poll() is not None:
            raise AssertionError(f"the worker died while waiting for {what}:\n{private.worker_tail()}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; worker log:\n{private.worker_tail()}")


def _shards(private: Private, run_id: int) -> tuple[int, int]:
    """(shards done, shards in all)."""
    row = private.query("SELECT count(*) FILTER (WHERE status = 'done'), count(*) FROM runs_shard "
                        "WHERE run_id = %s", [run_id])[0]
    return int(row[0]), int(row[1])


def _status(private: Private, run_id: int) -> str | None:
    try:
        return str(private.query("SELECT status FROM runs_run WHERE id = %s", [run_id])[0][0])
    except psycopg.OperationalError:
        return None  # down


def _interrupted_run(private: Private, corpus: str, restart: Callable[[], None]) -> int:
    """Queue a harvest, restart a server once some of its shards are done but not all, and wait
    until it finishes; readers must see none of its examples, then all of them."""
    private.manage("harvest", *HARVEST, "--corpus", corpus)
    run_id = _run_of(private, corpus)
    reader = Reader(private, run_id)
    try:
        def partly_done() -> bool:
            done, total = _shards(private, run_id)
            assert total >= 8 and done < total, f"the run finished before the restart ({done} of {total})"
            return done >= 1

        _until(partly_done, "a shard to be done", private)
        restart()
        _until(lambda: _status(private, run_id) in FINISHED, "the run to finish", private)
    finally:
        seen = reader.close()
    run = private.query("SELECT r.status, r.error, j.status, j.error FROM runs_run r JOIN runs_job j "
                        "ON j.id = r.job_id WHERE r.id = %s", [run_id])[0]
    assert run[:1] == ("done",) and run[2] == "succeeded", f"{run}\n{private.worker_tail()}"
    final = private.query("SELECT count(*) FROM examples_example WHERE run_id = %s", [run_id])[0][0]
    assert final > 0 and seen <= {0, final} and 0 in seen, seen  # all of the results or none, never a part
    return run_id


def test_postgres_restarted_mid_run_the_run_completes_equal_to_an_uninterrupted_one(
        private: Private, reference: list[tuple[Any, ...]]) -> None:
    def restart() -> None:
        embedded.stop_postgres(private.data_dir)
        assert not embedded.pg_running(private.data_dir)
        time.sleep(DOWN_S)
        assert embedded.start_postgres(private.data_dir) == private.urls.database_url  # same port

    run_id = _interrupted_run(private, "pg", restart)
    assert _rows(private, run_id) == reference
    # The outage reached the job: its task failed on the lost connection and was retried.
    assert "retry: Retry in 2s: OperationalError" in private.worker_output()


def test_redis_restarted_mid_run_the_worker_reconnects_and_the_run_completes(
        private: Private, reference: list[tuple[Any, ...]]) -> None:
    def restart() -> None:
        embedded.stop_redis(private.data_dir)
        down = time.monotonic()
        # Down until every shard is done, so that queueing the finalize step fails too: the
        # worker's stalled-run check must queue the run's work again once Redis is back.
        run = _run_of(private, "redis")
        _until(lambda: _shards(private, run)[0] == _shards(private, run)[1], "the shards to be done", private)
        # Long enough for the worker to fail to queue the finalize step, then its own retry.
        time.sleep(max(4.0, down + DOWN_S - time.monotonic()))
        assert embedded.start_redis(private.data_dir) == private.urls.redis_url  # same port

    run_id = _interrupted_run(private, "redis", restart)
    assert _rows(private, run_id) == reference
    # The worker lived through it and consumes again: every task queued for the run (one a
    # shard; they find nothing left to do) is taken off the queue that survived the restart.
    broker = redis.Redis.from_url(private.urls.redis_url)
    _until(lambda: broker.llen(f"{PREFIX}gpu") == 0, "the worker to drain the queue", private, timeout=60)
    assert private.worker is not None and private.worker.poll() is None
    assert "Connection to broker lost" in private.worker_output()
