"""The polysemanticity diagnosis names the planted cause of every polysemantic unit."""

from __future__ import annotations

import pytest
import torch

from workers.compute import diagnosis, synthetic, toy
from workers.compute.sae.train import TrainConfig, train

CASES = {
    "superposition": lambda: synthetic.superposition(n=48, m=16, l0=2.0, seed=0),
    "rotation": lambda: synthetic.rotated(n=12, m=16, p=0.15, seed=0),
    "circle": lambda: synthetic.nonlinear(shape="circle", values=7, m=16, p=0.8, seed=0),
    "bands": lambda: synthetic.nonlinear(shape="bands", values=6, m=16, p=0.8, seed=0),
    "compositional": lambda: synthetic.compositional(n_a=4, n_b=4, m=16, seed=0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_true_dictionary_names_the_planted_cause_of_every_unit(case: str) -> None:
    truth = CASES[case]()
    features, _ = truth.sample(20_000, seed=1)
    found = diagnosis.diagnose(features, truth.directions)
    assert len(found) == truth.d
    assert {d.cause for d in found} == {truth.info["cause"]}
    assert all(len(d.features) >= 2 for d in found)  # every unit is polysemantic here


def test_evidence_is_what_the_rules_read() -> None:
    truth = CASES["circle"]()
    features, _ = truth.sample(20_000, seed=1)
    d = diagnosis.diagnose(features, truth.directions)[0]
    assert d.evidence["exclusive_pairs"] == d.evidence["pairs_tested"] > 0 and d.evidence["independent_pairs"] == 0
    assert d.evidence["effective_rank"] <= 2.0 + 1e-6 and d.evidence["live_features"] == 7
    one = diagnosis.diagnose(torch.eye(3).repeat(10, 1), torch.eye(3))
    assert [x.cause for x in one] == ["monosemantic"] * 3


def _arc_dictionary(latents: int = 3, n: int = 20_000) -> tuple[torch.Tensor, torch.Tensor]:
    """What a learned SAE makes of magnitude bands: a few latents tiling a quarter arc in a random plane
    of 16 dims, each input (one point of the arc) read by the two nearest latents, interpolating
    (hat weights), so neighbours co-fire and the ends never do. (latents [n, latents], W_dec [latents, 16])."""
    g = torch.Generator().manual_seed(0)
    plane = torch.linalg.qr(torch.randn(16, 2, generator=g))[0].T
    centres = (torch.arange(latents) + 0.5) / latents * torch.pi / 2
    W_dec = torch.stack([centres.cos(), centres.sin()], dim=1) @ plane
    angle = torch.rand(n, generator=g) * torch.pi / 2
    width = float(centres[1] - centres[0])
    acts = (1 - (angle[:, None] - centres[None, :]).abs() / width).clamp_min(0)
    return acts, W_dec


def test_a_curve_tiled_by_few_latents_is_nonlinear_even_where_a_unit_carries_two() -> None:
    acts, W_dec = _arc_dictionary()
    found = diagnosis.diagnose(acts, W_dec)
    poly = [d for d in found if d.cause != "monosemantic"]
    assert poly and any(d.evidence["features"] == 2 for d in poly)  # units the plane has to complete
    assert {d.cause for d in poly} == {"nonlinear"}
    assert all(sorted(d.features) == [0, 1, 2] and d.evidence["plane_exclusive_pairs"] == 1 for d in poly)


def test_independent_latents_in_a_plane_are_not_a_curve() -> None:
    """The same three directions firing independently: no exclusive pair, so not non-linear."""
    _, W_dec = _arc_dictionary()
    acts = (torch.rand(20_000, 3, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    found = diagnosis.diagnose(acts, W_dec)
    assert "nonlinear" not in {d.cause for d in found} and {d.cause for d in found} <= {"rotation", "monosemantic"}


@pytest.mark.parametrize(("case", "at_least"), [("superposition", 16), ("rotation", 16), ("circle", 16), ("bands", 13),
                                                 ("compositional", 16)])
def test_learned_dictionary_names_the_planted_cause(case: str, at_least: int) -> None:
    """A BatchTopK SAE (k = the true L0, 64 latents) trained on each case. Bands: 3 of the 16 units take
    over 90% of their energy from one of the 3 latents the SAE keeps on the arc, so by it they are
    monosemantic."""
    truth = CASES[case]()
    config = TrainConfig(architecture="batchtopk", d_sae=64, k=max(1, round(truth.true_l0())), steps=500,
                         batch_tokens=512, lr=3e-3, buffer_tokens=16_384, dead_after_tokens=25_600)
    with toy.single_thread():
        sae = train(truth.chunks(4096, seed=3), truth.d, config).sae
    _, x = truth.sample(20_000, seed=1)
    with torch.no_grad():
        found = diagnosis.diagnose(sae.encode(x), sae.W_dec.detach())
    causes = [d.cause for d in found]
    assert causes.count(truth.info["cause"]) >= at_least
    assert set(causes) <= {truth.info["cause"], "monosemantic"}


def test_confusion_counts() -> None:
    table = diagnosis.confusion(["a", "a", "b"], ["a", "b", "b"])
    assert table == {"a": {"a": 1, "b": 1}, "b": {"b": 1}}
