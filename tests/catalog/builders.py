"""Browser test data made by the real code paths: a corpus import, a harvest of a tiny seeded BERT,
labels through the labels service. Scores and relations are computed here from the harvested
examples (top-token concentration, shared top contexts), as a scores job would."""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management import call_command

from browser.accounts.services import user_set_role
from browser.catalog.models import Model, Score, Source, Unit, UnitRelation
from browser.corpora.models import Corpus
from browser.corpora.selectors import decode_tokens
from browser.examples.models import Example
from browser.labels.services import label_save
from browser.runs.models import Run
from fixtures.tiny import build_tiny_bert
from tests.texts import TEXTS
from workers.cli import run_here
from workers.compute.config import HarvestConfig
from workers.pipeline.harvest import harvest_create, neuron_sources
from workers.pipeline.models import model_get_or_register, model_register
from workers.tasks import harvest_work

HOOKS = ["blocks.0.mlp.hook_post", "blocks.1.mlp.hook_post"]
PASSWORD = "a-long-test-password"


@dataclass
class BrowserData:
    model: Model
    neurons: Source
    other: Source
    run: Run
    annotator: Any
    labeled: Unit


def harvest_tiny(tmp: Path) -> tuple[Model, Run]:
    model_get_or_register("minilm-l6")
    folder = tmp / "texts"
    folder.mkdir(exist_ok=True)
    for i, text in enumerate(TEXTS):
        (folder / f"{i}.txt").write_text(" ".join([text] * 3))
    call_command("import_corpus", str(folder), name="lines", context_length=16, inline=True)
    model = model_register(location=str(build_tiny_bert(tmp / "tiny")), name="tiny")
    config = HarvestConfig(sources=neuron_sources(HOOKS), k=4, samples_per_interval=3, n_intervals=4,
                           hist_stride=3, batch_size=8)
    run, _ = harvest_create(model=model, corpus=Corpus.objects.get(name="lines"), config=config)
    assert run.job is not None
    run_here(harvest_work, run.job, io.StringIO())
    run.refresh_from_db()
    assert run.status == Run.Status.DONE, run.error
    return model, run


def _top_contexts(unit: Unit) -> list[tuple[int, int]]:
    return list(Example.objects.filter(unit=unit, kind=0).order_by("rank").values_list("context_id", "max_pos"))


def score_and_relate(neurons: Source, other: Source) -> None:
    """top_token_concentration per unit, and each neuron's 3 units of the other source sharing most
    top contexts (context_overlap)."""
    tokens = {c.pk: decode_tokens(bytes(c.tokens)) for c in Corpus.objects.get(name="lines").contexts.all()}
    tops = {u: _top_contexts(u) for u in Unit.objects.filter(source__in=[neurons, other])}
    for unit, top in tops.items():
        if top:
            counts = Counter(tokens[c][p] for c, p in top)
            Score.objects.create(unit=unit, name="top_token_concentration", value=max(counts.values()) / len(top))
    others = [(u, {c for c, _ in t}) for u, t in tops.items() if u.source_id == other.pk]
    for unit, top in tops.items():
        if unit.source_id != neurons.pk or not top:
            continue
        mine = {c for c, _ in top}
        ranked = sorted(others, key=lambda o: (-len(mine & o[1]), o[0].index))[:3]
        UnitRelation.objects.bulk_create([
            UnitRelation(unit=unit, kind=UnitRelation.Kind.CONTEXT_OVERLAP, rank=r, other=o,
                         value=len(mine & ctx) / len(mine)) for r, (o, ctx) in enumerate(ranked)])


def build(tmp: Path) -> BrowserData:
    model, run = harvest_tiny(tmp)
    neurons, other = (Source.objects.get(model=model, name=h) for h in HOOKS)
    score_and_relate(neurons, other)
    annotator = get_user_model().objects.create_user("ada", password=PASSWORD)
    user_set_role(user=annotator, role="annotator")
    labeled = Unit.objects.filter(source=neurons, dead=False).order_by("index")[1]
    label_save(unit=labeled, user=annotator, text="question marks and quoted speech")
    labeled.refresh_from_db()
    return BrowserData(model, neurons, other, run, annotator, labeled)
