"""End to end in headless Chromium with a real worker: from a unit page of a causal LM (a tiny seeded
LLaMA), sign in, steer with the unit, and see both continuations and both next-token distributions
side by side; the share link re-runs the same request. Screenshot: ``steer.png``."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from browser.accounts.services import user_create
from browser.catalog.services import source_get_or_create, units_ensure
from fixtures.tiny_llama import build_tiny_llama
from tests.e2e.test_browser import _shot, page  # noqa: F401  (the Chromium page fixture)
from workers.pipeline.models import model_register

pytestmark = pytest.mark.slow
HOOK = "blocks.1.mlp.hook_post"
PASSWORD = "steer-pass-123"


def test_steer_from_a_unit_page(worker: subprocess.Popen[bytes], tmp_path: Path, page: Any) -> None:  # noqa: F811
    model = model_register(location=str(build_tiny_llama(tmp_path / "llama", seed=1)), name="tiny-llama")
    units_ensure(source=source_get_or_create(model=model, name=HOOK, hook_point=HOOK, layer=1, kind="neurons",
                                             n_units=48))
    user_create(username="stella", password=PASSWORD, role="viewer")

    page.goto(f"/u/tiny-llama/{HOOK}/5/")
    assert page.locator("section.steer").get_by_role("link", name="Sign in").count() == 1
    page.locator("section.steer").get_by_role("link", name="Sign in").click()
    page.fill("#id_username", "stella")
    page.fill("#id_password", PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(rf"/u/tiny-llama/{re.escape(HOOK)}/5/$"))

    page.fill("#steer-prompt", "Now is the winter of our discontent")
    page.select_option("#steer-op", "steer")
    page.fill("#steer-value", "60")
    page.fill("#steer-n", "6")
    page.get_by_role("button", name="Steer").click()
    page.wait_for_url(re.compile(r"/steer/\?"))
    plain, steered = page.locator("p.continuation.plain strong"), page.locator("p.continuation.steered strong")
    page.wait_for_selector("p.continuation.steered", timeout=60_000)
    assert plain.inner_text().strip() and steered.inner_text().strip()
    assert plain.inner_text() != steered.inner_text()  # a push of 60 along the neuron changes the text
    assert float(page.locator("strong.kl").inner_text()) > 0
    assert page.locator(".steer-result table").count() == 2  # both next-token distributions
    _shot(page, "steer")

    first = (plain.inner_text(), steered.inner_text())
    page.locator("a.share").click()
    page.wait_for_selector("p.continuation.steered", timeout=60_000)
    assert (plain.inner_text(), steered.inner_text()) == first  # the shared address re-runs the same request
