"""`bench load`: many annotators on loopback while a harvest runs.

Serves the real site with gunicorn (the product's configuration, ``browser/gunicorn_conf.py``) on
a free loopback port, starts a real Celery worker (queues prefixed ``bench-load.``, so it never
takes anyone else's tasks), puts the clients (``load_clients.py``) on it for ``--idle-seconds`` with
no harvest running (``p95_ms_idle``), times a harvest alone, then times a fresh harvest (another
seed, so another config hash) while the clients mix page views, label writes (with the revision
they read; a 409 is re-read and retried, as a client should) and small exports. The loaded phase
lasts ``--seconds`` and at least until that harvest is done (``p95_ms``). A finished harvest queues
its sources' search vectors on the same worker (minutes of CPU each): before the web warm-up, the
harvest alone and the loaded harvest, the bench waits until the jobs it caused are over
(``worker_settle_s``), so that "idle" is idle, "alone" is alone and the loaded harvest does not
queue behind them.

Afterwards every write the server acknowledged is checked against the revision history in the
database: it must be there as the revision the server answered, and each label's revisions must
run 1, 2, ... with no gap or repeat. Each violation is a lost update.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.utils import timezone

from browser.accounts.services import token_create, user_create
from browser.catalog.models import Source
from browser.catalog.services import units_ensure
from browser.corpora.models import Corpus
from browser.labels.models import Label, LabelRevision
from browser.runs.models import Job, Run
from browser.runs.services import run_delete
from workers.bench.load_clients import USERS, Ack, Actor, Client, Tally, hammer, summarize
from workers.celery import configure_queues

__all__ = ["Ack", "Actor", "Client", "Tally", "hammer", "summarize"]  # the clients, for tests

HELP = ("concurrent clients on loopback (page views, label writes, exports) while a harvest runs: "
        "requests/s, p95 latency, errors, lost updates, and the harvest's slowdown against running alone")
MODEL, CORPUS, PREFIX = "minilm-l6", "bench-load", "bench-load."
FIXTURE_CORPUS = Path(settings.BASE_DIR) / "fixtures" / "shakespeare-small.jsonl"
BROWSE_HOOK = "blocks.0.mlp.hook_post"
HOOKS = {"full": "blocks.0.mlp.hook_post,blocks.1.mlp.hook_post,blocks.2.mlp.hook_post", "quick": BROWSE_HOOK}
HARVEST_LIMIT_S = 1800
THINK_S = 2.0  # a quick annotator: a click every 2 s on average (1 to 3 s)
# Every gunicorn worker's first requests load the views, templates and the API schema: not counted.
WARMUP_S = 10.0


def add_arguments(parser: Any) -> None:
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="load duration (it goes on until the loaded harvest is done)")
    parser.add_argument("--quick", action="store_true", help="harvest one MiniLM layer instead of three")
    parser.add_argument("--think-s", type=float, default=THINK_S,
                        help="a client's mean pause between two actions (0: back to back, a throughput test)")
    parser.add_argument("--idle-seconds", type=float, default=20.0,
                        help="load duration with no harvest running (p95_ms_idle); 0 skips it")
    parser.add_argument("--web-workers", type=int, default=None,
                        help="gunicorn worker processes (default: the product's, BROWSER_WEB_WORKERS)")
    parser.add_argument("--web-threads", type=int, default=None,
                        help="threads per gunicorn worker (default: the product's, BROWSER_WEB_THREADS)")


def main(opts: dict[str, Any], log: Any) -> dict[str, Any]:
    if not 2 <= opts["clients"] <= 500:
        raise ValueError("--clients must be between 2 and 500")
    if not 1 <= opts["seconds"] <= 3600 or not 0 <= opts["idle_seconds"] <= 3600:
        raise ValueError("--seconds must be between 1 and 3600, --idle-seconds between 0 and 3600")
    if not 0 <= opts["think_s"] <= 600:
        raise ValueError("--think-s must be between 0 and 600")
    return run(clients=opts["clients"], seconds=opts["seconds"], hooks=HOOKS["quick" if opts["quick"] else "full"],
               web_workers=opts["web_workers"], web_threads=opts["web_threads"], idle_seconds=opts["idle_seconds"],
               think_s=opts["think_s"], log=log)


# ---- processes -----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(check: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    while not check():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start (exit status {proc.poll()})")
        time.sleep(0.25)


def _answers(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/api/v1/models/")
        return conn.getresponse().status == 200
    except OSError:
        return False


def start_web(*, env: dict[str, str], port: int, workers: int | None = None, threads: int | None = None,
              log: Path) -> subprocess.Popen[bytes]:
    """The site under gunicorn with the product's configuration (``browser/gunicorn_conf.py``);
    ``workers``/``threads`` override it."""
    sizes = {"BROWSER_WEB_WORKERS": workers, "BROWSER_WEB_THREADS": threads}
    env = {**env, **{name: str(value) for name, value in sizes.items() if value is not None}}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "browser.wsgi:application", "-c", "python:browser.gunicorn_conf",
         "--bind", f"127.0.0.1:{port}", "--error-logfile", str(log)],
        cwd=settings.BASE_DIR, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    _wait(lambda: _answers(port), proc, "gunicorn")
    return proc


def start_worker(*, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A real Celery worker (solo pool, as on a GPU machine) on this bench's queues."""
    from workers.celery import app, worker_argv

    node = f"bench-load-{os.getpid()}"
    proc = subprocess.Popen(
        worker_argv(node=node), cwd=settings.BASE_DIR, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    host = f"{node}@{socket.gethostname()}"
    _wait(lambda: bool(app.control.ping(destination=[host], timeout=0.5)), proc, "the Celery worker")
    return proc


def purge_queues() -> None:
    """Drop tasks a crashed earlier bench left in this bench's queues."""
    from workers.celery import app, queue

    with app.connection_for_write() as conn:
        for name in ("gpu", "default"):
            conn.default_channel.queue_purge(queue(name))


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a child started in its own session, with everything it forked."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in reversed(procs):
            stop(proc)


# ---- verification --------------------------------------------------------------------------------
def lost_updates(acks: list[Ack]) -> list[str]:
    """Every acknowledged write must land right on the revision its client read, be in the history
    as the revision the server answered (acknowledged once), and each label's revisions must be
    1..current with no gap or repeat."""
    problems = [f"label {a.label_id}: a write based on revision {a.based_on} was acknowledged as {a.revision}"
                for a in acks if a.revision != a.based_on + 1]
    seen = Counter((a.label_id, a.revision) for a in acks)
    problems += [f"label {lid} revision {rev} acknowledged {n} times" for (lid, rev), n in seen.items() if n > 1]
    label_ids = sorted({a.label_id for a in acks})
    history: dict[int, dict[int, list[Any]]] = {}
    for lid, rev, after in LabelRevision.objects.filter(label_id__in=label_ids).values_list(
            "label_id", "revision", "after"):
        history.setdefault(lid, {}).setdefault(rev, []).append(after)
    for ack in acks:
        rows = history.get(ack.label_id, {}).get(ack.revision, [])
        if not any(isinstance(after, dict) and after.get("text") == ack.text for after in rows):
            problems.append(f"label {ack.label_id} revision {ack.revision}: the acknowledged text is not in the history")
    current = dict(Label.objects.filter(pk__in=label_ids).values_list("pk", "revision"))
    for lid in label_ids:
        revisions = history.get(lid, {})
        counts = sorted((rev, len(rows)) for rev, rows in revisions.items())
        if lid not in current:
            problems.append(f"label {lid} is gone")
        elif counts != [(r, 1) for r in range(1, current[lid] + 1)]:
            problems.append(f"label {lid} at revision {current[lid]} has revisions {counts}")
    return problems


def stale_search(source: Source, n: int) -> int:
    """Units (the first ``n`` of the source) whose label count or search text misses a label."""
    stale = 0
    for unit in source.units.filter(index__lt=n).prefetch_related("labels"):
        texts = [label.text for label in unit.labels.all()]
        stale += unit.label_count != len(texts) or not all(t in unit.search_text for t in texts)
    return stale


# ---- data ----------------------------------------------------------------------------------------
def ensure_corpus(log: Any) -> Corpus:
    corpus = Corpus.objects.filter(name=CORPUS, status=Corpus.Status.READY).first()
    if corpus is None:
        from django.core.management import call_command

        Corpus.objects.filter(name=CORPUS).delete()
        log.write(f"importing {FIXTURE_CORPUS.name} as corpus {CORPUS!r}...\n")
        call_command("import_corpus", str(FIXTURE_CORPUS), name=CORPUS, tokenizer=MODEL, inline=True,
                     stdout=log, stderr=log)
        corpus = Corpus.objects.get(name=CORPUS)
    return corpus


def make_actors(*, clients: int, hot: list[str], browse: str, n_units: int) -> list[Actor]:
    """Fresh bench accounts: one curator per ten clients; the other clients work in pairs on one
    annotator account each (two tabs of the same person), so even one's own label sees 409s."""
    get_user_model().objects.filter(username__startswith=USERS).delete()  # their labels and tokens go too
    n_curators = max(1, clients // 10)
    accounts: dict[str, tuple[str, bool]] = {}
    actors = []
    for i in range(clients):
        curator = i < n_curators
        name = f"{USERS}c{i}" if curator else f"{USERS}a{(i - n_curators) // 2}"
        if name not in accounts:
            user = user_create(username=name, password=None, role="curator" if curator else "annotator")
            accounts[name] = (token_create(user=user, owner=user, name="bench load")[1], curator)
        token, is_curator = accounts[name]
        actors.append(Actor(username=name, token=token, curator=is_curator, hot=tuple(hot), browse=browse,
                            n_units=n_units))
    return actors


# ---- harvests ------------------------------------------------------------------------------------
def harvest_prepare(*, corpus: str, hooks: str, seed: int, model: str = MODEL, k: int = 16,
                    shard_contexts: int = 2048, batch_size: int = 32, fresh: bool = True) -> tuple[Run, bool]:
    """The run of this config, created anew (an earlier one deleted) when ``fresh``; a finished one
    is reused otherwise. Returns (run, whether its shards still need queueing)."""
    from workers.pipeline.requests import harvest_from_request

    request = {"model": model, "corpus": corpus, "hooks": hooks, "k": k, "seed": seed, "device": "cpu",
               "shard_contexts": shard_contexts, "batch_size": batch_size}
    run, created = harvest_from_request(request)
    if not created and (fresh or run.status != Run.Status.DONE):
        run_delete(run=run)
        run, created = harvest_from_request(request)
    return run, created


def harvest_start(run: Run) -> Run:
    """Queue the run's shards on the gpu queue (the last one to finish finalizes the run)."""
    from workers.queueing import run_queue_shards

    run_queue_shards(run_id=run.pk, tasks=run.n_shards)
    return run


def harvest_queue(*, corpus: str, hooks: str, seed: int, fresh: bool = True) -> Run:
    run, pending = harvest_prepare(corpus=corpus, hooks=hooks, seed=seed, fresh=fresh)
    return harvest_start(run) if pending else run


def harvest_wait(run: Run, limit_s: float = HARVEST_LIMIT_S) -> float:
    """Seconds from the run's creation to its end (database timestamps), once it is done."""
    deadline = time.monotonic() + limit_s
    while True:
        run.refresh_from_db()
        if run.status == Run.Status.DONE and run.finished is not None:
            return (run.finished - run.created).total_seconds()
        if run.status in (Run.Status.FAILED, Run.Status.CANCELLED):
            raise RuntimeError(f"harvest run {run.pk} {run.status}: {run.error}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"harvest run {run.pk} not done after {limit_s:.0f} s ({run.status})")
        time.sleep(0.25)


def worker_settle(since: datetime, limit_s: float = HARVEST_LIMIT_S) -> float:
    """Seconds waited until the jobs created since ``since`` are over (a harvest's search vectors:
    a phase begun before they ended was not idle, or not alone, or queued behind them)."""
    start = time.monotonic()
    active = Job.objects.filter(created__gte=since, status__in=[Job.Status.QUEUED, Job.Status.RUNNING])
    while active.exists():
        if time.monotonic() - start > limit_s:
            raise RuntimeError(f"the worker's jobs {list(active.values_list('title', flat=True))} not over "
                               f"after {limit_s:.0f} s")
        time.sleep(1.0)
    return time.monotonic() - start


def _tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def run(*, clients: int, seconds: float, hooks: str, web_workers: int | None = None,
        web_threads: int | None = None, idle_seconds: float = 20.0, think_s: float = THINK_S,
        log: Any = sys.stderr) -> dict[str, Any]:
    configure_queues(PREFIX)
    purge_queues()
    env = {**os.environ, "BROWSER_QUEUE_PREFIX": PREFIX, "DJANGO_SETTINGS_MODULE": "browser.settings"}
    logs = Path(settings.DATA_DIR) / "bench-load"
    logs.mkdir(parents=True, exist_ok=True)
    corpus = ensure_corpus(log)
    with children() as procs:
        try:
            return _measure(procs, env, logs, corpus, clients, (idle_seconds, seconds, think_s), hooks,
                            web_workers, web_threads, log)
        except Exception:
            log.write(f"--- gunicorn log tail ---\n{_tail(logs / 'web.log')}\n"
                      f"--- worker log tail ---\n{_tail(logs / 'worker.log')}\n")
            raise


def _idle(actors: list[Actor], port: int, seconds: float, think_s: float, log: Any) -> tuple[Tally, dict[str, Any]]:
    """The clients for ``seconds`` with no harvest running."""
    if seconds <= 0:
        return Tally(), {}
    log.write(f"{len(actors)} clients for {seconds:.0f} s with no harvest running...\n")
    start = time.monotonic()
    tally, elapsed = hammer(actors, port, lambda: time.monotonic() - start >= seconds, seed=1, think_s=think_s)
    result = summarize(tally, elapsed)
    log.write(f"idle: {result['requests_per_s']} requests/s, p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms "
              f"(load average {os.getloadavg()[0]:.1f})\n")
    return tally, {"p95_ms_idle": result["p95_ms"], "p50_ms_idle": result["p50_ms"], "idle": result}


def _web_config(workers: int | None, threads: int | None) -> dict[str, Any]:
    from browser import gunicorn_conf

    return {"workers": workers or gunicorn_conf.workers, "threads": threads or gunicorn_conf.threads,
            "keepalive_s": gunicorn_conf.keepalive, "worker_class": gunicorn_conf.worker_class}


def _measure(procs: list[subprocess.Popen[bytes]], env: dict[str, str], logs: Path, corpus: Corpus, clients: int,
             durations: tuple[float, float, float], hooks: str, web_workers: int | None, web_threads: int | None,
             log: Any) -> dict[str, Any]:
    idle_seconds, seconds, think_s = durations
    since = timezone.now()
    procs.append(start_worker(env=env, log=logs / "worker.log"))
    log.write("worker up; harvesting the browsed source (this also warms the worker up)...\n")
    warmup = harvest_wait(harvest_queue(corpus=corpus.name, hooks=HOOKS["quick"], seed=0))
    log.write("waiting for the jobs the harvest queued (search vectors)...\n")
    settle = [worker_settle(since)]
    source = Source.objects.get(model__name=MODEL, name=BROWSE_HOOK)
    units_ensure(source=source)
    browse = f"{MODEL}/{BROWSE_HOOK}"
    hot = [f"{browse}/{i}" for i in range(max(4, clients // 5))]
    actors = make_actors(clients=clients, hot=hot, browse=browse, n_units=source.n_units)
    port = free_port()
    procs.append(start_web(env=env, port=port, workers=web_workers, threads=web_threads, log=logs / "web.log"))
    log.write(f"gunicorn on 127.0.0.1:{port}; warming it up ({WARMUP_S:.0f} s, not counted)...\n")
    warm_start = time.monotonic()
    hammer(actors, port, lambda: time.monotonic() - warm_start >= WARMUP_S, seed=3, think_s=think_s)
    load_avg_idle = os.getloadavg()
    idle_tally, idle = _idle(actors, port, idle_seconds, think_s, log)
    settle.append(worker_settle(since))  # the idle phase's label writes queue no job; a harvest's do
    log.write(f"timing the harvest alone ({hooks})...\n")
    alone = harvest_wait(harvest_queue(corpus=corpus.name, hooks=hooks, seed=1))
    log.write("waiting for the jobs the harvest queued (search vectors)...\n")
    settle.append(worker_settle(since))
    log.write(f"harvest alone: {alone:.1f} s; {clients} clients for {seconds:.0f} s with a harvest running...\n")
    load_avg = os.getloadavg()
    run_loaded = harvest_queue(corpus=corpus.name, hooks=hooks, seed=2)
    start = time.monotonic()
    done: dict[str, float] = {}

    def until() -> bool:
        if "s" not in done:
            run_loaded.refresh_from_db(fields=["status", "finished", "error"])
            if run_loaded.status in (Run.Status.DONE, Run.Status.FAILED, Run.Status.CANCELLED):
                done["s"] = time.monotonic() - start
        over = time.monotonic() - start > HARVEST_LIMIT_S
        return over or ("s" in done and time.monotonic() - start >= seconds)

    tally, elapsed = hammer(actors, port, until, think_s=think_s)
    loaded = harvest_wait(run_loaded, limit_s=1)
    problems = lost_updates(idle_tally.acks + tally.acks)
    stale = stale_search(source, len(hot))
    for line in idle_tally.failures[:10] + tally.failures[:10] + problems[:10]:
        log.write(f"  {line}\n")
    result = summarize(tally, elapsed)
    return {
        "clients": clients, "think_s": think_s, "seconds": round(elapsed, 1), "hooks": hooks, **result, **idle,
        "errors_idle": idle_tally.errors,
        "lost_updates": len(problems), "stale_search_units": stale, "harvest_warmup_s": round(warmup, 2),
        "harvest_alone_s": round(alone, 2), "harvest_loaded_s": round(loaded, 2),
        "harvest_slowdown": round(loaded / alone, 2), "worker_settle_s": [round(x, 1) for x in settle],
        "web": _web_config(web_workers, web_threads), "cpus": os.cpu_count(),
        "load_avg_idle": [round(x, 2) for x in load_avg_idle],
        "load_avg_before": [round(x, 2) for x in load_avg], "load_avg_after": [round(x, 2) for x in os.getloadavg()],
    }
