"""manage.py sae_core measures every SAE on a hook on the same held-out tokens (equal to core_metrics on
activations read by hand from Hugging Face's modules), and the source page sets them side by side."""

from __future__ import annotations

import io
import json

import pytest
import torch
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from browser.catalog.models import Sae
from fixtures.tiny_sae import random_sae
from tests.workers.test_layer_diagnosis import HOOK, _reference_activations
from workers.compute import saebench
from workers.compute.sae_core import core_metrics
from workers.pipeline.saes import sae_register


def test_every_sae_on_the_hook_side_by_side(minilm, corpus, client: Client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    saes = {"narrow": random_sae(minilm.d_mlp, 64, k=4, seed=1, hook_name=HOOK),
            "wide": random_sae(minilm.d_mlp, 256, k=16, seed=2, hook_name=HOOK)}
    for name, sae in saes.items():
        sae_register(model=minilm, name=name, sae=sae)
    out = io.StringIO()
    with pytest.raises(CommandError, match="measured by sae_core"):
        call_command("saebench", "export-hook", HOOK, str(tmp_path), model="minilm-l6", stdout=out)
    call_command("sae_core", model="minilm-l6", hook=HOOK, corpus="lines", stdout=out)
    assert "narrow: FVU" in out.getvalue() and "wide: FVU" in out.getvalue()
    x = _reference_activations(minilm, corpus)
    for name, sae in saes.items():
        stored = Sae.objects.get(source__name=name).quality["core"]
        want = core_metrics(sae, x)
        assert stored["tokens"] == want["tokens"] and stored["corpus"] == "lines"
        for key in ("fvu", "l0", "dead_fraction", "dense_fraction", "mean_max_cosine"):
            assert stored[key] == pytest.approx(want[key], rel=1e-3, abs=1e-4), key
        assert stored["density_hist"] == want["density_hist"]
    page = client.get(f"/s/minilm-l6/{'narrow'}/").content.decode()
    assert "side by side" in page and "<strong>narrow</strong>" in page and ">wide</a>" in page
    assert "log10 firing density of the live latents of wide" in page
    # The side-by-side measures travel as SAEBench core results, one per SAE, and read back the same.
    call_command("saebench", "export-hook", HOOK, str(tmp_path / "core"), model="minilm-l6", stdout=out)
    assert sorted(p.name for p in (tmp_path / "core").iterdir()) == ["narrow_eval_results.json", "wide_eval_results.json"]
    for name in saes:
        stored = Sae.objects.get(source__name=name).quality["core"]
        data = json.loads((tmp_path / "core" / f"{name}_eval_results.json").read_text())
        assert data["sae_lens_id"] == name and data["eval_config"]["dataset"] == "lines"
        assert saebench.read_core(data) == pytest.approx({k: stored[k] for k in ("fvu", "l0", "dead_fraction",
                                                                                 "dense_fraction")})
        assert data["eval_result_unstructured"]["density_hist"] == stored["density_hist"]
        assert data["eval_result_unstructured"]["mean_max_cosine"] == stored["mean_max_cosine"]
    with pytest.raises(CommandError, match="no SAE on blocks.2"):
        call_command("sae_core", model="minilm-l6", hook="blocks.2.mlp.hook_post", corpus="lines", stdout=out)
