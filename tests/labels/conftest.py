"""A fixed cast (owner, collaborator, outsider, curator, anonymous) and a few units to label."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from rest_framework.test import APIClient

from browser.accounts.services import token_create, user_create
from browser.catalog.models import Source, Unit
from browser.catalog.services import model_create, source_get_or_create, units_ensure


@dataclass
class Cast:
    owner: Any
    collaborator: Any
    outsider: Any
    curator: Any

    def client(self, who: str) -> APIClient:
        client = APIClient()
        if who != "anonymous":
            user = getattr(self, who)
            _, raw = token_create(user=user, owner=user, name="test")
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        return client


@pytest.fixture
def cast(db: None) -> Cast:
    return Cast(
        owner=user_create(username="owner", password="owner-pass-123", role="annotator"),
        collaborator=user_create(username="collaborator", password="collab-pass-123", role="annotator"),
        outsider=user_create(username="outsider", password="outsider-pass-123", role="viewer"),
        curator=user_create(username="curator", password="curator-pass-123", role="curator"),
    )


@pytest.fixture
def units(db: None) -> list[Unit]:
    model = model_create(name="toyish", kind="encoder", architecture="bert", location="-", n_layers=2, d_model=4,
                         d_mlp=6, vocab_size=0, tokenizer=None)
    source = source_get_or_create(model=model, name="blocks.1.mlp.hook_post", hook_point="blocks.1.mlp.hook_post",
                                  layer=1, kind=Source.Kind.NEURONS, n_units=6)
    units_ensure(source=source)
    Unit.objects.filter(source=source).update(density=0.1)
    return list(Unit.objects.filter(source=source).order_by("index"))
