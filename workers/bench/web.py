"""`bench web`: server time of the unit page, the filtered unit list and search, at scale.

Fills a separate model ``bench-web`` (one source of N units, 32 examples each, scores and labels)
with binary COPY through the harvest's own services (stats, examples), the units as the labels
service leaves them; reuses it on a rerun of the same size (``fill_s`` is then ~0), and times
in-process requests through the Django test client (the whole middleware and template stack, no
network). docs/design.md, "How storage grows", says what the tables cost per unit.
"""

from __future__ import annotations

import os
import random
import struct
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.test import Client
from django.test.utils import override_settings
from psycopg.types.json import Jsonb

from browser.accounts.services import user_create
from browser.catalog.models import Model, Source, Tokenizer, Unit
from browser.catalog.services import model_create, source_get_or_create, tokenizer_get_or_create
from browser.core.copy import copy_rows
from browser.corpora.models import Corpus
from browser.corpora.services import contexts_write, corpus_create, corpus_mark_ready, documents_add
from browser.examples.services import examples_write, stats_write
from browser.runs.services import run_create

MODEL, SOURCE = "bench-web", "bench.mlp"
CONTEXT_LENGTH, N_CONTEXTS, VOCAB = 64, 20_000, 5000
EXAMPLES = ((0, 0, 16), (1, 3, 3), (1, 2, 3), (1, 1, 3), (1, 0, 3), (2, 0, 4))  # (kind, bucket, count): 32
EXAMPLE_SLOTS = [(kind, bucket, rank) for kind, bucket, count in EXAMPLES for rank in range(count)]
LABELED_EVERY = 20  # one unit in 20 has a label
BLOCK = 10_000  # units per block of generated examples
MAX_UNITS = 10_000_000  # about 85 GB of examples, stats and indexes at 32 examples of 64 tokens per unit
WORDS = ("king queen crown throne love death night day sea storm blood sword ghost ring letter honour "
         "poison dream fool wit grief war peace fire water earth heaven hell soul heart eye hand").split()
HELP = "server time (p50/p95) of the unit page, filtered unit lists and search over N bench units"


def add_arguments(parser: Any) -> None:
    parser.add_argument("--units", type=int, default=100_000, help="units in the bench source (32 examples each)")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per kind")
    parser.add_argument("--fresh", action="store_true", help="rebuild the bench data even if it exists")


def main(opts: dict[str, Any], log: Any) -> dict[str, Any]:
    if not 100 <= opts["units"] <= MAX_UNITS:
        raise ValueError(f"--units must be between 100 and {MAX_UNITS:,}")
    return run(units=opts["units"], requests=opts["requests"], fresh=opts["fresh"], log=log)


# ---- data --------------------------------------------------------------------------------------
def _word(i: int) -> str:
    return f"{WORDS[i % len(WORDS)]}{i // len(WORDS)}" if i >= len(WORDS) else WORDS[i]


def _existing(units: int) -> Source | None:
    source = Source.objects.filter(model__name=MODEL, name=SOURCE).first()
    if source is None or source.n_units != units or Unit.objects.filter(source=source).count() != units:
        return None
    return source


def drop() -> None:
    """Remove the bench data with set-based SQL (an ORM cascade would load millions of examples)."""
    model = Model.objects.filter(name=MODEL).first()
    if model is None:
        return
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM examples_example WHERE run_id IN (SELECT id FROM runs_run WHERE model_id = %s)",
                       [model.pk])
        cursor.execute("DELETE FROM examples_unitstats WHERE run_id IN (SELECT id FROM runs_run WHERE model_id = %s)",
                       [model.pk])
        units = "SELECT u.id FROM catalog_unit u JOIN catalog_source s ON s.id = u.source_id WHERE s.model_id = %s"
        cursor.execute(f"DELETE FROM catalog_score WHERE unit_id IN ({units})", [model.pk])
        cursor.execute(f"DELETE FROM labels_label WHERE unit_id IN ({units})", [model.pk])
        cursor.execute(f"DELETE FROM catalog_unit WHERE id IN ({units})", [model.pk])
    Corpus.objects.filter(name=MODEL).delete()
    model.delete()
    Tokenizer.objects.filter(vocab_hash=f"{MODEL}-v1").delete()


UNIT_COLUMNS = ("source_id", "index", "layer", "kind", "density", "max_activation", "mean_activation", "top_token",
                "dead", "stats_run_id", "label_count", "search_text", "logit_effects")
UNIT_TYPES = ("int8", "int4", "int4", "text", "float8", "float8", "float8", "text", "bool", "int8", "int4", "text",
              "jsonb")


def _label_text(i: int) -> str:
    return f"{WORDS[i % len(WORDS)]} and {WORDS[(i * 7) % len(WORDS)]} contexts"


def _unit_rows(source: Source, run_id: int, rng: np.random.Generator) -> Iterator[tuple[Any, ...]]:
    """Units with their run's statistics and, as the labels service leaves them, label count and
    search text (top token, then the label's text)."""
    n = source.n_units
    density = 10 ** rng.uniform(-6, -0.5, n)
    dead = rng.random(n) < 0.02
    max_act = rng.gamma(2.0, 2.0, n)
    top = rng.integers(0, VOCAB, n)
    empty = Jsonb({})
    for i in range(n):
        d, m = (0.0, 0.0) if dead[i] else (float(density[i]), float(max_act[i]))
        token = _word(int(top[i]))
        labeled = i % LABELED_EVERY == 0
        text = f"{token} {_label_text(i)}" if labeled else token
        yield source.pk, i, 0, "neurons", d, m, m * d, token, bool(dead[i]), run_id, int(labeled), text, empty


def _units_write(source: Source, run_id: int, rng: np.random.Generator) -> None:
    """COPY into a temporary table (not WAL-logged, no indexes), then one INSERT that makes each
    search vector exactly as the services do (``to_tsvector('simple', search_text)``): the same
    rows a harvest and the labels service leave, without rewriting every unit twice."""
    columns = ", ".join(f'"{c}"' for c in UNIT_COLUMNS)
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TEMPORARY TABLE bench_unit AS SELECT {columns} FROM catalog_unit LIMIT 0")
        cursor.execute("ALTER TABLE bench_unit SET (autovacuum_enabled = false)")
    copy_rows("bench_unit", UNIT_COLUMNS, UNIT_TYPES, _unit_rows(source, run_id, rng))
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO catalog_unit ({columns}, search) "
                       f"SELECT {columns}, to_tsvector('simple', search_text) FROM bench_unit ORDER BY index")
        cursor.execute("DROP TABLE bench_unit")


def _example_rows(first_unit: int, n: int, n_ctx: int, first_ctx: int,
                  rng: np.random.Generator) -> Iterator[tuple[Any, ...]]:
    """(unit id, kind, bucket, rank, context id, max value, max position, values), as a harvest's."""
    values = rng.random((256, CONTEXT_LENGTH), dtype=np.float32).astype("<f2")
    blobs = [v.tobytes() for v in values]
    slots = [(kind, bucket, rank, 4.0 - rank * 0.1) for kind, bucket, rank in EXAMPLE_SLOTS]
    k = 0
    for start in range(0, n, BLOCK):  # contexts drawn a block of units at a time: flat memory at 10 M units
        block = min(BLOCK, n - start)
        ctx = iter((rng.integers(0, n_ctx, block * len(slots)) + first_ctx).tolist())
        for u in range(first_unit + start, first_unit + start + block):
            for kind, bucket, rank, value in slots:
                yield u, kind, bucket, rank, next(ctx), value, k % CONTEXT_LENGTH, blobs[k & 255]
                k += 1


def build(units: int, log: Any) -> Source:
    rng = np.random.default_rng(0)
    start = time.perf_counter()

    def phase(what: str) -> None:
        log.write(f"{what}: {time.perf_counter() - start:.1f} s\n")

    with transaction.atomic():
        tok = tokenizer_get_or_create(name=MODEL, vocab_hash=f"{MODEL}-v1",
                                      tokens=["[CLS]", "[SEP]", *(" " + _word(i) for i in range(2, VOCAB))],
                                      special_ids=[0, 1])
        model = model_create(name=MODEL, kind="encoder", architecture="bench", location="bench", n_layers=1,
                             d_model=64, d_mlp=units, vocab_size=VOCAB, tokenizer=tok)
        corpus = corpus_create(name=MODEL, tokenizer=tok, tokenizer_model=model, context_length=CONTEXT_LENGTH,
                               origin="bench web")
        [doc] = documents_add(corpus=corpus, rows=[{"text": "bench"}])
        ids = rng.integers(2, VOCAB, (N_CONTEXTS, CONTEXT_LENGTH)).astype("<i4")
        ids[:, 0], ids[:, -1] = 0, 1
        contexts_write(corpus=corpus, first_index=0, rows=((doc.pk, ids[i].tolist()) for i in range(N_CONTEXTS)))
        corpus_mark_ready(corpus=corpus, n_contexts=N_CONTEXTS, n_tokens=N_CONTEXTS * CONTEXT_LENGTH)
        first_ctx = corpus.contexts.order_by("id").values_list("id", flat=True).first() or 0
        source = source_get_or_create(model=model, name=SOURCE, hook_point="blocks.0.mlp.hook_post", layer=0,
                                      kind="neurons", n_units=units)
        run = run_create(model=model, corpus=corpus, config={}, config_hash=MODEL, sources=[source],
                         status="done", contexts_total=N_CONTEXTS, contexts_done=N_CONTEXTS)
        _units_write(source, run.pk, rng)
        phase("units")
        first_unit = Unit.objects.filter(source=source).order_by("id").values_list("id", flat=True).first() or 0
        _stats_scores_labels(run, first_unit, units, rng)
        phase("stats, scores, labels")
        examples_write(run=run, rows=_example_rows(first_unit, units, N_CONTEXTS, first_ctx, rng))
        phase(f"{units * len(EXAMPLE_SLOTS)} examples")
    with connection.cursor() as cursor:
        # VACUUM sets the visibility map that index-only scans of the unit list need (autovacuum
        # does the same after a harvest's inserts, later); ANALYZE gives the planner the new sizes.
        cursor.execute("VACUUM (ANALYZE) catalog_unit, labels_label")
        cursor.execute("ANALYZE catalog_score; ANALYZE examples_example; ANALYZE examples_unitstats")
    phase("vacuum, analyze")
    return source


def _stats_scores_labels(run: Any, first_unit: int, n: int, rng: np.random.Generator) -> None:
    hist = struct.pack("<8q", 5, 4, 3, 2, 1, 1, 0, 1)
    stats_write(run=run, rows=((u, 1_280_000, 1000, 0.001, 0.1, 4.0, hist, 7) for u in range(first_unit, first_unit + n)))
    conc = rng.random(n)
    copy_rows("catalog_score", ["unit_id", "name", "version", "value", "details", "computed"],
              ["int8", "text", "int4", "float8", "jsonb", "timestamptz"],
              ((first_unit + i, "top_token_concentration", 1, float(conc[i]), Jsonb({}), _now()) for i in range(n)))
    user = (get_user_model().objects.filter(username=f"{MODEL}-labeler").first()
            or user_create(username=f"{MODEL}-labeler", password=None, role="annotator"))
    now = _now()
    copy_rows("labels_label", ["unit_id", "author_id", "text", "tags", "machine", "revision", "created", "updated"],
              ["int8", "int4", "text", "jsonb", "bool", "int4", "timestamptz", "timestamptz"],
              ((first_unit + i, user.pk, _label_text(i), Jsonb([]), False, 1, now, now)
               for i in range(0, n, LABELED_EVERY)))


def _now() -> Any:
    from django.utils import timezone

    return timezone.now()


# ---- timing ------------------------------------------------------------------------------------
def _time(client: Client, urls: Callable[[int], str], n: int) -> dict[str, float]:
    for i in range(5):  # warm caches (vocabulary, templates, plans)
        client.get(urls(i))
    times = []
    for i in range(n):
        url = urls(i)
        start = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - start) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {response.status_code}")
    return {"p50": round(float(np.percentile(times, 50)), 2), "p95": round(float(np.percentile(times, 95)), 2)}


LIST_QUERIES = (
    "sort=-density", "sort=max_activation&density_min=0.001", "density_min=0.0001&density_max=0.01&sort=-max_activation",
    "labeled=1&sort=-density", "score=top_token_concentration:0.9:&sort=-score:top_token_concentration",
    "layer=0&kind=neurons", "top_token=king3", "label=grief&sort=-density",
)


def _list_url(source: str, i: int, rng: random.Random) -> str:
    q = LIST_QUERIES[i % len(LIST_QUERIES)]
    return f"/units/?source={source}&{q}" if i % 2 else f"/s/{MODEL}/{SOURCE}/?{q}"


def run(*, units: int, requests: int, fresh: bool = False, log: Any = sys.stderr) -> dict[str, Any]:
    start = time.perf_counter()
    source = None if fresh else _existing(units)
    if source is None:
        drop()
        source = build(units, log)
    fill_s = time.perf_counter() - start
    with override_settings(DEBUG=False):  # as served: no query log
        return {"units": units, "examples": units * len(EXAMPLE_SLOTS), "requests_per_kind": requests, "fill_s": round(fill_s, 1),
                "reused": fill_s < 5, **_measure(units, requests),
                "load_average_1m": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}


def _measure(units: int, requests: int) -> dict[str, float]:
    client, rng = Client(), random.Random(0)
    sid = f"{MODEL}/{SOURCE}"
    unit = _time(client, lambda i: f"/u/{MODEL}/{SOURCE}/{rng.randrange(units)}/", requests)
    listing = _time(client, lambda i: _list_url(sid, i, rng), requests)
    deep = _deep_cursor(client, sid)
    deep_page = _time(client, lambda i: f"/units/?source={sid}&sort=-density&cursor={deep}", requests // 4)
    words = [*WORDS, *(_word(i) for i in range(len(WORDS), 200))]
    search = _time(client, lambda i: f"/units/?q={words[rng.randrange(len(words))]}", requests)
    api = _time(client, lambda i: f"/api/v1/units/{MODEL}/{SOURCE}/{rng.randrange(units)}/", requests // 2)
    return {
        "unit_page_p50_ms": unit["p50"], "unit_page_p95_ms": unit["p95"],
        "list_p50_ms": listing["p50"], "list_p95_ms": listing["p95"],
        "list_deep_page_p95_ms": deep_page["p95"],
        "search_p50_ms": search["p50"], "search_p95_ms": search["p95"],
        "unit_api_p50_ms": api["p50"], "unit_api_p95_ms": api["p95"],
    }


def _deep_cursor(client: Client, sid: str, pages: int = 20) -> str:
    """The cursor of page ``pages`` (the list is keyset-paginated: depth should not cost)."""
    from browser.catalog.selectors import parse_unit_filters, unit_page

    filters = parse_unit_filters({"source": sid, "sort": "-density"})
    cursor = None
    for _ in range(pages):
        cursor = unit_page(filters, cursor=cursor).next
    return cursor or ""
