"""Neuronpedia upload batches imported as units, examples, statistics and labels."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db.models import Model as DjangoModel
from django.test import Client

from browser.catalog.models import Model, Source, Tokenizer, Unit
from browser.corpora.models import Context, Corpus, Document
from browser.examples.models import Example, UnitStats
from browser.imports.neuronpedia import neuronpedia_import
from browser.imports.neuronpedia_rows import N_HIST_BINS, hist_bins, octaves
from browser.labels.models import Label, LabelRevision
from browser.runs.models import Run
from tests.conftest import Cast

UNIT = "/api/v1/units/gpt2-small/6-res-jb/{}/"
URL = "/api/v1/imports/neuronpedia/"


def _act(tokens: list[str], values: list[float], bin_min: float = -1) -> dict[str, Any]:
    return {"tokens": tokens, "values": values, "maxValue": max(values), "binMin": bin_min, "binMax": 3.0,
            "binContains": -1 if bin_min == -1 else 0.2}


BATCH: dict[str, Any] = {
    "model_id": "gpt2-small", "layer": "6-res-jb", "sae_id": "6-res-jb",
    "features": [
        {"featureIndex": 0,
         "activations": [_act([" a", " cat", "!"], [0.1, 1.5, 0.0]), _act(["The", " cat", " sat"], [0.0, 2.5, 0.5]),
                         _act([" my", " dog", " cat"], [0.0, 0.0, 0.75], bin_min=0.5)],
         "pos_str": [" meow", " purr"], "pos_values": [0.9, 0.8], "neg_str": [" bark"], "neg_values": [-0.7],
         "frac_nonzero": 0.002, "freq_hist_data_bar_values": [0.25, 0.75, 2.25],
         "freq_hist_data_bar_heights": [10, 4, 1], "n_prompts_total": 100, "n_tokens_in_prompt": 128,
         "explanations": [{"description": "cats", "explanationModelName": "gpt-4o-mini"},
                          {"description": "felines", "authorUsername": "alice"}]},
        {"featureIndex": 3, "activations": [_act(["The", " dog", " barked"], [0.0, 0.2, 3.0])],
         "pos_str": [" woof"], "pos_values": [1.1], "neg_str": [], "neg_values": [],
         "explanation": "the word barked"},
    ],
}
TABLES: list[type[DjangoModel]] = [Model, Tokenizer, Source, Unit, Corpus, Document, Context, Run, UnitStats, Example, Label, LabelRevision,
          get_user_model()]


def _bytes(batch: dict[str, Any]) -> bytes:
    return json.dumps(batch).encode()


def _counts() -> dict[str, int]:
    return {table.__name__: table._default_manager.count() for table in TABLES}


@pytest.fixture
def imported(cast: Cast) -> Any:
    report = neuronpedia_import(files=[_bytes(BATCH)], user=cast.curator, names=["batch-0.json"])
    assert report.errors == [] and report.features == 2
    return report


def test_import_shows_examples_stats_effects_and_labels(cast: Cast, imported: Any) -> None:
    assert (imported.model, imported.source, imported.examples, imported.labels_created) == (
        "gpt2-small", "6-res-jb", 4, 3)
    source = Source.objects.get(model__name="gpt2-small", name="6-res-jb")
    assert (source.kind, source.layer, source.n_units, source.units.count()) == ("sae", 6, 4, 4)
    body = cast.client("outsider").get(UNIT.format(0)).json()
    top = body["top"]
    assert [e["tokens"] for e in top] == [["The", " cat", " sat"], [" a", " cat", "!"]]
    assert top[0]["values"] == [0.0, 2.5, 0.5] and top[0]["max_pos"] == 1 and top[0]["max_value"] == 2.5
    [interval] = body["intervals"]
    assert interval["low"] <= 0.75 < interval["high"] and interval["examples"][0]["tokens"][-1] == " cat"
    unit = body["unit"]
    assert (unit["density"], unit["max_activation"], unit["top_token"], unit["dead"]) == (0.002, 2.5, " cat", False)
    assert body["logit_effects"] == {"up": [{"token": " meow", "value": 0.9}, {"token": " purr", "value": 0.8}],
                                     "down": [{"token": " bark", "value": -0.7}]}
    stats = body["stats"]
    assert (stats["n_tokens"], stats["fire_count"], stats["hist_stride"]) == (12800, 26, 1)
    assert stats["mean"] == pytest.approx((0.25 * 10 + 0.75 * 4 + 2.25) / 12800)
    hist = np.asarray(stats["hist"])
    assert hist.size == N_HIST_BINS and hist[0] == 12800 - 26 and hist[1:].sum() == 15
    assert hist[hist_bins(np.asarray([2.25]))[0]] == 1
    labels = {(label["author"], label["text"], label["machine"]) for label in body["labels"]}
    assert labels == {("machine:gpt-4o-mini", "cats", True), ("curator", "felines", False)}
    other = cast.client("outsider").get(UNIT.format(3)).json()
    assert other["top"][0]["max_pos"] == 2 and other["labels"][0]["text"] == "the word barked"
    assert cast.client("outsider").get(UNIT.format(1)).json()["stats"] is None  # not in the batch
    page = Client()
    page.force_login(cast.outsider)
    html = page.get("/u/gpt2-small/6-res-jb/0/").content.decode()
    assert "felines" in html and "meow" in html and "sat" in html and 'class="hist"' in html
    assert page.get("/").status_code == 200  # the overview lists the imported run and corpus
    assert cast.client("outsider").get(f"/api/v1/runs/{imported.run_id}/").json()["status"] == "done"


def test_import_twice_changes_nothing_and_later_batches_add(cast: Cast, imported: Any) -> None:
    before = _counts()
    again = neuronpedia_import(files=[_bytes(BATCH)], user=cast.curator)
    assert again.errors == [] and (again.replaced, again.contexts_created, again.labels_unchanged) == (2, 0, 3)
    assert _counts() == before
    later = {**BATCH, "features": [{"featureIndex": 5, "activations": [_act([" bird", " sings"], [0.0, 4.0])],
                                    "frac_nonzero": 0.01}]}
    report = neuronpedia_import(files=[_bytes(later)], user=cast.curator)
    assert report.errors == [] and report.replaced == 0
    assert Source.objects.get(name="6-res-jb").units.count() == 6
    client = cast.client("outsider")
    assert client.get(UNIT.format(0)).json()["top"][0]["tokens"] == ["The", " cat", " sat"]  # ids still right
    unit = client.get(UNIT.format(5)).json()
    assert unit["top"][0]["tokens"] == [" bird", " sings"] and unit["stats"]["density"] == 0.01
    assert Run.objects.get().config["mean_from_examples"] == [3, 5]  # no histogram: mean of the windows


def test_dry_run_counts_and_writes_nothing(cast: Cast) -> None:
    before = _counts()
    report = neuronpedia_import(files=[BATCH], user=cast.curator, dry_run=True)
    assert report.errors == [] and (report.examples, report.labels_created) == (4, 3)
    assert report.as_dict()["applied"] is False and _counts() == before


def _with(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    batch = copy.deepcopy(BATCH)
    node = batch
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return batch


NAN_FILE = b'{"model_id": "m", "layer": "1-res", "features": [{"featureIndex": 0, "activations": ' \
           b'[{"tokens": ["a"], "values": [NaN]}]}]}'
BAD: list[tuple[Any, int | None, str, str]] = [
    (b"not json", None, "", "not valid JSON"),
    (NAN_FILE, None, "", "NaN is not a number JSON allows"),
    (_bytes({"model_id": "gpt2-small", "layer": "6-res-jb"}), None, "features", "is missing"),
    (_bytes(_with(("features", 1, "featureIndex"), "3")), None, "features[1].featureIndex", "must be an integer"),
    (_bytes(_with(("features", 0, "activations", 1, "values"), [0.0, "x", 0.5])), 0,
     "activations[1].values[1]", "must be a number"),
    (_bytes(_with(("features", 0, "activations", 0, "values"), [0.1, 1.5])), 0,
     "activations[0].values", "has 2 values for 3 tokens"),
    (_with(("features", 1, "activations", 0, "values"), [0.0, float("nan"), 1.0]), 3,
     "activations[0].values[1]", "finite"),
    (_bytes(_with(("features", 0, "pos_values"), [0.9])), 0, "pos_values", "1 values for 2 tokens"),
    (_bytes(_with(("features", 0, "frac_nonzero"), 2)), 0, "frac_nonzero", "between 0 and 1"),
    (_bytes(_with(("features", 0, "activations", 0, "tokens"), [" a", "\x00", "!"])), 0,
     "activations[0].tokens[1]", "NUL"),
    (_bytes(_with(("features", 0, "n_prompts_total"), 10**20)), 0, "n_prompts_total", "integer from 0"),
]


def test_malformed_files_are_rejected_whole(cast: Cast, imported: Any) -> None:
    before = _counts()
    for raw, feature, field, message in BAD:
        # each bad file comes with a good one, which must not be imported either
        good = _bytes({**BATCH, "features": [{"featureIndex": 7, "activations": [_act(["x"], [1.0])]}]})
        report = neuronpedia_import(files=[good, raw], user=cast.curator, names=["good.json", "bad.json"])
        [error] = report.errors
        assert (error["file"], error["feature"], error["field"]) == ("bad.json", feature, field), error
        assert message in error["error"] and report.as_dict()["applied"] is False
        assert _counts() == before
    clash = neuronpedia_import(files=[_bytes({**BATCH, "model_id": "other"})], user=cast.curator,
                               model_name="gpt2-small")
    assert "not imported from neuronpedia:other" in clash.errors[0]["error"] and _counts() == before


@pytest.mark.parametrize(("who", "status"), [("curator", 200), ("owner", 403), ("collaborator", 403),
                                             ("outsider", 403), ("anonymous", 401)])
def test_api_is_for_curators(cast: Cast, who: str, status: int) -> None:
    upload = SimpleUploadedFile("batch-0.json", _bytes(BATCH), content_type="application/json")
    response = cast.client(who).post(URL, {"file": [upload]}, format="multipart")
    assert response.status_code == status, response.content
    if status == 200:
        assert response.json()["applied"] is True and Example.objects.count() == 4
    else:
        assert Example.objects.count() == 0


def test_api_reports_errors(cast: Cast) -> None:
    upload = SimpleUploadedFile("batch-0.json", b"[1, 2]", content_type="application/json")
    response = cast.client("curator").post(URL, {"file": [upload]}, format="multipart")
    assert response.status_code == 400
    assert response.json()["errors"][0]["error"] == "a batch must be a JSON object (got list)"
    assert cast.client("curator").post(URL, {}, format="multipart").status_code == 400


def test_command_reads_a_directory_of_batches(cast: Cast, tmp_path: Path) -> None:
    (tmp_path / "batch-0.json").write_bytes(_bytes(BATCH))
    (tmp_path / "batch-1.json").write_bytes(_bytes({**BATCH, "features": [
        {"featureIndex": 9, "activations": [_act([" z"], [1.0])]}]}))
    out = io.StringIO()
    call_command("import_neuronpedia", str(tmp_path), user="curator", stdout=out, stderr=io.StringIO())
    assert "imported 3 feature(s) into gpt2-small/6-res-jb" in out.getvalue()
    assert Source.objects.get().n_units == 10
    with pytest.raises(CommandError, match="curator role"):
        call_command("import_neuronpedia", str(tmp_path), user="owner", stderr=io.StringIO())
    with pytest.raises(CommandError, match="no file or directory"):
        call_command("import_neuronpedia", str(tmp_path / "nope"), user="curator")
    (tmp_path / "bad.json").write_bytes(b"{")
    err = io.StringIO()
    with pytest.raises(CommandError, match="1 problem"):
        call_command("import_neuronpedia", str(tmp_path / "bad.json"), user="curator", stderr=err)
    assert "bad.json: not valid JSON" in err.getvalue()


def test_grid_matches_the_harvest_grid() -> None:
    """The web side's copy of the bin grid against workers.compute.stats (reference)."""
    import torch

    from workers.compute.stats import hist_bins as torch_hist_bins
    from workers.compute.stats import octave

    values = np.concatenate([np.random.default_rng(0).lognormal(-3, 4, 5000), [0.0, -1.0, 1e-9, 1e9]])
    values = values.astype(np.float32)
    assert hist_bins(values).tolist() == torch_hist_bins(torch.from_numpy(values)).tolist()
    positive = values[values > 0]
    assert octaves(positive).tolist() == octave(torch.from_numpy(positive)).tolist()
