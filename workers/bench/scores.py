"""`bench scores`: the score job's throughput on a demo-like run (MiniLM over the fixture corpus,
the neurons of one MLP layer and an SAE on them), and the cost of streaming correlation sums
inside a harvest pass (the same batches with and without them, timed side by side per batch)."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from django.conf import settings
from django.core.management import call_command

from browser.catalog.models import Source
from browser.corpora.models import Corpus
from browser.runs.models import Run
from browser.search.services import window_embeddings_clear
from fixtures.tiny_sae import random_sae
from workers.bench import timing
from workers.bench.harvest import CONTEXT_LENGTH, MODEL, make_batches
from workers.cli import run_here
from workers.compute import hooks, loading
from workers.compute.config import HarvestConfig
from workers.compute.correlation import CorrelationAccumulator
from workers.compute.embed import EMBEDDER
from workers.compute.harvest import CorrelationPair, SourceRuntime, TokenBatch, harvest_pass
from workers.compute.sae.model import SparseAutoencoder
from workers.compute.sae.stats import SparseUnitAccumulator
from workers.compute.stats import UnitAccumulator
from workers.pipeline.harvest import harvest_create, neuron_sources
from workers.pipeline.models import model_get_or_register
from workers.pipeline.saes import sae_register, sae_sources
from workers.pipeline.scores import scores_compute
from workers.tasks import harvest_work

HOOK = "blocks.2.mlp.hook_post"
N_LAYERS = 6
D_MLP = 1536
CORPUS = "bench-scores"
SAE_NAME = "bench-scores-sae"
FIXTURE = Path(settings.BASE_DIR) / "fixtures" / "shakespeare-small.jsonl"

HELP = "score job units/s on MiniLM neurons + an SAE over the fixture corpus; harvest with correlation sums vs without"


def add_arguments(parser: Any) -> None:
    parser.add_argument("--sae-width", type=int, default=4096, help="latents of the (random TopK) SAE")
    parser.add_argument("--harvest-tokens", type=int, default=16_384, help="tokens per timed harvest pass")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--cold", action="store_true",
                        help="empty the window-embedding cache first, so the first job embeds every window")
    parser.add_argument("--no-harvest", action="store_true", help="skip the harvest-with-correlation timing")


def main(opts: dict[str, Any], log: Any) -> dict[str, Any]:
    if opts["sae_width"] < 1 or opts["harvest_tokens"] < CONTEXT_LENGTH or opts["rounds"] < 1:
        raise ValueError("--sae-width and --rounds must be positive, --harvest-tokens at least one context")
    result: dict[str, Any] = {"model": MODEL, "hook": HOOK, "threads": torch.get_num_threads()}
    result.update(bench_score_job(opts["sae_width"], opts["cold"], log))
    if not opts["no_harvest"]:
        result.update(bench_correlation(opts, log))
    return result


# ---- the score job ------------------------------------------------------------------------------
def demo_run(sae_width: int, log: Any) -> Run:
    """The finished harvest run of the layer's neurons and a random TopK SAE on them over the
    fixture corpus: reused when this database already has it, else built (a few minutes on CPU)."""
    model = model_get_or_register(MODEL)
    if not Corpus.objects.filter(name=CORPUS).exists():
        log.write(f"importing {FIXTURE.name} as {CORPUS}...\n")
        call_command("import_corpus", str(FIXTURE), name=CORPUS, tokenizer=MODEL, context_length=CONTEXT_LENGTH,
                     inline=True, stdout=io.StringIO())
    sae_name = f"{SAE_NAME}-{sae_width}"
    if not Source.objects.filter(model=model, name=sae_name).exists():
        sae_register(model=model, name=sae_name,
                     sae=random_sae(D_MLP, sae_width, architecture="topk", k=32, seed=0, hook_name=HOOK))
    config = HarvestConfig(sources=neuron_sources([HOOK]) + sae_sources(model, [sae_name]))
    run, _ = harvest_create(model=model, corpus=Corpus.objects.get(name=CORPUS), config=config)
    if run.status != Run.Status.DONE:
        log.write(f"harvesting run #{run.pk}...\n")
        run_here(harvest_work, run.job, io.StringIO())  # type: ignore[arg-type]
        run.refresh_from_db()
    if run.status != Run.Status.DONE:
        raise RuntimeError(f"the bench run #{run.pk} did not finish: {run.error}")
    return run


def bench_score_job(sae_width: int, cold: bool, log: Any) -> dict[str, Any]:
    """Time the score job's work function in this process twice (every score, relation and the
    layer superposition; it replaces its rows, so a rerun redoes the same work): the first job
    embeds the windows the cache lacks (all of them with ``cold``), the second finds every one.
    ``units_per_s_without_embedding`` leaves out the embedding-based score (windows, cache, 2-means)."""
    run = demo_run(sae_width, log)
    units = sum(s.n_units for s in run.sources.all())
    if cold:
        log.write(f"emptied the window cache ({window_embeddings_clear(embedder=EMBEDDER)} windows)\n")
    out: dict[str, Any] = {"run": run.pk, "contexts": run.corpus.n_contexts, "units": units, "sae_width": sae_width}
    for name in ("first", "second"):
        log.write(f"scoring run #{run.pk} ({units} units), {name} job...\n")
        start = time.perf_counter()
        counts = scores_compute(run_id=run.pk, progress=lambda *args: None)
        seconds = time.perf_counter() - start
        embedding = float(counts["embedding_scores_s"])
        out.update({
            f"{name}_job_s": round(seconds, 2), f"{name}_units_per_s": round(units / seconds, 1),
            f"{name}_windows_embedded": counts["windows_embedded"], f"{name}_windows_cached": counts["windows_cached"],
            f"{name}_embedding_scores_s": round(embedding, 2),
            f"{name}_units_per_s_without_embedding": round(units / max(seconds - embedding, 1e-9), 1)})
    out.update({"score_rows": counts["scores"], "relation_rows": counts["relations"],
                "score_job_s": out["second_job_s"], "units_per_s": out["second_units_per_s"],
                "units_per_s_without_embedding": out["second_units_per_s_without_embedding"]})
    if out["first_windows_embedded"]:
        out["windows_embedded_per_s"] = round(out["first_windows_embedded"] / max(out["first_embedding_scores_s"], 1e-9), 1)
    return out


# ---- correlation sums inside the harvest pass ----------------------------------------------------
def _harvester(model: Any, arch: hooks.Architecture, sae: SparseAutoencoder,
               stride: int | None) -> Callable[[TokenBatch], None]:
    """Harvests one batch at a time (the layer's neurons and the SAE's latents) into accumulators
    that live across the calls, with correlation sums over every ``stride``-th token (None: none)."""
    runtimes = [SourceRuntime(HOOK, HOOK, D_MLP, 0),
                SourceRuntime("sae", HOOK, sae.cfg.d_sae, 1 << 21, sae.encode, sparse=True)]
    accumulators: dict[str, Any] = {
        HOOK: UnitAccumulator(D_MLP, k=32, samples=6, hist_stride=7, seed=0),
        "sae": SparseUnitAccumulator(sae.cfg.d_sae, k=32, samples=6, hist_stride=7, seed=0, unit_offset=1 << 21)}
    pairs = [] if stride is None else [
        CorrelationPair(HOOK, "sae", CorrelationAccumulator(D_MLP, sae.cfg.d_sae), stride)]
    return lambda batch: harvest_pass(model, arch, N_LAYERS, runtimes, accumulators, [batch], CONTEXT_LENGTH,
                                      correlations=pairs)


def bench_correlation(opts: dict[str, Any], log: Any) -> dict[str, Any]:
    """Per batch, side by side (timing.paired): the harvest without correlation sums and with
    them, at the default stride and over every token."""
    model = loading.load_torch_model(MODEL, Path(settings.CACHE_DIR), False, "cpu", "float32")
    arch = hooks.architecture_for("bert")
    sae = random_sae(D_MLP, opts["sae_width"], architecture="topk", k=32, seed=0, hook_name=HOOK)
    batches = make_batches(opts["harvest_tokens"])
    n = sum(int(b.attention_mask.sum()) for b in batches)
    stride = HarvestConfig(sources=neuron_sources([HOOK])).corr_stride  # the default
    _harvester(model, arch, sae, 1)(batches[0])  # warm up
    out: dict[str, Any] = {"harvest_tokens": n, "corr_stride": stride}
    for name, every in (("", stride), ("_every_token", 1)):
        results = []
        for r in range(opts["rounds"]):
            results.append(timing.paired(batches, _harvester(model, arch, sae, None), _harvester(model, arch, sae, every)))
            log.write(f"stride {every}, round {r + 1}: harvest {n / results[-1].a_wall:.0f} tok/s, with correlation "
                      f"sums {n / results[-1].b_wall:.0f} tok/s, ratio {results[-1].ratio:.3f}\n")
        measured = timing.Rounds(results)
        without, with_corr = measured.tokens_per_s(n)
        if not name:
            out["harvest_tokens_per_s"] = round(without, 1)
        out[f"harvest_with_corr{name}_tokens_per_s"] = round(with_corr, 1)
        # Tokens/s with the sums over tokens/s without: the median of the rounds' ratios.
        out[f"harvest_with_corr{name}_vs_without"] = round(measured.ratio, 3)
        out[f"harvest_with_corr{name}_vs_without_per_round"] = measured.per_round()
    return out
