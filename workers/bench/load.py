"""`bench load`: many annotators on loopback while a harvest runs.

Serves the real site with gunicorn on a free loopback port, starts a real Celery worker (queues
prefixed ``bench-load.``, so it never takes anyone else's tasks), times a harvest alone, then
times a fresh harvest (another seed, so another config hash) while concurrent clients mix page
views, label writes (with the revision they read; a 409 is re-read and retried, as a client
should) and small exports. The load lasts ``--seconds`` and at least until that harvest is done.

Afterwards every write the server acknowledged is checked against the revision history in the
database: it must be there as the revision the server answered, and each label's revisions must
run 1, 2, ... with no gap or repeat. Each violation is a lost update.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth import get_user_model

from browser.accounts.services import token_create, user_create
from browser.catalog.models import Source
from browser.catalog.services import units_ensure
from browser.corpora.models import Corpus
from browser.labels.models import Label, LabelRevision
from browser.runs.models import Run
from browser.runs.services import run_delete
from workers.celery import configure_queues

HELP = ("concurrent clients on loopback (page views, label writes, exports) while a harvest runs: "
        "requests/s, p95 latency, errors, lost updates, and the harvest's slowdown against running alone")
MODEL, CORPUS, PREFIX, USERS = "minilm-l6", "bench-load", "bench-load.", "bench-load-"
FIXTURE_CORPUS = Path(settings.BASE_DIR) / "fixtures" / "shakespeare-small.jsonl"
BROWSE_HOOK = "blocks.0.mlp.hook_post"
HOOKS = {"full": "blocks.0.mlp.hook_post,blocks.1.mlp.hook_post,blocks.2.mlp.hook_post", "quick": BROWSE_HOOK}
WORDS = ("king queen crown love death night storm blood ghost ring letter honour poison dream fool grief "
         "war peace fire water heaven soul heart").split()
# Shares of page views (below the first bound), label writes (below the second) and exports.
MIX = (0.45, 0.9)
MAX_TRIES = 8  # re-reads after a 409 before a client gives up on one edit (counted as gave_up)
HARVEST_LIMIT_S = 1800


def add_arguments(parser: Any) -> None:
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="load duration (it goes on until the loaded harvest is done)")
    parser.add_argument("--quick", action="store_true", help="harvest one MiniLM layer instead of three")
    parser.add_argument("--web-workers", type=int, default=4, help="gunicorn worker processes")
    parser.add_argument("--web-threads", type=int, default=4, help="threads per gunicorn worker")


def main(opts: dict[str, Any], log: Any) -> dict[str, Any]:
    if not 2 <= opts["clients"] <= 500:
        raise ValueError("--clients must be between 2 and 500")
    if not 1 <= opts["seconds"] <= 3600:
        raise ValueError("--seconds must be between 1 and 3600")
    return run(clients=opts["clients"], seconds=opts["seconds"], hooks=HOOKS["quick" if opts["quick"] else "full"],
               web_workers=opts["web_workers"], web_threads=opts["web_threads"], log=log)


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


def start_web(*, env: dict[str, str], port: int, workers: int, threads: int, log: Path) -> subprocess.Popen[bytes]:
    """The site under gunicorn (threaded workers, long keep-alive like a proxy in front would keep)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "browser.wsgi:application", "--bind", f"127.0.0.1:{port}",
         "--workers", str(workers), "--threads", str(threads), "--keep-alive", "75", "--timeout", "120",
         "--backlog", "2048", "--error-logfile", str(log)],
        cwd=settings.BASE_DIR, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    _wait(lambda: _answers(port), proc, "gunicorn")
    return proc


def start_worker(*, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A real Celery worker (solo pool, as on a GPU machine) on this bench's queues."""
    from workers.celery import app, queue

    node = f"bench-load-{os.getpid()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers", "worker", "-Q", f"{queue('gpu')},{queue('default')}",
         "--pool", "solo", "-n", f"{node}@%h", "--loglevel", "info", "--without-mingle", "--without-gossip"],
        cwd=settings.BASE_DIR, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
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


# ---- clients -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ack:
    """A label write the server acknowledged: the label, the revision it answered, the text sent
    and the revision the client had read (the write must land right on top of it)."""

    label_id: int
    revision: int
    text: str
    based_on: int


@dataclass
class Tally:
    latency: dict[str, list[float]] = field(default_factory=dict)  # request kind -> seconds
    status: Counter[int] = field(default_factory=Counter)  # 0: the connection failed
    failures: list[str] = field(default_factory=list)  # 5xx and connection errors, first few kept
    acks: list[Ack] = field(default_factory=list)
    conflicts: int = 0
    gave_up: int = 0

    def merge(self, other: Tally) -> None:
        for kind, values in other.latency.items():
            self.latency.setdefault(kind, []).extend(values)
        self.status.update(other.status)
        self.failures.extend(other.failures[: max(0, 20 - len(self.failures))])
        self.acks.extend(other.acks)
        self.conflicts += other.conflicts
        self.gave_up += other.gave_up

    @property
    def errors(self) -> int:
        return sum(n for status, n in self.status.items() if status == 0 or status >= 500)


@dataclass(frozen=True)
class Actor:
    """Who a client is: an account (annotator or curator), its token, and what it works on."""

    username: str
    token: str
    curator: bool
    hot: tuple[str, ...]  # unit ids (model/source/index) that every writer shares
    browse: str  # model/source whose pages are viewed
    n_units: int


class Client:
    """One user agent with one keep-alive connection, looping over a mix of requests."""

    def __init__(self, actor: Actor, port: int, seed: int, mix: tuple[float, float] = MIX) -> None:
        self.actor, self.port, self.rng, self.mix = actor, port, random.Random(seed), mix
        self.tally = Tally()
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.writes = 0

    def call(self, kind: str, method: str, path: str, body: Any = None, auth: bool = True) -> tuple[int, Any]:
        headers = {"Accept": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.actor.token}"
        if body is not None:
            headers["Content-Type"] = "application/json"
        start = time.perf_counter()
        try:
            self.conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
            response = self.conn.getresponse()
            raw, status = response.read(), response.status
        except (OSError, http.client.HTTPException) as exc:
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            raw, status = repr(exc).encode(), 0
        self.tally.latency.setdefault(kind, []).append(time.perf_counter() - start)
        self.tally.status[status] += 1
        if status == 0 or status >= 500:
            self.tally.failures.append(f"{method} {path}: {status} {raw[:300]!r}")
            return status, None
        is_json = response.getheader("Content-Type", "").startswith("application/json")
        return status, json.loads(raw) if is_json and raw else raw

    def loop(self, stop_event: threading.Event) -> None:
        try:
            while not stop_event.is_set():
                roll = self.rng.random()
                if roll < self.mix[0]:
                    self.view()
                elif roll < self.mix[1]:
                    self.moderate() if self.actor.curator else self.write()
                else:
                    self.export()
        finally:
            self.conn.close()

    # -- page views: the unit page (often a hot unit, whose label panel changes), lists, search
    def view(self) -> None:
        a, roll = self.actor, self.rng.random()
        model, source = a.browse.split("/")
        if roll < 0.5:
            uid = self.rng.choice(a.hot) if self.rng.random() < 0.5 else f"{a.browse}/{self.rng.randrange(a.n_units)}"
            self.call("page", "GET", f"/u/{uid}/", auth=False)
        elif roll < 0.7:
            self.call("page", "GET", f"/s/{model}/{source}/?sort=-density", auth=False)
        elif roll < 0.85:
            self.call("page", "GET", "/units/?" + urlencode({"q": self.rng.choice(WORDS)}), auth=False)
        else:
            self.call("api_read", "GET", f"/api/v1/units/{self.rng.choice(a.hot)}/")

    def _text(self) -> str:
        self.writes += 1
        return f"{self.rng.choice(WORDS)} and {self.rng.choice(WORDS)} ({self.actor.username} edit {self.writes})"

    def _acked(self, data: Any, text: str, based_on: int) -> None:
        self.tally.acks.append(Ack(int(data["id"]), int(data["revision"]), str(data["text"]), based_on))
        if data["text"] != text:
            self.tally.failures.append(f"label {data['id']}: sent {text!r}, the server answered {data['text']!r}")

    # -- an annotator writes their own label of a shared unit, with the revision they read
    def write(self) -> None:
        uid = self.rng.choice(self.actor.hot)
        query = urlencode({"unit": uid, "author": self.actor.username})
        for _ in range(MAX_TRIES):
            status, page = self.call("api_read", "GET", f"/api/v1/labels/?{query}")
            if status != 200:
                return
            text = self._text()
            read = page["results"][0]["revision"] if page["results"] else 0
            if read:
                status, data = self.call("write", "PATCH", f"/api/v1/labels/{page['results'][0]['id']}/",
                                         {"text": text, "revision": read})
            else:
                status, data = self.call("write", "POST", "/api/v1/labels/", {"unit": uid, "text": text, "revision": 0})
            if status in (200, 201):
                self._acked(data, text, read)
                return
            if status != 409:
                return
            self.tally.conflicts += 1
        self.tally.gave_up += 1

    # -- a curator edits someone else's label of a shared unit
    def moderate(self) -> None:
        uid = self.rng.choice(self.actor.hot)
        status, page = self.call("api_read", "GET", "/api/v1/labels/?" + urlencode({"unit": uid}))
        if status != 200 or not page["results"]:
            return
        label = self.rng.choice(page["results"])
        for _ in range(MAX_TRIES):
            text = self._text()
            status, data = self.call("write", "PATCH", f"/api/v1/labels/{label['id']}/",
                                     {"text": text, "revision": label["revision"]})
            if status == 200:
                self._acked(data, text, label["revision"])
                return
            if status != 409:
                return
            self.tally.conflicts += 1
            status, label = self.call("api_read", "GET", f"/api/v1/labels/{label['id']}/")
            if status != 200:
                return
        self.tally.gave_up += 1

    # -- a small export: one author's labels of the model, streamed to the end
    def export(self) -> None:
        author = self.actor.username if self.rng.random() < 0.5 else f"{USERS}a{self.rng.randrange(4)}"
        fmt = "jsonl" if self.rng.random() < 0.8 else "csv"
        model = self.actor.browse.split("/")[0]
        self.call("export", "GET", f"/api/v1/exports/labels.{fmt}?" + urlencode({"model": model, "author": author}))


def hammer(actors: list[Actor], port: int, until: Callable[[], bool], seed: int = 0,
           mix: tuple[float, float] = MIX) -> tuple[Tally, float]:
    """Run one client thread per actor until ``until()`` is true; the merged tally and seconds."""
    stop_event = threading.Event()
    clients = [Client(actor, port, seed * 100_003 + i, mix) for i, actor in enumerate(actors)]
    threads = [threading.Thread(target=c.loop, args=(stop_event,), daemon=True) for c in clients]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    try:
        while not until():
            time.sleep(0.25)
    finally:
        stop_event.set()
        for thread in threads:
            thread.join(timeout=180)
    elapsed = time.perf_counter() - start
    total = Tally()
    for client in clients:
        total.merge(client.tally)
    return total, elapsed


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


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(tally: Tally, elapsed: float) -> dict[str, Any]:
    every = [v for values in tally.latency.values() for v in values]
    requests = sum(tally.status.values())
    return {
        "requests": requests, "requests_per_s": round(requests / elapsed, 1),
        "p50_ms": round(_percentile(every, 0.50) * 1000, 1), "p95_ms": round(_percentile(every, 0.95) * 1000, 1),
        "errors": tally.errors, "conflicts": tally.status[409], "throttled": tally.status[429],
        "client_errors": sum(n for s, n in tally.status.items() if 400 <= s < 500 and s not in (409, 429)),
        "acknowledged_writes": len(tally.acks), "gave_up_after_conflicts": tally.gave_up,
        "p95_ms_by_kind": {k: round(_percentile(v, 0.95) * 1000, 1) for k, v in sorted(tally.latency.items())},
        "requests_by_kind": {k: len(v) for k, v in sorted(tally.latency.items())},
        "status": {str(k): n for k, n in sorted(tally.status.items())},
    }


def _tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def run(*, clients: int, seconds: float, hooks: str, web_workers: int = 4, web_threads: int = 4,
        log: Any = sys.stderr) -> dict[str, Any]:
    configure_queues(PREFIX)
    purge_queues()
    env = {**os.environ, "BROWSER_QUEUE_PREFIX": PREFIX, "DJANGO_SETTINGS_MODULE": "browser.settings"}
    logs = Path(settings.DATA_DIR) / "bench-load"
    logs.mkdir(parents=True, exist_ok=True)
    corpus = ensure_corpus(log)
    with children() as procs:
        try:
            return _measure(procs, env, logs, corpus, clients, seconds, hooks, web_workers, web_threads, log)
        except Exception:
            log.write(f"--- gunicorn log tail ---\n{_tail(logs / 'web.log')}\n"
                      f"--- worker log tail ---\n{_tail(logs / 'worker.log')}\n")
            raise


def _measure(procs: list[subprocess.Popen[bytes]], env: dict[str, str], logs: Path, corpus: Corpus, clients: int,
             seconds: float, hooks: str, web_workers: int, web_threads: int, log: Any) -> dict[str, Any]:
    procs.append(start_worker(env=env, log=logs / "worker.log"))
    log.write("worker up; harvesting the browsed source (this also warms the worker up)...\n")
    warmup = harvest_wait(harvest_queue(corpus=corpus.name, hooks=HOOKS["quick"], seed=0))
    source = Source.objects.get(model__name=MODEL, name=BROWSE_HOOK)
    units_ensure(source=source)
    browse = f"{MODEL}/{BROWSE_HOOK}"
    hot = [f"{browse}/{i}" for i in range(max(4, clients // 5))]
    actors = make_actors(clients=clients, hot=hot, browse=browse, n_units=source.n_units)
    port = free_port()
    procs.append(start_web(env=env, port=port, workers=web_workers, threads=web_threads, log=logs / "web.log"))
    log.write(f"gunicorn on 127.0.0.1:{port}; timing the harvest alone ({hooks})...\n")
    alone = harvest_wait(harvest_queue(corpus=corpus.name, hooks=hooks, seed=1))
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

    tally, elapsed = hammer(actors, port, until)
    loaded = harvest_wait(run_loaded, limit_s=1)
    problems = lost_updates(tally.acks)
    stale = stale_search(source, len(hot))
    for line in tally.failures[:10] + problems[:10]:
        log.write(f"  {line}\n")
    result = summarize(tally, elapsed)
    return {
        "clients": clients, "seconds": round(elapsed, 1), "hooks": hooks, **result,
        "lost_updates": len(problems), "stale_search_units": stale, "harvest_warmup_s": round(warmup, 2),
        "harvest_alone_s": round(alone, 2), "harvest_loaded_s": round(loaded, 2),
        "harvest_slowdown": round(loaded / alone, 2),
        "web": {"workers": web_workers, "threads": web_threads}, "cpus": os.cpu_count(),
        "load_avg_before": [round(x, 2) for x in load_avg], "load_avg_after": [round(x, 2) for x in os.getloadavg()],
    }
