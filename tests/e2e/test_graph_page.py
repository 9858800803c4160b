"""End to end in headless Chromium: a graph computed by the command, its page drawn as SVG, a node
hovered (its description shown), two nodes grouped into a supernode, a unit page opened by a click. Screenshots under
``.pytest_cache/e2e-screenshots/``."""

from __future__ import annotations

import io
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from browser.accounts.services import user_create
from browser.catalog.services import source_get_or_create, units_ensure
from browser.graphs.models import Graph, Supernode
from fixtures.tiny_llama import build_tiny_llama
from tests.catalog.builders import PASSWORD
from tests.e2e.test_browser import _shot, page  # noqa: F401  # the Chromium page fixture
from workers.pipeline.models import model_register

pytestmark = pytest.mark.slow


def test_open_graph_hover_node_open_unit(transactional_db: None, tmp_path: Path, page: Any) -> None:  # noqa: F811
    model = model_register(location=str(build_tiny_llama(tmp_path / "llama")), name="tiny-llama")
    for layer in range(model.n_layers):
        hook = f"blocks.{layer}.mlp.hook_post"
        units_ensure(source=source_get_or_create(model=model, name=hook, hook_point=hook, layer=layer,
                                                 kind="neurons", n_units=model.d_mlp))
    call_command("graph", model="tiny-llama", prompt="Now is the winter of our discontent", max_units=40,
                 inline=True, stdout=io.StringIO())
    graph = Graph.objects.get()
    annotator = user_create(username="ann", password=PASSWORD, role="annotator")
    assert graph.status == Graph.Status.DONE, graph.error

    page.goto(f"/graphs/{graph.pk}/")
    assert page.locator("svg.graph circle.gnode").count() == len(graph.nodes)
    _shot(page, "graph")
    unit = page.locator("svg.graph a.gunit circle").first
    unit.hover()
    info = page.locator("#node-info").inner_text()
    assert re.search(r"neuron tiny-llama/blocks\.\d\.mlp\.hook_post/\d+ at .*activation -?\d", info), info
    _shot(page, "graph-hover")
    # Sign in as an annotator, pin two nodes with shift-click and group them into a supernode.
    page.goto(f"/accounts/login/?next=/graphs/{graph.pk}/")
    page.fill("#id_username", annotator.username)
    page.fill("#id_password", PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(rf"/graphs/{graph.pk}/$"))
    circles = page.locator("svg.graph circle.gnode")
    circles.nth(0).click(modifiers=["Shift"])
    circles.nth(1).click(modifiers=["Shift"])
    assert page.url.endswith(f"/graphs/{graph.pk}/")  # shift-click pins instead of following the link
    assert page.locator("svg.graph circle.gnode.pinned").count() == 2
    page.fill("#supernode-name", "winter words")
    with page.expect_navigation():
        page.get_by_role("button", name="Group pinned nodes").click()
    assert page.locator("table.supernodes").get_by_text("winter words").count() == 1
    assert Supernode.objects.get(graph=graph).nodes == [0, 1]
    assert page.locator("svg.graph circle.gnode.grouped").count() == 2  # members drawn with a ring
    _shot(page, "graph-supernode")
    unit = page.locator("svg.graph a.gunit circle").first
    href = page.locator("svg.graph a.gunit").first.get_attribute("href")
    assert href is not None and re.fullmatch(r"/u/tiny-llama/blocks\.\d\.mlp\.hook_post/\d+/", href)
    unit.click()
    page.wait_for_url(re.compile(re.escape(href) + "$"))
    assert page.locator("h1").count() >= 1
    _shot(page, "graph-unit")


def test_ablate_and_steer_a_node_from_the_graph_page(worker: subprocess.Popen[bytes], tmp_path: Path,
                                                     page: Any, settings: Any) -> None:  # noqa: F811
    """Sign in, shift-click the most influential neuron, press Ablate: the graph's predicted change
    of the top logit next to the real one, both equal to the worker's own check; then Steer it
    (scale by 3). Screenshots ``graph-check-ablate.png``, ``graph-check-steer.png``."""
    from workers.pipeline.graphs import graph_check

    settings.BROWSER_COMPUTE_WAIT_S = 120  # a cold worker loads torch and the model first (20 s under load)
    model = model_register(location=str(build_tiny_llama(tmp_path / "llama")), name="tiny-llama")
    for layer in range(model.n_layers):
        hook = f"blocks.{layer}.mlp.hook_post"
        units_ensure(source=source_get_or_create(model=model, name=hook, hook_point=hook, layer=layer,
                                                 kind="neurons", n_units=model.d_mlp))
    call_command("graph", model="tiny-llama", prompt="Now is the winter of our discontent", max_units=40,
                 inline=True, stdout=io.StringIO())
    graph = Graph.objects.get()
    user_create(username="viewer", password=PASSWORD, role="viewer")
    node = max((i for i, n in enumerate(graph.nodes) if n[0] == "unit"), key=lambda i: graph.nodes[i][5])
    expected = graph_check(graph_id=graph.pk, nodes=[node], device="cpu")
    expected_scaled = graph_check(graph_id=graph.pk, nodes=[node], op="scale", value=3.0, device="cpu")

    page.goto(f"/graphs/{graph.pk}/")
    assert page.locator("#check-ablate").count() == 0  # signed out: a sign-in link instead of the form
    page.goto(f"/accounts/login/?next=/graphs/{graph.pk}/")
    page.fill("#id_username", "viewer")
    page.fill("#id_password", PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(rf"/graphs/{graph.pk}/$"))
    page.locator(f'svg.graph circle.gnode[data-node="{node}"]').click(modifiers=["Shift"])
    assert page.input_value("#check-nodes") == str(node)
    assert page.locator("svg.graph circle.gnode.pinned").count() == 1
    with page.expect_navigation(timeout=120_000):
        page.locator("#check-ablate").click()
    result = page.locator(".check-result")
    assert result.count() == 1, page.locator(".check-error").all_inner_texts()
    predicted = float(result.locator("td.predicted").inner_text())
    real = float(result.locator("td.real").inner_text())
    assert predicted == pytest.approx(expected["predicted"], abs=2e-4)
    assert real == pytest.approx(expected["real"], abs=2e-4)
    assert "ablate" in result.inner_text() and expected["target_text"] in result.inner_text()
    assert page.locator("svg.graph circle.gnode.pinned").count() == 1  # the checked node stays selected
    _shot(page, "graph-check-ablate")

    page.select_option("#check-edit", "scale")
    page.fill("#check-value", "3")
    with page.expect_navigation(timeout=120_000):
        page.locator("#check-steer").click()
    result = page.locator(".check-result")
    assert "scale by 3" in result.inner_text()
    assert page.input_value("#check-edit") == "scale" and float(page.input_value("#check-value")) == 3  # kept
    assert float(result.locator("td.real").inner_text()) == pytest.approx(expected_scaled["real"], abs=2e-4)
    assert float(result.locator("td.predicted").inner_text()) == pytest.approx(expected_scaled["predicted"], abs=2e-4)
    _shot(page, "graph-check-steer")
    # The API twin, answered by the same worker: a node named by its Neuronpedia id, steered by +2.
    from django.contrib.auth import get_user_model
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(get_user_model().objects.get(username="viewer"))
    layer, pos, index = graph.nodes[node][1:4]
    response = client.post(f"/api/v1/graphs/{graph.pk}/check/",
                           {"nodes": [f"{layer}_{index}_{pos}"], "op": "steer", "value": 2}, format="json")
    assert response.status_code == 200, response.content
    expected_steer = graph_check(graph_id=graph.pk, nodes=[node], op="steer", value=2.0, device="cpu")
    assert response.json()["nodes"] == [node]
    assert response.json()["real"] == pytest.approx(expected_steer["real"], abs=1e-4)
    assert response.json()["predicted"] == pytest.approx(expected_steer["predicted"], abs=1e-4)


def test_import_a_circuit_tracer_graph_from_the_list_page(transactional_db: None, tmp_path: Path,
                                                          page: Any) -> None:  # noqa: F811
    """Sign in, upload a graph file written the way circuit-tracer writes it on /graphs/, land on its
    page: the file's labels on hover, no links to unit pages. Screenshots ``graph-import*.png``."""
    import json

    from tests.graphs.test_graph_import import circuit_tracer_file

    model_register(location=str(build_tiny_llama(tmp_path / "llama")), name="tiny-llama")
    user_create(username="viewer", password=PASSWORD, role="viewer")
    path = tmp_path / "winter.json"
    path.write_text(json.dumps(circuit_tracer_file()))
    page.goto("/accounts/login/?next=/graphs/")
    page.fill("#id_username", "viewer")
    page.fill("#id_password", PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/graphs/$"))
    page.set_input_files("#graph-file", str(path))
    _shot(page, "graph-import-form")
    with page.expect_navigation():
        page.get_by_role("button", name="Import graph").click()
    graph = Graph.objects.get()
    assert page.url.endswith(f"/graphs/{graph.pk}/")
    assert page.locator("svg.graph circle.gnode").count() == len(graph.nodes) == 7
    assert page.locator("svg.graph a.gunit").count() == 0
    page.locator('svg.graph circle.gnode[data-node="0"]').hover()
    assert "winter words" in page.locator("#node-info").inner_text()
    assert "Imported from neuronpedia graph JSON" in page.locator("p.imported").inner_text()
    _shot(page, "graph-import")
