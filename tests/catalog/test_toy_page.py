"""The toy-model page reads W as the training stores it ([n features][m dims]): n features in m
dimensions, W^T W as an n x n feature-by-feature heatmap with indices, each feature's direction as an
arrow when m = 2 (m = 3: projected), numbers rounded to 3 significant digits. The expected picture is
computed here by hand from a regular pentagon."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from django.test import Client

from browser.catalog.models import Model

N, M = 5, 2
PENTAGON = [[math.cos(2 * math.pi * i / N), math.sin(2 * math.pi * i / N)] for i in range(N)]


def _toy(name: str, W: list[list[float]]) -> Model:
    n, m = len(W), len(W[0])
    config = {"toy": {"kind": "relu_output", "n_features": n, "n_hidden": m, "feature_probability": 0.05},
              "W": W, "instance": 3, "loss": [0.1, 0.2, 0.3, 0.04512345],
              "feature_dimensionality": [0.4] * n, "dimensions_per_feature": 0.3116728663444519,
              "represented_features": n}
    return Model.objects.create(name=name, kind="toy", architecture="toy_relu_output", location="toy:relu_output",
                                n_layers=1, d_model=m, d_mlp=m, config=config)


def _arrow_angles(html: str) -> list[float]:
    svg = html[html.index('class="arrows"'):]
    svg = svg[:svg.index("</svg>")]
    cx, cy = (float(v) for v in re.search(r'data-origin="([\d.]+),([\d.]+)"', svg).groups())  # type: ignore[union-attr]
    tips = re.findall(r'<g class="feature-arrow"[^>]*><line x1="[\d.]+" y1="[\d.]+" x2="([\d.-]+)" y2="([\d.-]+)"', svg)
    return [math.atan2(cy - float(y), float(x) - cx) % (2 * math.pi) for x, y in tips]


@pytest.mark.django_db
def test_pentagon_page(client: Client) -> None:
    _toy("toy-pentagon", PENTAGON)
    html = client.get("/m/toy-pentagon/toy/").content.decode()
    assert "5 features in 2 dimensions" in html
    gram = html[html.index('class="gram"'):]
    gram = gram[:gram.index("</svg>")]
    assert gram.count('class="cell"') == N * N
    for i in range(N):  # indices on both axes
        assert gram.count(f'>{i}</text>') >= 2
    cos72 = math.cos(2 * math.pi / N)
    assert f"W0·W1 = {cos72:.3g}" in gram and f"W2·W2 = {1.0:.3g}" in gram
    angles = _arrow_angles(html)
    assert len(angles) == N
    assert angles == pytest.approx([2 * math.pi * i / N for i in range(N)], abs=0.02)
    assert "0.312" in html and "0.3116728663444519" not in html and "0.0451" in html


@pytest.mark.django_db
def test_three_dimensions_are_projected_and_more_are_not_drawn(client: Client) -> None:
    rng = np.random.default_rng(0)
    _toy("toy-3d", rng.normal(size=(6, 3)).tolist())
    html = client.get("/m/toy-3d/toy/").content.decode()
    assert "6 features in 3 dimensions" in html and len(_arrow_angles(html)) == 6 and "projected" in html
    _toy("toy-4d", rng.normal(size=(7, 4)).tolist())
    html = client.get("/m/toy-4d/toy/").content.decode()
    assert "7 features in 4 dimensions" in html and 'class="arrows"' not in html
    assert html.count('class="cell"') == 49


@pytest.mark.django_db
def test_api_gram_is_feature_by_feature(client: Client) -> None:
    _toy("toy-api", PENTAGON)
    body = client.get("/api/v1/models/toy-api/toy/").json()
    assert (body["n_features"], body["n_dims"]) == (N, M)
    W = np.asarray(PENTAGON)
    assert np.asarray(body["gram"]) == pytest.approx(W @ W.T, abs=1e-4)
    assert body["dims_per_feature"] == pytest.approx(0.3116728663444519)
