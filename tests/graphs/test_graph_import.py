"""Neuronpedia attribution-graph JSON read back: a graph exported here and imported is the same graph
(nodes, edges, tokens, logits, supernodes; neuron and SAE bases), a file written the way circuit-tracer
writes it opens with its own labels, and every malformed file is refused with its reason and stores
nothing, through the command, the API upload and the list page's form."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.test import Client

from browser.catalog.models import Model
from browser.graphs import neuronpedia
from browser.graphs.models import Graph, Supernode
from browser.graphs.services import graph_import
from fixtures.tiny_sae import random_sae
from tests.conftest import Cast
from tests.graphs.test_graphs import HOOK, PROMPT, _graph, models  # noqa: F401  # the models fixture
from workers.pipeline.saes import sae_register

pytestmark = pytest.mark.slow


def _export(cast: Cast, graph: Graph) -> dict[str, Any]:
    response = cast.client("owner").get(f"/api/v1/graphs/{graph.pk}/neuronpedia/")
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


def _same_graph(imported: Graph, graph: Graph) -> None:
    assert imported.pk != graph.pk and imported.model_id == graph.model_id and imported.prompt == graph.prompt
    assert imported.nodes == graph.nodes
    assert imported.edges == graph.edges
    assert imported.tokens == graph.tokens and imported.logits == graph.logits
    assert imported.basis == graph.basis and imported.status == Graph.Status.DONE


def test_export_then_import_is_the_same_graph(models: Model, cast: Cast, tmp_path: Path) -> None:  # noqa: F811
    graph = _graph(max_units=40)
    cast.client("owner").post(f"/api/v1/graphs/{graph.pk}/supernodes/", {"name": "pair", "nodes": [0, 3]},
                              format="json")
    data = _export(cast, graph)
    path = tmp_path / "graph.json"
    path.write_text(json.dumps(data))
    out = io.StringIO()
    call_command("import_graph", str(path), user="owner", stdout=out)
    imported = Graph.objects.exclude(pk=graph.pk).get()
    assert f"graph #{imported.pk} (imported)" in out.getvalue()
    _same_graph(imported, graph)
    assert list(Supernode.objects.filter(graph=imported).values_list("name", "nodes")) == [("pair", [0, 3])]
    # Its page links units to their pages as the original does, and exports the same file again.
    page = Client().get(f"/graphs/{imported.pk}/").content.decode()
    unit = next(n for n in graph.nodes if n[0] == "unit")
    assert f'href="/u/tiny-llama/blocks.{unit[1]}.mlp.hook_post/{unit[3]}/"' in page and "Imported from" in page
    again = _export(cast, imported)
    assert again["nodes"] == data["nodes"] and again["links"] == data["links"]
    # The same file again: the stored graph, nothing new.
    graph_again, created, _ = graph_import(data=data)
    assert (graph_again.pk, created) == (imported.pk, False) and Graph.objects.count() == 2


def test_sae_basis_round_trip_links_features(models: Model, cast: Cast) -> None:  # noqa: F811
    sae_register(model=models, name="tiny-sae", sae=random_sae(models.d_mlp, 32, k=4, seed=1, hook_name=HOOK))
    call_command("graph", model="tiny-llama", prompt=PROMPT, inline=True, stdout=io.StringIO(), max_units=30,
                 basis="sae")
    graph = Graph.objects.get()
    imported, created, _ = graph_import(data=_export(cast, graph))
    assert created
    _same_graph(imported, graph)
    assert imported.config["saes"] == [[1, "tiny-sae"]]
    page = Client().get(f"/graphs/{imported.pk}/").content.decode()
    assert 'href="/u/tiny-llama/tiny-sae/' in page


def circuit_tracer_file() -> dict[str, Any]:
    """A graph as circuit-tracer's create_graph_files writes it (frontend/graph_models.py): transcoder
    features of a model this browser has no transcoder for, an error node, embeddings and logits."""
    def feature(layer: int, index: int, pos: int, clerp: str) -> dict[str, Any]:
        return {"node_id": f"{layer}_{index}_{pos}", "feature": (layer + index) * (layer + index + 1) // 2 + index,
                "layer": str(layer), "ctx_idx": pos, "feature_type": "cross layer transcoder", "token_prob": 0.0,
                "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0, "jsNodeId": f"{layer}_{index}-0",
                "clerp": clerp, "influence": 0.4, "activation": 3.5}

    return {
        "metadata": {"slug": "winter", "scan": "tiny-llama", "transcoder_list": [],
                     "prompt_tokens": ["<s>", "Now", " is"], "prompt": "Now is", "node_threshold": 0.8,
                     "schema_version": 1},
        "qParams": {"pinnedIds": [], "supernodes": [["season", "0_812_1", "1_77_2"]], "linkType": "both",
                    "clickedId": "", "sg_pos": ""},
        "nodes": [
            feature(0, 812, 1, "winter words"), feature(1, 77, 2, "say a season"),
            {"node_id": "1_-1_2", "feature": -1, "layer": "1", "ctx_idx": 2, "feature_type": "mlp reconstruction error",
             "jsNodeId": "1_-1-2", "influence": 0.1},
            {"node_id": "E_2_0", "feature": 0, "layer": "E", "ctx_idx": 0, "feature_type": "embedding",
             "jsNodeId": "E_2-0", "influence": 0.05},
            {"node_id": "E_9_1", "feature": 1, "layer": "E", "ctx_idx": 1, "feature_type": "embedding",
             "jsNodeId": "E_9-1"},
            {"node_id": "3_15_2", "feature": 15, "layer": "3", "ctx_idx": 2, "feature_type": "logit",
             "token_prob": 0.25, "is_target_logit": False, "jsNodeId": "L_15-2", "clerp": 'Output " b" (p=0.250)'},
            {"node_id": "3_14_2", "feature": 14, "layer": "3", "ctx_idx": 2, "feature_type": "logit",
             "token_prob": 0.5, "is_target_logit": True, "jsNodeId": "L_14-2", "clerp": 'Output " "a"" (p=0.500)'},
        ],
        "links": [{"source": "E_9_1", "target": "0_812_1", "weight": 1.5},
                  {"source": "0_812_1", "target": "1_77_2", "weight": 2.5},
                  {"source": "1_77_2", "target": "3_14_2", "weight": -4.0},
                  {"source": "1_-1_2", "target": "3_14_2", "weight": 0.5}],
    }


def test_a_circuit_tracer_file_opens_with_its_own_labels(models: Model, cast: Cast) -> None:  # noqa: F811
    response = cast.client("owner").post("/api/v1/graphs/import/", {
        "file": SimpleUploadedFile("winter.json", json.dumps(circuit_tracer_file()).encode())}, format="multipart")
    assert response.status_code == 201, response.content
    graph = Graph.objects.get(pk=response.json()["id"])
    assert graph.basis == "imported" and graph.model.name == "tiny-llama"
    assert graph.nodes[:3] == [["unit", 0, 1, 812, 3.5, 0.4], ["unit", 1, 2, 77, 3.5, 0.4], ["error", 1, 2, -1, 0.0, 0.1]]
    assert graph.nodes[5:] == [["logit", -1, 2, 15, 0.0, 0.25], ["logit", -1, 2, 14, 0.0, 0.5]]
    assert graph.tokens == [[2, "<s>"], [9, "Now"], [-1, " is"]]
    assert graph.logits == [[14, ' "a"', 0.5, 0.0], [15, " b", 0.25, 0.0]]  # the target logit first
    assert graph.edges[0] == [1, 6, -4.0] and len(graph.edges) == 4  # strongest first
    assert list(Supernode.objects.filter(graph=graph).values_list("name", "nodes")) == [("season", [0, 1])]
    page = Client().get(f"/graphs/{graph.pk}/").content.decode()
    assert "winter words" in page and "say a season" in page
    assert 'class="gunit"' not in page  # not this browser's units: no links to unit pages
    assert "no frozen settings" in page
    twin = Client().get(f"/api/v1/graphs/{graph.pk}/").json()
    assert twin["nodes"][0]["label"] == "winter words" and twin["imported"]["slug"] == "winter"
    response = cast.client("outsider").post(f"/api/v1/graphs/{graph.pk}/check/", {"nodes": [0]}, format="json")
    assert response.status_code == 400 and "was imported" in response.json()["error"]["message"]


def _broken(change: Any) -> dict[str, Any]:
    data = copy.deepcopy(circuit_tracer_file())
    change(data)
    return data


@pytest.mark.parametrize(("data", "message"), [
    ([], "not a JSON object"),
    (_broken(lambda d: d.pop("nodes")), "has no nodes"),
    (_broken(lambda d: d["metadata"].pop("prompt")), "metadata.prompt is missing"),
    (_broken(lambda d: d["links"].append({"source": "E_9_1", "target": "9_9_9", "weight": 1})),
     "not two nodes of the file"),
    (_broken(lambda d: d["links"][0].update(weight="big")), "links[0].weight must be a finite number"),
    (_broken(lambda d: d["nodes"][0].update(feature_type="attention head")), "has feature_type 'attention head'"),
    (_broken(lambda d: d["nodes"].append(d["nodes"][0])), "appears twice"),
    (_broken(lambda d: d["nodes"][0].update(ctx_idx=7)), "at position 7, but the prompt has 3 tokens"),
    (_broken(lambda d: d["nodes"][0].update(node_id="0_812")), "layer_feature_position"),
    (_broken(lambda d: d["nodes"][0].update(layer="5")), "reach layer 5, but tiny-llama has 2"),
    (_broken(lambda d: d.update(nodes=[n for n in d["nodes"] if n["feature_type"] != "logit"], links=[])),
     "no logit node"),
    (_broken(lambda d: d["metadata"].update(scan="gemma-2-2b")), "unknown model 'gemma-2-2b'"),
    (_broken(lambda d: d["metadata"].update(prompt="a\x00b")), "NUL"),
])
def test_malformed_files_are_refused_with_their_reason(models: Model, cast: Cast, data: Any,  # noqa: F811
                                                       message: str) -> None:
    client = cast.client("outsider")
    response = client.post("/api/v1/graphs/import/", {
        "file": SimpleUploadedFile("g.json", json.dumps(data).encode())}, format="multipart")
    assert response.status_code == 400 and message in response.json()["error"]["message"], response.content
    assert not Graph.objects.exists()


def test_upload_rules_command_and_page_form(models: Model, cast: Cast, tmp_path: Path,  # noqa: F811
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    body = json.dumps(circuit_tracer_file()).encode()
    upload = {"file": SimpleUploadedFile("g.json", body)}
    assert cast.client("anonymous").post("/api/v1/graphs/import/", upload, format="multipart").status_code == 401
    response = cast.client("outsider").post("/api/v1/graphs/import/", {
        "file": SimpleUploadedFile("g.json", b"{not json")}, format="multipart")
    assert response.status_code == 400 and "not JSON" in response.json()["error"]["message"]
    monkeypatch.setattr(neuronpedia, "MAX_IMPORT_BYTES", 100)
    response = cast.client("outsider").post("/api/v1/graphs/import/", {
        "file": SimpleUploadedFile("g.json", body)}, format="multipart")
    assert response.status_code == 400 and "at most 0 MiB" in response.json()["error"]["message"]
    monkeypatch.undo()
    # A viewer's import keeps the graph but not its supernodes (grouping needs an annotator).
    response = cast.client("outsider").post("/api/v1/graphs/import/", {"file": SimpleUploadedFile("g.json", body)},
                                            format="multipart")
    assert response.status_code == 201 and "supernodes left out" in " ".join(response.json()["notes"])
    assert not Supernode.objects.exists()
    # The command: a malformed file and a missing one are refused.
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_broken(lambda d: d.pop("links"))))
    with pytest.raises(CommandError, match="has no links"):
        call_command("import_graph", str(bad))
    with pytest.raises(CommandError, match="no file at"):
        call_command("import_graph", str(tmp_path / "none.json"))
    # The list page's form: signed in, a file opens as a graph; a bad one comes back as an error.
    page = Client()
    assert "Import graph" not in page.get("/graphs/").content.decode()
    page.force_login(cast.owner)
    other = _broken(lambda d: d["metadata"].update(slug="other"))
    response = page.post("/graphs/import/", {"file": SimpleUploadedFile("o.json", json.dumps(other).encode())})
    assert response.status_code == 302 and response["Location"].startswith("/graphs/")
    assert Graph.objects.count() == 2
    response = page.post("/graphs/import/", {"file": SimpleUploadedFile("o.json", b"[]")}, follow=True)
    assert "not a JSON object" in response.content.decode()
    assert Graph.objects.count() == 2
