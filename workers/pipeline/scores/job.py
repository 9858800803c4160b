"""The score job's entry point: examples in, every part run, rows written in one transaction per source."""


from __future__ import annotations

from collections.abc import Iterator

from django.db import transaction

from browser.catalog.models import Model, Source, Unit, UnitRelation
from browser.catalog.services import scores_replace, unit_relations_replace
from browser.examples.selectors import run_source_examples
from browser.runs.models import Run
from workers.pipeline.scores.common import (
    NAMES,
    RELATED,
    VERSION,
    Progress,
    ScoreInputError,
    SourceScores,
    UnitExamples,
)
from workers.pipeline.scores.pairs import Relations, _comparisons, _superposition
from workers.pipeline.scores.units import _toy_features_per_neuron, _unit_scores
from workers.pipeline.scores.windows import Windows


def scores_compute(*, run_id: int, progress: Progress) -> dict[str, float]:
    """Compute and store every score, relation and layer superposition of a finished run. Counts
    the rows written, the distinct windows embedded and read from the cache, and the seconds
    spent on the embedding-based score (``embedding_scores_s``: windows, cache, 2-means)."""
    run = Run.objects.select_related("model", "model__tokenizer", "corpus", "corpus__tokenizer").filter(
        pk=run_id).first()
    if run is None or run.status != Run.Status.DONE:
        raise ScoreInputError(f"run #{run_id} is not a finished harvest run")
    sources = list(run.sources.select_related("sae", "sae__weights").order_by("layer", "kind", "name"))
    examples = {s.pk: _examples(run, s) for s in sources}
    results = {s.pk: SourceScores(s, dict(Unit.objects.filter(source=s).values_list("index", "pk")))
               for s in sources}
    windows = Windows(run)
    for i, source in enumerate(sources):
        progress(i, len(sources), f"unit scores of {source.name}")
        _unit_scores(run, results[source.pk], examples[source.pk], windows)
    if run.model.kind == Model.Kind.TOY:
        for source in sources:
            _toy_features_per_neuron(run, results[source.pk], examples[source.pk])
    relations = _comparisons(run, sources, examples, results, progress)
    counts = _write(run, results, relations)
    counts["superposition"] = sum(_superposition(run, s) for s in sources if s.kind == Source.Kind.SAE)
    return {**counts, "windows_embedded": windows.embedded, "windows_cached": windows.cached,
            "embedding_scores_s": round(windows.seconds, 3)}


def _examples(run: Run, source: Source) -> UnitExamples:
    out = UnitExamples()
    for index, kind, context_id, max_pos, max_value in run_source_examples(run_id=run.pk, source_id=source.pk):
        out.by_unit[index].append((kind, context_id, max_pos))
        out.max_value[(index, context_id)] = max_value
    return out


def _write(run: Run, results: dict[int, SourceScores], relations: Relations) -> dict[str, int]:
    """Replace this job's rows, one transaction per source (scores and the relations of its units)."""
    counts = {"scores": 0, "relations": 0}
    for result in results.values():
        unit_ids = list(result.units.values())
        with transaction.atomic():
            counts["scores"] += scores_replace(run=run, unit_ids=unit_ids, names=NAMES, version=VERSION, rows=(
                (result.units[u], name, value, details) for u, name, value, details in result.rows))
            for kind in (UnitRelation.Kind.CORRELATION, UnitRelation.Kind.CONTEXT_OVERLAP):
                counts["relations"] += unit_relations_replace(unit_ids=unit_ids, kind=kind, rows=_ranked(
                    relations, kind, unit_ids))
    return counts


def _ranked(relations: Relations, kind: str, unit_ids: list[int]) -> Iterator[tuple[int, int, int, float]]:
    """Each unit's best RELATED candidates over every SAE (or neuron source) it was compared with."""
    for unit_id in unit_ids:
        kept = sorted(relations.get((kind, unit_id), []), key=lambda vo: (-vo[0], vo[1]))[:RELATED]
        for rank, (value, other) in enumerate(kept):
            yield unit_id, rank, other, value

