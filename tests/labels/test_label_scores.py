"""The offline label score on a real harvest: silent contexts are checked by a forward pass, the
score lands on the label, and only stale labels are recomputed."""

from __future__ import annotations

import io

import pytest
import torch
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from browser.catalog.models import Model, Score, Unit
from browser.corpora.models import Corpus
from browser.corpora.selectors import decode_tokens
from browser.labels.services import label_save
from tests.conftest import Cast
from tests.harvesting import harvest_run
from workers.compute import hooks
from workers.pipeline import label_scores as ls
from workers.pipeline.loader import loaded_model

pytestmark = pytest.mark.slow
SOURCE = "blocks.0.mlp.hook_post"


def test_label_auc_scores(cast: Cast, tiny: Model, corpus: Corpus, client: Client) -> None:
    harvest_run(tiny, corpus, [SOURCE])
    units = list(Unit.objects.filter(source__name=SOURCE, dead=False).order_by("density")[:2])
    labels = [label_save(unit=u, user=cast.owner, text=f"label of unit {u.index}") for u in units]
    call_command("score_labels", model="tiny", source=SOURCE, inline=True, stdout=io.StringIO())
    scores = {s.label_id: s for s in Score.objects.filter(name="label_auc")}
    source = units[0].source
    contexts = ls._sample(corpus.pk, 0)
    maxima = ls._max_activations(source, contexts, set(tiny.tokenizer.special_ids))
    for label in labels:
        silent = int((maxima[:, label.unit.index] <= 0).sum())
        if silent < ls.MIN_SILENT:
            assert label.pk not in scores
            continue
        score = scores[label.pk]
        assert 0.0 <= score.value <= 1.0 and score.unit_id == label.unit_id
        assert score.details["silent"] == silent and score.details["firing"] > 0
    assert scores, "at least one unit of the tiny model should be sparse enough to score"
    scored = next(label for label in labels if label.pk in scores)
    page = client.get(f"/u/tiny/{SOURCE}/{scored.unit.index}/").content.decode()
    assert f"label AUC {scores[scored.pk].value:.2f}" in page
    # The batched, padded maxima equal each context run alone, unpadded.
    torch_model, arch, _ = loaded_model(tiny.location, tiny.config["model_type"], "cpu")
    special = torch.tensor(tiny.tokenizer.special_ids)
    for row in (0, len(contexts) - 1):
        ids = torch.tensor([decode_tokens(bytes(contexts[row].tokens))])
        captured: dict[str, torch.Tensor] = {}
        with hooks.capture(torch_model, arch, [SOURCE], tiny.n_layers, captured.__setitem__):
            hooks.forward(torch_model, ids, torch.ones_like(ids))
        keep = ~torch.isin(ids[0], special)
        assert torch.allclose(captured[SOURCE][0][keep].amax(0), maxima[row], atol=1e-5)
    before = {s.pk: s.computed for s in Score.objects.filter(name="label_auc")}
    call_command("score_labels", model="tiny", source=SOURCE, inline=True, stdout=io.StringIO())
    assert {s.pk: s.computed for s in Score.objects.filter(name="label_auc")} == before  # nothing stale
    with pytest.raises(CommandError, match="no source"):
        call_command("score_labels", model="tiny", source="blocks.7.mlp.hook_post", inline=True)
