"""A few units to label (the cast of users is in tests/conftest.py)."""

from __future__ import annotations

import pytest

from browser.catalog.models import Source, Unit
from browser.catalog.services import model_create, source_get_or_create, units_ensure


@pytest.fixture
def units(db: None) -> list[Unit]:
    model = model_create(name="toyish", kind="encoder", architecture="bert", location="-", n_layers=2, d_model=4,
                         d_mlp=6, vocab_size=0, tokenizer=None)
    source = source_get_or_create(model=model, name="blocks.1.mlp.hook_post", hook_point="blocks.1.mlp.hook_post",
                                  layer=1, kind=Source.Kind.NEURONS, n_units=6)
    units_ensure(source=source)
    Unit.objects.filter(source=source).update(density=0.1)
    return list(Unit.objects.filter(source=source).order_by("index"))
