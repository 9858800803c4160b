"""Writes of a run's results: unit statistics and examples (binary COPY), and the copies of the
latest statistics kept on each unit for browsing."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from django.db import connection

from browser.catalog.models import Source
from browser.core.copy import copy_rows
from browser.examples.models import Example, UnitStats
from browser.runs.models import Run

StatsRow = tuple[int, int, int, float, float, float, bytes, int]
ExampleRow = tuple[int, int, int, int, int, float, int, bytes]


def run_results_clear(*, run: Run, sources: Sequence[Source]) -> None:
    """Remove what an earlier (interrupted or repeated) finalize of this run wrote."""
    UnitStats.objects.filter(run=run, unit__source__in=sources).delete()
    Example.objects.filter(run=run, unit__source__in=sources).delete()


def unit_results_clear(*, run: Run, unit_ids: list[int]) -> int:
    """Remove the statistics and examples of these units in the run; returns how many had statistics."""
    had_stats = UnitStats.objects.filter(run=run, unit_id__in=unit_ids).count()
    UnitStats.objects.filter(run=run, unit_id__in=unit_ids).delete()
    Example.objects.filter(run=run, unit_id__in=unit_ids).delete()
    return had_stats


def stats_write(*, run: Run, rows: Iterable[StatsRow]) -> int:
    """rows: (unit id, n_tokens, fire_count, density, mean, max, hist bytes, hist stride)."""
    return copy_rows(
        "examples_unitstats",
        ["run_id", "unit_id", "n_tokens", "fire_count", "density", "mean", "max", "hist", "hist_stride"],
        ["int8", "int8", "int8", "int8", "float8", "float8", "float8", "bytea", "int4"],
        ((run.pk, *row) for row in rows),
    )


def examples_write(*, run: Run, rows: Iterable[ExampleRow]) -> int:
    """rows: (unit id, kind, bucket, rank, context id, max value, max position, values bytes)."""
    return copy_rows(
        "examples_example",
        ["run_id", "unit_id", "kind", "bucket", "rank", "context_id", "max_value", "max_pos", "values"],
        ["int8", "int8", "int2", "int2", "int2", "int8", "float8", "int2", "bytea"],
        ((run.pk, *row) for row in rows),
    )


def units_set_browse_fields(*, run: Run, rows: Iterable[tuple[int, str, dict[str, object]]]) -> None:
    """Copy the run's statistics onto its units, with each unit's top token and logit effects.

    rows: (unit id, top token, logit effects). Runs as set-based SQL through a temporary table.
    """
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS unit_browse")
        cursor.execute(
            "CREATE TEMPORARY TABLE unit_browse (unit_id bigint, top_token text, logit_effects text) ON COMMIT DROP"
        )
    copy_rows("unit_browse", ["unit_id", "top_token", "logit_effects"], ["int8", "text", "text"],
              ((unit_id, token[:100], json.dumps(effects)) for unit_id, token, effects in rows))
    with connection.cursor() as cursor:
        # Lock the units first (in id order, as every other multi-unit writer), so the UPDATE's
        # snapshot of the labels comes after any label write on them committed (see
        # labels.services.unit_refresh_labels).
        cursor.execute("SELECT u.id FROM catalog_unit u JOIN unit_browse b ON b.unit_id = u.id "
                       "ORDER BY u.id FOR UPDATE OF u")
        cursor.execute(
            """
            UPDATE catalog_unit u
               SET density = s.density, max_activation = s.max, mean_activation = s.mean,
                   dead = (s.fire_count = 0), stats_run_id = s.run_id,
                   top_token = b.top_token, logit_effects = b.logit_effects::jsonb,
                   search_text = trim(b.top_token || ' ' || coalesce(
                       (SELECT string_agg(l.text, ' ') FROM labels_label l WHERE l.unit_id = u.id), '')),
                   search = to_tsvector('simple', trim(b.top_token || ' ' || coalesce(
                       (SELECT string_agg(l.text, ' ') FROM labels_label l WHERE l.unit_id = u.id), '')))
              FROM examples_unitstats s, unit_browse b
             WHERE s.unit_id = u.id AND s.run_id = %s AND b.unit_id = u.id
            """,
            [run.pk],
        )
