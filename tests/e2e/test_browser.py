"""End to end in headless Chromium against a live server: home -> source -> unit (keyboard n/p),
sign in and label it (l focuses the field), compare it with the SAE features aligned with it,
find it again by searching for the label (/ focuses search). A screenshot of each page is saved under
``.pytest_cache/e2e-screenshots/``."""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from browser.catalog.models import Unit
from browser.corpora.models import Corpus
from fixtures.tiny_sae import random_sae
from tests.catalog.builders import PASSWORD, build
from tests.conftest import ROOT
from workers.cli import run_here
from workers.compute.config import HarvestConfig
from workers.pipeline.harvest import harvest_create
from workers.pipeline.saes import sae_register, sae_sources
from workers.tasks import harvest_work

pytestmark = pytest.mark.slow
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SHOTS = ROOT / ".pytest_cache" / "e2e-screenshots"


@pytest.fixture
def page(live_server: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    # Playwright's sync API runs an event loop in this thread; the test touches the database only
    # before the browser starts and after its pages are loaded.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    if not Path(CHROMIUM).exists():
        # A failure, not a skip: the browser tests are part of the suite (.ci/run installs it).
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install chromium, or set CHROMIUM to its path")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=live_server.url)
        pg = context.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        pg.on("requestfailed", lambda req: errors.append(f"failed: {req.url}"))
        yield pg
        browser.close()
        assert errors == [], errors  # no script error and no request that failed (nothing from a CDN)


def _shot(page: Any, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _harvest_sae_features(data: Any) -> str:
    """A seeded SAE on the labeled neuron's hook, registered (decoder alignment relations) and its
    features harvested by the real pipeline, so the neuron can be compared with features."""
    sae = random_sae(data.model.d_mlp, 32, k=4, hook_name=data.neurons.hook_point)
    row = sae_register(model=data.model, name=f"{data.neurons.name}.sae-e2e", sae=sae)
    config = HarvestConfig(sources=sae_sources(data.model, [row.source.name]), k=4, samples_per_interval=3,
                           n_intervals=4, hist_stride=3, batch_size=8)
    run, _ = harvest_create(model=data.model, corpus=Corpus.objects.get(name="lines"), config=config)
    assert run.job is not None
    run_here(harvest_work, run.job, io.StringIO())
    return row.source.name


def test_find_read_label_compare_search(transactional_db: None, tmp_path: Path, page: Any) -> None:
    data = build(tmp_path)
    source, unit = data.neurons.name, data.labeled.index
    sae_source = _harvest_sae_features(data)
    live_feature = Unit.objects.filter(source__name=sae_source, dead=False).order_by("-max_activation")[0].index

    page.goto("/")
    _shot(page, "home")
    assert page.locator("svg.chart").count() >= 2  # density and score distributions, server-rendered
    page.get_by_role("link", name=source, exact=True).click()
    page.wait_for_url(re.compile(rf"/s/tiny/{re.escape(source)}/$"))
    _shot(page, "source")
    page.get_by_role("link", name=str(unit), exact=True).click()
    page.wait_for_url(re.compile(rf"/u/tiny/{re.escape(source)}/{unit}/$"))

    page.keyboard.press("n")
    page.wait_for_url(re.compile(rf"/{unit + 1}/$"))
    page.keyboard.press("p")
    page.wait_for_url(re.compile(rf"/{unit}/$"))
    assert page.locator(".example .tok.mx").count() == page.locator(".example").count() > 0
    title = page.locator(".example .tok.mx").first.get_attribute("title")
    assert title is not None and float(title) > 0  # the value on hover

    page.get_by_role("link", name="Sign in").first.click()
    page.fill("#id_username", data.annotator.username)
    page.fill("#id_password", PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(rf"/u/tiny/{re.escape(source)}/{unit}/$"))
    page.locator("body").click(position={"x": 5, "y": 5})
    page.keyboard.press("l")
    assert page.evaluate("document.activeElement.id") == "label-text"
    page.keyboard.press("Control+A")
    page.keyboard.type("kings and crowns in dialogue")
    with page.expect_navigation():
        page.keyboard.press("Control+Enter")  # saves from the keyboard
    page.wait_for_url(re.compile(rf"/u/tiny/{re.escape(source)}/{unit}/$"))
    assert page.get_by_text("kings and crowns in dialogue").count() >= 1
    _shot(page, "unit")

    page.get_by_role("link", name="compare with related units").click()
    page.wait_for_url(re.compile(r"/compare/\?a="))
    columns = page.locator("section.column")
    assert columns.count() >= 2 and page.locator("section.column .example").count() >= 2
    assert sae_source in columns.nth(1).inner_text()  # the most aligned feature comes first
    page.goto(f"/s/tiny/{sae_source}/")
    assert page.get_by_role("heading", name=re.compile("SAE: TopK")).count() == 1
    _shot(page, "sae-source")
    feature_url = f"/compare/?a=tiny/{source}/{unit}&b=tiny/{sae_source}/{live_feature}"
    page.goto(feature_url)
    assert columns.count() == 2 and columns.nth(1).locator(".example").count() > 0
    _shot(page, "compare-feature")
    _shot(page, "compare")

    page.locator("body").click(position={"x": 5, "y": 5})
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.name") == "q"
    page.keyboard.type("crowns")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/units/\?q=crowns"))
    links = page.locator("table.units td a")
    assert links.count() == 1 and links.first.inner_text() == f"tiny/{source}/{unit}"
    _shot(page, "search")



def test_toy_model_page_shows_the_pentagon(transactional_db: None, page: Any) -> None:
    """n = 5 sparse features (p = 0.05) in m = 2 dimensions, trained by the command: the page shows
    W^T W as a 5 x 5 heatmap and five arrows at equal angles (72 degrees apart: the pentagon)."""
    from django.core.management import call_command

    # relu_output is the paper's model of the pentagon (a hidden ReLU privileges the basis instead);
    # 6k steps settle the n = 5 geometry (tests/compute/test_toy.py).
    call_command("toy_model", "--kind", "relu_output", "--n", "5", "--m", "2", "--p", "0.05", "--steps", "6000",
                 "--name", "toy-pentagon", stdout=io.StringIO())
    page.goto("/m/toy-pentagon/toy/")
    assert "5 features in 2 dimensions" in page.locator("main").inner_text()
    assert page.locator("svg.gram rect.cell").count() == 25
    box = page.locator("svg.gram").bounding_box()
    assert box is not None and box["width"] >= 250  # readable: cells tens of pixels wide
    arrows = page.locator("svg.arrows g.feature-arrow line")
    assert arrows.count() == 5
    cx, cy = (float(v) for v in page.locator("svg.arrows g[data-origin]").get_attribute("data-origin").split(","))
    angles = sorted(math.atan2(cy - float(a.get_attribute("y2")), float(a.get_attribute("x2")) - cx)
                    for a in arrows.all())
    gaps = [math.degrees((b - a) % (2 * math.pi)) for a, b in zip(angles, angles[1:] + angles[:1], strict=True)]
    assert gaps == pytest.approx([72.0] * 5, abs=3.0)
    _shot(page, "toy-pentagon")
