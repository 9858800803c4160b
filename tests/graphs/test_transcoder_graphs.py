"""`manage.py graph --basis transcoder` on the tiny LLaMA: transcoder features as nodes (their values are
the registered transcoder's encoding of the MLP input Hugging Face hands the layer's MLP), error nodes,
links to the features' unit pages; refused, with nothing stored, where no layer has a transcoder."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from django.core.management import CommandError, call_command
from django.test import Client

from browser.catalog.models import Model
from browser.graphs.models import Graph
from browser.runs.models import Job
from fixtures.tiny_llama import build_tiny_llama
from tests.graphs.test_graphs import PROMPT
from workers.compute import hooks
from workers.compute.sae.model import SaeConfig, SparseAutoencoder, tensor_shapes
from workers.pipeline.graphs import graph_check
from workers.pipeline.loader import model_on
from workers.pipeline.models import model_register
from workers.pipeline.saes import sae_register
from workers.pipeline.steer import SteerInputError, steer

TC_HOOK = "blocks.1.mlp.hook_in"


@pytest.fixture
def llama(db: None, tmp_path: Path) -> Model:
    return model_register(location=str(build_tiny_llama(tmp_path / "llama")), name="tiny-llama")


def _transcoder(d_model: int) -> SparseAutoencoder:
    cfg = SaeConfig(architecture="topk", d_in=d_model, d_sae=40, k=5, apply_b_dec_to_input=False, hook_name=TC_HOOK,
                    transcoder=True, skip=True, hook_name_out="blocks.1.hook_mlp_out")
    g = torch.Generator().manual_seed(7)
    return SparseAutoencoder(cfg, {name: torch.randn(shape, generator=g) / 5
                                   for name, shape in tensor_shapes(cfg).items()})


def test_transcoder_basis_graph_has_the_transcoders_features(llama: Model, client: Client) -> None:
    with pytest.raises(CommandError, match="has no transcoder on any layer's mlp.hook_in"):
        call_command("graph", model="tiny-llama", prompt=PROMPT, basis="transcoder", inline=True)
    assert not Graph.objects.exists() and not Job.objects.exists()
    tc = _transcoder(llama.d_model)
    row = sae_register(model=llama, name="tiny-tc", sae=tc)
    out = io.StringIO()
    call_command("graph", model="tiny-llama", prompt=PROMPT, basis="transcoder", max_units=40, inline=True, stdout=out)
    graph = Graph.objects.get()
    assert graph.status == Graph.Status.DONE, graph.error
    assert graph.basis == "transcoder" and graph.config["saes"] == [[1, row.source.name]]
    assert {"unit", "error", "token", "logit"} <= {node[0] for node in graph.nodes}
    assert 0 <= graph.scores["replacement_score"] <= 1 and 0 <= graph.scores["completeness"] <= 1
    # Reference: the MLP input captured by a hook on the model's own MLP module, encoded by the module here.
    torch_model, arch, tokenizer = model_on(llama, "cpu")
    ids = tokenizer(PROMPT)["input_ids"]
    seen: dict[str, torch.Tensor] = {}
    with hooks.capture(torch_model, arch, [TC_HOOK], llama.n_layers, lambda name, t: seen.__setitem__(name, t[0])):
        hooks.forward(torch_model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
    features = tc.encode(seen[TC_HOOK])  # [T, 40]
    kept = [n for n in graph.nodes if n[0] == "unit" and n[1] == 1]
    assert kept, "no transcoder feature was kept"
    for _, _, pos, index, value, _ in kept:
        assert index < 40 and float(features[pos, index]) > 0
        assert value == pytest.approx(float(features[pos, index]), abs=1e-4)
    html = client.get(f"/graphs/{graph.pk}/").content.decode()
    assert f'href="/u/tiny-llama/{row.source.name}/{kept[0][3]}/"' in html
    # The stored graph's feature node ablated: the real change equals a plain forward hook on the MLP
    # module that subtracts a * W_dec[f] at the node's position (a read from the hooked MLP input above).
    feature_node = next(i for i, n in enumerate(graph.nodes) if n[0] == "unit" and n[1] == 1)
    _, _, pos, index = graph.nodes[feature_node][:4]
    target = int(graph.logits[0][0])
    check = graph_check(graph_id=graph.pk, nodes=[feature_node], device="cpu")
    delta = torch.zeros(len(ids), llama.d_model)
    delta[pos] = -features[pos, index] * tc.W_dec[index].detach()
    with torch.no_grad():
        clean = float(torch_model(torch.tensor([ids])).logits[0, -1, target])
        handle = torch_model.model.layers[1].mlp.register_forward_hook(lambda m, a, out: out + delta)
        try:
            by_hand = float(torch_model(torch.tensor([ids])).logits[0, -1, target])
        finally:
            handle.remove()
    assert abs(by_hand - clean) > 1e-3  # the ablation moves the target logit
    assert check["clean"] == pytest.approx(clean, abs=1e-4)
    assert check["real"] == pytest.approx(by_hand - clean, abs=1e-4)
    assert abs(check["predicted"]) > 0 and len(check["terms"]) == 1


def test_steering_a_transcoder_feature_adds_its_decoder_row(llama: Model) -> None:
    tc = _transcoder(llama.d_model)
    row = sae_register(model=llama, name="tiny-tc", sae=tc)
    unit = row.source.units.get(index=3)
    out = steer(request={"units": [{"unit_id": unit.pk, "op": "steer", "value": 6.0}], "prompt": PROMPT,
                         "n_tokens": 4}, device="cpu")
    # Reference: greedy decoding without cache, c * W_dec[3] added to layer 1's MLP output by a plain hook.
    torch_model, _, tokenizer = model_on(llama, "cpu")
    seq = torch.tensor([tokenizer(PROMPT)["input_ids"]])
    handle = torch_model.model.layers[1].mlp.register_forward_hook(lambda m, a, o: o + 6.0 * tc.W_dec[3].detach())
    try:
        with torch.no_grad():
            first = torch_model(seq).logits[0, -1]
            for _ in range(4):
                seq = torch.cat([seq, torch_model(seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
    finally:
        handle.remove()
    assert out["steered"]["ids"] == seq[0, -4:].tolist()
    assert out["kl"] > 0
    assert [t for t, _ in out["top_steered"]][:3] == first.topk(3).indices.tolist()


def test_bad_transcoder_edits_are_refused_clearly(llama: Model) -> None:
    row = sae_register(model=llama, name="tiny-tc", sae=_transcoder(llama.d_model))
    unit = row.source.units.get(index=3)
    with pytest.raises(ValueError, match="unknown intervention 'explode'"):
        steer(request={"units": [{"unit_id": unit.pk, "op": "explode"}], "prompt": PROMPT}, device="cpu")
    with pytest.raises(ValueError, match="finite"):
        steer(request={"units": [{"unit_id": unit.pk, "op": "clamp", "value": float("nan")}], "prompt": PROMPT},
              device="cpu")
    with pytest.raises(SteerInputError, match="unknown unit"):
        steer(request={"units": [{"unit_id": unit.pk + 10_000, "op": "zero"}], "prompt": PROMPT}, device="cpu")
