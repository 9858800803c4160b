"""An SAE sweep on a real hook (a tiny causal LM): each SAE measured on held-out contexts, plotted
on the hook's source page."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.core.management import call_command
from django.test import Client

from browser.catalog.models import Model
from fixtures.tiny_sae import build_tiny_gpt2
from workers.pipeline.models import model_register
from workers.pipeline.sweeps import sweep_results

pytestmark = pytest.mark.slow
TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. " * 12


def test_real_hook_sweep_measures_fvu_l0_and_loss_recovered(db: None, tmp_path: Path, client: Client) -> None:
    model_register(location=str(build_tiny_gpt2(tmp_path / "gpt")), name="gpt")
    (tmp_path / "a.txt").write_text(TEXT)
    call_command("import_corpus", str(tmp_path / "a.txt"), name="g", tokenizer="gpt", context_length=16,
                 inline=True, stdout=io.StringIO())
    hook = "blocks.1.mlp.hook_post"
    call_command("sae_sweep", "--model", "gpt", "--hook", hook, "--corpus", "g", "--architectures", "topk,batchtopk",
                 "--widths", "48", "--sparsities", "2,16", "--steps", "60", "--batch-tokens", "32", "--inline",
                 stdout=io.StringIO())
    rows = {(r["architecture"], r["sparsity"]): r for r in sweep_results(Model.objects.get(name="gpt"))}
    assert set(rows) == {("topk", 2), ("topk", 16), ("batchtopk", 2), ("batchtopk", 16)}
    for row in rows.values():
        assert {"fvu", "l0", "dead_fraction", "dense_fraction", "loss_recovered", "ce_sae"} <= set(row)
        assert "mcc" not in row  # no truth on a real model
    assert rows[("topk", 2)]["l0"] <= 2 + 1e-6 and rows[("topk", 16)]["l0"] <= 16 + 1e-6
    assert rows[("topk", 16)]["fvu"] < rows[("topk", 2)]["fvu"]  # more latents a token reconstruct better
    html = client.get(f"/s/gpt/{hook}/").content.decode()
    assert 'aria-label="FVU against L0 for each architecture"' in html and "batchtopk (48)" in html
