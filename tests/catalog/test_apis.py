"""The JSON twins: same selectors as the pages, stable ids, cursor pagination, errors as JSON."""

from __future__ import annotations

import numpy as np
import pytest
from django.test import Client

from browser.catalog.models import Score, Unit, UnitRelation
from browser.examples.models import Example
from tests.catalog.builders import BrowserData

pytestmark = pytest.mark.slow


def _all(client: Client, url: str) -> list[str]:
    ids: list[str] = []
    while url:
        body = client.get(url).json()
        ids += [row["id"] for row in body["results"]]
        url = body["next"] or ""
    return ids


def test_overview_and_models(data: BrowserData, client: Client) -> None:
    body = client.get("/api/v1/overview/").json()
    sources = {s["source"]["id"]: s for s in body["sources"]}
    assert set(sources) == {"tiny/blocks.0.mlp.hook_post", "tiny/blocks.1.mlp.hook_post"}
    neurons = sources["tiny/blocks.0.mlp.hook_post"]
    density = next(d for d in neurons["distributions"] if d["name"] == "density")
    assert sum(density["counts"]) + neurons["dead"] == neurons["unit_count"] == 48
    assert len(density["edges"]) == len(density["counts"]) + 1
    assert {m["name"] for m in client.get("/api/v1/models/").json()} == {"minilm-l6", "tiny"}
    harvests = [job for job in body["jobs"] if job["kind"] == "harvest"]
    assert [job["status"] for job in harvests] == ["succeeded"]
    # the finished harvest queued its sources' search vectors (no worker here runs them)
    assert {job["title"] for job in body["jobs"] if job["status"] == "queued"} == {
        "search vectors tiny/blocks.0.mlp.hook_post", "search vectors tiny/blocks.1.mlp.hook_post"}


def test_unit_list_twin_matches_the_page_filters(data: BrowserData, client: Client) -> None:
    ids = _all(client, "/api/v1/units/?page_size=7")
    assert len(ids) == 96 == len(set(ids))
    assert _all(client, "/api/v1/units/?labeled=true") == [f"tiny/blocks.0.mlp.hook_post/{data.labeled.index}"]
    assert _all(client, "/api/v1/units/?q=quoted") == _all(client, "/api/v1/units/?labeled=1")
    got = _all(client, "/api/v1/units/?score=top_token_concentration:0.5:&sort=score:top_token_concentration")
    assert len(got) == Score.objects.filter(name="top_token_concentration", value__gte=0.5).count()
    rows = client.get("/api/v1/units/?sort=-max_activation&page_size=5").json()["results"]
    assert [r["max_activation"] for r in rows] == sorted((r["max_activation"] for r in rows), reverse=True)
    top = Unit.objects.order_by("-max_activation").first()
    assert top is not None
    assert rows[0]["id"] == f"tiny/{top.source.name}/{top.index}" and rows[0]["sort_value"] == top.max_activation


def test_source_twin_and_bad_filters(data: BrowserData, client: Client) -> None:
    ids = _all(client, f"/api/v1/sources/tiny/{data.other.name}/?page_size=20")
    assert ids == [f"tiny/{data.other.name}/{i}" for i in range(48)]
    response = client.get("/api/v1/units/?sort=nope")
    assert response.status_code == 400 and "sort must be" in response.json()["error"]["message"]
    assert {s["source"]["id"] for s in client.get("/api/v1/sources/").json()} == {
        "tiny/blocks.0.mlp.hook_post", "tiny/blocks.1.mlp.hook_post"}


def test_unit_twin(data: BrowserData, client: Client) -> None:
    unit = data.labeled
    body = client.get(f"/api/v1/units/tiny/{data.neurons.name}/{unit.index}/").json()
    assert body["id"] == f"tiny/blocks.0.mlp.hook_post/{unit.index}"
    assert [label["text"] for label in body["labels"]] == ["question marks and quoted speech"]
    n = Example.objects.filter(unit=unit)
    shown = body["top"] + body["random"] + [e for g in body["intervals"] for e in g["examples"]]
    assert len(shown) == n.count()
    top = Example.objects.get(unit=unit, kind=0, rank=0)
    first = body["top"][0]
    values = np.frombuffer(bytes(top.values), dtype="<f2").astype(float)
    assert first["values"] == pytest.approx(values.tolist(), abs=1e-3)
    assert len(first["tokens"]) == len(first["token_ids"]) == len(first["values"])
    assert first["max_pos"] == top.max_pos and first["max_value"] == pytest.approx(top.max_value)
    assert body["stats"]["fire_count"] > 0 and sum(body["stats"]["hist"]) > 0
    assert [s["name"] for s in body["scores"]] == ["top_token_concentration"]
    rels = body["relations"][0]["rows"]
    want = UnitRelation.objects.filter(unit=unit).order_by("rank")
    assert [r["other"] for r in rels] == [f"tiny/{data.other.name}/{r.other.index}" for r in want]
    assert body["next"] == unit.index + 1


def test_compare_twin(data: BrowserData, client: Client) -> None:
    a = f"tiny/{data.neurons.name}/{data.labeled.index}"
    body = client.get(f"/api/v1/compare/?a={a}").json()
    assert body["columns"][0]["id"] == a and body["columns"][0]["relation"] is None
    assert [c["relation"]["kind"] for c in body["columns"][1:]] == ["context_overlap"] * (len(body["columns"]) - 1)
    two = client.get(f"/api/v1/compare/?a={a}&b=tiny/{data.other.name}/3").json()
    assert [c["id"] for c in two["columns"]] == [a, f"tiny/{data.other.name}/3"]
    assert client.get("/api/v1/compare/").status_code == 400


def test_probe_twin_without_worker(data: BrowserData, client: Client) -> None:
    response = client.post(f"/api/v1/units/tiny/{data.neurons.name}/0/probe/", {"text": "hello"},
                           content_type="application/json")
    assert response.status_code in (401, 403, 422)


def test_schema_lists_the_twins(data: BrowserData, client: Client) -> None:
    schema = client.get("/api/v1/schema/", HTTP_ACCEPT="application/json").content.decode()
    for path in ("/api/v1/overview/", "/api/v1/units/", "/api/v1/units/{model}/{source}/{index}/",
                 "/api/v1/compare/", "/api/v1/models/{model}/toy/", "/api/v1/sources/{model}/{source}/"):
        assert path in schema
