"""A planted catalog for search tests: labelled units in two sources, and paraphrased queries that
share no word with the label they should find."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from browser.catalog.models import Model, Source, Unit
from browser.labels.services import label_save

PLANTED = [  # (label, paraphrased query)
    ("French words and phrases", "text in the language spoken in Paris"),
    ("numbers and digits in dates", "calendar years like 1999"),
    ("names of cities and countries", "geographic places, e.g. Berlin or Japan"),
    ("words about death and dying", "funerals, graves, mortality"),
    ("closing brackets in source code", "end of a parenthesis when programming"),
    ("expressions of love and romance", "affection between sweethearts"),
    ("kings, queens and royalty", "a monarch on the throne"),
    ("weather: rain, storms and wind", "thunder with a downpour"),
    ("cooking and food", "recipes for dinner in the kitchen"),
    ("money, payments and prices", "cash spent buying goods"),
]
DISTRACTORS = [
    "plural nouns", "past tense verbs", "the letter e", "sports and games", "animals on a farm", "colours",
    "musical instruments", "medicine and illness", "clothing", "schools and teachers", "computers", "religion",
    "war and battles", "anger", "trees and plants", "days of the week", "family members", "body parts",
    "tools", "the first token of a sentence",
]


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


@dataclass
class Planted:
    first: Source
    second: Source
    targets: list[Unit]  # the unit of PLANTED[i], in the first source
    twins: list[Unit]  # the same labels on units of the second source
    distractors: list[Unit]


def plant(user: Any) -> Planted:
    model = Model.objects.create(name="planted", kind=Model.Kind.TOY, architecture="toy", location="toy",
                                 n_layers=2, d_model=8, d_mlp=64)
    n = len(PLANTED) + len(DISTRACTORS)
    first = Source.objects.create(model=model, name="L0", hook_point="blocks.0.mlp.hook_post", layer=0,
                                  kind=Source.Kind.NEURONS, n_units=n + 5)
    second = Source.objects.create(model=model, name="L1", hook_point="blocks.1.mlp.hook_post", layer=1,
                                   kind=Source.Kind.NEURONS, n_units=len(PLANTED))
    units = [Unit.objects.create(source=first, index=i, layer=0, kind="neurons") for i in range(n + 5)]
    twins = [Unit.objects.create(source=second, index=i, layer=1, kind="neurons") for i in range(len(PLANTED))]
    for unit, text in zip(units, [label for label, _ in PLANTED] + DISTRACTORS, strict=False):
        label_save(unit=unit, user=user, text=text)
    for unit, (text, _) in zip(twins, PLANTED, strict=True):
        label_save(unit=unit, user=user, text=text)
    return Planted(first, second, units[: len(PLANTED)], twins, units[len(PLANTED): n])
