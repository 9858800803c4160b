"""The toy-model page and its JSON twin: what the training stored in ``Model.config``
(workers/pipeline/toy.py): W as [n features][m dims], the paper's metrics, the training settings."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.utils.safestring import SafeString

from browser.catalog.charts import dimensionality_svg, feature_arrows_svg, gram_svg
from browser.catalog.models import Model

# Settings and results shown as facts, in this order, with the words a reader knows them by.
FACTS = (("toy.kind", "kind"), ("toy.feature_probability", "feature probability p"),
         ("toy.importance_decay", "importance decay"), ("represented_features", "features represented"),
         ("instance", "best instance"), ("loss", "its loss"), ("toy.steps", "training steps"))


@dataclass
class ToyView:
    model: Model
    n_features: int | None
    n_dims: int | None
    gram: list[list[float]] | None
    gram_svg: SafeString | None
    arrows_svg: SafeString | None
    arrows_projected: bool
    dimensionality: list[float] | None
    dimensionality_svg: SafeString | None
    dims_per_feature: float | None
    facts: list[tuple[str, str]]
    extra: dict[str, Any]


def readable(value: Any) -> str:
    """A number as a person reads it: 3 significant digits (0.312, 1.5e-05), integers whole."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return str(value) if isinstance(value, int) else f"{value:.3g}"


def _weights(config: dict[str, Any]) -> np.ndarray | None:
    """W as [n, m]. The training stores [n][m]; n >= m always (ToyConfig), so a wider matrix is [m][n]."""
    if not config.get("W"):
        return None
    W = np.asarray(config["W"], dtype=np.float64)
    if W.ndim != 2:
        return None
    return W.T if W.shape[0] < W.shape[1] else W


def _lookup(config: dict[str, Any], path: str) -> Any:
    value: Any = config
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    if path == "loss" and isinstance(value, list):  # one loss per instance: the best one's
        instance = config.get("instance")
        value = value[instance] if isinstance(instance, int) and 0 <= instance < len(value) else None
    return value


def _dims_per_feature(config: dict[str, Any]) -> float | None:
    value = config.get("dimensions_per_feature", config.get("dims_per_feature"))
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def toy_view(model: Model) -> ToyView:
    """Only what is present is shown."""
    config = model.config or {}
    W = _weights(config)
    gram = W @ W.T if W is not None else None  # [n, m] @ [m, n] -> [n, n]: feature by feature
    dims = [float(x) for x in config.get("feature_dimensionality") or []]
    shown = {"W", "b", "toy", "loss", "feature_norms", "feature_dimensionality", "dimensions_per_feature",
             "dims_per_feature"} | {path.split(".")[0] for path, _ in FACTS}
    facts = [(name, readable(v)) for path, name in FACTS if (v := _lookup(config, path)) is not None]
    facts += [(k, readable(v)) for k, v in config.items() if k not in shown and isinstance(v, int | float | str)]
    drawable = W is not None and W.shape[1] in (2, 3)
    return ToyView(
        model=model, n_features=int(W.shape[0]) if W is not None else None,
        n_dims=int(W.shape[1]) if W is not None else None,
        gram=gram.round(4).tolist() if gram is not None else None,
        gram_svg=gram_svg(gram, f"W transposed times W of {model.name}: feature by feature")
        if gram is not None else None,
        arrows_svg=feature_arrows_svg(W, f"the direction of each feature of {model.name}")  # type: ignore[arg-type]
        if drawable else None,
        arrows_projected=drawable and W.shape[1] == 3,  # type: ignore[union-attr]
        dimensionality=dims or None,
        dimensionality_svg=dimensionality_svg(dims, f"feature dimensionality of each feature of {model.name}")
        if dims else None,
        dims_per_feature=_dims_per_feature(config),
        facts=facts,
        extra={k: v for k, v in config.items() if k not in {"W", "feature_dimensionality", "dims_per_feature"}
               and isinstance(v, int | float | str)},
    )
