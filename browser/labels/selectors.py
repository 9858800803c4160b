"""Reads of labels: a unit's labels and history, the consensus across authors, the labeling
queue, and filtered label lists for the API and the exports."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection
from datetime import datetime
from itertools import combinations
from typing import Any

from django.db.models import Exists, OuterRef, Prefetch, QuerySet

from browser.accounts import access
from browser.catalog.models import Score, Unit
from browser.labels.fragments import label_panel_parts
from browser.labels.models import Label, LabelRevision

WORD = re.compile(r"\w+")


def unit_labels(unit: Unit) -> QuerySet[Label]:
    """The unit's current labels, humans first, each with its own scores as ``label_scores``."""
    scores = Prefetch("score_set", queryset=Score.objects.filter(name="label_auc"), to_attr="label_scores")
    return (Label.objects.filter(unit=unit).select_related("author").prefetch_related(scores)
            .order_by("machine", "-updated"))


def labels_newest_first() -> Prefetch:
    """Prefetch of each unit's labels, newest first (the unit lists show them)."""
    return Prefetch("labels", queryset=Label.objects.order_by("-updated"))


def has_label_containing(text: str) -> Exists:
    """A filter on units: some label of the unit contains ``text`` (case-insensitive)."""
    return Exists(Label.objects.filter(unit=OuterRef("pk"), text__icontains=text))


def label_panel(unit: Unit, *, user: Any, queue: str = "", labels: list[Label] | None = None) -> dict[str, Any]:
    """What the unit page's label panel shows: current labels, consensus, history, the form.
    ``labels``: the unit's labels when the caller has read them already (``unit_labels``);
    ``queue``: the labeling queue's filters when the page was opened from the queue."""
    labels = list(unit_labels(unit)) if labels is None else labels
    mine = next((label for label in labels if label.author_id == user.pk), None)
    panel = {
        "labels": labels,
        "mine": mine,
        "consensus": label_consensus(labels) if len(labels) > 1 else None,
        "history": list(unit_label_history(unit, limit=20)),
        "can_label": access.can_label(user),
        "queue": queue,
    }
    panel["parts"] = label_panel_parts(panel)  # what every visitor sees alike, rendered once per content
    return panel


def unit_label_history(unit: Unit, *, limit: int = 50) -> QuerySet[LabelRevision]:
    return LabelRevision.objects.filter(unit=unit).select_related("author", "editor").order_by("-at", "-id")[:limit]


def _words(text: str) -> set[str]:
    return {w.lower() for w in WORD.findall(text)}


def label_consensus(labels: list[Label]) -> dict[str, Any]:
    """Agreement across authors: mean pairwise word overlap (Jaccard) of their texts, and the
    words and tags most authors used."""
    words = [_words(label.text) for label in labels]
    pairs = [len(a & b) / len(a | b) for a, b in combinations(words, 2) if a | b]
    word_counts = Counter(w for ws in words for w in ws)
    tag_counts = Counter(t for label in labels for t in label.tags)
    return {
        "authors": len(labels),
        "agreement": round(sum(pairs) / len(pairs), 3) if pairs else None,
        # Ties by word, so every process shows the same list (set order follows the hash seed).
        "shared_words": [w for w, n in sorted(word_counts.items(), key=lambda kv: (-kv[1], kv[0]))[:8]
                         if n > 1 and n * 2 >= len(labels)],
        "tags": [t for t, _ in tag_counts.most_common(8)],
    }


def label_list(*, model: str | None = None, source: str | None = None, author: str | None = None,
               updated_since: datetime | None = None, unit: Unit | None = None,
               machine: bool | None = None, units: Collection[int] | None = None) -> QuerySet[Label]:
    labels = Label.objects.select_related("unit", "unit__source", "unit__source__model", "author")
    if model:
        labels = labels.filter(unit__source__model__name=model)
    if source:
        labels = labels.filter(unit__source__name=source)
    if author:
        labels = labels.filter(author__username=author)
    if updated_since is not None:
        labels = labels.filter(updated__gte=updated_since)
    if unit is not None:
        labels = labels.filter(unit=unit)
    if machine is not None:
        labels = labels.filter(machine=machine)
    if units is not None:  # unit ids, e.g. the nodes of an attribution graph
        # Never an empty IN: the COPY export compiles this query to SQL, which Django refuses for one.
        labels = labels.filter(unit_id__in=list(units) or [-1])
    return labels.order_by("id")


def queue_next(*, model: str | None = None, source: str | None = None, layer: int | None = None,
               kind: str | None = None, after: Unit | None = None) -> Unit | None:
    """The next live unit with no label in this filter, in (source, index) order after ``after``."""
    units = Unit.objects.filter(label_count=0, dead=False, density__isnull=False).select_related("source",
                                                                                                "source__model")
    if model:
        units = units.filter(source__model__name=model)
    if source:
        units = units.filter(source__name=source)
    if layer is not None:
        units = units.filter(layer=layer)
    if kind:
        units = units.filter(kind=kind)
    if after is not None:
        later = units.filter(source_id=after.source_id, index__gt=after.index) | units.filter(
            source_id__gt=after.source_id)
        found = later.order_by("source_id", "index").first()
        if found is not None:
            return found
    return units.order_by("source_id", "index").first()
