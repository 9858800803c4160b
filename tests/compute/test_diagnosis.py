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


@pytest.mark.parametrize("case", ["superposition", "rotation"])
def test_learned_dictionary_names_superposition_and_rotation(case: str) -> None:
    truth = CASES[case]()
    config = TrainConfig(architecture="batchtopk", d_sae=64, k=2, steps=500, batch_tokens=512, lr=3e-3,
                         buffer_tokens=16_384, dead_after_tokens=25_600)
    with toy.single_thread():
        sae = train(truth.chunks(4096, seed=3), truth.d, config).sae
    _, x = truth.sample(20_000, seed=1)
    with torch.no_grad():
        found = diagnosis.diagnose(sae.encode(x), sae.W_dec.detach())
    assert [d.cause for d in found].count(truth.info["cause"]) == truth.d


def test_confusion_counts() -> None:
    table = diagnosis.confusion(["a", "a", "b"], ["a", "b", "b"])
    assert table == {"a": {"a": 1, "b": 1}, "b": {"b": 1}}
