"""Steering through a real worker on a tiny seeded LLaMA, and the pipeline on SmolLM2: the plain
continuation equals transformers' own greedy ``generate``, the steered one equals ``generate`` with
the neuron's output direction added to the down projection's output by a hook written here."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from django.conf import settings
from django.test import Client

from browser.catalog.models import Model, Unit
from browser.catalog.services import source_get_or_create, units_ensure
from fixtures.tiny_llama import build_tiny_llama
from tests.conftest import Cast
from workers.compute import loading
from workers.pipeline.models import model_get_or_register, model_register
from workers.pipeline.steer import steer

pytestmark = pytest.mark.slow
PROMPT = "Now is the winter of our discontent"


def _source(model: Model, layer: int, width: int) -> None:
    hook = f"blocks.{layer}.mlp.hook_post"
    units_ensure(source=source_get_or_create(model=model, name=hook, hook_point=hook, layer=layer, kind="neurons",
                                             n_units=width))


@contextmanager
def _added(module: torch.nn.Module, vector: torch.Tensor) -> Iterator[None]:
    handle = module.register_forward_hook(lambda m, a, out: out + vector)
    try:
        yield
    finally:
        handle.remove()


def _reference(model: Any, tokenizer: Any, n: int, down: torch.nn.Module | None = None, index: int = 0,
               c: float = 0.0) -> list[int]:
    ids = torch.tensor([tokenizer(PROMPT)["input_ids"]])
    vector = c * down.weight[:, index].detach() if down is not None else None
    with torch.inference_mode(), _added(down, vector) if down is not None else _none():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, attention_mask=torch.ones_like(ids))
    return out[0, ids.shape[1]:].tolist()


@contextmanager
def _none() -> Iterator[None]:
    yield


def test_steer_through_a_worker(worker: subprocess.Popen[bytes], tmp_path: Path, cast: Cast, settings: Any) -> None:
    # The worker is cold (it loads the model first) and shares two cores with the other test process:
    # the product's 20 s wait is for a warm worker on a machine of its own.
    settings.BROWSER_COMPUTE_WAIT_S, settings.BROWSER_COMPUTE_EXPIRES_S = 120, 150
    location = str(build_tiny_llama(tmp_path / "llama", seed=1))
    _source(model_register(location=location, name="tiny-llama"), 1, 48)
    api = cast.client("outsider")
    body = {"prompt": PROMPT, "units": [{"unit": "tiny-llama/blocks.1.mlp.hook_post/5", "op": "steer", "value": 60}],
            "n_tokens": 6}
    response = api.post("/api/v1/steer/", body, format="json")
    assert response.status_code == 200, response.content
    got = response.json()
    model = loading.load_torch_model(location, Path("/nonexistent"), True, "cpu", "float32")
    tokenizer = loading.load_tokenizer(location, Path("/nonexistent"))
    assert got["plain"]["ids"] == _reference(model, tokenizer, 6)
    assert got["steered"]["ids"] == _reference(model, tokenizer, 6, model.model.layers[1].mlp.down_proj, 5, 60.0)
    assert got["plain"]["ids"] != got["steered"]["ids"] and got["kl"] > 0
    assert got["share_url"].startswith("http") and "/steer/?prompt=Now" in got["share_url"]
    # The shared address re-runs it: the page shows both continuations.
    page = Client()
    page.force_login(cast.outsider)
    html = page.get(got["share_url"].split("testserver", 1)[-1]).content.decode()
    assert got["plain"]["text"] in html and got["steered"]["text"] in html and 'class="kl"' in html


def test_smollm2_steering_pipeline(db: None) -> None:
    model = model_get_or_register("smollm2-135m")
    _source(model, 10, 1536)
    unit = Unit.objects.get(source__name="blocks.10.mlp.hook_post", index=42)
    got = steer(request={"prompt": PROMPT, "units": [{"unit_id": unit.pk, "op": "steer", "value": 40.0}],
                         "n_tokens": 8})
    torch_model = loading.load_torch_model("smollm2-135m", Path(settings.CACHE_DIR), True, "cpu", "float32")
    tokenizer = loading.load_tokenizer("smollm2-135m", Path(settings.CACHE_DIR))
    assert got["plain"]["ids"] == _reference(torch_model, tokenizer, 8)
    down = torch_model.model.layers[10].mlp.down_proj
    assert got["steered"]["ids"] == _reference(torch_model, tokenizer, 8, down, 42, 40.0)
    assert got["kl"] > 0 and len(got["up"]) == len(got["down"]) == 10
