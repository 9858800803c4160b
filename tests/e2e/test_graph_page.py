"""End to end in headless Chromium: a graph computed by the command, its page drawn as SVG, a node
hovered (its description shown), its unit page opened by a click. Screenshots under
``.pytest_cache/e2e-screenshots/``."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from browser.catalog.services import source_get_or_create, units_ensure
from browser.graphs.models import Graph
from fixtures.tiny_llama import build_tiny_llama
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
    assert graph.status == Graph.Status.DONE, graph.error

    page.goto(f"/graphs/{graph.pk}/")
    assert page.locator("svg.graph circle.gnode").count() == len(graph.nodes)
    _shot(page, "graph")
    unit = page.locator("svg.graph a.gunit circle").first
    unit.hover()
    info = page.locator("#node-info").inner_text()
    assert re.search(r"neuron tiny-llama/blocks\.\d\.mlp\.hook_post/\d+ at .*activation -?\d", info), info
    _shot(page, "graph-hover")
    href = page.locator("svg.graph a.gunit").first.get_attribute("href")
    assert href is not None and re.fullmatch(r"/u/tiny-llama/blocks\.\d\.mlp\.hook_post/\d+/", href)
    unit.click()
    page.wait_for_url(re.compile(re.escape(href) + "$"))
    assert page.locator("h1").count() >= 1
    _shot(page, "graph-unit")
