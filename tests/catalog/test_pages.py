"""The HTML pages over one real harvest of a tiny BERT (two neuron sources, a label, scores and
relations computed from the harvested examples)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from django.test import Client

from browser.catalog.models import Model, Score, Unit, UnitRelation
from browser.corpora.selectors import decode_tokens
from browser.examples.models import Example
from tests.catalog.builders import BrowserData

pytestmark = pytest.mark.slow


def _listed(html: str) -> list[str]:
    return re.findall(r'<td><a href="/u/([^"]+)/">', html)


def _walk(client: Client, url: str) -> list[str]:
    seen, pages = [], 0
    while url:
        html = client.get(url).content.decode()
        seen += _listed(html)
        nxt = re.search(r'<a rel="next" href="([^"]+)"', html)
        url = nxt.group(1).replace("&amp;", "&") if nxt else ""
        url = f"/units/{url}" if url.startswith("?") else url
        pages += 1
    return seen


def test_home_shows_sources_distributions_and_jobs(data: BrowserData, client: Client) -> None:
    html = client.get("/").content.decode()
    assert f'href="/s/tiny/{data.neurons.name}/"' in html
    assert re.search(r'<td class="num">48</td>', html)
    assert html.count('aria-label="density of the units of tiny/') == 2
    assert "top_token_concentration over the units of tiny/blocks.0.mlp.hook_post" in html
    assert 'data-poll="/api/v1/jobs/"' in html and 'role="progressbar"' in html


def test_unit_list_filters(data: BrowserData, client: Client) -> None:
    all_units = _walk(client, "/units/")
    assert len(all_units) == 96 and len(set(all_units)) == 96
    layer1 = _walk(client, "/units/?layer=1")
    assert layer1 == [f"tiny/blocks.1.mlp.hook_post/{i}" for i in range(48)]
    assert _walk(client, "/units/?labeled=1") == [f"tiny/blocks.0.mlp.hook_post/{data.labeled.index}"]
    assert len(_walk(client, "/units/?labeled=0")) == 95
    assert _walk(client, "/units/?label=QUOTED") == _walk(client, "/units/?labeled=1")
    lo, hi = 0.05, 0.5
    want = set(Unit.objects.filter(density__gte=lo, density__lte=hi).values_list("source__name", "index"))
    got = _walk(client, f"/units/?density_min={lo}&density_max={hi}")
    assert {(u.split("/")[1], int(u.split("/")[2])) for u in got} == want and want
    token = data.labeled.top_token
    assert set(_walk(client, f"/units/?top_token={token}")) == {
        f"tiny/{s}/{i}" for s, i in Unit.objects.filter(top_token=token).values_list("source__name", "index")}


def test_unit_list_score_filter_and_sorts(data: BrowserData, client: Client) -> None:
    url = "/units/?score_name=top_token_concentration&score_min=0.5&sort=-score:top_token_concentration"
    got = _walk(client, url)
    scores = dict(Score.objects.filter(name="top_token_concentration").values_list("unit__index", "value"))
    values = [s.value for s in Score.objects.filter(name="top_token_concentration", value__gte=0.5)]
    assert len(got) == len(values) > 0
    html = client.get(url).content.decode()
    shown = [float(v) for v in re.findall(r'<td class="num score">([0-9.]+)</td>', html)]
    assert shown == sorted(shown, reverse=True) and min(shown) >= 0.5 and scores
    by_density = _walk(client, "/units/?sort=-density&source=tiny/blocks.1.mlp.hook_post")
    densities = dict(Unit.objects.filter(source=data.other).values_list("index", "density"))
    order = [float(densities[int(u.rsplit("/", 1)[1])] or 0) for u in by_density]
    assert order == sorted(order, reverse=True) and len(order) == 48


def test_keyset_pages_forward_and_back(data: BrowserData, client: Client) -> None:
    first = client.get("/units/?sort=max_activation").content.decode()
    nxt = re.search(r'<a rel="next" href="\?([^"]+)"', first).group(1).replace("&amp;", "&")  # type: ignore[union-attr]
    second = client.get(f"/units/?{nxt}").content.decode()
    assert not set(_listed(first)) & set(_listed(second))
    prev = re.search(r'<a rel="prev" href="\?([^"]+)"', second).group(1).replace("&amp;", "&")  # type: ignore[union-attr]
    assert _listed(client.get(f"/units/?{prev}").content.decode()) == _listed(first)
    assert 'rel="prev"' not in first


def test_search_finds_labels_and_top_tokens(data: BrowserData, client: Client) -> None:
    assert _walk(client, "/units/?q=quoted speech") == [f"tiny/blocks.0.mlp.hook_post/{data.labeled.index}"]
    assert _walk(client, "/units/?q=nothing-like-this") == []
    word = next(t for t in Unit.objects.values_list("top_token", flat=True) if t.strip().isalpha())
    found = _walk(client, f"/units/?q={word.strip()}")
    assert set(found) >= {f"tiny/{s}/{i}" for s, i in
                          Unit.objects.filter(top_token=word).values_list("source__name", "index")}


@pytest.mark.parametrize("query", ["layer=x", "density_min=low", "sort=bogus", "kind=heads", "cursor=zzz",
                                   "score=:1:2"])
def test_bad_filters_say_why(data: BrowserData, client: Client, query: str) -> None:
    response = client.get(f"/units/?{query}")
    assert response.status_code == 400 and b'class="error" role="alert"' in response.content


def test_source_page_pins_its_source(data: BrowserData, client: Client) -> None:
    got = _walk(client, f"/s/tiny/{data.other.name}/?layer=0")  # the pinned source wins over a stray filter
    assert got == []
    html = client.get(f"/s/tiny/{data.other.name}/").content.decode()
    assert len(_listed(html)) == 48 and "layer 1, 48 units" in html


def test_unit_page(data: BrowserData, client: Client) -> None:
    unit = data.labeled
    html = client.get(f"/u/tiny/{data.neurons.name}/{unit.index}/").content.decode()
    n_examples = Example.objects.filter(unit=unit).count()
    assert f"<code>tiny/blocks.0.mlp.hook_post/{unit.index}</code>" in html
    assert html.count('class="example"') == n_examples and html.count("tok mx") == n_examples
    assert "question marks and quoted speech" in html
    assert "share of top examples whose max token is the same string" in html
    rel = UnitRelation.objects.filter(unit=unit).order_by("rank").first()
    assert rel is not None and f'href="/u/tiny/{data.other.name}/{rel.other.index}/"' in html
    assert f'data-key="n" href="/u/tiny/{data.neurons.name}/{unit.index + 1}/"' in html
    assert 'role="img"' in html and "<svg" in html
    top = Example.objects.filter(unit=unit, kind=0, rank=0).get()
    values = np.frombuffer(bytes(top.values), dtype="<f2")
    assert f'title="{float(values[top.max_pos]):.3f}"' in html
    assert data.model.tokenizer is not None
    specials = set(data.model.tokenizer.special_ids) & set(decode_tokens(bytes(top.context.tokens)))
    assert specials and html.count('class="tok sp') >= len(specials)  # [CLS]/[SEP] shown, marked apart


def test_unit_page_neighbours_at_the_ends(data: BrowserData, client: Client) -> None:
    first = client.get(f"/u/tiny/{data.neurons.name}/0/").content.decode()
    last = client.get(f"/u/tiny/{data.neurons.name}/47/").content.decode()
    assert 'rel="prev"' not in first and 'rel="next"' in first
    assert 'rel="next"' not in last and client.get(f"/u/tiny/{data.neurons.name}/48/").status_code == 404


def test_compare_pages(data: BrowserData, client: Client) -> None:
    a = f"tiny/{data.neurons.name}/{data.labeled.index}"
    html = client.get(f"/compare/?a={a}").content.decode()
    related = UnitRelation.objects.filter(unit=data.labeled).order_by("rank")
    assert html.count('<section class="column"') == 1 + related.count()
    for rel in related:
        assert f"tiny/{data.other.name}/{rel.other.index}</code>" in html
    b = f"tiny/{data.other.name}/5"
    two = client.get(f"/compare/?a={a}&b={b}").content.decode()
    assert two.count('<section class="column"') == 2 and f"<code>{b}</code>" in two


def test_toy_page(data: BrowserData, client: Client) -> None:
    W = [[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]]  # [n features][m dims], as the training stores it
    Model.objects.create(name="toy-3-2", kind="toy", architecture="toy", location="toy", n_layers=1, d_model=2,
                         d_mlp=3, config={"W": W, "feature_dimensionality": [0.8, 0.8, 0.4],
                                          "dims_per_feature": 0.67, "sparsity": 0.9})
    html = client.get("/m/toy-3-2/toy/").content.decode()
    assert "3 features in 2 dimensions" in html
    assert html.count('<rect class="cell"') == 9 and "W0·W2 = 0.7" in html and "W2·W2 = 0.98" in html
    assert html.count('class="feature-arrow"') == 3 and "0.670" in html and "sparsity" in html
    assert 'href="/m/toy-3-2/toy/"' in client.get("/").content.decode()


def test_probe_without_a_worker_says_so(data: BrowserData, client: Client) -> None:
    client.force_login(data.annotator)  # the form is for signed-in users (tests/catalog/test_compute_rules.py)
    response = client.post(f"/u/tiny/{data.neurons.name}/0/probe/", {"text": "To be or not to be"})
    assert response.status_code == 422 and b"No worker is running" in response.content
    empty = client.post(f"/u/tiny/{data.neurons.name}/0/probe/", {"text": "  "})
    assert b"Type some text first." in empty.content


def test_unit_page_serves_its_run_parts_from_the_cache_and_never_a_stale_one(data: BrowserData, client: Client) -> None:
    """The statistics, histogram and examples are rendered once per unit and stats run: the second
    view reads neither table and is byte-identical; the same unit and run ids in another database
    (a fresh test database, a restored dump: the run's creation time differs) never get the first
    one's parts; a deleted run leaves a page that says so."""
    from datetime import timedelta

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from browser.runs.models import Run
    from browser.runs.services import run_delete

    unit = data.labeled
    url = f"/u/tiny/{data.neurons.name}/{unit.index}/"
    first = client.get(url).content.decode()
    with CaptureQueriesContext(connection) as queries:
        second = client.get(url).content.decode()
    assert second == first
    assert not [q["sql"] for q in queries.captured_queries if "examples_" in q["sql"]]
    top = Example.objects.filter(unit=unit, kind=0, rank=0).get()
    assert f'<span class="val" title="max activation">{top.max_value:.3f}</span>' in first

    # Another database, same ids: other values, another creation time.
    Example.objects.filter(pk=top.pk).update(max_value=123.456)
    Run.objects.filter(pk=data.run.pk).update(created=data.run.created + timedelta(seconds=1))
    assert '<span class="val" title="max activation">123.456</span>' in client.get(url).content.decode()

    run_delete(run=Run.objects.get(pk=data.run.pk))
    assert "This unit has not been harvested yet." in client.get(url).content.decode()
