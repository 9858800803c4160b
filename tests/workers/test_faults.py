"""Jobs that survive faults: real worker processes killed with SIGKILL mid-shard, two workers
sharing a run, cancel from the command line, and the test database refusing and cutting
connections mid-run (real server restarts of PostgreSQL and Redis: test_restarts.py).

Every faulted run is compared row for row with an uninterrupted one.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from django.core.management import call_command

from browser.catalog.models import Model
from browser.corpora.models import Corpus
from browser.examples.models import Example
from browser.runs.models import Job, Run, Shard
from browser.runs.services import run_delete
from tests.conftest import database_url, purge_queues, start_worker, stop_worker
from tests.harvesting import run_rows
from tests.texts import TEXTS

pytestmark = pytest.mark.slow
# Short leases so that a dead worker's shard is redone within seconds; an idle worker looks
# for stalled runs every second. Five seconds, not two: with the suite in two processes on two
# cores a live worker's heartbeat thread (every lease / 4) was starved past a 2 s lease, and its
# shard was taken from it and given up after three claims.
# One thread a worker: several workers share two cores.
WORKER_ENV = {"BROWSER_SHARD_LEASE_S": "5", "BROWSER_RESUME_EVERY_S": "1", "OMP_NUM_THREADS": "1",
              "MKL_NUM_THREADS": "1"}
HOOK = "blocks.5.mlp.hook_post"  # the whole of MiniLM: shards of two seconds or more
HARVEST = {"model": "minilm-l6", "corpus": "faults", "hooks": HOOK, "k": 4, "batch_size": 4, "shard_contexts": 48}


class Workers:
    """Worker processes for this module, started on demand and killed at will."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def get(self, name: str) -> subprocess.Popen[bytes]:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            proc = self.procs[name] = start_worker(f"faults-{name}", WORKER_ENV)
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    def by_claim(self, claimed_by: str) -> subprocess.Popen[bytes]:
        pid = int(claimed_by.rsplit(":", 1)[1])
        return next(p for p in self.procs.values() if p.pid == pid)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            stop_worker(proc)


@pytest.fixture(scope="module")
def workers(django_db_setup: None) -> Iterator[Workers]:
    pool = Workers()
    yield pool
    pool.stop_all()


@pytest.fixture
def corpus(transactional_db: None, minilm: Model, tmp_path: Path) -> Corpus:
    folder = tmp_path / "texts"
    folder.mkdir()
    for i, text in enumerate(TEXTS):
        (folder / f"{i}.txt").write_text(" ".join([text] * 600))
    # Long contexts make a shard last seconds on a quiet machine too (at 64 tokens a shard took
    # a quarter of a second, so a heartbeat seldom landed mid-shard).
    call_command("import_corpus", str(folder), name="faults", context_length=512, inline=True, stdout=io.StringIO())
    corpus = Corpus.objects.get(name="faults")
    assert 100 <= corpus.n_contexts <= 160  # three shards of 48 contexts
    purge_queues()
    return corpus


def _until(check: Callable[[], object], what: str, timeout: float = 180) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _queue_harvest() -> Run:
    call_command("harvest", **HARVEST, stdout=io.StringIO())
    return Run.objects.exclude(status__in=[Run.Status.FAILED, Run.Status.CANCELLED]).get()


def _finished(run: Run, timeout: float = 180) -> Run:
    _until(lambda: Run.objects.filter(pk=run.pk, status__in=["done", "failed", "cancelled"]).exists(),
           f"run {run.pk} to finish", timeout)
    run.refresh_from_db()
    assert run.status == Run.Status.DONE, run.error
    return run


def _mid_shard() -> Shard:
    """A shard some worker is processing: claimed, with progress reported, far from done."""
    def busy() -> Shard | None:
        return Shard.objects.filter(status=Shard.Status.CLAIMED, contexts_done__gt=0, contexts_done__lt=40).first()

    return _until(busy, "a shard in progress")  # type: ignore[return-value]


def _inline_rows() -> list[tuple[object, ...]]:
    """The same harvest, uninterrupted, in this process, with the workers' one thread: on the CPU
    the forward pass's floats depend on the thread count (603 rows of MiniLM's layer 5 differ in
    the last fixed-point step between one and two threads)."""
    for run in Run.objects.all():
        run_delete(run=run)
    threads = torch.get_num_threads()
    torch.set_num_threads(int(WORKER_ENV["OMP_NUM_THREADS"]))
    try:
        call_command("harvest", **HARVEST, inline=True, stdout=io.StringIO())
    finally:
        torch.set_num_threads(threads)
    run = Run.objects.get()
    assert run.status == Run.Status.DONE, run.error
    return run_rows(run)


def test_two_workers_share_a_run_and_one_killed_mid_shard_loses_nothing(workers: Workers,
                                                                         corpus: Corpus) -> None:
    workers.get("a"), workers.get("b")
    run = _finished(_queue_harvest())
    assert run.n_shards == 3
    shared = run_rows(run)
    assert len(set(Shard.objects.filter(run=run).values_list("claimed_by", flat=True))) == 2
    assert len(shared) == 1536 + Example.objects.filter(run=run).count()

    run_delete(run=run)
    run = _queue_harvest()
    shard = _mid_shard()
    workers.kill(workers.by_claim(shard.claimed_by))
    run = _finished(run)
    shard.refresh_from_db()
    assert shard.status == Shard.Status.DONE and shard.attempts == 2  # redone by the live worker
    assert run_rows(run) == shared
    assert f"took shard {shard.index} (attempt 2)" in run.job.log  # type: ignore[union-attr]

    assert _inline_rows() == shared  # two workers, one of them killed, equal one process


def test_a_restarted_worker_resumes_a_run_whose_worker_and_tasks_were_lost(workers: Workers,
                                                                           corpus: Corpus) -> None:
    workers.get("a")
    run = _queue_harvest()
    shard = _mid_shard()
    for proc in workers.procs.values():  # every worker dies
        if proc.poll() is None:
            workers.kill(proc)
    purge_queues()  # the run's queued tasks are gone too (as after a Redis without persistence)
    workers.get("a")  # the restart: its periodic check finds the stalled run and queues it again
    run = _finished(run)
    assert Job.objects.get(run=run).status == Job.Status.SUCCEEDED
    shard.refresh_from_db()
    assert shard.attempts == 2
    assert run_rows(run) == _inline_rows()


def test_cancel_from_the_command_line_stops_the_workers_at_their_next_batch(workers: Workers,
                                                                            corpus: Corpus) -> None:
    workers.get("a"), workers.get("b")
    run = _queue_harvest()
    _mid_shard()
    out = io.StringIO()
    call_command("job", "cancel", str(run.job_id), stdout=out)
    assert "cancel requested" in out.getvalue()
    asked = time.monotonic()
    _until(lambda: Run.objects.filter(pk=run.pk, status=Run.Status.CANCELLED).exists(), "the run to stop", 30)
    assert time.monotonic() - asked < 10
    job = Job.objects.get(run=run)
    assert job.status == Job.Status.CANCELLED
    time.sleep(1.5)  # nothing moves after the cancel
    progress = list(Shard.objects.filter(run=run).order_by("index").values_list("status", "contexts_done"))
    time.sleep(1.5)
    assert list(Shard.objects.filter(run=run).order_by("index").values_list("status", "contexts_done")) == progress
    assert Shard.Status.PENDING in [s for s, _ in progress] or Shard.Status.CLAIMED in [s for s, _ in progress]
    assert not Example.objects.filter(run=run).exists()
    shown = io.StringIO()
    call_command("job", "show", str(job.pk), stdout=shown)
    assert "status:    cancelled" in shown.getvalue() and "cancel requested by the command line" in shown.getvalue()
    listed = io.StringIO()
    call_command("job", "list", stdout=listed)
    assert f"{job.pk:>6}  harvest   cancelled" in listed.getvalue()


def _outage(seconds: float) -> None:
    """A PostgreSQL outage for the test database only (the server is shared with other test
    sessions, so it is not stopped): new connections are refused and every existing one but this
    process's own is cut, as a restart would, then connections are allowed again."""
    import psycopg
    from django.db import connection

    name = connection.settings_dict["NAME"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        mine = cursor.fetchone()[0]
    admin_url = database_url().rsplit("/", 1)[0] + "/postgres"  # ALTER DATABASE runs from another one
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            cut = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                "WHERE datname = %s AND pid <> %s", [name, mine]).fetchone()
            assert cut is not None and cut[0] >= 1  # the worker's connection was cut
            time.sleep(seconds)
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


def test_postgres_lost_mid_shard_the_run_completes_and_readers_never_see_half(workers: Workers,
                                                                              corpus: Corpus) -> None:
    workers.get("a")
    run = _queue_harvest()
    shard = _mid_shard()
    _outage(3.0)
    seen: set[int] = set()

    def finished() -> bool:
        seen.add(Example.objects.filter(run=run).count())
        return Run.objects.filter(pk=run.pk, status__in=["done", "failed", "cancelled"]).exists()

    _until(finished, "the run to finish")
    run = _finished(run)
    final = Example.objects.filter(run=run).count()
    assert seen <= {0, final}  # all of the results or none, never a part
    shard.refresh_from_db()
    assert shard.attempts >= 2  # the shard in progress during the outage was redone
    assert Job.objects.get(run=run).status == Job.Status.SUCCEEDED
    assert run_rows(run) == _inline_rows()
