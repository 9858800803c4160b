"""manage.py toy_compression registers the curve it trained, and the toy page draws it."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from browser.catalog.models import Model
from workers.compute import compression


def test_command_stores_the_curve_and_the_toy_page_draws_it(db: None, client: Client) -> None:
    out = io.StringIO()
    call_command("toy_compression", name="comp", pairs=3, m=2, p="0.1", rho="-1,0,1", instances=2, steps=200,
                 stdout=out)
    assert "Registered comp" in out.getvalue()
    stored = Model.objects.get(name="comp").config["compression"]
    config = compression.CompressionConfig(n_pairs=3, n_hidden=2, probabilities=(0.1,), correlations=(-1, 0, 1),
                                           instances=2, steps=200)
    assert stored["config"] == config.to_dict() | {"probabilities": [0.1], "correlations": [-1.0, 0.0, 1.0]}
    assert stored["curve"] == json.loads(json.dumps(compression.curve(config, compression.train_pairs(config))))  # seeded

    page = client.get("/m/comp/toy/").content.decode()
    assert "Compression hypothesis" in page
    assert page.count('class="lines"') == 3
    first = stored["curve"][0]["distinct_per_dim"]["mean"]
    assert f"p = 0.1: distinct directions per dimension {first:.3f} at rho {stored['curve'][0]['rho']:.3g}" in page
    with pytest.raises(CommandError, match="already registered"):
        call_command("toy_compression", name="comp", pairs=3, m=2, steps=1, stdout=io.StringIO())
    with pytest.raises(CommandError, match="2 x pairs"):
        call_command("toy_compression", name="comp2", pairs=2, m=4, stdout=io.StringIO())
