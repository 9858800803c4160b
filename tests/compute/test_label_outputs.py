"""The label-output match on hand-made unit vectors and words."""

from __future__ import annotations

import torch

from workers.compute.label_outputs import label_match, output_words, random_word_sets


def test_output_words_keep_distinct_alphabetic_words() -> None:
    strings = [" King", "king", "##s", " 42", " q", " crown", "[SEP]"]
    assert output_words(strings, [0, 1, 2, 3, 4, 5, 6, 99]) == ["king", "crown"]


def test_label_match_against_chance() -> None:
    e = torch.eye(4)
    label = torch.nn.functional.normalize(torch.tensor([1.0, 0.2, 0.0, 0.0]), dim=0)
    nulls = [e[[1, 2]], e[[2, 3]], e[[3, 1]]]  # chance: best cosine 0.196 (the e1 component)
    match = label_match(label, ["tide", "king"], e[[2, 0]], nulls)
    assert (match.word, round(match.value, 3), round(match.threshold, 3)) == ("king", 0.981, 0.196)
    assert match.promotes
    assert not label_match(label, ["tide"], e[[2]], nulls).promotes


def test_random_word_sets_are_seeded() -> None:
    vocab = [f"w{i}" for i in range(50)]
    assert random_word_sets(vocab, 5, 3, seed=1) == random_word_sets(vocab, 5, 3, seed=1)
    assert all(len(set(s)) == 5 for s in random_word_sets(vocab, 5, 3))
