from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from workers.compute.embed import SentenceEmbedder, label_auc, ranking_auc


def test_ranking_auc_equals_counting_pairs() -> None:
    gen = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(13, generator=gen).round(decimals=1), torch.randn(9, generator=gen).round(decimals=1)
    pairs = list(itertools.product(pos.tolist(), neg.tolist()))
    expected = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)
    assert ranking_auc(pos, neg) == pytest.approx(expected)
    assert ranking_auc(torch.tensor([2.0]), torch.tensor([1.0])) == 1.0
    with pytest.raises(ValueError):
        ranking_auc(torch.tensor([]), neg)


@pytest.mark.slow
def test_minilm_embeddings_rank_a_fitting_label_first(tmp_path: Path) -> None:
    embedder = SentenceEmbedder(tmp_path)
    vectors = embedder.embed(["a cat sat on the mat", "the kitten slept on the rug", "stock prices fell sharply"])
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    firing = ["the king rode to battle", "the queen and her court", "long live the king"]
    silent = ["add two cups of flour", "the train leaves at noon", "rain is expected tomorrow"]
    assert label_auc(embedder, "royalty: kings and queens", firing, silent) == 1.0
    assert label_auc(embedder, "cooking and weather", firing, silent) < 0.5


@pytest.mark.slow
def test_embeddings_keep_the_input_order_whatever_the_batching(tmp_path: Path) -> None:
    """Texts are embedded sorted by length; each vector still lands at its text's position and
    equals the text embedded alone."""
    embedder = SentenceEmbedder(tmp_path)
    texts = ["a much longer sentence about the king and his horses in the rain", "short", "a medium one",
             "x", "another fairly long sentence, about bread and flour and ovens"]
    together = embedder.embed(texts, batch_size=2)
    for i, text in enumerate(texts):
        assert torch.allclose(together[i], embedder.embed([text])[0], atol=1e-5), text
