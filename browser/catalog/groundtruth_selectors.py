"""Ground-truth panels of a source page: why the model's neurons are polysemantic, per layer (the
diagnosis each layer's SAE made, ``manage.py diagnose_layers``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.utils.safestring import SafeString

from browser.catalog.groundtruth_charts import stacked_shares_svg
from browser.catalog.models import Sae, Source

CAUSES = ("monosemantic", "superposition", "rotation", "nonlinear", "compositional")


@dataclass(frozen=True)
class LayerDiagnosis:
    layer: int
    sae: str
    causes: dict[str, int]
    units: int
    live_features: int
    dims: int
    features_per_dim: float
    interference: float
    l0_mean: float
    tokens: int
    examples: list[dict[str, Any]]
    """A few neurons of each polysemantic cause with their evidence."""
    neurons: str | None
    """The name of the layer's neuron source, when registered (to link the neurons)."""


@dataclass(frozen=True)
class LayerDiagnosisPanel:
    layers: list[LayerDiagnosis]
    chart: SafeString
    current: int | None
    """The source's own layer when it is one of the rows."""


def layer_diagnoses(source: Source) -> LayerDiagnosisPanel | None:
    """One row per layer of the source's model whose MLP-neuron SAE holds a diagnosis (the newest
    such SAE of the layer)."""
    rows = (Sae.objects.filter(source__model_id=source.model_id, source__hook_point__endswith=".mlp.hook_post",
                               quality__has_key="diagnosis").select_related("source").order_by("source__layer", "-pk"))
    neurons = dict(Source.objects.filter(model_id=source.model_id, kind=Source.Kind.NEURONS,
                                         hook_point__endswith=".mlp.hook_post").values_list("hook_point", "name"))
    by_layer: dict[int, LayerDiagnosis] = {}
    for row in rows:
        d = row.quality["diagnosis"]
        if row.source.layer in by_layer:
            continue
        examples = [{"cause": cause, **e} for cause, shown in d.get("examples", {}).items()
                    if cause != "monosemantic" for e in shown]
        by_layer[row.source.layer] = LayerDiagnosis(
            row.source.layer, row.source.name, d["causes"], d["units"], d["live_features"], d["dims"],
            d["features_per_dim"], d["interference"], d["l0_mean"], d["tokens"], examples,
            neurons.get(row.source.hook_point))
    if not by_layer:
        return None
    layers = [by_layer[k] for k in sorted(by_layer)]
    current = source.layer if source.layer in by_layer else None
    chart = stacked_shares_svg([(f"layer {d.layer}", d.causes) for d in layers], CAUSES,
                               f"cause of polysemanticity named for each MLP neuron, per layer of {source.model.name}",
                               highlight=f"layer {current}" if current is not None else None)
    return LayerDiagnosisPanel(layers, chart, current)
