"""What a unit's vector embeds: its labels first, then its top contexts around their max token,
checked against the windows decoded by the model's own Hugging Face tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from transformers import AutoTokenizer

from browser.corpora.models import Context
from browser.examples.models import Example
from tests.catalog.builders import harvest_tiny
from workers.pipeline.search import TOP_CONTEXTS, WINDOW, unit_texts


def _squash(text: str) -> str:
    return "".join(text.lower().split())


def test_unit_text_is_labels_then_top_context_windows(db: None, tmp_path: Path, cast: Any) -> None:
    from browser.catalog.models import Unit
    from browser.labels.services import label_save

    model, run = harvest_tiny(tmp_path)
    unit = Unit.objects.filter(source__model=model, dead=False, stats_run=run).order_by("index").first()
    assert unit is not None
    label_save(unit=unit, user=cast.owner, text="Quoted speech")
    text = unit_texts([unit.pk])[unit.pk]
    assert text.startswith("Quoted speech. ")
    tokenizer = AutoTokenizer.from_pretrained(model.location)
    top = Example.objects.filter(unit=unit, run=run, kind=Example.Kind.TOP).order_by("rank")[:TOP_CONTEXTS]
    assert len(top) > 0
    rest = _squash(text[len("Quoted speech. "):])
    for ex in top:
        ids = np.frombuffer(bytes(Context.objects.get(pk=ex.context_id).tokens), dtype="<i4").tolist()
        window = ids[max(0, ex.max_pos - WINDOW): ex.max_pos + WINDOW + 1]
        assert _squash(tokenizer.decode(window, skip_special_tokens=True)) in rest
