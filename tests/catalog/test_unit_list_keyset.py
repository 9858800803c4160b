"""The unit list at scale (issue 19): keyset pages read keys from the covering sort indexes first and
rows second, and must still walk every filter and sort exactly, ties included; the bench's synthetic
units are the rows the harvest and labels services leave."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.http import QueryDict
from django.test import Client
from django.test.utils import CaptureQueriesContext

from browser.catalog.models import Score, Source, Unit
from browser.catalog.selectors import UnitFilters, parse_unit_filters, unit_page
from browser.examples.models import Example, UnitStats
from browser.labels.models import Label
from browser.labels.services import unit_refresh_labels
from workers.bench import web as bench

pytestmark = pytest.mark.slow
UNITS = 400
SID = f"{bench.MODEL}/{bench.SOURCE}"


@pytest.fixture(scope="module")
def bench_source(django_db_setup: None, django_db_blocker: Any) -> Iterator[Source]:
    """A small bench source, built by the bench's own fill (committed, as the bench leaves it)."""
    with django_db_blocker.unblock():
        source = bench.build(UNITS, io.StringIO())
        yield source
        call_command("flush", interactive=False, verbosity=0)


@pytest.fixture
def source(bench_source: Source, db: None) -> Source:
    return bench_source


def _walk(filters: UnitFilters, size: int) -> tuple[list[int], list[list[int]]]:
    """Every page forward, then every page back from the last one's ``previous`` cursor."""
    pages, cursor, last = [], None, None
    while True:
        page = unit_page(filters, cursor=cursor, size=size)
        pages.append([u.pk for u in page.units])
        last = page
        if page.next is None:
            break
        cursor = page.next
    back, cursor = [], last.previous
    while cursor:
        page = unit_page(filters, cursor=cursor, size=size)
        back.append([u.pk for u in page.units])
        cursor = page.previous
    return [pk for p in pages for pk in p], [*reversed(back), pages[-1]] if back else pages


def _expected(keep: Callable[[dict[str, Any]], bool], key: Callable[[dict[str, Any]], Any], down: bool) -> list[int]:
    """The brute-force answer: filter and sort every unit in Python (ties broken by id, as the list)."""
    rows: list[dict[str, Any]] = [dict(r) for r in Unit.objects.filter(source__name=bench.SOURCE).values(
        "id", "index", "density", "max_activation", "mean_activation", "label_count", "top_token")]
    labels: dict[int, list[str]] = {}
    for unit_id, text in Label.objects.values_list("unit_id", "text"):
        labels.setdefault(unit_id, []).append(text.upper())
    scores = dict(Score.objects.filter(name="top_token_concentration").values_list("unit_id", "value"))
    for r in rows:
        r["labels"], r["score"] = labels.get(r["id"], []), scores.get(r["id"])
    kept = [r for r in rows if keep(r)]
    kept.sort(key=lambda r: (key(r), r["id"]), reverse=down)
    return [r["id"] for r in kept]


CASES = [
    ("sort=-density", lambda r: True, lambda r: r["density"], True),
    ("sort=max_activation&density_min=0.001", lambda r: r["density"] >= 0.001, lambda r: r["max_activation"], False),
    ("density_min=0.0001&density_max=0.01&sort=-max_activation",
     lambda r: 0.0001 <= r["density"] <= 0.01, lambda r: r["max_activation"], True),
    ("labeled=1&sort=-density", lambda r: r["label_count"] > 0, lambda r: r["density"], True),
    ("labeled=0&sort=mean_activation", lambda r: r["label_count"] == 0, lambda r: r["mean_activation"], False),
    ("label=GRIEF&sort=-density", lambda r: any("GRIEF" in t for t in r["labels"]), lambda r: r["density"], True),
    ("score=top_token_concentration:0.5:&sort=-score:top_token_concentration",
     lambda r: r["score"] >= 0.5, lambda r: r["score"], True),
    ("density_max=0.05", lambda r: r["density"] <= 0.05, lambda r: r["index"], False),
]


@pytest.mark.parametrize(("query", "keep", "key", "down"), CASES, ids=[c[0] for c in CASES])
def test_keyset_pages_walk_the_whole_sorted_list_both_ways(source: Source, query: str, keep: Any, key: Any,
                                                           down: bool) -> None:
    filters = parse_unit_filters(QueryDict(f"source={SID}&{query}"))
    expected = _expected(keep, key, down)
    assert len(expected) >= 5, "too few rows to need several pages"
    forward, back = _walk(filters, size=min(7, len(expected) // 3))
    assert forward == expected
    assert [pk for page in back for pk in page] == expected  # the same pages, read backwards


def test_ties_are_paged_by_id(source: Source) -> None:
    """Dead units share density 0: a page boundary inside the tie neither skips nor repeats one."""
    dead = list(Unit.objects.filter(source=source, density=0).order_by("id").values_list("id", flat=True))
    assert len(dead) >= 3
    forward, _ = _walk(parse_unit_filters({"source": SID, "sort": "density"}), size=2)
    assert forward[: len(dead)] == dead


def test_pages_carry_the_sorted_value(source: Source) -> None:
    page = unit_page(parse_unit_filters({"source": SID, "sort": "-score:top_token_concentration"}), size=5)
    scores = dict(Score.objects.filter(unit__in=page.units).values_list("unit_id", "value"))
    assert [u.sort_value for u in page.units] == [scores[u.pk] for u in page.units]  # type: ignore[attr-defined]
    page = unit_page(parse_unit_filters({"source": SID, "sort": "-max_activation"}), size=5)
    assert [u.sort_value for u in page.units] == [u.max_activation for u in page.units]  # type: ignore[attr-defined]


def test_the_sorted_keys_come_from_the_index_alone(source: Source) -> None:
    """The first read of a filtered page is an index-only scan: skipped rows cost no table read."""
    filters = parse_unit_filters({"source": SID, "sort": "max_activation", "density_min": "0.001", "labeled": "0"})
    with CaptureQueriesContext(connection) as queries:
        unit_page(filters)
    [keys_sql] = [q["sql"] for q in queries.captured_queries if q["sql"].startswith('SELECT "catalog_unit"."id" AS')]
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off")
        cursor.execute(f"EXPLAIN {keys_sql}")
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Index Only Scan using unit_source_max_activation" in plan, plan


def test_bench_units_are_what_the_labels_service_leaves(source: Source) -> None:
    """Label count, search text and search vector of every bench unit equal what the labels service
    recomputes from its labels."""
    fields = ("label_count", "search_text", "search")
    before = {u["id"]: u for u in Unit.objects.filter(source=source).values("id", *fields)}
    for unit_id in before:
        unit_refresh_labels(unit_id)
    after = {u["id"]: u for u in Unit.objects.filter(source=source).values("id", *fields)}
    assert after == before
    assert sum(u["label_count"] for u in before.values()) == Label.objects.filter(unit__source=source).count() > 0


def test_bench_units_have_a_harvests_rows(source: Source, client: Client) -> None:
    assert Unit.objects.filter(source=source).count() == source.n_units == UNITS
    assert UnitStats.objects.filter(unit__source=source).count() == UNITS
    assert Example.objects.filter(unit__source=source).count() == UNITS * len(bench.EXAMPLE_SLOTS)
    values = Example.objects.filter(unit__source=source).values_list("values", flat=True).first()
    assert values is not None and len(bytes(values)) == 2 * bench.CONTEXT_LENGTH  # float16 per token, as a harvest writes
    for index in (0, UNITS - 1):
        assert client.get(f"/u/{SID}/{index}/").status_code == 200
        body = client.get(f"/api/v1/units/{SID}/{index}/").json()
        assert len(body["top"]) == 16 and len(body["random"]) == 4 and len(body["intervals"]) == 4
