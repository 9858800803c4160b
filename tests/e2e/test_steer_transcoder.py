"""End to end in headless Chromium with a real worker: from a transcoder feature's unit page (the tiny
seeded LLaMA, a random TopK transcoder on layer 1's MLP input), sign in, steer with the feature, and see
both continuations; the steered one is the greedy continuation computed here by hand with
``value * W_dec[f]`` added to layer 1's MLP output by a plain forward hook. Screenshots:
``steer-transcoder-unit.png``, ``steer-transcoder.png``."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from browser.accounts.services import user_create
from fixtures.tiny_llama import build_tiny_llama
from tests.e2e.test_browser import _shot, page  # noqa: F401  (the Chromium page fixture)
from workers.compute.sae.model import SaeConfig, SparseAutoencoder, tensor_shapes
from workers.pipeline.loader import model_on
from workers.pipeline.models import model_register
from workers.pipeline.saes import sae_register

pytestmark = pytest.mark.slow
PASSWORD = "steer-pass-123"
PROMPT, FEATURE, VALUE, N = "Now is the winter of our discontent", 5, 40.0, 6


def test_steer_a_transcoder_feature_from_its_unit_page(worker: subprocess.Popen[bytes], tmp_path: Path,
                                                       page: Any, settings: Any) -> None:  # noqa: F811
    # The worker's first request loads the model: on the shared 2 cores under load that took 27 s.
    settings.BROWSER_COMPUTE_WAIT_S = settings.BROWSER_COMPUTE_EXPIRES_S = 150
    model = model_register(location=str(build_tiny_llama(tmp_path / "llama", seed=1)), name="tiny-llama")
    cfg = SaeConfig(architecture="topk", d_in=model.d_model, d_sae=40, k=5, apply_b_dec_to_input=False,
                    hook_name="blocks.1.mlp.hook_in", transcoder=True, skip=True)
    g = torch.Generator().manual_seed(3)
    tc = SparseAutoencoder(cfg, {name: torch.randn(shape, generator=g) for name, shape in tensor_shapes(cfg).items()})
    sae_register(model=model, name="tc-1", sae=tc)
    user_create(username="stella", password=PASSWORD, role="viewer")

    page.goto("/u/tiny-llama/tc-1/5/")
    page.locator("section.steer").get_by_role("link", name="Sign in").click()
    page.fill("#id_username", "stella")
    page.fill("#id_password", PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/u/tiny-llama/tc-1/5/$"))
    assert "decoder row to the layer's MLP output" in page.locator("section.steer").inner_text()
    _shot(page, "steer-transcoder-unit")

    page.fill("#steer-prompt", PROMPT)
    page.select_option("#steer-op", "steer")
    page.fill("#steer-value", f"{VALUE:g}")
    page.fill("#steer-n", str(N))
    page.set_default_timeout(170_000)  # the form's GET waits for the worker's answer
    page.get_by_role("button", name="Steer").click()
    page.wait_for_url(re.compile(r"/steer/\?"))
    page.wait_for_selector("p.continuation.steered", timeout=170_000)
    plain = page.locator("p.continuation.plain strong").inner_text()
    steered = page.locator("p.continuation.steered strong").inner_text()
    _shot(page, "steer-transcoder")

    torch_model, _, tokenizer = model_on(model, "cpu")
    seq = torch.tensor([tokenizer(PROMPT)["input_ids"]])
    with torch.no_grad():
        for _ in range(N):
            seq = torch.cat([seq, torch_model(seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
        plain_ids = seq[0, -N:].tolist()
        seq = seq[:, :-N]
        handle = torch_model.model.layers[1].mlp.register_forward_hook(
            lambda m, a, out: out + VALUE * tc.W_dec[FEATURE].detach())
        try:
            for _ in range(N):
                seq = torch.cat([seq, torch_model(seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
        finally:
            handle.remove()
    steered_ids = seq[0, -N:].tolist()
    assert plain_ids != steered_ids  # the push changes the continuation
    assert steered.split() == tokenizer.decode(steered_ids).split()
    assert plain.split() == tokenizer.decode(plain_ids).split()
