"""The clients of `bench load`: user agents (one connection each, kept alive when the server does)
looping over a mix of page views, label writes (with the revision they read; a 409 is re-read and
retried) and small exports, and the summary of what they measured."""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

USERS = "bench-load-"
WORDS = ("king queen crown love death night storm blood ghost ring letter honour poison dream fool grief "
         "war peace fire water heaven soul heart").split()
# Shares of page views (below the first bound), label writes (below the second) and exports.
MIX = (0.45, 0.9)
MAX_TRIES = 8  # re-reads after a 409 before a client gives up on one edit (counted as gave_up)


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
    """One user agent with one HTTP connection (reopened when the server closes it), looping over a
    mix of requests; between two actions it waits ``think_s`` on average (uniform in [0.5, 1.5] x
    ``think_s``), as a person reads a page before the next click. With ``think_s`` 0 the clients only measure throughput: each
    request waits for the 49 others, so its latency is clients / throughput (Little's law)."""

    def __init__(self, actor: Actor, port: int, seed: int, mix: tuple[float, float] = MIX,
                 think_s: float = 0.0) -> None:
        self.actor, self.port, self.rng, self.mix, self.think_s = actor, port, random.Random(seed), mix, think_s
        self.tally = Tally()
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.writes = 0

    def call(self, kind: str, method: str, path: str, body: Any = None, auth: bool = True,
             parse: bool = True) -> tuple[int, Any]:
        """One request; its latency and status are tallied. The body is parsed when ``parse`` (the
        client's own CPU, not the server's: left out when nothing reads it)."""
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
        return status, json.loads(raw) if parse and is_json and raw else raw

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
                if self.think_s:
                    stop_event.wait(self.rng.uniform(0.5, 1.5) * self.think_s)
        finally:
            self.conn.close()

    # -- page views: the unit page (often a hot unit, whose label panel changes), lists, search
    def view(self) -> None:
        a, roll = self.actor, self.rng.random()
        model, source = a.browse.split("/")
        if roll < 0.5:
            uid = self.rng.choice(a.hot) if self.rng.random() < 0.5 else f"{a.browse}/{self.rng.randrange(a.n_units)}"
            self.call("page", "GET", f"/u/{uid}/", auth=False, parse=False)
        elif roll < 0.7:
            self.call("page", "GET", f"/s/{model}/{source}/?sort=-density", auth=False, parse=False)
        elif roll < 0.85:
            self.call("page", "GET", "/units/?" + urlencode({"q": self.rng.choice(WORDS)}), auth=False, parse=False)
        else:
            self.call("api_read", "GET", f"/api/v1/units/{self.rng.choice(a.hot)}/", parse=False)

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
        self.call("export", "GET", f"/api/v1/exports/labels.{fmt}?" + urlencode({"model": model, "author": author}),
                  parse=False)


def hammer(actors: list[Actor], port: int, until: Callable[[], bool], seed: int = 0,
           mix: tuple[float, float] = MIX, think_s: float = 0.0) -> tuple[Tally, float]:
    """Run one client thread per actor until ``until()`` is true; the merged tally and seconds."""
    stop_event = threading.Event()
    clients = [Client(actor, port, seed * 100_003 + i, mix, think_s) for i, actor in enumerate(actors)]
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
