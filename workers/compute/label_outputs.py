"""Labels meet causality: does a label name what a unit's output promotes, or only what it reads?

The unit's output words (tokens its ablation lowers most, and its direct-path logit effects) and the
label are embedded with MiniLM; the match is the best cosine between the label and one of those
words. Chance is the same best cosine over random vocabulary words, as many as the unit's output
words, in ``draws`` seeded draws: the label *promotes* when its match beats the 95th percentile.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

PERCENTILE = 0.95


def output_words(strings: Sequence[str], token_ids: Sequence[int]) -> list[str]:
    """The distinct alphabetic words (2+ letters, lower case) among these tokens, in order."""
    out: list[str] = []
    for t in token_ids:
        word = strings[t].strip().lower() if 0 <= t < len(strings) else ""
        if len(word) >= 2 and word.isalpha() and word not in out:
            out.append(word)
    return out


def random_word_sets(vocabulary: Sequence[str], size: int, draws: int, seed: int = 0) -> list[list[str]]:
    """``draws`` sets of ``size`` distinct words of the vocabulary (seeded)."""
    rng = random.Random(seed)
    return [rng.sample(list(vocabulary), min(size, len(vocabulary))) for _ in range(draws)]


@dataclass(frozen=True)
class Match:
    value: float
    """Best cosine between the label and one output word."""
    word: str
    threshold: float
    """The 95th percentile of the same best cosine over random word sets."""

    @property
    def promotes(self) -> bool:
        return self.value > self.threshold


def label_match(label_vec: torch.Tensor, words: list[str], word_vecs: torch.Tensor,
                null_vecs: list[torch.Tensor]) -> Match:
    """label_vec [d], word_vecs [W, d], null_vecs: per draw [W', d]; all unit length."""
    cos = word_vecs @ label_vec
    best = int(cos.argmax())
    null = sorted(float((v @ label_vec).max()) for v in null_vecs)
    threshold = null[min(len(null) - 1, int(PERCENTILE * len(null)))]
    return Match(float(cos[best]), words[best], threshold)
