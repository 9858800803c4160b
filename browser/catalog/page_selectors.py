"""Whole-page reads (home, unit, compare), each shared by an HTML page and its JSON twin (the toy
model page's: browser/catalog/toy_selectors.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from django.db import connection
from django.utils.safestring import SafeString

from browser.catalog.charts import activation_histogram_svg, bars_svg
from browser.catalog.models import Model, Source, Unit, UnitRelation
from browser.catalog.selectors import model_list, source_list
from browser.catalog.uids import unit_uid
from browser.catalog.unit_selectors import (
    RelationGroup,
    ScoreView,
    unit_neighbours,
    unit_relations,
    unit_scores,
)
from browser.corpora.selectors import corpus_list
from browser.examples.selectors import (
    ExampleView,
    interval_range,
    unit_examples,
    unit_histogram,
    unit_stats,
    vocab_for,
)
from browser.labels.selectors import unit_labels
from browser.runs.selectors import job_list_with_progress, run_list

if TYPE_CHECKING:  # types only: the other apps' tables are read through their selectors above
    from browser.corpora.models import Corpus
    from browser.examples.models import UnitStats
    from browser.labels.models import Label
    from browser.runs.models import Job, Run

DENSITY_BINS = (-7.0, 0.0, 14)  # log10(density) from 1e-7 to 1 in half decades
SCORE_BINS = 16
COMPARE_KINDS = (UnitRelation.Kind.ALIGNMENT, UnitRelation.Kind.CORRELATION, UnitRelation.Kind.CONTEXT_OVERLAP)
COMPARE_FEATURES = 3
COMPARE_EXAMPLES = 6


# ---- home --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Distribution:
    name: str
    counts: list[int]
    edges: list[float]
    label: str

    @property
    def svg(self) -> SafeString:
        return bars_svg(self.counts, self.edges, self.label)


@dataclass
class SourceView:
    source: Source
    unit_count: int
    dead: int = 0
    distributions: list[Distribution] = field(default_factory=list)


@dataclass
class Overview:
    models: list[Model]
    corpora: list[Corpus]
    sources: list[SourceView]
    runs: list[Run]
    jobs: list[Job]


def _density_histograms() -> dict[int, tuple[list[int], int]]:
    lo, hi, n = DENSITY_BINS
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT source_id, CASE WHEN density > 0 THEN width_bucket(log(density::numeric), %s, %s, %s) END b,"
            " count(*) FROM catalog_unit WHERE density IS NOT NULL GROUP BY 1, 2", [lo, hi, n])
        rows = cursor.fetchall()
    out: dict[int, tuple[list[int], int]] = {}
    for source_id, bucket, count in rows:
        counts, dead = out.setdefault(source_id, ([0] * n, 0))
        if bucket is None:
            out[source_id] = (counts, dead + count)
        else:
            counts[min(max(int(bucket), 1), n) - 1] += count
    return out


def _score_histograms() -> dict[int, list[tuple[str, list[int], list[float]]]]:
    """Per source, per score name (latest version): counts over that score's range on that source."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            WITH latest AS (SELECT name, max(version) v FROM catalog_score WHERE label_id IS NULL GROUP BY name),
                 rows AS (SELECT u.source_id, s.name, s.value FROM catalog_score s
                            JOIN latest l ON l.name = s.name AND l.v = s.version
                            JOIN catalog_unit u ON u.id = s.unit_id WHERE s.label_id IS NULL),
                 bounds AS (SELECT source_id, name, min(value) lo, max(value) hi FROM rows GROUP BY 1, 2)
            SELECT r.source_id, r.name, b.lo, b.hi,
                   CASE WHEN b.hi > b.lo THEN least(width_bucket(r.value, b.lo, b.hi, %s), %s) ELSE 1 END, count(*)
              FROM rows r JOIN bounds b USING (source_id, name) GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2
            """, [SCORE_BINS, SCORE_BINS])
        rows = cursor.fetchall()
    hist: dict[tuple[int, str], tuple[list[int], list[float]]] = {}
    for source_id, name, lo, hi, bucket, count in rows:
        n = SCORE_BINS if hi > lo else 1
        counts, _ = hist.setdefault((source_id, name), ([0] * n, [lo + (hi - lo) * i / n for i in range(n + 1)]))
        counts[int(bucket) - 1] += count
    out: dict[int, list[tuple[str, list[int], list[float]]]] = {}
    for (source_id, name), (counts, edges) in hist.items():
        out.setdefault(source_id, []).append((name, counts, edges))
    return out


def overview() -> Overview:
    density, scores = _density_histograms(), _score_histograms()
    lo, hi, n = DENSITY_BINS
    edges = [10 ** (lo + (hi - lo) * i / n) for i in range(n + 1)]
    sources = []
    for s in source_list():
        view = SourceView(s, s.unit_count)  # type: ignore[attr-defined]
        if s.pk in density:
            counts, view.dead = density[s.pk]
            label = f"density of the units of {s.model.name}/{s.name} (log scale; {view.dead} never fire)"
            view.distributions.append(Distribution("density", counts, edges, label))
        for name, counts, score_edges in scores.get(s.pk, []):
            label = f"{name} over the units of {s.model.name}/{s.name}"
            view.distributions.append(Distribution(name, counts, score_edges, label))
        sources.append(view)
    return Overview(list(model_list()), list(corpus_list()), sources, list(run_list()), job_list_with_progress())


# ---- one unit ----------------------------------------------------------------------------------
@dataclass
class UnitDetail:
    """A unit's page. What its stats run computed (statistics, histogram, examples) is read on first
    use: the HTML page serves those parts from the fragment cache (browser/catalog/fragments.py)
    and reads them only on a miss; the JSON twin reads them every time."""

    unit: Unit
    id: str
    effects: dict[str, list[tuple[str, float]]]
    scores: list[ScoreView]
    relations: list[RelationGroup]
    labels: list[Label]
    prev: int | None
    next: int | None

    @cached_property
    def stats(self) -> UnitStats | None:
        return unit_stats(self.unit)

    @cached_property
    def examples(self) -> list[ExampleView]:
        return unit_examples(self.unit)

    @property
    def top(self) -> list[ExampleView]:
        return [e for e in self.examples if e.kind == "top"]

    @property
    def intervals(self) -> list[tuple[tuple[float, float], list[ExampleView]]]:
        by_bucket: dict[int, list[ExampleView]] = {}
        for e in self.examples:
            if e.kind == "interval":
                by_bucket.setdefault(e.bucket, []).append(e)
        return [(interval_range(b), members) for b, members in by_bucket.items()]

    @property
    def random(self) -> list[ExampleView]:
        return [e for e in self.examples if e.kind == "random"]

    @property
    def hist(self) -> SafeString | None:
        return activation_histogram_svg(unit_histogram(self.stats)) if self.stats else None


def _effects(unit: Unit) -> dict[str, list[tuple[str, float]]]:
    vocab = vocab_for(unit.source.model)
    return {side: [(vocab.token(t), v) for t, v in unit.logit_effects.get(side, [])] for side in ("up", "down")}


def unit_detail(unit: Unit) -> UnitDetail:
    prev, nxt = unit_neighbours(unit)
    return UnitDetail(
        unit=unit, id=unit_uid(unit), effects=_effects(unit),
        scores=unit_scores(unit), relations=unit_relations(unit),
        labels=list(unit_labels(unit)),
        prev=prev, next=nxt,
    )


# ---- compare -----------------------------------------------------------------------------------
@dataclass
class CompareColumn:
    unit: Unit
    id: str
    relation: UnitRelation | None
    top: list[ExampleView]


@dataclass
class Comparison:
    columns: list[CompareColumn]
    explanation: str


def _column(unit: Unit, relation: UnitRelation | None = None) -> CompareColumn:
    return CompareColumn(unit, unit_uid(unit), relation, unit_examples(unit, kinds=(0,), top_limit=COMPARE_EXAMPLES))


def compare(a: Unit, b: Unit | None) -> Comparison:
    """Two units side by side; with ``b`` absent, ``a`` beside the units related to it most (for
    a neuron: its top features by decoder alignment, then correlation, then shared contexts)."""
    if b is not None:
        return Comparison([_column(a), _column(b)], "two units side by side")
    related: list[UnitRelation] = []
    for group in unit_relations(a, kinds=COMPARE_KINDS, per_kind=COMPARE_FEATURES):
        related.extend(r for r in group.rows if r.other_id not in {x.other_id for x in related})
    related = related[:COMPARE_FEATURES]
    explanation = ("the unit beside the units related to it most" if related else
                   "no related units recorded for this unit yet (a scores job records them)")
    return Comparison([_column(a), *(_column(r.other, r) for r in related)], explanation)
