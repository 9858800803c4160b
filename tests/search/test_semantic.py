"""Semantic search: paraphrased queries find the planted units, every list filter still applies, an
edited label is found under its new meaning (through a real worker, woken by the label write)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from django.urls import reverse

from browser.catalog.selectors import parse_unit_filters
from browser.labels.models import Label
from browser.labels.services import label_save
from browser.search.index import reset_live_index
from browser.search.models import PendingEmbedding, UnitEmbedding
from browser.search.selectors import unit_list_page
from tests.search.planted import PLANTED, plant, words
from workers.pipeline.search import embed_pending


def search(q: str, size: int = 5, **params: str) -> list[Any]:
    reset_live_index()
    return unit_list_page(parse_unit_filters({"q": q, "mode": "semantic", **params}), size=size).units


@pytest.fixture
def planted(cast: Any) -> Any:
    data = plant(cast.owner)
    assert PendingEmbedding.objects.count() == len(PLANTED) * 2 + 20  # queued by the label writes
    embed_pending()
    assert PendingEmbedding.objects.count() == 0
    return data


def test_queries_share_no_word_with_their_label() -> None:
    for label, query in PLANTED:
        assert not words(label) & words(query), (label, query)


def test_paraphrases_find_the_planted_unit_in_the_top_5(planted: Any) -> None:
    found = 0
    for (_, query), target in zip(PLANTED, planted.targets, strict=True):
        hits = [u.pk for u in search(query, source="planted/L0")]
        found += target.pk in hits
    print(f"paraphrases found in the top 5: {found} of {len(PLANTED)}")
    assert found >= 9, found


def test_stored_vectors_are_minilm_of_the_label(planted: Any) -> None:
    """The vector of a unit is the embedding of its text, checked against torch MiniLM directly."""
    from pathlib import Path

    from django.conf import settings

    from workers.compute.embed import SentenceEmbedder

    unit = planted.targets[3]
    stored = np.frombuffer(bytes(UnitEmbedding.objects.get(unit=unit).vector), dtype="<f4")
    expected = SentenceEmbedder(Path(settings.CACHE_DIR)).embed([PLANTED[3][0]])[0].numpy()
    assert np.allclose(stored, expected, atol=1e-5)


def test_filters_apply_to_semantic_hits(planted: Any) -> None:
    query = PLANTED[6][1]
    everywhere = [u.pk for u in search(query, size=2)]
    assert set(everywhere) == {planted.targets[6].pk, planted.twins[6].pk}
    assert [u.pk for u in search(query, size=3, source="planted/L1")][0] == planted.twins[6].pk
    assert all(u.source_id == planted.second.pk for u in search(query, size=10, source="planted/L1"))
    assert all(u.layer == 0 for u in search(query, size=10, layer="0"))
    unlabelled = search(query, size=10, labeled="0")
    assert unlabelled == [] or all(u.label_count == 0 for u in unlabelled)
    assert not search(query, size=10, density_min="0.5")  # no unit has a density


def test_full_text_hits_are_merged(planted: Any) -> None:
    hits = [u.pk for u in search("tools", size=5)]
    assert planted.distractors[DISTRACTOR_TOOLS].pk == hits[0]


DISTRACTOR_TOOLS = 18


def test_list_page_and_api_serve_semantic_results(planted: Any, client: Any) -> None:
    reset_live_index()
    page = client.get(reverse("units"), {"q": PLANTED[8][1], "mode": "semantic", "source": "planted/L0"})
    assert page.status_code == 200
    assert PLANTED[8][0] in page.content.decode()
    api = client.get(reverse("api-units"), {"q": PLANTED[9][1], "mode": "semantic", "kind": "neurons"})
    assert api.status_code == 200
    assert PLANTED[9][0] in api.json()["results"][0]["labels"] + api.json()["results"][1]["labels"]


@pytest.mark.django_db(transaction=True)
def test_an_edited_label_is_found_under_its_new_meaning_within_seconds(cast: Any, worker: Any) -> None:
    data = plant(cast.owner)
    unit = data.distractors[2]  # "the letter e"
    deadline = time.monotonic() + 120  # the first task loads MiniLM
    while PendingEmbedding.objects.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not PendingEmbedding.objects.exists()
    query = "boats crossing the sea"
    assert unit.pk not in [u.pk for u in search(query, size=3, source="planted/L0")]
    label = Label.objects.get(unit=unit)
    start = time.monotonic()
    label_save(unit=unit, user=cast.owner, text="ocean waves and sailing ships", revision=label.revision)
    while unit.pk not in [u.pk for u in search(query, size=3, source="planted/L0")]:
        assert time.monotonic() - start < 20, "the edited label was not searchable within 20 s"
        time.sleep(0.3)
