"""SAEBench core-eval JSON: a result written by hand in SAEBench's layout reads into the product's
names, and the product's numbers round-trip through it."""

from __future__ import annotations

import json

import pytest

from workers.compute import saebench

# "required" of sae_bench 0.6's evals/core/eval_output_schema_core.json
REQUIRED = ("eval_config", "eval_id", "datetime_epoch_millis", "eval_result_metrics", "sae_bench_commit_hash",
            "sae_lens_id", "sae_lens_release_id", "sae_lens_version", "sae_cfg_dict")


def _saebench_result() -> dict[str, object]:
    """Shaped as sae_bench 0.6 writes it (CoreEvalOutput.to_json), values chosen by hand."""
    return {
        "eval_type_id": "core", "eval_config": {"model_name": "pythia-70m-deduped", "context_size": 128},
        "eval_id": "325652d5-dfc9-4b77-be93-9f7191d3856a", "datetime_epoch_millis": 1733000000000,
        "eval_result_metrics": {
            "model_behavior_preservation": {"kl_div_score": 0.95, "kl_div_with_ablation": 10.0, "kl_div_with_sae": 0.5},
            "model_performance_preservation": {"ce_loss_score": 0.9, "ce_loss_with_ablation": 12.0,
                                               "ce_loss_with_sae": 3.9, "ce_loss_without_sae": 3.0},
            "reconstruction_quality": {"explained_variance": 0.8, "mse": 1.2, "cossim": 0.93},
            "sparsity": {"l0": 32.0, "l1": 120.0},
            "misc_metrics": {"frac_alive": 0.75, "freq_over_10_percent": 0.02},
        },
        "eval_result_details": [], "sae_bench_commit_hash": "abc", "sae_lens_id": "blocks.3.hook_resid_post",
        "sae_lens_release_id": "pythia-70m-deduped-res-sm", "sae_lens_version": "5.0.0", "sae_cfg_dict": {},
    }


def test_reads_a_saebench_result_into_the_products_names() -> None:
    got = saebench.read_core(_saebench_result())
    assert got == pytest.approx({"loss_recovered": 0.9, "ce_zero": 12.0, "ce_sae": 3.9, "ce_clean": 3.0,
                                 "fvu": 0.2, "l0": 32.0, "dead_fraction": 0.25, "dense_fraction": 0.02})
    with pytest.raises(ValueError, match="SAEBench core"):
        saebench.read_core({"eval_type_id": "absorption", "eval_result_metrics": {}})


def test_written_result_round_trips_and_leaves_out_what_was_not_measured() -> None:
    quality = {"fvu": 0.31, "l0": 17.5, "dead_fraction": 0.1, "tokens": 4096.0}
    out = saebench.core_output(quality, {"d_in": 1536}, model_name="minilm-l6", sae_id="s", millis=5)
    assert out["eval_type_id"] == "core" and out["datetime_epoch_millis"] == 5
    assert "model_performance_preservation" not in out["eval_result_metrics"]  # an encoder: no next-token loss
    assert out["eval_result_metrics"]["reconstruction_quality"] == {"explained_variance": pytest.approx(0.69)}
    assert saebench.read_core(json.loads(json.dumps(out))) == pytest.approx({"fvu": 0.31, "l0": 17.5, "dead_fraction": 0.1})
    assert set(REQUIRED) <= set(out)
