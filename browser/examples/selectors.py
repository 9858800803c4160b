"""Reads of a unit's statistics and examples, rendered lean (a page can hold thousands of tokens)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from browser.catalog.models import Unit
from browser.corpora.selectors import decode_tokens
from browser.examples.models import Example, UnitStats

OCTAVE_LO_EXP = -20  # sketch buckets are octaves [2^(b-20), 2^(b-19))


@dataclass(frozen=True)
class ExampleView:
    kind: str
    bucket: int
    rank: int
    max_value: float
    html: SafeString


def unit_stats(unit: Unit) -> UnitStats | None:
    if unit.stats_run_id is None:
        return None
    return UnitStats.objects.filter(unit=unit, run_id=unit.stats_run_id).first()


def _visible(token: str) -> str:
    return token.replace("\n", "⏎").replace("\t", "⇥")


def render_tokens(ids: list[int], values: np.ndarray, max_pos: int, vocab: list[str], special: set[int],
                  scale: float) -> SafeString:
    """One span per token: background by value, value on hover, max token and specials marked."""
    parts = []
    for pos, (token_id, value) in enumerate(zip(ids, values.tolist(), strict=False)):
        text = escape(_visible(vocab[token_id] if token_id < len(vocab) else "?"))
        alpha = max(0.0, min(1.0, value / scale)) if scale > 0 else 0.0
        classes = "tok" + (" special" if token_id in special else "") + (" max" if pos == max_pos else "")
        parts.append(f'<span class="{classes}" style="background:rgba(230,85,13,{alpha:.2f})" '
                     f'title="{value:.3f}">{text}</span>')
    return mark_safe("".join(parts))  # noqa: S308  (every token string is escaped above)


def unit_examples(unit: Unit) -> list[ExampleView]:
    if unit.stats_run_id is None:
        return []
    tokenizer = unit.source.model.tokenizer
    vocab = tokenizer.tokens if tokenizer else []
    special = set(tokenizer.special_ids) if tokenizer else set()
    rows = (Example.objects.filter(unit=unit, run_id=unit.stats_run_id)
            .select_related("context").order_by("kind", "-bucket", "rank"))
    scale = unit.max_activation or 1.0
    out = []
    for e in rows:
        values = np.frombuffer(bytes(e.values), dtype="<f2").astype(np.float32)
        ids = decode_tokens(bytes(e.context.tokens))
        out.append(ExampleView(Example.Kind(e.kind).label, e.bucket, e.rank, e.max_value,
                               render_tokens(ids, values, e.max_pos, vocab, special, scale)))
    return out


def interval_range(bucket: int) -> tuple[float, float]:
    low = 2.0 ** (bucket + OCTAVE_LO_EXP)
    return low, low * 2


def histogram_svg(stats: UnitStats, width: int = 420, height: int = 90) -> SafeString:
    """Server-rendered SVG of the positive part of the histogram (bins with counts only)."""
    counts = np.frombuffer(bytes(stats.hist), dtype="<i8")[1:]
    nonzero = np.nonzero(counts)[0]
    if nonzero.size == 0:
        return mark_safe('<p class="empty">The unit never fired above 2^-20.</p>')
    lo, hi = int(nonzero[0]), int(nonzero[-1]) + 1
    shown = counts[lo:hi]
    bar_w = width / len(shown)
    top = float(shown.max())
    bars = "".join(
        f'<rect x="{i * bar_w:.1f}" y="{height - c / top * height:.1f}" width="{max(bar_w - 1, 1):.1f}" '
        f'height="{c / top * height:.1f}"><title>{int(c)}</title></rect>'
        for i, c in enumerate(shown.tolist())
    )
    # counts[i] is bin i + 1, whose float32 key is 428 + i: exponent (key >> 2) - 127.
    low, high = 2.0 ** (((428 + lo) >> 2) - 127), 2.0 ** (((428 + hi) >> 2) - 126)
    label = f"activations from about {low:.3g} to {high:.3g} (log scale, every {stats.hist_stride}th token)"
    return mark_safe(f'<svg class="hist" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
                     f'role="img" aria-label="{escape(label)}"><title>{escape(label)}</title>{bars}</svg>'
                     f'<p class="caption">{escape(label)}</p>')
