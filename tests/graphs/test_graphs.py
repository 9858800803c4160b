"""Attribution graphs through their interfaces: the command (computed in-process on a tiny LLaMA),
the page and its JSON twin, and POST /api/v1/graphs/ with every bad request refused before anything
is stored."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from django.core.cache import cache
from django.core.management import CommandError, call_command
from django.test import Client

from browser.catalog.models import Model
from browser.catalog.services import source_get_or_create, units_ensure
from browser.graphs.models import Graph
from browser.labels.services import label_save
from browser.runs.models import Job
from fixtures.tiny import build_tiny_bert
from fixtures.tiny_llama import build_tiny_llama
from fixtures.tiny_sae import random_sae
from tests.conftest import Cast
from workers import presence
from workers.celery import queue
from workers.compute import hooks
from workers.compute.graph_config import MAX_PROMPT_CHARS
from workers.pipeline.loader import model_on
from workers.pipeline.models import model_register
from workers.pipeline.saes import sae_register

pytestmark = pytest.mark.slow
PROMPT = "Now is the winter of our discontent"
HOOK = "blocks.1.mlp.hook_post"


@pytest.fixture
def models(db: None, tmp_path: Path, cast: Cast) -> Iterator[Model]:
    model = model_register(location=str(build_tiny_llama(tmp_path / "llama")), name="tiny-llama")
    for layer in range(2):
        hook = f"blocks.{layer}.mlp.hook_post"
        source = source_get_or_create(model=model, name=hook, hook_point=hook, layer=layer, kind="neurons",
                                      n_units=model.d_mlp)
        units_ensure(source=source)
    model_register(location=str(build_tiny_bert(tmp_path / "bert")), name="tiny-bert")
    for user in (cast.owner, cast.outsider):
        cache.delete(f"throttle_compute_user-{user.pk}")
    presence.announce("graph-test-worker", [queue("gpu")])
    yield model
    presence.withdraw("graph-test-worker")


def _graph(**options: Any) -> Graph:
    call_command("graph", model="tiny-llama", prompt=PROMPT, inline=True, stdout=io.StringIO(), **options)
    return Graph.objects.get()


def test_command_stores_a_graph_whose_nodes_are_the_models_own_activations(models: Model) -> None:
    graph = _graph(max_units=40)
    assert graph.status == Graph.Status.DONE, graph.error
    kinds = {node[0] for node in graph.nodes}
    assert {"unit", "token", "logit"} <= kinds
    assert graph.scores["nodes"] == len(graph.nodes) and graph.scores["edges"] == len(graph.edges)
    assert 0.8 <= graph.scores["kept_share"] <= 1.0
    assert 0 <= graph.scores["replacement_score"] <= 1 and 0 <= graph.scores["completeness"] <= 1
    # Reference: the model's neuron activations captured by hooks on its own modules.
    torch_model, arch, tokenizer = model_on(models, "cpu")
    ids = tokenizer(PROMPT)["input_ids"]
    assert [t for t, _ in graph.tokens] == ids
    seen: dict[str, torch.Tensor] = {}
    names = ["blocks.0.mlp.hook_post", HOOK]
    with hooks.capture(torch_model, arch, names, 2, lambda name, t: seen.__setitem__(name, t[0].clone())):
        hooks.forward(torch_model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
    for kind, layer, pos, index, value, _ in graph.nodes:
        if kind == "unit":
            assert value == pytest.approx(float(seen[f"blocks.{layer}.mlp.hook_post"][pos, index]), abs=1e-4)
    with torch.no_grad():
        probs = torch_model(torch.tensor([ids])).logits[0, -1].softmax(-1)
    for token, _, probability, _ in graph.logits:
        assert probability == pytest.approx(float(probs[token]), abs=1e-5)
    # The same request again is the same graph: no second job.
    _graph(max_units=40)
    assert Graph.objects.count() == 1 and Job.objects.count() == 1


def test_page_draws_nodes_linking_to_unit_pages_with_labels(models: Model, client: Client, cast: Cast) -> None:
    graph = _graph(max_units=40)
    layer, index = next((n[1], n[3]) for n in graph.nodes if n[0] == "unit")
    unit = models.sources.get(name=f"blocks.{layer}.mlp.hook_post").units.get(index=index)
    label_save(unit=unit, user=cast.owner, text="winter detector")
    page = client.get(f"/graphs/{graph.pk}/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "<svg" in html and "cdn" not in html.lower()
    assert f'href="/u/tiny-llama/blocks.{layer}.mlp.hook_post/{index}/"' in html
    assert "winter detector" in html
    assert len(re.findall(r'<circle class="gnode"', html)) == len(graph.nodes)
    twin = client.get(f"/api/v1/graphs/{graph.pk}/").json()
    assert len(twin["nodes"]) == len(graph.nodes) and len(twin["edges"]) == len(graph.edges)
    assert any(n.get("label") == "winter detector" for n in twin["nodes"])
    assert client.get("/graphs/").status_code == 200
    assert client.get("/graphs/999999/").status_code == 404


def test_api_queues_a_graph_once(models: Model, cast: Cast) -> None:
    client = cast.client("outsider")
    response = client.post("/api/v1/graphs/", {"model": "tiny-llama", "prompt": PROMPT}, format="json")
    assert response.status_code == 202, response.content
    graph = Graph.objects.get(pk=response.json()["id"])
    assert graph.status == Graph.Status.QUEUED and graph.job is not None
    again = client.post("/api/v1/graphs/", {"model": "tiny-llama", "prompt": PROMPT}, format="json")
    assert again.status_code == 200 and again.json()["id"] == graph.pk
    assert cast.client("anonymous").post("/api/v1/graphs/", {"model": "tiny-llama", "prompt": PROMPT},
                                         format="json").status_code == 401


@pytest.mark.parametrize("body,message", [
    ({"prompt": "x" * (MAX_PROMPT_CHARS + 1)}, f"no more than {MAX_PROMPT_CHARS} characters"),
    ({"prompt": "   "}, "empty"),
    ({"model": "tiny-bert"}, "not a causal language model"),
    ({"model": "nope"}, "unknown model"),
    ({"basis": "sae"}, "has no SAE on any layer's mlp.hook_post"),
    ({"basis": "transcoder"}, "has no transcoder on any layer's mlp.hook_in"),
    ({"target": "zzzqqq-not-a-token"}, "not a token of tiny-llama's vocabulary"),
    ({"target": "99999999"}, "not a token of tiny-llama's vocabulary"),
    ({"max_units": 0}, "max_units"),
])
def test_bad_requests_store_nothing(models: Model, cast: Cast, body: dict[str, Any], message: str) -> None:
    request = {"model": "tiny-llama", "prompt": PROMPT, **body}
    response = cast.client("outsider").post("/api/v1/graphs/", request, format="json")
    assert response.status_code == 400, response.content
    assert message in response.json()["error"]["message"]
    assert not Graph.objects.exists() and not Job.objects.exists()


def test_command_refuses_bad_input_and_stores_nothing(models: Model) -> None:
    with pytest.raises(CommandError, match=f"at most {MAX_PROMPT_CHARS} are traced"):
        call_command("graph", model="tiny-llama", prompt="y" * (MAX_PROMPT_CHARS + 1), inline=True)
    with pytest.raises(CommandError, match="not a causal language model"):
        call_command("graph", model="tiny-bert", prompt=PROMPT, inline=True)
    with pytest.raises(CommandError, match="not a token"):
        call_command("graph", model="tiny-llama", prompt=PROMPT, target="zzzqqq", inline=True)
    assert not Graph.objects.exists() and not Job.objects.exists()


def test_no_worker_no_request(models: Model, cast: Cast) -> None:
    presence.withdraw("graph-test-worker")
    response = cast.client("outsider").post("/api/v1/graphs/", {"model": "tiny-llama", "prompt": PROMPT},
                                            format="json")
    assert response.status_code == 503
    assert not Graph.objects.exists()


def test_sae_basis_graph_links_features_to_their_pages(models: Model, client: Client) -> None:
    sae = random_sae(models.d_mlp, 32, k=4, seed=1, hook_name=HOOK)
    row = sae_register(model=models, name="tiny-sae", sae=sae)
    graph = _graph(max_units=40, basis="sae")
    assert graph.status == Graph.Status.DONE, graph.error
    assert graph.config["saes"] == [[1, row.source.name]]
    features = [n for n in graph.nodes if n[0] == "unit" and n[1] == 1]
    assert features and all(0 <= n[3] < 32 for n in features)
    html = client.get(f"/graphs/{graph.pk}/").content.decode()
    assert f'href="/u/tiny-llama/{row.source.name}/{features[0][3]}/"' in html
    assert "feature tiny-llama/" in html


def test_supernodes_are_saved_with_history_by_annotators(models: Model, cast: Cast) -> None:
    graph = _graph(max_units=40)
    url = f"/api/v1/graphs/{graph.pk}/supernodes/"
    owner = cast.client("owner")
    assert cast.client("outsider").post(url, {"name": "winter", "nodes": [0, 1]}, format="json").status_code == 403
    for body, message in (({"name": "w", "nodes": [2]}, "at least two"),
                          ({"name": "w", "nodes": [0, len(graph.nodes)]}, "node numbers run from 0"),
                          ({"name": " ", "nodes": [0, 1]}, "name")):
        response = owner.post(url, body, format="json")
        assert response.status_code == 400 and message in response.json()["error"]["message"], response.content
    created = owner.post(url, {"name": "winter", "nodes": [3, 1, 1]}, format="json")
    assert created.status_code == 201 and created.json()["nodes"] == [1, 3]
    updated = owner.post(url, {"name": "winter", "nodes": [1, 2, 3], "revision": 1}, format="json")
    assert updated.status_code == 200 and updated.json()["revision"] == 2
    stale = cast.client("collaborator").post(url, {"name": "winter", "nodes": [4, 5], "revision": 1}, format="json")
    assert stale.status_code == 409
    listed = owner.get(url).json()
    assert [s["nodes"] for s in listed["results"]] == [[1, 2, 3]]
    assert [(h["revision"], h["nodes"]) for h in listed["history"]] == [(2, [1, 2, 3]), (1, [1, 3])]
    twin = owner.get(f"/api/v1/graphs/{graph.pk}/").json()
    assert twin["supernodes"][0]["name"] == "winter"


def test_neuronpedia_export_has_the_viewers_layout(models: Model, cast: Cast) -> None:
    graph = _graph(max_units=40)
    owner = cast.client("owner")
    owner.post(f"/api/v1/graphs/{graph.pk}/supernodes/", {"name": "pair", "nodes": [0, 1]}, format="json")
    response = owner.get(f"/api/v1/graphs/{graph.pk}/neuronpedia/")
    assert response.status_code == 200 and "attachment" in response["Content-Disposition"]
    data = response.json()
    assert set(data) == {"metadata", "qParams", "nodes", "links"}
    assert data["metadata"]["prompt"] == PROMPT and len(data["metadata"]["prompt_tokens"]) == len(graph.tokens)
    # The fields of circuit-tracer's frontend Node model, every one present.
    fields = {"node_id", "feature", "layer", "ctx_idx", "feature_type", "token_prob", "is_target_logit", "run_idx",
              "reverse_ctx_idx", "jsNodeId", "clerp", "influence", "activation"}
    assert all(set(node) == fields for node in data["nodes"])
    ids = [node["node_id"] for node in data["nodes"]]
    assert len(set(ids)) == len(ids) == len(graph.nodes)
    assert len(data["links"]) == len(graph.edges)
    assert all(link["source"] in ids and link["target"] in ids for link in data["links"])
    kinds = {node["feature_type"] for node in data["nodes"]}
    assert {"cross layer transcoder", "embedding", "logit"} <= kinds
    assert sum(node["is_target_logit"] for node in data["nodes"]) == 1
    assert data["qParams"]["supernodes"] == [["pair", ids[0], ids[1]]]


def test_check_requests_are_validated_before_any_work(models: Model, cast: Cast) -> None:
    graph = _graph(max_units=40)
    other = Graph.objects.get(pk=_other_graph().pk)
    url = f"/api/v1/graphs/{graph.pk}/check/"
    token = next(i for i, n in enumerate(graph.nodes) if n[0] == "token")
    unit = next(i for i, n in enumerate(graph.nodes) if n[0] == "unit")
    mine = {(n[1], n[3], n[2]) for n in graph.nodes if n[0] == "unit"}
    foreign = next(f"{n[1]}_{n[3]}_{n[2]}" for n in other.nodes if n[0] == "unit" and (n[1], n[3], n[2]) not in mine)
    layer, pos, index = graph.nodes[unit][1:4]
    assert cast.client("anonymous").post(url, {"nodes": [unit]}, format="json").status_code == 401
    client = cast.client("outsider")
    for body, message in (({"nodes": [token]}, "not a unit node"), ({"supernode": "nope"}, "no supernode"),
                          ({"nodes": []}, "name 1 to 64 nodes"),
                          ({"nodes": [len(graph.nodes)]}, f"node {len(graph.nodes)} is not a node of graph"),
                          ({"nodes": [foreign]}, "is it a node of another graph?"),
                          ({"nodes": ["x_1"]}, "neither a node number nor"),
                          ({"nodes": [True]}, "a node is a node number"),
                          ({"nodes": [unit], "op": "mean"}, "unknown edit 'mean'"),
                          ({"nodes": [unit], "op": "scale"}, "needs a value"),
                          ({"nodes": [unit], "op": "steer", "value": 1e9}, "finite number within"),
                          ({"nodes": [unit], "target": "zzz"}, "not one of graph")):
        response = client.post(url, body, format="json")
        assert response.status_code == 400 and message in response.json()["error"]["message"], (body, response.content)
    # A node named by its Neuronpedia id is the same node; validation passed, so only the worker is missing.
    presence.withdraw("graph-test-worker")
    for nodes in ([unit], [f"{layer}_{index}_{pos}"]):
        response = client.post(url, {"nodes": nodes, "op": "scale", "value": 0.5}, format="json")
        assert response.status_code == 503 and response.json()["error"]["code"] == "no_worker", response.content
    # The page's form: a bad node comes back as an error on the page, nothing queued.
    page = Client()
    page.force_login(cast.outsider)
    response = page.post(f"/graphs/{graph.pk}/check/", {"nodes": f"{token}", "op": "zero"}, follow=True)
    assert "not a unit node" in response.content.decode()
    assert Client().post(f"/graphs/{graph.pk}/check/", {"nodes": f"{unit}"}).status_code == 403


def _other_graph() -> Graph:
    call_command("graph", model="tiny-llama", prompt="Shall I compare thee to a summer's day", inline=True,
                 stdout=io.StringIO(), max_units=40)
    return Graph.objects.order_by("-pk").first()  # type: ignore[return-value]


def _hooked(torch_model: Any, ids: torch.Tensor, cells: dict[int, list[tuple[int, int]]], f: Any) -> torch.Tensor:
    """The last position's logits with neuron activations ``cells`` (layer -> [(position, index)])
    replaced by ``f(a)`` through plain hooks on the down projections."""
    handles = []
    for layer, mine in cells.items():
        def hook(module: Any, args: Any, mine: list[tuple[int, int]] = mine) -> Any:
            x = args[0].clone()
            for pos, index in mine:
                x[0, pos, index] = f(x[0, pos, index])
            return (x,)

        handles.append(torch_model.model.layers[layer].mlp.down_proj.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            return torch_model(ids).logits[0, -1]
    finally:
        for handle in handles:
            handle.remove()


def test_worker_check_predicts_and_measures_an_ablation(models: Model) -> None:
    from workers.pipeline.graphs import graph_check

    graph = _graph(max_units=40)
    picked = [i for i, n in enumerate(graph.nodes) if n[0] == "unit"][:3]
    result = graph_check(graph_id=graph.pk, nodes=picked, device="cpu")
    assert result["target"] == graph.logits[0][0] and result["clean"] == pytest.approx(graph.logits[0][3], abs=1e-4)
    # Reference for the real change: the same units zeroed by plain hooks on the down projections.
    torch_model, _, tokenizer = model_on(models, "cpu")
    ids = torch.tensor([tokenizer(PROMPT)["input_ids"]])
    cells: dict[int, list[tuple[int, int]]] = {}
    for i in picked:
        cells.setdefault(graph.nodes[i][1], []).append((graph.nodes[i][2], graph.nodes[i][3]))
    edited = float(_hooked(torch_model, ids, cells, lambda a: 0 * a)[result["target"]])
    assert result["real"] == pytest.approx(edited - result["clean"], abs=1e-4)
    assert result["predicted"] != 0 and sum(result["terms"]) == pytest.approx(result["predicted"], abs=1e-3)
    # Steering (scale by 3) measured on another target logit of the graph, against the same hooks.
    target = graph.logits[-1][0]
    steered = graph_check(graph_id=graph.pk, nodes=picked, op="scale", value=3.0, target=target, device="cpu")
    plain = float(_hooked(torch_model, ids, {}, lambda a: a)[target])
    scaled = float(_hooked(torch_model, ids, cells, lambda a: 3 * a)[target])
    assert steered["target"] == target and steered["real"] == pytest.approx(scaled - plain, abs=1e-4)
    with pytest.raises(ValueError, match="not one of graph"):
        graph_check(graph_id=graph.pk, nodes=picked, target=10**6, device="cpu")


def test_neuron_and_feature_graphs_of_a_prompt_side_by_side(models: Model, client: Client) -> None:
    sae_register(model=models, name="tiny-sae", sae=random_sae(models.d_mlp, 32, k=4, seed=1, hook_name=HOOK))
    _graph(max_units=30)
    call_command("graph", model="tiny-llama", prompt=PROMPT, inline=True, stdout=io.StringIO(), max_units=30,
                 basis="sae")
    neurons, features = Graph.objects.get(basis="neurons"), Graph.objects.get(basis="sae")
    page = client.get(f"/graphs/{neurons.pk}/").content.decode()
    assert f"/graphs/compare/?a={neurons.pk}&amp;b={features.pk}" in page
    compare = client.get(f"/graphs/compare/?a={neurons.pk}&b={features.pk}")
    html = compare.content.decode()
    assert compare.status_code == 200 and html.count('<svg') == 2
    for graph in (neurons, features):
        assert f"{graph.scores['nodes']} of {graph.scores['full_nodes']}" in html
    assert client.get("/graphs/compare/?a=1").status_code == 400
