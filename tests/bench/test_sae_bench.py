"""Item 19: `bench sae` holds out contexts training never saw, and stops when the shared corpus is missing."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

from workers.bench import sae as bench

pytestmark = pytest.mark.slow

OPTS = {"train_tokens": 4096, "steps": 1, "width": 64, "harvest_tokens": 1024, "harvest_width": 64, "rounds": 1}


def test_bench_sae_fails_loudly_without_the_shared_corpus(tmp_path: Path, settings: object) -> None:
    """A checkout whose sibling `shared/` is missing: no fallback to the fixture slice."""
    checkout = tmp_path / "main"
    shutil.copytree(Path(settings.BASE_DIR) / "fixtures", checkout / "fixtures")  # type: ignore[attr-defined]
    settings.BASE_DIR = checkout  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="shared corpus"):
        bench.main(dict(OPTS), io.StringIO())


def test_held_out_contexts_are_not_in_training() -> None:
    corpus = bench.shared_corpus()
    train, held = bench.split_batches(corpus, 16_384, bench.HELD_OUT_TOKENS)
    as_rows = lambda batches: [tuple(row.tolist()) for b in batches for row in b.ids]  # noqa: E731
    train_rows, held_rows = as_rows(train), as_rows(held)
    assert len(train_rows) == 16_384 // 64 and len(held_rows) == bench.HELD_OUT_TOKENS // 64
    assert len(set(held_rows)) == len(held_rows)
    assert not set(held_rows) & set(train_rows)
    assert all(b.attention_mask.all() for b in train + held)  # full contexts only
