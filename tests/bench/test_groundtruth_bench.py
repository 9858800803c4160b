"""`bench groundtruth` on a small set: the JSON has the promised keys, read off the recovery table."""

from __future__ import annotations

import io
import json

from django.core.management import call_command


def test_groundtruth_bench_reports_recovery_and_diagnosis() -> None:
    out, err = io.StringIO(), io.StringIO()
    call_command("bench", "groundtruth", "--json", "--features", "64", "--dims", "32", "--true-l0", "3",
                 "--architectures", "topk,relu", "--steps", "150", "--diagnosis-steps", "150",
                 "--eval-samples", "4096", stdout=out, stderr=err)
    result = json.loads(out.getvalue().strip().splitlines()[-1])
    for key in ("saes_per_minute", "best_mcc", "best_f1", "best_mmcs", "diagnosis_accuracy"):
        assert key in result
    table = result["recovery"]
    assert set(table) == {"topk", "relu"}
    at_l0 = [row for row in table.values() if row["at_true_l0"]]
    assert table["topk"]["at_true_l0"] and all(abs(row["l0"] - 3) <= 0.75 for row in at_l0)
    assert result["best_mcc"] == max(row["mcc"] for row in at_l0)
    assert result["best_f1"] == max(row["f1"] for row in at_l0)
    assert table["topk"]["l0"] == 3.0 or abs(table["topk"]["l0"] - 3) < 0.5
    assert table["topk"]["mcc"] > 0.8
    assert result["diagnosis"]["units"] == 80 and result["diagnosis_accuracy_true_dictionary"] == 1.0
    assert 0 <= result["diagnosis_accuracy"] <= 1 and result["saes_per_minute"] > 0


def test_groundtruth_bench_without_architectures_reports_no_recovery() -> None:
    """--architectures none trains no recovery SAE: the recovery keys are null, not a crash on an empty table."""
    out = io.StringIO()
    call_command("bench", "groundtruth", "--json", "--architectures", "none", "--diagnosis-steps", "0",
                 stdout=out, stderr=io.StringIO())
    result = json.loads(out.getvalue().strip().splitlines()[-1])
    assert result["recovery"] == {}
    assert all(result[key] is None for key in ("saes_per_minute", "best_mcc", "best_f1", "best_mmcs",
                                               "diagnosis_accuracy"))
