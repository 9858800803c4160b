"""The harvest end to end on the real database: exact against brute force, shards, bad input."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from django.core.management import call_command
from django.core.management.base import CommandError

from browser.catalog.models import Model, Source, Unit
from browser.corpora.models import Context, Corpus
from browser.corpora.selectors import decode_tokens
from browser.examples.models import Example, UnitStats
from browser.runs.models import Run
from tests.compute.reference import brute_force
from tests.harvesting import harvest_run, run_rows
from workers.compute import hooks
from workers.compute.config import HarvestConfig
from workers.compute.harvest import make_batch
from workers.compute.loading import load_torch_model
from workers.pipeline.harvest import UNIT_OFFSET_STRIDE, finalize, harvest_create

pytestmark = pytest.mark.slow


def _all_activations(model: Model, corpus: Corpus, hook: str, batch_size: int, exclude_special: bool):
    arch = hooks.architecture_for(model.config["model_type"])
    torch_model = load_torch_model(model.location, Path("/nonexistent"), arch.causal, "cpu", "float32")
    special = set(corpus.tokenizer.special_ids)
    rows = list(Context.objects.filter(corpus=corpus).order_by("index").values_list("index", "tokens"))
    acts, invalid = [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = make_batch([i for i, _ in chunk], [decode_tokens(bytes(t)) for _, t in chunk],
                           corpus.context_length, special, exclude_special, 0)
        captured: dict[str, torch.Tensor] = {}
        sink = captured.__setitem__
        with hooks.capture(torch_model, arch, [hook], model.n_layers, lambda h, a, sink=sink: sink(h, a.clone())):
            hooks.forward(torch_model, batch.ids, batch.attention_mask)
        acts.append(captured[hook])
        invalid.append(batch.invalid)
    return torch.cat(acts).numpy(), torch.cat(invalid).numpy()


def _check_against_brute_force(run: Run, hook: str, position: int, exclude_special: bool = True) -> None:
    config = HarvestConfig.from_dict(run.config)
    acts, invalid = _all_activations(run.model, run.corpus, hook, config.batch_size, exclude_special)
    want = brute_force(acts, invalid, k=config.k, samples=config.samples_per_interval,
                       n_intervals=config.n_intervals, hist_stride=config.hist_stride, seed=config.seed,
                       unit_offset=position * UNIT_OFFSET_STRIDE)
    source = Source.objects.get(model=run.model, name=hook)
    ctx_index = dict(Context.objects.filter(corpus=run.corpus).values_list("id", "index"))
    for unit in Unit.objects.filter(source=source).order_by("index"):
        w = want[unit.index]
        stats = UnitStats.objects.get(unit=unit, run=run)
        assert (stats.n_tokens, stats.fire_count) == (w["n_tokens"], w["fire"])
        assert stats.mean * stats.n_tokens == pytest.approx(w["total"], rel=1e-4, abs=1e-3)
        assert stats.max == pytest.approx(w["max"], rel=1e-6)
        assert np.frombuffer(bytes(stats.hist), dtype="<i8").tolist() == w["hist"]
        examples = Example.objects.filter(unit=unit, run=run)
        top = [(ctx_index[e.context_id], e.max_value) for e in examples.filter(kind=0).order_by("rank")]
        assert [c for c, _ in top] == [c for c, _ in w["top"]]
        assert [v for _, v in top] == pytest.approx([v for _, v in w["top"]], rel=1e-6)
        intervals: dict[int, list[int]] = {}
        for e in examples.filter(kind=1).order_by("-bucket", "rank"):
            intervals.setdefault(e.bucket, []).append(ctx_index[e.context_id])
        assert list(intervals.items()) == [(b, [c for c, _ in m]) for b, m in w["intervals"]]
        random = [ctx_index[e.context_id] for e in examples.filter(kind=2).order_by("rank")]
        assert random == [c for c, _ in w["random"]]
        assert unit.density == pytest.approx(w["fire"] / w["n_tokens"])
        _check_values(examples, acts, invalid, unit.index, ctx_index)


def _check_values(examples: object, acts: np.ndarray, invalid: np.ndarray, unit: int, ctx_index: dict[int, int]) -> None:
    """Each example's per-token values are the unit's activations over its context's tokens (in
    float16), and its max position the first maximum over the valid ones."""
    for context_id, max_pos, values in examples.values_list("context_id", "max_pos", "values"):  # type: ignore[attr-defined]
        c = ctx_index[context_id]
        got = np.frombuffer(bytes(values), dtype="<f2")
        want = acts[c, :, unit]
        assert got.tolist() == want[: len(got)].astype(np.float16).tolist()
        assert max_pos == int(np.where(invalid[c], -np.inf, want).argmax())


def test_tiny_model_equals_brute_force(tiny: Model, corpus: Corpus) -> None:
    run = harvest_run(tiny, corpus, ["blocks.0.mlp.hook_post", "blocks.1.hook_resid_post"])
    _check_against_brute_force(run, "blocks.0.mlp.hook_post", 0)
    _check_against_brute_force(run, "blocks.1.hook_resid_post", 1)


def test_minilm_equals_brute_force(minilm: Model, corpus: Corpus) -> None:
    run = harvest_run(minilm, corpus, ["blocks.2.mlp.hook_post"])
    _check_against_brute_force(run, "blocks.2.mlp.hook_post", 0)


def test_three_shards_equal_one_and_finalize_twice_changes_nothing(tiny: Model, corpus: Corpus) -> None:
    hook = ["blocks.1.mlp.hook_post"]
    one = harvest_run(tiny, corpus, hook, shard_contexts=2048, batch_size=4)
    rows_one = run_rows(one)
    one.delete()
    three = harvest_run(tiny, corpus, hook, shard_contexts=12, batch_size=4)
    assert three.n_shards == 3 and one.n_shards == 1
    assert run_rows(three) == rows_one
    Run.objects.filter(pk=three.pk).update(status=Run.Status.FINALIZING)
    finalize(run_id=three.pk, progress=lambda *a, **k: None)
    assert run_rows(three) == rows_one


def test_special_tokens_are_excluded_unless_asked(minilm: Model, corpus: Corpus) -> None:
    special = set(corpus.tokenizer.special_ids)
    run = harvest_run(minilm, corpus, ["blocks.5.mlp.hook_post"])
    tokens = dict(Context.objects.filter(corpus=corpus).values_list("id", "tokens"))
    maxima = [decode_tokens(bytes(tokens[c]))[p] for c, p in
              Example.objects.filter(run=run).values_list("context_id", "max_pos")]
    assert maxima and not special & set(maxima)
    run.delete()
    with_special = harvest_run(minilm, corpus, ["blocks.5.mlp.hook_post"], exclude_special=False)
    maxima = [decode_tokens(bytes(tokens[c]))[p] for c, p in
              Example.objects.filter(run=with_special, kind=0, rank=0).values_list("context_id", "max_pos")]
    assert special & set(maxima)  # [CLS] and [SEP] carry some neurons' largest activations


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"model": "nope"}, "unknown model 'nope'"),
        ({"corpus": "nope"}, "no corpus named 'nope'"),
        ({"hooks": "blocks.9.mlp.hook_post"}, r"unknown hook point 'blocks.9.mlp.hook_post'; valid: .* 0..5"),
        ({"hooks": "blocks.1.attn"}, "unknown hook point"),
        ({"k": 0}, "k must be between 1 and 1024"),
        ({"k": 10**6}, "k must be between 1 and 1024"),
        ({"batch_size": 0}, "batch size must be between"),
        ({"device": "tpu"}, "device must be auto, cpu or cuda"),
    ],
)
def test_bad_harvest_input_is_refused(options: dict[str, object], message: str, minilm: Model,
                                      corpus: Corpus) -> None:
    args = {"model": "minilm-l6", "corpus": "lines", "hooks": "blocks.0.mlp.hook_post", "inline": True, **options}
    before = (Run.objects.count(), Source.objects.count(), Unit.objects.count(), Example.objects.count())
    with pytest.raises(CommandError, match=message):
        call_command("harvest", **args)
    assert (Run.objects.count(), Source.objects.count(), Unit.objects.count(), Example.objects.count()) == before


def test_tokenizer_mismatch_is_refused(corpus: Corpus, db: None) -> None:
    Model.objects.create(name="other", kind="encoder", architecture="bert", location="minilm-l6", n_layers=6,
                         d_model=384, d_mlp=1536, tokenizer=None)
    with pytest.raises(CommandError, match="was tokenized for minilm-l6"):
        call_command("harvest", model="other", corpus="lines", inline=True)
    assert Run.objects.count() == 0


def test_harvest_command_runs_and_does_not_recompute(minilm: Model, corpus: Corpus) -> None:
    out = io.StringIO()
    call_command("harvest", model="minilm-l6", corpus="lines", hooks="blocks.0.mlp.hook_post", k=8, inline=True,
                 stdout=out)
    assert "done" in out.getvalue()
    assert Unit.objects.filter(source__name="blocks.0.mlp.hook_post", stats_run__isnull=False).count() == 1536
    # The job says what finalize is doing; its last words count what the commit wrote.
    run = Run.objects.get()
    n_examples = Example.objects.filter(run=run).count()
    assert run.job is not None
    assert run.job.message == f"finalizing: writing {n_examples:,} examples of 1,536 units"
    again = io.StringIO()
    call_command("harvest", model="minilm-l6", corpus="lines", hooks="blocks.0.mlp.hook_post", k=8, inline=True,
                 stdout=again)
    assert "exists (done); not computed again" in again.getvalue()
    assert Run.objects.count() == 1


def test_unit_and_source_pages_show_theharvest_run(tiny: Model, corpus: Corpus, client: object) -> None:
    harvest_run(tiny, corpus, ["blocks.0.mlp.hook_post"])
    unit = Unit.objects.filter(source__name="blocks.0.mlp.hook_post", dead=False).order_by("index").first()
    assert unit is not None
    page = client.get(f"/u/tiny/blocks.0.mlp.hook_post/{unit.index}/")  # type: ignore[attr-defined]
    assert page.status_code == 200
    html = page.content.decode()
    assert "Top examples" in html and 'class="tok' in html and "<svg" in html
    assert html.count('class="example"') == Example.objects.filter(unit=unit).count()
    listing = client.get("/s/tiny/blocks.0.mlp.hook_post/")  # type: ignore[attr-defined]
    assert listing.status_code == 200 and f"/u/tiny/blocks.0.mlp.hook_post/{unit.index}/" in listing.content.decode()
    assert client.get("/u/tiny/blocks.0.mlp.hook_post/9999/").status_code == 404  # type: ignore[attr-defined]
    assert client.get("/s/tiny/nope/").status_code == 404  # type: ignore[attr-defined]


def test_a_failed_run_is_redone_from_scratch_without_leftovers(tiny: Model, corpus: Corpus) -> None:
    from browser.core.models import Blob

    run = harvest_run(tiny, corpus, ["blocks.0.mlp.hook_post"])
    assert Blob.objects.count() == run.n_shards  # the partials, kept for a repeated finalize
    Run.objects.filter(pk=run.pk).update(status=Run.Status.FAILED)
    config = HarvestConfig.from_dict(run.config)
    again, created = harvest_create(model=tiny, corpus=corpus, config=config)
    assert created and again.pk != run.pk
    assert Blob.objects.count() == 0 and not Example.objects.filter(run_id=run.pk).exists()
