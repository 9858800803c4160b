"""The SAE sweeps at a hook point, for its source page: recovery of the true features (synthetic
sets) or FVU / loss recovered (real models) against measured L0, one line per architecture."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.utils.safestring import SafeString

from browser.catalog.line_charts import lines_svg
from browser.catalog.models import Model, Sae, Source

SYNTHETIC_METRICS = (("mcc", "MCC"), ("f1", "F1"), ("mmcs", "MMCS"))
REAL_METRICS = (("fvu", "FVU"), ("loss_recovered", "loss recovered"))
TABLE_KEYS = ("l0", "mcc", "mmcs", "f1", "feature_f1", "split_features", "absorbing_latents", "fvu",
              "loss_recovered", "dead_fraction", "dense_fraction", "diagnosis_accuracy")


@dataclass(frozen=True)
class SweepPanel:
    synthetic: bool
    true_l0: float | None
    charts: list[SafeString]
    columns: list[str]
    rows: list[dict[str, Any]]
    """name, architecture, width, sparsity and the quality values in ``columns`` order (None: absent)."""
    planted: dict[str, Any] | None
    """A synthetic set's planted cause and what the diagnosis names with the true dictionary."""


def sweep_rows(source: Source) -> list[dict[str, Any]]:
    """Every sweep SAE at the source's hook point: identity and its stored quality."""
    saes = (Sae.objects.filter(source__model_id=source.model_id, source__hook_point=source.hook_point,
                               cfg__has_key="sweep").select_related("source").order_by("pk"))
    return [{"name": s.source.name, "sweep": s.cfg["sweep"], "architecture": s.cfg.get("training", {}).get(
        "architecture", s.architecture), "width": s.d_sae, "sparsity": s.cfg.get("sparsity"), **s.quality} for s in saes]


def sweep_panel(source: Source) -> SweepPanel | None:
    rows = sweep_rows(source)
    if not rows:
        return None
    model = source.model
    synthetic = model.kind == Model.Kind.SYNTHETIC
    true_l0 = float(model.config.get("true_l0", 0)) or None if synthetic else None
    metrics = SYNTHETIC_METRICS if synthetic else REAL_METRICS
    charts = []
    for key, name in metrics:
        series: dict[str, list[tuple[float, float]]] = {}
        for row in rows:
            if isinstance(row.get(key), int | float) and isinstance(row.get("l0"), int | float):
                series.setdefault(f"{row['architecture']} ({row['width']})", []).append((row["l0"], float(row[key])))
        if series:
            charts.append(lines_svg(series, f"{name} against L0 for each architecture", x_label="L0 (log scale)",
                                    y_label=name, marker_x=true_l0))
    columns = [k for k in TABLE_KEYS if any(k in row for row in rows)]
    table = [{**{k: row[k] for k in ("name", "architecture", "width", "sparsity")},
              "values": [row.get(k) for k in columns]} for row in rows]
    planted = model.config.get("diagnosis_true_dictionary") if synthetic else None
    return SweepPanel(synthetic, true_l0, charts, columns, table, planted)
