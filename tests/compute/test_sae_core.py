"""Core metrics of an SAE against brute force on a hand-planted SAE: one latent that never fires, one
that fires on every token, and decoder rows whose cosines are known."""

from __future__ import annotations

import math

import pytest
import torch

from fixtures.tiny_sae import random_sae
from workers.compute.sae_core import core_metrics, histogram, max_decoder_cosine


def test_core_metrics_equal_brute_force() -> None:
    sae = random_sae(8, 6, architecture="relu", k=None, seed=2)
    with torch.no_grad():
        sae.b_enc[0] = -1e6  # latent 0 never fires: dead
        sae.b_enc[1] = 1e3  # latent 1 fires on every token: dense
        sae.W_dec[2] = sae.W_dec[3] * -2.0  # latents 2 and 3 share a direction: |cos| 1
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    got = core_metrics(sae, x)
    f = sae.encode(x)
    fires = [[float(f[t, j]) > 0 for t in range(len(x))] for j in range(6)]
    density = [sum(col) / len(x) for col in fires]
    assert density[0] == 0 and density[1] == 1
    assert got["dead_fraction"] == pytest.approx(sum(d == 0 for d in density) / 6)
    assert got["dense_fraction"] == pytest.approx(sum(d > 0.1 for d in density) / 6)
    assert got["l0"] == pytest.approx(sum(density))
    recon = sae(x)
    mean = x.mean(dim=0)
    sse = sum(float((x[t] - recon[t]).pow(2).sum()) for t in range(len(x)))
    sst = sum(float((x[t] - mean).pow(2).sum()) for t in range(len(x)))
    assert got["fvu"] == pytest.approx(sse / sst, rel=1e-4)
    live = [j for j in range(6) if density[j] > 0]
    W = sae.W_dec.detach()

    def cos(a: int, b: int) -> float:
        return abs(float(W[a] @ W[b])) / (float(W[a].norm()) * float(W[b].norm()))

    best = [max(cos(j, o) for o in range(6) if o != j) for j in live]
    assert got["mean_max_cosine"] == pytest.approx(sum(best) / len(best), rel=1e-5)
    assert sum(got["max_cosine_hist"]) == len(live) and got["max_cosine_hist"][-1] >= (2 in live) + (3 in live)
    logs = [math.log10(density[j]) for j in live]
    assert got["density_hist"] == histogram(torch.tensor(logs), tuple(got["density_edges"]))
    assert got["density_hist"][-1] >= 1  # the dense latent: log10 1 = 0 lands in the last bin


def test_histogram_and_cosine_by_hand() -> None:
    assert histogram(torch.tensor([-7.5, -6.0, -5.5, 0.0, 0.5]), (-7.0, -6.0, -5.0, 0.0)) == [1, 2, 2]
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert max_decoder_cosine(W).tolist() == pytest.approx([math.sqrt(0.5)] * 3)
    assert max_decoder_cosine(W, torch.tensor([1]), chunk=1).tolist() == pytest.approx([math.sqrt(0.5)])
