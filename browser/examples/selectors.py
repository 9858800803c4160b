"""Reads of a unit's statistics and examples, rendered lean (a page can hold thousands of tokens)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np
from django.db import connection
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from browser.catalog.models import Model, Tokenizer, Unit
from browser.corpora.selectors import decode_tokens
from browser.examples.models import Example, UnitStats
from workers.compute import grid


@dataclass(frozen=True)
class Vocab:
    """A tokenizer's display strings, escaped once per process (a vocabulary is 30-50k strings:
    parsing its JSON on every request would cost more than the whole page)."""

    tokens: list[str]
    html: list[str]
    special: frozenset[int]

    def token(self, token_id: int) -> str:
        return self.tokens[token_id] if 0 <= token_id < len(self.tokens) else "?"


def _visible(token: str) -> str:
    """Newlines, tabs and tokens made only of spaces stay visible in the heatmap."""
    token = token.replace("\n", "⏎").replace("\t", "⇥")
    return token.replace(" ", "·") if token and not token.strip(" ") else token


@lru_cache(maxsize=8)
def _vocab(tokenizer_id: int, vocab_hash: str) -> Vocab:
    tokens, special = Tokenizer.objects.values_list("tokens", "special_ids").get(pk=tokenizer_id)
    return Vocab(tokens, [escape(_visible(t)) for t in tokens], frozenset(special))


def vocab_for(model: Model) -> Vocab:
    """The model's vocabulary (``model.tokenizer`` is best fetched with its ``tokens`` deferred)."""
    if model.tokenizer_id is None or model.tokenizer is None:
        return Vocab([], [], frozenset())
    return _vocab(model.tokenizer_id, model.tokenizer.vocab_hash)


@dataclass
class ExampleView:
    kind: str
    bucket: int
    rank: int
    max_value: float
    max_pos: int
    token_ids: list[int]
    values: np.ndarray
    vocab: Vocab
    scale: float

    @cached_property
    def html(self) -> SafeString:
        return render_tokens(self.token_ids, self.values, self.max_pos, self.vocab, self.scale)

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "bucket": self.bucket, "rank": self.rank, "max_value": self.max_value,
                "max_pos": self.max_pos, "token_ids": self.token_ids,
                "tokens": [self.vocab.token(t) for t in self.token_ids],
                "values": [round(v, 4) for v in self.values.tolist()]}


def unit_stats(unit: Unit) -> UnitStats | None:
    if unit.stats_run_id is None:
        return None
    return UnitStats.objects.filter(unit=unit, run_id=unit.stats_run_id).first()


_ALPHA = [f"{i / 100:.2f}" for i in range(101)]  # background strengths, in steps of 0.01


def render_tokens(ids: list[int], values: np.ndarray, max_pos: int, vocab: Vocab, scale: float) -> SafeString:
    """One span per token: background by value, value on hover, max token and specials marked.

    Plain string building, no template per token: thousands of spans stay within a few ms."""
    html, special, n = vocab.html, vocab.special, len(vocab.html)
    steps = np.clip(np.rint(values * (100.0 / scale if scale > 0 else 0.0)), 0, 100).astype(np.int64).tolist()
    parts = [
        f'<span class="{"tok sp" if t in special else "tok"}{" mx" if pos == max_pos else ""}" '
        f'style="--a:{_ALPHA[a]}" title="{v:.3f}">{html[t] if 0 <= t < n else "?"}</span>'
        for pos, (t, v, a) in enumerate(zip(ids, values.tolist(), steps, strict=False))
    ]
    return mark_safe("".join(parts))  # noqa: S308  (every token string is escaped in _vocab)


def unit_examples(unit: Unit, *, kinds: tuple[int, ...] = (0, 1, 2), top_limit: int | None = None) -> list[ExampleView]:
    if unit.stats_run_id is None:
        return []
    vocab = vocab_for(unit.source.model)
    rows = (Example.objects.filter(unit=unit, run_id=unit.stats_run_id, kind__in=kinds)
            .order_by("kind", "-bucket", "rank").values_list("kind", "bucket", "rank", "max_value", "max_pos",
                                                             "values", "context__tokens"))
    if top_limit is not None:
        rows = rows.filter(rank__lt=top_limit)
    scale = unit.max_activation or 1.0
    return [ExampleView(Example.Kind(kind).label, bucket, rank, max_value, max_pos, decode_tokens(bytes(tokens)),
                        np.frombuffer(bytes(values), dtype="<f2").astype(np.float32), vocab, scale)
            for kind, bucket, rank, max_value, max_pos, values, tokens in rows]


def interval_range(bucket: int) -> tuple[float, float]:
    return grid.octave_range(bucket)


@dataclass(frozen=True)
class ActivationHistogram:
    """The positive part of a unit's histogram, trimmed to the bins from its first to its last
    non-empty one (none when it never fired above the grid's floor); drawn by
    ``browser.catalog.charts.activation_histogram_svg``."""

    counts: list[int]
    low: float  # lower edge of the first bin shown
    high: float  # upper edge of the last bin shown
    stride: int  # the histogram counted one token in ``stride``
    floor_exponent: int = grid.LOWEST_EXPONENT  # values below 2^floor_exponent fall in no bin shown


def unit_histogram(stats: UnitStats) -> ActivationHistogram:
    counts = np.frombuffer(bytes(stats.hist), dtype="<i8")[1:]  # counts[i] is bin i + 1
    nonzero = np.nonzero(counts)[0]
    if nonzero.size == 0:
        return ActivationHistogram([], 0.0, 0.0, stats.hist_stride)
    lo, hi = int(nonzero[0]), int(nonzero[-1]) + 1
    return ActivationHistogram(counts[lo:hi].tolist(), grid.hist_bin_lower_edge(lo + 1), grid.hist_bin_upper_edge(hi),
                               stats.hist_stride)


def run_source_examples(*, run_id: int, source_id: int) -> list[tuple[int, int, int, int, float]]:
    """(unit index, kind, context id, max position, max value) of every example of one source's units
    in a run, by unit, kind, bucket and rank: the score job's read, as plain rows (hundreds of
    thousands of them: model instances or ``values_list`` cost several times the query)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT u.index, e.kind, e.context_id, e.max_pos, e.max_value FROM examples_example e "
                       "JOIN catalog_unit u ON u.id = e.unit_id WHERE e.run_id = %s AND u.source_id = %s "
                       "ORDER BY e.unit_id, e.kind, e.bucket, e.rank", [run_id, source_id])
        return cursor.fetchall()
