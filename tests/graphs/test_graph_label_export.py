"""The label export filtered to a graph's nodes: ``?graph=ID`` gives the labels of the units that are
nodes of that graph and no other, in every format and in the dataset card."""

from __future__ import annotations

import csv
import io
import json

import pytest
from django.test import Client

from browser.catalog.models import Model, Unit
from browser.graphs.models import Graph
from browser.graphs.services import graph_import
from browser.labels.services import label_save
from tests.conftest import Cast
from tests.graphs.test_graph_import import circuit_tracer_file
from tests.graphs.test_graphs import _graph, models  # noqa: F401  # the models fixture

pytestmark = pytest.mark.slow


def test_labels_of_a_graphs_nodes(models: Model, cast: Cast) -> None:  # noqa: F811
    graph = _graph(max_units=40)
    in_graph = [(n[1], n[3]) for n in graph.nodes if n[0] == "unit"]
    picked = [Unit.objects.get(source__model=models, source__name=f"blocks.{layer}.mlp.hook_post", index=index)
              for layer, index in sorted(set(in_graph))[:2]]
    outside = next(u for u in Unit.objects.filter(source__model=models).select_related("source")
                   if (u.source.layer, u.index) not in set(in_graph))
    for unit, text in ((picked[0], "winter"), (picked[1], "discontent"), (outside, "not in the graph")):
        label_save(unit=unit, user=cast.owner, text=text)
    client = Client()
    rows = [json.loads(line) for line in client.get(f"/api/v1/exports/labels.jsonl?graph={graph.pk}")
            .getvalue().decode().splitlines()]
    assert sorted(r["text"] for r in rows) == ["discontent", "winter"]
    assert {r["unit"] for r in rows} == {f"tiny-llama/{u.source.name}/{u.index}" for u in picked}
    table = list(csv.DictReader(io.StringIO(client.get(f"/api/v1/exports/labels.csv?graph={graph.pk}")
                                            .getvalue().decode())))
    assert sorted(r["text"] for r in table) == ["discontent", "winter"]
    everything = client.get("/api/v1/exports/labels.jsonl").getvalue().decode().splitlines()
    assert len(everything) == 3
    card = client.get(f"/api/v1/exports/card/?graph={graph.pk}").json()
    assert card["rows"] == 2
    # Another prompt's graph without labelled nodes, an imported graph of foreign features: no rows.
    imported, _, _ = graph_import(data=circuit_tracer_file())
    assert client.get(f"/api/v1/exports/labels.jsonl?graph={imported.pk}").getvalue() == b""
    assert client.get("/api/v1/exports/labels.jsonl?graph=999999").status_code == 404
    assert client.get("/api/v1/exports/labels.jsonl?graph=x").status_code == 400
    # The graph page links its nodes' labels.
    assert f"/api/v1/exports/labels.jsonl?graph={graph.pk}" in client.get(f"/graphs/{graph.pk}/").content.decode()
    assert Graph.objects.count() == 2
