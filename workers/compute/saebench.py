"""SAEBench's core-eval result JSON (sae_bench 0.6, ``evals/core/eval_output.py``), read and written.

Written from what the product measured on held-out tokens (``Sae.quality``): only the metrics it
has, under SAEBench's category and field names; a metric it does not measure is left out, never
filled in. Read back into the product's names, so results travel both ways:

- model_performance_preservation: ce_loss_score = loss_recovered, ce_loss_with_sae = ce_sae,
  ce_loss_with_ablation = ce_zero, ce_loss_without_sae = ce_clean;
- reconstruction_quality: explained_variance = 1 - fvu;
- sparsity: l0;
- misc_metrics: frac_alive = 1 - dead_fraction, freq_over_10_percent = dense_fraction.

What SAEBench has no field for (the live latents' firing-density histogram, each live latent's largest
decoder |cosine| and their histogram: SAEBench's average_max_decoder_cosine_sim is signed and over every
latent, so not the same number) travels in ``eval_result_unstructured`` under the product's names.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

EVAL_TYPE_ID = "core"
# (category, SAEBench field, product key, to SAEBench, from SAEBench)
FIELDS: tuple[tuple[str, str, str, Any, Any], ...] = (
    ("model_performance_preservation", "ce_loss_score", "loss_recovered", None, None),
    ("model_performance_preservation", "ce_loss_with_sae", "ce_sae", None, None),
    ("model_performance_preservation", "ce_loss_with_ablation", "ce_zero", None, None),
    ("model_performance_preservation", "ce_loss_without_sae", "ce_clean", None, None),
    ("reconstruction_quality", "explained_variance", "fvu", lambda v: 1 - v, lambda v: 1 - v),
    ("sparsity", "l0", "l0", None, None),
    ("misc_metrics", "frac_alive", "dead_fraction", lambda v: 1 - v, lambda v: 1 - v),
    ("misc_metrics", "freq_over_10_percent", "dense_fraction", None, None),
)
UNSTRUCTURED = ("tokens", "corpus", "density_edges", "density_hist", "cosine_edges", "max_cosine_hist",
                "mean_max_cosine")


def core_output(quality: dict[str, Any], sae_cfg: dict[str, Any], *, model_name: str,
                sae_id: str | None = None, release: str | None = None, eval_id: str | None = None,
                millis: int | None = None) -> dict[str, Any]:
    """A SAEBench core result for one SAE from the product's quality numbers."""
    metrics: dict[str, dict[str, float]] = {}
    for category, field, key, forward, _ in FIELDS:
        value = quality.get(key)
        if isinstance(value, int | float):
            metrics.setdefault(category, {})[field] = float(forward(value) if forward else value)
    return {
        "eval_type_id": EVAL_TYPE_ID,
        "eval_config": {"model_name": model_name, "context_size": quality.get("context_size"),
                        "dataset": quality.get("dataset", quality.get("corpus", "")), "exclude_special_tokens_from_reconstruction": True},
        "eval_id": eval_id or str(uuid.uuid4()),
        "datetime_epoch_millis": int(millis if millis is not None else time.time() * 1000),
        "eval_result_metrics": metrics,
        "eval_result_details": [],
        "sae_bench_commit_hash": "",
        "sae_lens_id": sae_id, "sae_lens_release_id": release, "sae_lens_version": None,
        "sae_cfg_dict": sae_cfg,
        "eval_result_unstructured": {"written_by": "neuron-browser", "tokens": quality.get("tokens")}
        | {key: quality[key] for key in UNSTRUCTURED if key in quality},
    }


def read_core(data: dict[str, Any]) -> dict[str, float]:
    """The product's quality numbers from a SAEBench core result (what it holds of them)."""
    if data.get("eval_type_id", EVAL_TYPE_ID) != EVAL_TYPE_ID or not isinstance(data.get("eval_result_metrics"), dict):
        raise ValueError("not a SAEBench core eval result (eval_type_id 'core' with eval_result_metrics)")
    metrics = data["eval_result_metrics"]
    out: dict[str, float] = {}
    for category, field, key, _, backward in FIELDS:
        value = metrics.get(category, {}).get(field)
        if isinstance(value, int | float) and value == value:  # NaN (SAEBench's missing CE) is skipped
            out[key] = float(backward(value) if backward else value)
    return out
