"""The per-layer diagnosis of a real model equals the diagnosis run by hand on activations read
straight from Hugging Face's modules (a forward hook on the layer's BertIntermediate, one context
at a time, special tokens dropped), through the same SAE."""

from __future__ import annotations

import io

import pytest
import torch
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse
from transformers import AutoModel

from browser.catalog.models import Sae
from browser.corpora.models import Context
from browser.corpora.selectors import decode_tokens
from fixtures.tiny_sae import random_sae
from workers.compute import diagnosis
from workers.compute.loading import resolve
from workers.management.commands.diagnose_layers import parse_layers
from workers.pipeline.layer_diagnosis import held_out
from workers.pipeline.saes import sae_register

HOOK = "blocks.1.mlp.hook_post"


def _reference_activations(minilm, corpus) -> torch.Tensor:  # type: ignore[no-untyped-def]
    hf = AutoModel.from_pretrained(resolve(minilm.location).path).eval()
    special = set(corpus.tokenizer.special_ids)
    captured: list[torch.Tensor] = []
    handle = hf.encoder.layer[1].intermediate.register_forward_hook(lambda m, i, o: captured.append(o[0]))
    rows = dict(Context.objects.filter(corpus=corpus, index__in=list(held_out(corpus))).values_list("index", "tokens"))
    out = []
    with torch.no_grad():
        for index in held_out(corpus):
            ids = decode_tokens(bytes(rows[index]))
            hf(input_ids=torch.tensor([ids]))
            keep = torch.tensor([t not in special for t in ids])
            out.append(captured.pop()[keep])
    handle.remove()
    return torch.cat(out)


def test_layer_diagnosis_matches_a_hand_run_on_hugging_face_activations(minilm, corpus) -> None:  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    sae = random_sae(minilm.d_mlp, 128, k=6, seed=3, hook_name=HOOK)
    row = sae_register(model=minilm, name="diag-sae", sae=sae)
    out = io.StringIO()
    call_command("diagnose_layers", model="minilm-l6", corpus="lines", layers="1", stdout=out)
    assert "layer 1 (diag-sae)" in out.getvalue()
    stored = Sae.objects.get(pk=row.pk).quality["diagnosis"]

    x = _reference_activations(minilm, corpus)
    latents = sae.encode(x)
    facts = diagnosis.layer_facts(latents, sae.W_dec)
    found = diagnosis.diagnose(latents, sae.W_dec)
    want: dict[str, int] = {}
    for d in found:
        want[d.cause] = want.get(d.cause, 0) + 1
    assert stored["tokens"] == len(x) and stored["units"] == minilm.d_mlp == sum(stored["causes"].values())
    assert stored["causes"] == want
    assert (stored["live_features"], stored["dims"]) == (facts.n_live, minilm.d_mlp)
    assert stored["interference"] == pytest.approx(facts.interference, abs=1e-3)
    assert stored["layer"] == 1 and stored["corpus"] == "lines"
    first = {d.cause: d for d in reversed(found)}
    for cause, shown in stored["examples"].items():
        assert shown[0]["unit"] == first[cause].unit

    page = Client().get(reverse("source", args=["minilm-l6", "diag-sae"])).content.decode()
    assert "Why neurons are polysemantic, per layer" in page
    for cause, n in want.items():  # each part of the layer's bar says its count
        assert f"layer 1: {cause} {n} of {minilm.d_mlp}" in page


def test_layer_list_and_refusals(minilm, corpus) -> None:  # type: ignore[no-untyped-def]
    assert parse_layers("0-2,5", 6) == [0, 1, 2, 5] and parse_layers("all", 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="0..5"):
        parse_layers("6", 6)
    with pytest.raises(ValueError, match="bad layer list"):
        parse_layers("x", 6)
    out = io.StringIO()
    call_command("diagnose_layers", model="minilm-l6", corpus="lines", layers="2", stdout=out)
    assert "no SAE on blocks.2.mlp.hook_post" in out.getvalue()
    with pytest.raises(CommandError, match="no ready corpus"):
        call_command("diagnose_layers", model="minilm-l6", corpus="nope", layers="2", stdout=out)
