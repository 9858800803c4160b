"""End to end in headless Chromium: a transcoder-basis graph of the tiny LLaMA, a transcoder feature
hovered (its description names the transcoder source), its unit page opened by a click. Screenshots
``graph-transcoder.png``, ``graph-transcoder-unit.png`` under ``.pytest_cache/e2e-screenshots/``."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from django.core.management import call_command

from browser.graphs.models import Graph
from fixtures.tiny_llama import build_tiny_llama
from tests.e2e.test_browser import _shot, page  # noqa: F401  # the Chromium page fixture
from workers.compute.sae.model import SaeConfig, SparseAutoencoder, tensor_shapes
from workers.pipeline.models import model_register
from workers.pipeline.saes import sae_register

pytestmark = pytest.mark.slow


def test_transcoder_graph_node_opens_its_unit_page(transactional_db: None, tmp_path: Path,
                                                   page: Any) -> None:  # noqa: F811
    model = model_register(location=str(build_tiny_llama(tmp_path / "llama")), name="tiny-llama")
    cfg = SaeConfig(architecture="topk", d_in=model.d_model, d_sae=40, k=5, apply_b_dec_to_input=False,
                    hook_name="blocks.1.mlp.hook_in", transcoder=True)
    g = torch.Generator().manual_seed(3)
    tc = SparseAutoencoder(cfg, {name: torch.randn(shape, generator=g) / 5 for name, shape in tensor_shapes(cfg).items()})
    sae_register(model=model, name="tc-1", sae=tc)
    call_command("graph", model="tiny-llama", prompt="Now is the winter of our discontent", basis="transcoder",
                 max_units=40, inline=True, stdout=io.StringIO())
    graph = Graph.objects.get()
    assert graph.status == Graph.Status.DONE, graph.error
    page.goto(f"/graphs/{graph.pk}/")
    link = page.locator('svg.graph a.gunit[href^="/u/tiny-llama/tc-1/"]').first
    href = link.get_attribute("href")
    assert href is not None and re.fullmatch(r"/u/tiny-llama/tc-1/\d+/", href)
    link.locator("circle").hover()
    info = page.locator("#node-info").inner_text()
    assert "tiny-llama/tc-1/" in info, info
    _shot(page, "graph-transcoder")
    link.locator("circle").click()
    page.wait_for_url(re.compile(re.escape(href) + "$"))
    assert "Transcoder feature" in page.locator("body").inner_text()
    _shot(page, "graph-transcoder-unit")
