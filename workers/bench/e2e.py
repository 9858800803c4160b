"""`bench e2e`: a whole harvest run (shards + finalize) as a user runs it, against the bare trunk.

SmolLM2, ``blocks.15.hook_resid_post`` (576 residual dimensions) and a random 16,384-latent TopK
SAE (k 32) made by seeded code, written in the SAELens layout and imported as a user imports one;
the shared Shakespeare corpus cut to 45k (and 180k) tokens in 128-token contexts. In one process:
the bare trunk stopped after layer 15 over the corpus's contexts, then ``harvest --inline``.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from django.conf import settings
from django.core.management import call_command

from browser.catalog.models import Model, Sae
from browser.corpora.models import Context, Corpus
from browser.corpora.selectors import decode_tokens
from browser.examples.models import Example
from browser.runs.models import Run
from browser.runs.services import run_delete
from fixtures.tiny_sae import random_sae
from workers.bench.harvest import vm_hwm_mb
from workers.compute import hooks, loading
from workers.compute.harvest import make_batch
from workers.compute.sae import files
from workers.pipeline.loader import model_on
from workers.pipeline.models import model_register
from workers.pipeline.saes import sae_import

MODEL = "smollm2-135m"
HOOK = "blocks.15.hook_resid_post"
SAE_NAME = "bench-e2e-topk-16k"
CONTEXT_LENGTH = 128
BATCH = 32

HELP = "a whole harvest (shards + finalize) of SmolLM2 layer 15 + a 16k SAE against the bare trunk"


def add_arguments(parser: Any) -> None:
    parser.add_argument("--tokens", type=int, default=45_000, help="tokens of the main run")
    parser.add_argument("--tokens-large", type=int, default=180_000, help="tokens of the second run (0: none)")
    parser.add_argument("--shard-contexts", type=int, default=2048, help="contexts per shard")


def main(opts: dict[str, Any], log: Any) -> dict[str, Any]:
    if opts["tokens"] < 4096 or (opts["tokens_large"] and opts["tokens_large"] < 4096):
        raise ValueError("--tokens and --tokens-large must be at least 4096 (or --tokens-large 0)")
    model = Model.objects.filter(name=MODEL).first() or model_register(location=MODEL, name=MODEL)
    _sae(model)
    result: dict[str, Any] = {"model": MODEL, "hook": HOOK, "sae_width": 16_384, "sae_k": 32,
                              "context_length": CONTEXT_LENGTH, "batch_size": BATCH,
                              "threads": torch.get_num_threads()}
    main_run = measure(model, opts["tokens"], opts["shard_contexts"], log)
    result.update(main_run)
    if opts["tokens_large"]:
        large = measure(model, opts["tokens_large"], opts["shard_contexts"], log)
        result.update({f"{key}_large": value for key, value in large.items()})
        result["e2e_vs_bare_180k"] = large["e2e_vs_bare"]
    result["peak_rss_mb"] = round(vm_hwm_mb(), 1)
    return result


def measure(model: Model, n_tokens: int, shard_contexts: int, log: Any) -> dict[str, Any]:
    """The bare trunk before and after the harvest (their mean: load from other processes moves
    both), in wall and this process's CPU seconds."""
    corpus = _corpus(model, n_tokens, log)
    log.write(f"{corpus.name}: {corpus.n_tokens:,} tokens in {corpus.n_contexts:,} contexts; bare trunk...\n")
    bare_before = bare_trunk(model, corpus)
    for run in Run.objects.filter(model=model, corpus=corpus):
        run_delete(run=run)  # the same configuration is not computed twice: start afresh
    log.write(f"bare trunk {corpus.n_tokens / bare_before[0]:.0f} tokens/s; harvest --inline...\n")
    start, start_cpu = time.perf_counter(), time.process_time()
    call_command("harvest", model=MODEL, corpus=corpus.name, hooks=HOOK, saes=SAE_NAME, inline=True,
                 shard_contexts=shard_contexts, stdout=log)
    total_s, total_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    bare_after = bare_trunk(model, corpus)
    bare_s, bare_cpu = ((a + b) / 2 for a, b in zip(bare_before, bare_after, strict=True))
    run = Run.objects.select_related("job").get(model=model, corpus=corpus)
    if run.status != Run.Status.DONE or run.job is None:
        raise RuntimeError(f"the bench run ended {run.status}: {run.error}")
    phases = run.job.params.get("finalize_s", {})
    finalize_s = sum(phases.values())
    log.write(f"harvest {total_s:.1f} s (finalize {finalize_s:.1f} s: {phases}); bare after {bare_after[0]:.1f} s\n")
    return {
        "tokens": corpus.n_tokens, "contexts": corpus.n_contexts, "shards": run.n_shards,
        "bare_s": round(bare_s, 2), "bare_s_before_after": [round(bare_before[0], 2), round(bare_after[0], 2)],
        "bare_tokens_per_s": round(corpus.n_tokens / bare_s, 1),
        "e2e_s": round(total_s, 2), "e2e_tokens_per_s": round(corpus.n_tokens / total_s, 1),
        "e2e_vs_bare": round(bare_s / total_s, 3),
        # This process's CPU seconds (PostgreSQL's share of the writes is not in them).
        "e2e_vs_bare_cpu": round(bare_cpu / total_cpu, 3),
        "shard_s": round(total_s - finalize_s, 2), "finalize_s": round(finalize_s, 2),
        **{f"finalize_{name}_s": round(seconds, 2) for name, seconds in phases.items()},
        "examples": Example.objects.filter(run=run).count(),
    }


def bare_trunk(model: Model, corpus: Corpus) -> tuple[float, float]:
    """Wall and CPU seconds of the trunk stopped after the hook's layer, with a hook that does nothing, over the
    corpus's contexts in the harvest's batches (fetched beforehand: only the model is timed)."""
    torch_model, arch, tok = model_on(model, "cpu")
    special = set(corpus.tokenizer.special_ids)
    rows = list(Context.objects.filter(corpus=corpus).order_by("index").values_list("index", "tokens"))
    batches = [make_batch([i for i, _ in chunk], [decode_tokens(bytes(t)) for _, t in chunk], CONTEXT_LENGTH,
                          special, True, tok.pad_token_id or 0)
               for chunk in (rows[s : s + BATCH] for s in range(0, len(rows), BATCH))]
    with hooks.capture(torch_model, arch, [HOOK], model.n_layers, lambda hook, acts: None):
        hooks.forward(torch_model, batches[0].ids, batches[0].attention_mask)  # warm up
        start, start_cpu = time.perf_counter(), time.process_time()
        for batch in batches:
            hooks.forward(torch_model, batch.ids, batch.attention_mask)
    return time.perf_counter() - start, time.process_time() - start_cpu


def _sae(model: Model) -> Sae:
    """The random SAE, written in the SAELens layout and imported from there (once)."""
    existing = Sae.objects.filter(source__model=model, source__name=SAE_NAME).first()
    if existing is not None:
        return existing
    sae = random_sae(model.d_model, 16_384, architecture="topk", k=32, seed=0, hook_name=HOOK)
    with tempfile.TemporaryDirectory() as folder:
        files.write_dir(sae, Path(folder))
        return sae_import(model=model, path=Path(folder), name=SAE_NAME)


def _corpus(model: Model, n_tokens: int, log: Any) -> Corpus:
    """The shared corpus's first scenes, the last one cut, to about ``n_tokens`` tokens (imported once)."""
    name = f"bench-e2e-{n_tokens // 1000}k"
    existing = Corpus.objects.filter(name=name, status=Corpus.Status.READY).first()
    if existing is not None:
        return existing
    source = Path(settings.BASE_DIR).parent / "shared" / "corpora" / "shakespeare.jsonl"
    if not source.exists():
        raise ValueError(f"the shared corpus is missing: {source}")
    tok = loading.load_tokenizer(model.location, Path(settings.CACHE_DIR))
    lines, count = [], 0
    for line in source.read_text().splitlines():
        if not line.strip():
            continue
        scene = json.loads(line)
        ids = tok(scene["text"], add_special_tokens=False)["input_ids"]
        # Each 128-token context also holds a BOS: count text tokens at 127 a context.
        room = n_tokens * (CONTEXT_LENGTH - 1) // CONTEXT_LENGTH - count
        if len(ids) > room:
            scene["text"] = tok.decode(ids[:room])
        lines.append(json.dumps(scene))
        count += min(len(ids), room)
        if count >= n_tokens * (CONTEXT_LENGTH - 1) // CONTEXT_LENGTH:
            break
    log.write(f"importing {name} ({len(lines)} scenes)...\n")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{name}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        call_command("import_corpus", str(path), name=name, tokenizer=model.name, context_length=CONTEXT_LENGTH,
                     inline=True, stdout=log)
    return Corpus.objects.get(name=name)
