"""The score job on a real harvest (tiny BERT neurons + a tiny SAE on them): every score and
relation equals a brute-force recomputation from the model's activations, and a second run
leaves exactly the same rows."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db.models import Count

from browser.catalog.models import Sae, Score, Source, UnitRelation
from browser.core.models import Blob
from browser.corpora.models import Context, Corpus
from browser.corpora.selectors import decode_tokens
from browser.examples.models import Example, UnitStats
from browser.runs.models import Run
from fixtures.tiny import build_tiny_bert
from fixtures.tiny_sae import random_sae
from tests.texts import TEXTS
from workers.cli import run_here
from workers.compute import hooks, scores
from workers.compute.config import HarvestConfig
from workers.compute.embed import SentenceEmbedder
from workers.compute.harvest import make_batch
from workers.compute.loading import load_tokenizer, load_torch_model
from workers.compute.sae import files
from workers.pipeline.harvest import harvest_create, neuron_sources
from workers.pipeline.models import model_register
from workers.pipeline.saes import sae_sources
from workers.pipeline.scores import COMMON_WINDOWS, RELATED, VERSION, WINDOW, common_windows
from workers.tasks import harvest_work

pytestmark = pytest.mark.slow
HOOK = "blocks.0.mlp.hook_post"  # the tiny BERT: 48 neurons a layer


@pytest.fixture
def harvested(db: None, tmp_path: Path) -> Run:
    torch.set_num_threads(1)
    tiny = model_register(location=str(build_tiny_bert(tmp_path / "tiny")), name="tiny")
    folder = tmp_path / "texts"
    folder.mkdir()
    for i, text in enumerate(TEXTS):
        (folder / f"{i}.txt").write_text(" ".join([text] * 3))
    call_command("import_corpus", str(folder), name="lines", tokenizer="tiny", context_length=16, inline=True,
                 stdout=io.StringIO())
    files.write_dir(random_sae(48, 64, architecture="topk", k=8, seed=5, hook_name=HOOK), tmp_path / "sae")
    call_command("import_sae", str(tmp_path / "sae"), model="tiny", name="feat", stdout=io.StringIO())
    config = HarvestConfig(sources=neuron_sources([HOOK]) + sae_sources(tiny, ["feat"]), k=8,
                           samples_per_interval=3, n_intervals=4, hist_stride=3, batch_size=8, shard_contexts=8)
    run, _ = harvest_create(model=tiny, corpus=Corpus.objects.get(name="lines"), config=config)
    run_here(harvest_work, run.job, io.StringIO())  # type: ignore[arg-type]
    run.refresh_from_db()
    assert run.status == Run.Status.DONE, run.error
    return run


def _score(run: Run) -> str:
    out = io.StringIO()
    call_command("score", run=run.pk, inline=True, stdout=out)
    return out.getvalue()


def _activations(run: Run) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """Every context's neuron activations [C, L, 48], SAE features [C, L, 64], valid mask [C, L]
    and the Context ids in index order, from a direct forward pass."""
    model, corpus = run.model, run.corpus
    arch = hooks.architecture_for(model.config["model_type"])
    torch_model = load_torch_model(model.location, Path("/nonexistent"), arch.causal, "cpu", "float32")
    rows = list(Context.objects.filter(corpus=corpus).order_by("index").values_list("index", "tokens", "pk"))
    batch = make_batch([i for i, _, _ in rows], [decode_tokens(bytes(t)) for _, t, _ in rows],
                       corpus.context_length, set(corpus.tokenizer.special_ids), True, 0)
    captured: dict[str, torch.Tensor] = {}
    with hooks.capture(torch_model, arch, [HOOK], model.n_layers, captured.__setitem__):
        hooks.forward(torch_model, batch.ids, batch.attention_mask)
    sae = files.read_dir(Path(model.location).parent / "sae")
    acts = captured[HOOK].detach()
    return acts, sae.encode(acts).detach(), ~batch.invalid, [pk for _, _, pk in rows]


def _scores(source: str, name: str) -> dict[int, Score]:
    rows = Score.objects.filter(unit__source__name=source, name=name, version=VERSION).select_related("unit")
    return {s.unit.index: s for s in rows}


def _relations(source: str, kind: str) -> dict[int, list[tuple[int, float]]]:
    out: dict[int, list[tuple[int, float]]] = {}
    rows = UnitRelation.objects.filter(unit__source__name=source, kind=kind).order_by("unit__index", "rank")
    for unit, other, value in rows.values_list("unit__index", "other__index", "value"):
        out.setdefault(unit, []).append((other, value))
    return out


def _examples(run: Run, source: str, kinds: list[int]) -> dict[int, list[tuple[int, int]]]:
    out: dict[int, list[tuple[int, int]]] = {}
    rows = Example.objects.filter(run=run, unit__source__name=source, kind__in=kinds).order_by(
        "unit__index", "kind", "bucket", "rank")
    for unit, ctx, pos in rows.values_list("unit__index", "context_id", "max_pos"):
        out.setdefault(unit, []).append((ctx, pos))
    return out


def test_unit_scores_equal_brute_force(harvested: Run) -> None:
    run = harvested
    assert "scores:" in _score(run)
    vocab = run.corpus.tokenizer.tokens
    tokens = {pk: decode_tokens(bytes(t)) for pk, t in Context.objects.values_list("pk", "tokens")}
    for source in (HOOK, "feat"):
        density = _scores(source, "density")
        stats = UnitStats.objects.filter(run=run, unit__source__name=source)
        assert len(density) == stats.count() == Source.objects.get(name=source).n_units
        for s in stats.select_related("unit"):
            assert density[s.unit.index].value == s.density and density[s.unit.index].run_id == run.pk
        concentration = _scores(source, "top_token_concentration")
        top = _examples(run, source, [Example.Kind.TOP])
        assert sorted(concentration) == sorted(top)
        for unit, entries in top.items():
            words = Counter(vocab[tokens[c][p]].strip().strip("\u2581\u0120\u010a").strip().casefold()
                            for c, p in entries)
            best = max(words.values())
            assert concentration[unit].value == pytest.approx(best / len(entries))
            assert words[concentration[unit].details["token"]] == best


def _max_value(run: Run, unit: int, context: int) -> float:
    values = set(Example.objects.filter(run=run, unit__source__name=HOOK, unit__index=unit, context_id=context,
                                        kind__in=[Example.Kind.TOP, Example.Kind.INTERVAL])
                 .values_list("max_value", flat=True))
    assert len(values) == 1
    return values.pop()


def test_context_clusters_equal_recomputed_embeddings(harvested: Run) -> None:
    run = harvested
    _score(run)
    clusters = _scores(HOOK, "context_cluster_polysemanticity")
    examples = _examples(run, HOOK, [Example.Kind.TOP, Example.Kind.INTERVAL])
    eligible = sorted(u for u, e in examples.items() if len(e) >= 6)
    assert sorted(clusters) == eligible and len(eligible) >= 10
    tokenizer = load_tokenizer(run.model.location, Path("/nonexistent"))
    embedder = SentenceEmbedder(Path("/nonexistent"))
    tokens = {pk: decode_tokens(bytes(t)) for pk, t in Context.objects.values_list("pk", "tokens")}

    def window(ids: list[int], p: int) -> str:
        return str(tokenizer.decode(ids[max(0, p - WINDOW): p + WINDOW + 1], skip_special_tokens=True)).strip()

    # The common component: COMMON_WINDOWS windows of the corpus, the same on every call.
    common_texts = common_windows(run, tokenizer)
    assert len(common_texts) == COMMON_WINDOWS and common_texts == common_windows(run, tokenizer)
    special = set(run.corpus.tokenizer.special_ids)
    every = {window(ids, p) for ids in tokens.values() for p, t in enumerate(ids) if t not in special}
    assert set(common_texts) <= every
    common = embedder.embed(common_texts).mean(dim=0)
    for unit in eligible[:4]:
        windows = [window(tokens[c], p) for c, p in examples[unit]]
        # Each example counts by the unit's activation on it (its top and interval rows agree).
        weights = torch.tensor([_max_value(run, unit, c) for c, _ in examples[unit]], dtype=torch.float64)
        want = scores.context_cluster_polysemanticity(embedder.embed(windows), weights, common=common)
        assert clusters[unit].value == pytest.approx(want.score, abs=1e-6)
        assert clusters[unit].details["sizes"] == sorted(want.sizes, reverse=True)  # larger cluster first
    assert all(0.0 <= s.value <= 2.0 for s in clusters.values())


def test_comparisons_equal_brute_force(harvested: Run) -> None:
    run = harvested
    _score(run)
    acts, features, valid, context_ids = _activations(run)
    sae = files.read_dir(Path(run.model.location).parent / "sae")
    W_dec = sae.W_dec.detach()
    # The harvest kept correlation sums over every corr_stride-th token of the corpus (contexts
    # are numbered from 0 in order, so token t of context c is global token c * L + t).
    stride = HarvestConfig.from_dict(run.config).corr_stride
    assert stride > 1
    # Several shards, their sums merged into the run's one correlation blob as each completed.
    assert run.n_shards >= 3, run.n_shards
    assert Blob.objects.filter(key=f"run-{run.pk}-correlation").count() == 1
    C, L = valid.shape
    counted = valid & (torch.arange(C * L).view(C, L) % stride == 0)
    x, y = acts[counted], features[counted]  # [T, 48], [T, 64]

    r = torch.corrcoef(torch.cat([x, y], dim=1).T.double())[:48, 48:].nan_to_num(0.0)  # [48, 64]
    for table, matrix in ((_relations(HOOK, "correlation"), r), (_relations("feat", "correlation"), r.T)):
        assert len(table) == len(matrix)
        for unit, kept in table.items():
            order = torch.sort(matrix[unit], descending=True, stable=True).indices[:RELATED].tolist()
            assert [o for o, _ in kept] == order
            assert [v for _, v in kept] == pytest.approx(matrix[unit, order].tolist(), abs=1e-5)

    row_of = {pk: i for i, pk in enumerate(context_ids)}
    index_of = dict(Context.objects.filter(pk__in=context_ids).values_list("pk", "index"))
    fpn = _scores(HOOK, "features_per_neuron")
    spread = _examples(run, HOOK, [Example.Kind.INTERVAL, Example.Kind.RANDOM])
    checked = 0
    for neuron, entries in spread.items():
        rows = sorted({row_of[c] for c, _ in entries})
        fired = valid[rows] & (acts[rows, :, neuron] > 0)  # [R, L]
        contributions = scores.neuron_contributions(features[rows][fired], W_dec, neuron)
        if float(contributions.abs().sum()) > 0:
            assert fpn[neuron].value == pytest.approx(scores.features_per_neuron(contributions), rel=1e-5)
            assert fpn[neuron].details["tokens"] == int(fired.sum())
            assert fpn[neuron].details["top"][0]["feature"] == scores.top_contributors(contributions, 1)[0][0]
            # The interval: a jackknife over the neuron's contexts grouped by context index mod 5.
            group = torch.tensor([index_of[context_ids[r]] % 5 for r in rows])[:, None].expand(fired.shape)[fired]
            totals = torch.stack([contributions[group == g].abs().sum(dim=0) for g in range(5)])
            _, low, high = scores.features_per_neuron_interval(totals)
            assert fpn[neuron].details["interval"] == pytest.approx([float(low), float(high)], rel=1e-4, abs=1e-6)
            assert fpn[neuron].details["explained_share"] == pytest.approx(
                float(scores.explained_share(contributions.abs().sum(dim=0))), rel=1e-5)
            checked += 1
    assert checked >= 20 and len(fpn) == checked
    npf = _scores("feat", "neurons_per_feature")
    assert [npf[f].value for f in range(64)] == pytest.approx(scores.neurons_per_feature(W_dec).tolist())

    top_n, top_f = _examples(run, HOOK, [Example.Kind.TOP]), _examples(run, "feat", [Example.Kind.TOP])
    sets_n = [{c for c, _ in top_n.get(u, [])} for u in range(48)]
    sets_f = [{c for c, _ in top_f.get(u, [])} for u in range(64)]
    jaccard = torch.tensor([[scores.top_context_overlap(sorted(a), sorted(b)) for b in sets_f] for a in sets_n],
                           dtype=torch.float64)
    for table, matrix in ((_relations(HOOK, "context_overlap"), jaccard),
                          (_relations("feat", "context_overlap"), jaccard.T)):
        assert table and all(len(kept) <= RELATED for kept in table.values())
        for unit in range(len(matrix)):
            ranked = torch.sort(matrix[unit], descending=True, stable=True).indices[:RELATED].tolist()
            want = [(o, float(matrix[unit, o])) for o in ranked if matrix[unit, o] > 0]
            assert [(o, pytest.approx(v)) for o, v in table.get(unit, [])] == want

    quality = Sae.objects.get(source__name="feat").quality["superposition"]
    alive = torch.tensor([s > 0 for s in UnitStats.objects.filter(run=run, unit__source__name="feat").order_by(
        "unit__index").values_list("fire_count", flat=True)])
    assert quality["value"] == pytest.approx(scores.layer_superposition(W_dec, alive))
    assert quality["live"] == int(alive.sum()) and quality["run"] == run.pk


def _snapshot() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    score_rows = sorted(Score.objects.values_list("unit_id", "name", "version", "value", "run_id", "details"),
                        key=repr)
    relation_rows = sorted(UnitRelation.objects.values_list("unit_id", "kind", "rank", "other_id", "value"))
    return score_rows, relation_rows


def test_scoring_twice_gives_the_same_rows(harvested: Run) -> None:
    _score(harvested)
    first = _snapshot()
    assert len(first[0]) > 2 * (48 + 64) and Counter(r[1] for r in first[1])["correlation"] == (48 + 64) * RELATED
    _score(harvested)
    assert _snapshot() == first
    assert not Score.objects.values("unit", "name", "version").annotate(n=Count("id")).filter(n__gt=1).exists()


def test_refuses_unknown_and_unfinished_runs(harvested: Run) -> None:
    with pytest.raises(CommandError, match="no run"):
        call_command("score", run=99999, inline=True, stdout=io.StringIO())
    Run.objects.filter(pk=harvested.pk).update(status=Run.Status.HARVESTING)
    with pytest.raises(CommandError, match="not done"):
        call_command("score", run=harvested.pk, inline=True, stdout=io.StringIO())
    assert not Score.objects.exists()


def test_deleting_a_run_deletes_its_correlation_blob(harvested: Run) -> None:
    from browser.runs.services import run_delete

    assert Blob.objects.filter(key=f"run-{harvested.pk}-correlation").exists()
    run_delete(run=harvested)
    assert not Blob.objects.filter(key__startswith=f"run-{harvested.pk}-").exists()


def _window_texts(run: Run) -> set[str]:
    """Every distinct window the job embeds, worked out from the stored examples: the top and
    interval examples of each unit with at least six (the tiny config keeps fewer than 24 of
    each), and the corpus's common windows."""
    tokenizer = load_tokenizer(run.model.location, Path("/nonexistent"))
    tokens = {pk: decode_tokens(bytes(t)) for pk, t in Context.objects.values_list("pk", "tokens")}
    texts = set(common_windows(run, tokenizer))
    for source in (HOOK, "feat"):
        for entries in _examples(run, source, [Example.Kind.TOP, Example.Kind.INTERVAL]).values():
            if len(entries) >= 6:
                texts |= {str(tokenizer.decode(tokens[c][max(0, p - WINDOW): p + WINDOW + 1],
                                               skip_special_tokens=True)).strip() for c, p in entries}
    return texts


def test_each_window_is_embedded_once_across_jobs(harvested: Run) -> None:
    from browser.search.models import WindowEmbedding
    from workers.pipeline.scores import scores_compute

    run = harvested
    first_texts = _window_texts(run)
    first = scores_compute(run_id=run.pk, progress=lambda *args: None)
    assert first["windows_embedded"] == len(first_texts) == WindowEmbedding.objects.count() > 100
    rows = _snapshot()
    second = scores_compute(run_id=run.pk, progress=lambda *args: None)
    assert (second["windows_embedded"], second["windows_cached"]) == (0, len(first_texts))
    assert _snapshot() == rows  # cached vectors give exactly the same scores
    # Change one token in the middle of one example's window: only the windows that now read
    # differently are embedded.
    context_id, pos = _examples(run, HOOK, [Example.Kind.TOP])[0][0]
    context = Context.objects.get(pk=context_id)
    ids = decode_tokens(bytes(context.tokens))
    ids[pos] = next(t for t in range(1000, 2000) if t != ids[pos])
    context.tokens = torch.tensor(ids, dtype=torch.int32).numpy().tobytes()
    context.save(update_fields=["tokens"])
    changed = _window_texts(run) - first_texts
    third = scores_compute(run_id=run.pk, progress=lambda *args: None)
    assert third["windows_embedded"] == len(changed) >= 1
    assert WindowEmbedding.objects.count() == len(first_texts | changed)


def test_a_finished_harvest_queues_the_search_embeddings(harvested: Run) -> None:
    """Semantic search describes a unit by its top contexts: finalize queues one embed_source job
    per source of the run, and running it gives every unit of the source a vector."""
    from browser.runs.models import Job
    from browser.search.models import UnitEmbedding
    from workers.tasks_search import embed_source_work

    jobs = {job.params["source_id"]: job for job in Job.objects.filter(title__startswith="search vectors")}
    sources = {s.pk: s for s in harvested.sources.all()}
    assert sorted(jobs) == sorted(sources) and all(j.status == Job.Status.QUEUED for j in jobs.values())
    source = Source.objects.get(name=HOOK)
    assert run_here(embed_source_work, jobs[source.pk], io.StringIO()).status == Job.Status.SUCCEEDED
    assert UnitEmbedding.objects.filter(unit__source=source).exclude(vector=b"").count() == source.n_units


def test_search_embeddings_wait_behind_a_score_job_queued_after_them(harvested: Run,
                                                                       django_capture_on_commit_callbacks: Any) -> None:
    """The demo queues its score job a moment after the harvest has queued its sources' search
    embeddings, on the same queue: the worker takes the score job first (the embeddings go at the
    lowest priority), whatever the order they were sent in."""
    from tests.conftest import purge_queues
    from workers.celery import app, queue
    from workers.queueing import EMBED_SOURCE, run_queue_embeddings

    purge_queues()
    try:
        with django_capture_on_commit_callbacks(execute=True):
            job_ids = run_queue_embeddings(run_id=harvested.pk)
        app.send_task("workers.tasks.score_run", args=[0])
        taken = []
        with app.connection_for_write() as conn:
            while (message := conn.default_channel.basic_get(queue("gpu"), no_ack=True)) is not None:
                taken.append((message.headers["task"], message.decode()[0]))
    finally:
        purge_queues()
    assert taken[0] == ("workers.tasks.score_run", [0])
    assert taken[1:] == [(EMBED_SOURCE, [job_id]) for job_id in job_ids] and len(job_ids) == 2
