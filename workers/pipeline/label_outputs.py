"""Labels meet causality: for each label of a unit, whether the unit's output promotes words of the
label (``workers.compute.label_outputs``), stored as the label's ``label_output_match`` score.

A unit's output words are the tokens its ablation lowers most (its ``intervention_kl`` details) and
the tokens its direct-path logit effects push up most; run by the intervention-score job after it
scores a source, so labels are checked against the outputs just measured.
"""

from __future__ import annotations

from pathlib import Path

import torch
from django.conf import settings

from browser.catalog.models import Score, Source
from browser.catalog.services import label_score_set
from browser.labels.models import Label
from browser.runs.models import Run
from workers.compute.embed import SentenceEmbedder
from workers.compute.label_outputs import label_match, output_words, random_word_sets

NAME = "label_output_match"
VERSION = 1
WORDS = 10
"""Output tokens taken from each list (the ablation's and the logit effects')."""
DRAWS = 20
"""Random word sets that make the chance level (its 95th percentile is the threshold)."""


def _vocabulary(strings: list[str]) -> list[str]:
    return sorted({w for w in (s.strip().lower() for s in strings) if len(w) >= 2 and w.isalpha()})


def label_output_scores(*, run: Run, source: Source, kl_name: str, kl_version: int) -> int:
    """Score every current label of the source's units; returns how many were stored."""
    labels = list(Label.objects.filter(unit__source=source).select_related("unit").order_by("pk"))
    if not labels or run.model.tokenizer is None:
        return 0
    strings = list(run.model.tokenizer.tokens)
    vocabulary = _vocabulary(strings)
    lowered = dict(Score.objects.filter(unit__source=source, name=kl_name, version=kl_version,
                                        label__isnull=True).values_list("unit_id", "details"))
    plans = []
    for label in labels:
        ids = [int(t) for t, _ in (lowered.get(label.unit_id) or {}).get("lowered", [])[:WORDS]]
        ids += [int(t) for t, _ in (label.unit.logit_effects or {}).get("up", [])[:WORDS]]
        words = output_words(strings, ids)
        plans.append((label, words, random_word_sets(vocabulary, len(words), DRAWS, seed=label.unit_id)))
    texts = sorted({label.text for label, _, _ in plans} | {w for _, ws, nulls in plans for w in ws + sum(nulls, [])})
    vectors = dict(zip(texts, SentenceEmbedder(Path(settings.CACHE_DIR)).embed(texts), strict=True))
    stored = 0
    for label, words, nulls in plans:
        if not words:
            label_score_set(label=label, name=NAME, version=VERSION, value=None)
            continue
        match = label_match(vectors[label.text], words, torch.stack([vectors[w] for w in words]),
                            [torch.stack([vectors[w] for w in ws]) for ws in nulls])
        label_score_set(label=label, name=NAME, version=VERSION, value=match.value, run_id=run.pk,
                        details={"word": match.word, "threshold": round(match.threshold, 4),
                                 "promotes": match.promotes, "words": words})
        stored += 1
    return stored
