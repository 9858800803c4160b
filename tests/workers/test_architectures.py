"""A harvest end to end on a tiny random model of every supported architecture, registered as a
local transformers directory: what the harvest stores for every hook point of a block equals the
brute force over activations computed by hand from the model's modules (``tests/compute/hand.py``,
never the product's hooks), and the stored logit effects equal a hand computation through the
model's own norms and unembedding (issue 14 item 7, issue 21 item 1)."""

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
from fixtures.tiny_archs import N_LAYERS, TINY_ARCHS, save_tiny
from tests.compute import hand
from tests.compute.reference import brute_force
from tests.texts import TEXTS
from workers.cli import run_here
from workers.compute import hooks
from workers.compute.config import HarvestConfig
from workers.compute.loading import load_torch_model
from workers.pipeline.harvest import UNIT_OFFSET_STRIDE, harvest_create, neuron_sources
from workers.pipeline.models import model_register
from workers.tasks import harvest_work

pytestmark = pytest.mark.slow
LAYER = 1
BATCH = 8


def _corpus(model: Model, tmp_path: Path) -> Corpus:
    """The lines tokenized by the model's own tokenizer (transformers picks Qwen2's tokenizer class
    for a qwen2 config whatever the files say, so its vocabulary differs from MiniLM's)."""
    folder = tmp_path / "texts"
    folder.mkdir()
    for i, text in enumerate(TEXTS):
        (folder / f"{i}.txt").write_text(" ".join([text] * 2))
    call_command("import_corpus", str(folder), name="lines", tokenizer=model.name, context_length=16, inline=True,
                 stdout=io.StringIO())
    return Corpus.objects.get(name="lines")


def _hand_activations(model: Model, corpus: Corpus, names: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """[C, T, D] per hook by hand, batched as the harvest batches (same padding and masks), and
    the positions the harvest leaves out (padding and special tokens)."""
    torch_model = load_torch_model(model.location, Path("/nonexistent"), model.kind == "causal_lm", "cpu", "float32")
    rows = [decode_tokens(bytes(t)) for t in
            Context.objects.filter(corpus=corpus).order_by("index").values_list("tokens", flat=True)]
    special = torch.tensor(sorted(corpus.tokenizer.special_ids))
    acts: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    invalid = []
    for start in range(0, len(rows), BATCH):
        chunk = rows[start : start + BATCH]
        ids = torch.zeros(len(chunk), corpus.context_length, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, tokens in enumerate(chunk):
            ids[r, : len(tokens)], mask[r, : len(tokens)] = torch.tensor(tokens), 1
        computed = hand.activations(torch_model, ids, mask)
        for name in names:
            acts[name].append(computed[name])
        invalid.append((mask == 0) | torch.isin(ids, special))
    return {n: torch.cat(a).numpy() for n, a in acts.items()}, torch.cat(invalid).numpy()


def _check(run: Run, hook: str, position: int, acts: np.ndarray, invalid: np.ndarray) -> None:
    config = HarvestConfig.from_dict(run.config)
    want = brute_force(acts, invalid, k=config.k, samples=config.samples_per_interval, n_intervals=config.n_intervals,
                       hist_stride=config.hist_stride, seed=config.seed, unit_offset=position * UNIT_OFFSET_STRIDE)
    ctx_index = dict(Context.objects.filter(corpus=run.corpus).values_list("id", "index"))
    units = Unit.objects.filter(source=Source.objects.get(model=run.model, name=hook)).order_by("index")
    assert units.count() == acts.shape[-1]
    for unit in units:
        w = want[unit.index]
        stats = UnitStats.objects.get(unit=unit, run=run)
        assert (stats.n_tokens, stats.fire_count) == (w["n_tokens"], w["fire"]), (hook, unit.index)
        assert stats.max == pytest.approx(w["max"], rel=1e-5, abs=1e-6)
        assert np.frombuffer(bytes(stats.hist), dtype="<i8").tolist() == w["hist"]
        top = [(ctx_index[c], v) for c, v in Example.objects.filter(unit=unit, run=run, kind=0)
               .order_by("rank").values_list("context_id", "max_value")]
        assert [c for c, _ in top] == [c for c, _ in w["top"]], (hook, unit.index)
        assert [v for _, v in top] == pytest.approx([v for _, v in w["top"]], rel=1e-5, abs=1e-6)
        random = [ctx_index[c] for c in Example.objects.filter(unit=unit, run=run, kind=2)
                  .order_by("rank").values_list("context_id", flat=True)]
        assert random == [c for c, _ in w["random"]], (hook, unit.index)


def _check_logit_effects(model: Model, run: Run) -> None:
    torch_model = load_torch_model(model.location, Path("/nonexistent"), True, "cpu", "float32")
    arch = hooks.architecture_for(model.config["model_type"])
    block = arch.layers(torch_model)[LAYER]
    want = hand.neuron_logits(torch_model, LAYER, arch.final_norm(torch_model),
                              getattr(block, "post_feedforward_layernorm", None))
    source = Source.objects.get(model=model, name=f"blocks.{LAYER}.mlp.hook_post")
    for unit in Unit.objects.filter(source=source).order_by("index"):
        assert [t for t, _ in unit.logit_effects["up"]] == torch.topk(want[unit.index], 10).indices.tolist()
        assert [t for t, _ in unit.logit_effects["down"]] == torch.topk(-want[unit.index], 10).indices.tolist()


@pytest.mark.parametrize("arch_name", TINY_ARCHS)
def test_harvest_of_every_hook_point_equals_the_hand_brute_force(arch_name: str, db: None, tmp_path: Path) -> None:
    model = model_register(location=str(save_tiny(arch_name, tmp_path / arch_name)), name=f"tiny-{arch_name}")
    corpus = _corpus(model, tmp_path)
    assert (model.n_layers, model.d_model, model.d_mlp) == (N_LAYERS, 32, 48)
    names = [f"blocks.{LAYER}.{kind}" for kind in hooks.KINDS
             if not (arch_name == "pythia" and kind == "hook_resid_mid")]
    config = HarvestConfig(sources=neuron_sources(names), k=4, samples_per_interval=3, n_intervals=4,
                           hist_stride=3, batch_size=BATCH)
    run, created = harvest_create(model=model, corpus=corpus, config=config)
    assert created
    run_here(harvest_work, run.job, io.StringIO())
    run.refresh_from_db()
    assert run.status == Run.Status.DONE, run.error
    acts, invalid = _hand_activations(model, corpus, names)
    for position, source in enumerate(HarvestConfig.from_dict(run.config).sources):
        _check(run, source.hook, position, acts[source.hook], invalid)
    if arch_name != "bert":
        _check_logit_effects(model, run)


def test_a_parallel_models_resid_mid_fails_the_run_with_a_clear_message(db: None, tmp_path: Path) -> None:
    """The catalog keeps only a model's type, so the worker refuses it when it loads the model."""
    model = model_register(location=str(save_tiny("pythia", tmp_path / "pythia")), name="tiny-pythia")
    corpus = _corpus(model, tmp_path)
    config = HarvestConfig(sources=neuron_sources([f"blocks.{LAYER}.hook_resid_mid"]))
    run, _ = harvest_create(model=model, corpus=corpus, config=config)
    assert run.job is not None
    message = "blocks.1.hook_resid_mid does not exist in this model: its blocks are parallel"
    with pytest.raises(CommandError, match=message):
        run_here(harvest_work, run.job, io.StringIO())
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED and message in run.error
    assert not UnitStats.objects.filter(run=run).exists()
