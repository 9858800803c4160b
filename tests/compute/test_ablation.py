"""Ablation effects on left-padded prefixes against each prefix run alone, unpadded, through a copy of
the model with the neuron's down-projection column zeroed by hand."""

from __future__ import annotations

import copy

import torch

from tests.compute.test_interventions import ARCH, MLP, N_LAYERS, VOCAB, tiny_llama
from workers.compute.ablation import ablation_effect
from workers.compute.interventions import Edit


def test_ablation_effect_against_unpadded_runs_by_hand() -> None:
    model = tiny_llama(seed=4)
    by_hand = copy.deepcopy(model)
    with torch.no_grad():
        by_hand.model.layers[1].mlp.down_proj.weight[:, 9] = 0
    g = torch.Generator().manual_seed(5)
    prefixes = [torch.randint(1, VOCAB, (n,), generator=g).tolist() for n in (3, 7, 12)]
    watched = [4, 17, 30]
    got = ablation_effect(model, ARCH, N_LAYERS, prefixes, Edit(MLP, 9, "zero"), watched, pad_id=0)
    kls, changes, probs = [], [], []
    with torch.inference_mode():
        for prefix in prefixes:
            ids = torch.tensor([prefix])
            log_p = torch.log_softmax(model(input_ids=ids).logits[0, -1].double(), -1)
            log_q = torch.log_softmax(by_hand(input_ids=ids).logits[0, -1].double(), -1)
            kls.append(float((log_p.exp() * (log_p - log_q)).sum()))
            changes.append(torch.log(log_q.exp()[watched].sum()) - torch.log(log_p.exp()[watched].sum()))
            probs.append(log_q.exp() - log_p.exp())
    torch.testing.assert_close(got.kl, torch.tensor(kls, dtype=torch.float32), rtol=1e-3, atol=1e-7)
    torch.testing.assert_close(got.logprob_change, torch.stack(changes).float(), rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(got.prob_change, torch.stack(probs).mean(0).float(), rtol=1e-3, atol=1e-7)
    assert float(got.kl.min()) > 0


def test_ablating_a_unit_that_never_fires_changes_nothing() -> None:
    model = tiny_llama(seed=4)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[9] = 0  # neuron 9 is exactly 0 everywhere
    got = ablation_effect(model, ARCH, N_LAYERS, [[5, 6, 7], [8, 9]], Edit(MLP, 9, "zero"), [1], pad_id=0)
    assert torch.equal(got.kl, torch.zeros(2)) and torch.equal(got.logprob_change, torch.zeros(2))
