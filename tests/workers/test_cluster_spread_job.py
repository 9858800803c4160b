"""manage.py cluster_spread on a scored run of the tiny BERT: one spread row per sampled unit whose
recorded score is the score job's own, whose value is the spread of scores recomputed from MiniLM
embeddings of the windows made here by hand, and the source page draws it beside the random band."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from browser.catalog.models import Score
from browser.corpora.models import Context, Corpus
from browser.corpora.selectors import decode_tokens
from browser.examples.models import Example
from browser.runs.models import Run
from fixtures.tiny import build_tiny_bert
from tests.texts import TEXTS
from workers.cli import run_here
from workers.compute.cluster_spread import score_spread
from workers.compute.config import HarvestConfig
from workers.compute.embed import SentenceEmbedder
from workers.compute.loading import load_tokenizer
from workers.pipeline.harvest import harvest_create, neuron_sources
from workers.pipeline.models import model_register
from workers.pipeline.scores.windows import common_windows
from workers.tasks import harvest_work

pytestmark = pytest.mark.slow
HOOK = "blocks.0.mlp.hook_post"


@pytest.fixture
def scored(db: None, tmp_path: Path) -> Run:
    torch.set_num_threads(1)
    tiny = model_register(location=str(build_tiny_bert(tmp_path / "tiny")), name="tiny")
    folder = tmp_path / "texts"
    folder.mkdir()
    for i, text in enumerate(TEXTS):
        (folder / f"{i}.txt").write_text(" ".join([text] * 3))
    call_command("import_corpus", str(folder), name="lines", tokenizer="tiny", context_length=16, inline=True,
                 stdout=io.StringIO())
    config = HarvestConfig(sources=neuron_sources([HOOK]), k=8, samples_per_interval=3, n_intervals=4, hist_stride=3,
                           batch_size=8, shard_contexts=8)
    run, _ = harvest_create(model=tiny, corpus=Corpus.objects.get(name="lines"), config=config)
    run_here(harvest_work, run.job, io.StringIO())  # type: ignore[arg-type]
    call_command("score", run=run.pk, inline=True, stdout=io.StringIO())
    run.refresh_from_db()
    return run


def test_spread_rows_equal_a_hand_recomputation(scored: Run, client: Client) -> None:
    out = io.StringIO()
    call_command("cluster_spread", run=scored.pk, source=HOOK, units=3, seeds=2, resamples=4, draws=4, stdout=out)
    assert "3 units" in out.getvalue()
    rows = Score.objects.filter(name="context_cluster_spread").select_related("unit")
    assert rows.count() == 3
    tokenizer = load_tokenizer(scored.model.location, Path(settings.CACHE_DIR))
    embedder = SentenceEmbedder(Path(settings.CACHE_DIR), "cpu")
    common = embedder.embed(common_windows(scored, tokenizer, n=512, seed=0)).mean(dim=0)
    for row in rows:
        job = Score.objects.get(unit=row.unit, name="context_cluster_polysemanticity")
        assert row.details["score"] == job.value and row.run_id == scored.pk
        examples = list(Example.objects.filter(run=scored, unit=row.unit, kind=Example.Kind.TOP).order_by("rank")
                        .values_list("context_id", "max_pos", "max_value")[:24])
        examples += list(Example.objects.filter(run=scored, unit=row.unit, kind=Example.Kind.INTERVAL)
                         .order_by("bucket", "rank").values_list("context_id", "max_pos", "max_value")[:24])
        texts = []
        for c, p, _ in examples:
            ids = decode_tokens(bytes(Context.objects.get(pk=c).tokens))
            texts.append(tokenizer.decode(ids[max(0, p - 8): p + 9], skip_special_tokens=True).strip())
        want = score_spread(embedder.embed(texts), torch.tensor([v for *_, v in examples], dtype=torch.float64),
                            common, seeds=2, resamples=4)
        assert row.value == pytest.approx(want["sample_std"], abs=1e-6)
        assert row.details["seed_min"] == pytest.approx(want["seed_min"], abs=1e-6)
    page = client.get(f"/s/tiny/{HOOK}/").content.decode()
    assert "Context-cluster score: seed, sample and random units" in page and page.count("resampled 5-95%") == 6
    with pytest.raises(CommandError, match="no run"):
        call_command("cluster_spread", run=99999, source=HOOK, stdout=io.StringIO())
