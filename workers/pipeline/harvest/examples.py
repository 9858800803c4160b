"""The examples a run writes: chosen by summarize from the merged states, each with the per-token
values its first pass kept (workers.compute.values): no second forward pass."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from browser.catalog.models import Source
from browser.corpora.models import Context, Corpus
from browser.corpora.selectors import decode_tokens
from browser.examples.models import Example
from workers.compute.stats import UnitSummary
from workers.compute.values import lookup, pair_keys

CONTEXTS_PER_QUERY = 5_000


@dataclass(frozen=True)
class SourceExamples:
    """One source's examples, one entry per row to write (numpy columns)."""

    unit: np.ndarray
    kind: np.ndarray
    bucket: np.ndarray
    rank: np.ndarray
    context: np.ndarray
    value: np.ndarray
    """The context's max, as the state holds it (float32 widened)."""
    row: np.ndarray
    """Each example's row in ``pos`` and ``values``."""
    pos: np.ndarray
    values: np.ndarray
    """[P, T] little-endian float16, as stored."""

    def __len__(self) -> int:
        return len(self.unit)


def source_examples(summaries: list[UnitSummary], state: dict[str, torch.Tensor]) -> SourceExamples:
    """Every example summarize chose, with where its kept values are in ``state``."""
    top, interval, random = int(Example.Kind.TOP), int(Example.Kind.INTERVAL), int(Example.Kind.RANDOM)
    cols: tuple[list[Any], ...] = ([], [], [], [], [], [])

    def add(*entry: Any) -> None:
        for col, value in zip(cols, entry, strict=True):
            col.append(value)

    for u, s in enumerate(summaries):
        for rank, (ctx, v) in enumerate(s.top):
            add(u, top, 0, rank, ctx, v)
        for bucket, members in s.intervals:
            for rank, (ctx, v) in enumerate(members):
                add(u, interval, bucket, rank, ctx, v)
        for rank, (ctx, v) in enumerate(s.random):
            add(u, random, 0, rank, ctx, v)
    units, kinds, buckets, ranks, contexts, values = (np.asarray(c) for c in cols)
    rows = lookup(state, pair_keys(torch.as_tensor(units, dtype=torch.int64),
                                   torch.as_tensor(contexts, dtype=torch.int64)))
    return SourceExamples(units, kinds, buckets, ranks, contexts, values, rows.numpy(), state["ex_pos"].numpy(),
                          state["ex_val"].numpy().astype("<f2", copy=False))


def context_rows(corpus: Corpus, indices: set[int]) -> dict[int, tuple[int, int, bytes]]:
    """Context index -> (id, token count, token bytes) of the chosen contexts."""
    wanted = sorted(indices)
    out: dict[int, tuple[int, int, bytes]] = {}
    for start in range(0, len(wanted), CONTEXTS_PER_QUERY):
        chunk = wanted[start : start + CONTEXTS_PER_QUERY]
        for index, pk, n_tokens, tokens in Context.objects.filter(corpus=corpus, index__in=chunk).values_list(
                "index", "id", "n_tokens", "tokens"):
            out[index] = (pk, n_tokens, bytes(tokens))
    return out


def top_tokens(name: str, examples: SourceExamples, contexts: dict[int, tuple[int, int, bytes]],
               strings: list[str]) -> dict[tuple[str, int], str]:
    """Each unit's token at the maximum of its best example."""
    best = np.nonzero((examples.kind == int(Example.Kind.TOP)) & (examples.rank == 0))[0]
    out = {}
    for i in best.tolist():
        ids = decode_tokens(contexts[int(examples.context[i])][2])
        out[(name, int(examples.unit[i]))] = strings[ids[int(examples.pos[examples.row[i]])]]
    return out


def example_rows(chosen: dict[str, SourceExamples], sources: dict[str, Source], unit_ids: dict[tuple[int, int], int],
                 contexts: dict[int, tuple[int, int, bytes]]) -> Iterator[tuple[Any, ...]]:
    """(unit id, kind, bucket, rank, context id, max value, max position, values bytes) per
    example; the values of a context's real tokens only (not its padding)."""
    for name, ex in chosen.items():
        source_pk = sources[name].pk
        for unit, kind, bucket, rank, ctx, value, row in zip(
                ex.unit.tolist(), ex.kind.tolist(), ex.bucket.tolist(), ex.rank.tolist(), ex.context.tolist(),
                ex.value.tolist(), ex.row.tolist(), strict=True):
            context_id, n_tokens, _ = contexts[ctx]
            yield (unit_ids[(source_pk, unit)], kind, bucket, rank, context_id, value, int(ex.pos[row]),
                   ex.values[row, :n_tokens].tobytes())
