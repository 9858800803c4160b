"""features_per_neuron against toy-model ground truth, through a dictionary as cluttered as a real SAE.

A hidden-ReLU toy model gives each neuron a known effective number of features
(``true_features_per_neuron``). The dictionary here is the true one (its features are the inputs,
decoder rows the true directions W[f]) plus 2,000 distractor features: unit-norm random decoder
rows, each active on 5% of inputs at up to 0.02. That is what a real 2,048-latent SAE looks like
from one neuron: many weak features with a small decoder weight on every neuron. The old score
(``min_share=0``: the effective number over every feature) reads 100-390 on these neurons, as it
read 834.7 on a MiniLM neuron; the score with its 1% floor must rank the neurons as the truth
does (Spearman >= 0.9, pooled over configurations) and stay near the true counts. Measured:
Spearman 0.989, every neuron within 12% of the truth (most within 3%), the old score 160-421 for
true counts of 2.9-15.4; the jackknife interval over 5 token groups (median width 0.44) holds
the true count for 18 of 24 neurons.

Tuned (the choice of ``FPN_MIN_SHARE`` = 0.01 over 0.02 and 0.05) on n/m/p/seed = 10/5/0.003/0,
20/10/0.003/1, 16/4/0.001/2, 30/10/0.002/3 (pooled Spearman 0.986 at 0.01, 0.963 at 0.02, 0.36 at
0.05, 0.40 at 0); held out here: 24/8/0.002/5, 12/6/0.004/6 and 40/10/0.001/7, with input seeds
the tuning never used.
"""

from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr

from workers.compute import scores
from workers.compute.toy import ToyConfig, sample_features, train_toy, true_features_per_neuron

HELD_OUT = ((24, 8, 0.002, 5), (12, 6, 0.004, 6), (40, 10, 0.001, 7))
TOKENS, DISTRACTORS, GROUPS, CHUNK = 60_000, 2000, 5, 10_000


def group_totals(n: int, m: int, p: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(truth [m], per-group |contribution| totals [GROUPS, m, n + DISTRACTORS]) for one setting."""
    toy = train_toy(ToyConfig(kind="hidden_relu", n_features=n, n_hidden=m, feature_probability=p,
                              importance_decay=0.9, n_instances=2, steps=3000, seed=seed))
    W = toy.W[toy.best()]  # [n, m]
    gen = torch.Generator().manual_seed(seed + 1000)
    W_d = torch.nn.functional.normalize(torch.randn(DISTRACTORS, m, generator=gen), dim=1)
    dictionary = torch.cat([W, W_d]).abs()  # [F, m] |decoder|
    totals = torch.zeros(GROUPS, m, n + DISTRACTORS, dtype=torch.float64)
    x_all = sample_features([p], TOKENS, n, seed=seed + 2000)[0]
    for start in range(0, TOKENS, CHUNK):
        x = x_all[start:start + CHUNK]
        a_d = (torch.rand(len(x), DISTRACTORS, generator=gen) < 0.05) * torch.rand(len(x), DISTRACTORS, generator=gen)
        acts = torch.cat([x, 0.02 * a_d], dim=1)  # [T, F] the dictionary's activations
        fires = torch.relu(x @ W) > 0  # [T, m] the tokens each neuron fires on
        group = torch.arange(start, start + len(x)) % GROUPS
        for g in range(GROUPS):
            rows = group == g
            # sum over firing tokens of |a_f W_dec[f, k]|, written out per neuron
            totals[g] += (fires[rows].T.double() @ acts[rows].double()) * dictionary.T.double()
    return true_features_per_neuron(W), totals


@pytest.mark.slow
def test_features_per_neuron_ranks_held_out_toys_like_the_truth() -> None:
    truth, new, old, inside, width = [], [], [], 0, []
    for n, m, p, seed in HELD_OUT:
        t, groups = group_totals(n, m, p, seed)
        value, low, high = scores.features_per_neuron_interval(groups)
        truth += t.tolist()
        new += value.tolist()
        old += scores.features_per_neuron_from_totals(groups.sum(dim=0), min_share=0.0).tolist()
        inside += int(((low <= t) & (t <= high)).sum())
        width += (high - low).tolist()
    truth_t, new_t = torch.tensor(truth, dtype=torch.float64), torch.tensor(new, dtype=torch.float64)
    rho = spearmanr(truth, new).correlation
    assert rho >= 0.9, (rho, truth, new)
    assert torch.allclose(new_t, truth_t, rtol=0.2), (truth, new)  # a count, not only an order
    assert max(new) <= 1 / scores.FPN_MIN_SHARE
    assert min(old) > 10 * max(truth)  # the old score counts the clutter, not the features
    # The jackknife interval is sampling error only (not the dictionary's bias): measured 18 of 24.
    assert inside >= len(truth) // 2, (inside, width)
    print(f"rho {rho:.3f}, interval holds the truth for {inside}/{len(truth)}, median width {sorted(width)[len(width) // 2]:.2f}")
