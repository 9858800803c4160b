"""Ground-truth panels: why a model's neurons are polysemantic, per layer (the diagnosis each layer's
SAE made, ``manage.py diagnose_layers``; source pages), and the compression-hypothesis curve
(``manage.py toy_compression``; toy pages), and the context-cluster score's spread against random
units (``manage.py cluster_spread``; source pages), and the SAEs of a hook side by side
(``manage.py sae_core``; source pages)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from django.utils.safestring import SafeString

from browser.catalog.charts import bars_svg
from browser.catalog.groundtruth_charts import intervals_svg, linear_lines_svg, stacked_shares_svg
from browser.catalog.models import Model, Sae, Score, Source

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
    """One row per layer of the source's model whose MLP-neuron SAE holds a layer diagnosis (the newest
    such SAE of the layer). A sweep's SAE on a synthetic set keeps its own diagnosis summary under the
    same key (accuracy against the planted causes, no unit counts): it is not a layer diagnosis."""
    rows = (Sae.objects.filter(source__model_id=source.model_id, source__hook_point__endswith=".mlp.hook_post",
                               quality__diagnosis__has_key="units")
            .select_related("source").order_by("source__layer", "-pk"))
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


COMPRESSION_CHARTS = (("distinct_per_dim", "distinct directions per dimension"),
                      ("features_per_neuron", "true features per neuron"),
                      ("pair_cosine", "cosine within a represented pair"))


@dataclass(frozen=True)
class CompressionPanel:
    charts: list[SafeString]
    rows: list[dict[str, Any]]
    """p, rho and each metric's mean / min / max over the seeds."""
    config: dict[str, Any]
    train_seconds: float | None


def compression_panel(model: Model) -> CompressionPanel | None:
    """The compression-hypothesis curve stored by ``manage.py toy_compression`` (None for other models)."""
    stored = (model.config or {}).get("compression")
    if not stored:
        return None
    curve = stored["curve"]
    charts = []
    for key, name in COMPRESSION_CHARTS:
        series: dict[str, list[tuple[float, float]]] = {}
        bands: dict[str, list[tuple[float, float, float]]] = {}
        for row in curve:
            if row.get(key):
                label = f"p = {row['p']:g}"
                series.setdefault(label, []).append((row["rho"], row[key]["mean"]))
                bands.setdefault(label, []).append((row["rho"], row[key]["min"], row[key]["max"]))
        charts.append(linear_lines_svg(series, f"{name} against the presence correlation within pairs", x_label="rho",
                                       y_label=name, bands=bands))
    rows = [{"p": r["p"], "rho": r["rho"], **{k: r.get(k) for k, _ in COMPRESSION_CHARTS},
             "dims_per_feature": r.get("dims_per_feature")} for r in curve]
    return CompressionPanel(charts, rows, stored["config"], stored.get("train_seconds"))


SPREAD = "context_cluster_spread"


@dataclass(frozen=True)
class ClusterSpreadPanel:
    chart: SafeString
    units: int
    baseline: dict[str, Any]
    median_sample_std: float
    median_seed_range: float
    above: int
    """Sampled units whose resampled 5th percentile lies above the random units' 95th."""


def cluster_spread_panel(source: Source) -> ClusterSpreadPanel | None:
    """The spread of the context-cluster score over seeds and samples for a sample of the source's
    units, against random units (``manage.py cluster_spread``)."""
    rows = list(Score.objects.filter(unit__source=source, name=SPREAD, label__isnull=True)
                .values_list("unit__index", "details"))
    if not rows:
        return None
    rows.sort(key=lambda r: r[1]["score"])
    baseline = rows[0][1]["baseline"]
    points = [(f"unit {i}", d["score"], d["sample_p5"], d["sample_p95"]) for i, d in rows]
    chart = intervals_svg(points, (baseline["p5"], baseline["mean"], baseline["p95"]),
                          f"context-cluster score of {len(rows)} sampled units of {source.name}, resampled, "
                          f"against random units", y_label="context_cluster_polysemanticity")
    return ClusterSpreadPanel(
        chart, len(rows), baseline, statistics.median(d["sample_std"] for _, d in rows),
        statistics.median(d["seed_max"] - d["seed_min"] for _, d in rows),
        sum(d["sample_p5"] > baseline["p95"] for _, d in rows))


CORE_COLUMNS = (("fvu", "FVU"), ("l0", "L0"), ("dead_fraction", "dead"), ("dense_fraction", "dense"),
                ("mean_max_cosine", "mean max |cos|"), ("loss_recovered", "loss recovered"))


@dataclass(frozen=True)
class SaeCoreRow:
    name: str
    architecture: str
    width: int
    values: list[float | None]
    density_svg: SafeString
    cosine_svg: SafeString
    current: bool


def sae_core_panel(source: Source) -> list[SaeCoreRow]:
    """Every SAE on the source's hook measured by ``manage.py sae_core``, side by side."""
    rows = (Sae.objects.filter(source__model_id=source.model_id, source__hook_point=source.hook_point,
                               quality__has_key="core").select_related("source").order_by("pk"))
    out = []
    for row in rows:
        c = row.quality["core"]
        out.append(SaeCoreRow(
            row.source.name, row.cfg.get("training", {}).get("architecture", row.architecture), row.d_sae,
            [c.get(key) for key, _ in CORE_COLUMNS],
            bars_svg(c["density_hist"], c["density_edges"], f"log10 firing density of the live latents of {row.source.name}",
                     fmt="{:.0f}", width=130, height=50),
            bars_svg(c["max_cosine_hist"], c["cosine_edges"],
                     f"each live latent's largest decoder |cosine| with another, {row.source.name}", fmt="{:.1f}",
                     width=130, height=50),
            row.source_id == source.pk))
    return out
