"""`bench graph`: attribution graphs on a causal LM (SmolLM2 by default).

- ``neuron_graph_s``: seconds for one neuron-basis graph of a ``--tokens``-token prompt (clean run,
  unit selection, direct-effect rows, bias terms, pruning and scores), the model already loaded;
- ``feature_graph_s``: the same prompt in the SAE basis, with the SAEs registered on the model's
  ``mlp.hook_post`` points, else with seeded random TopK SAEs (``--sae-width``, ``--sae-k``) on
  ``--sae-layers`` (``feature_basis`` says which: random SAEs time the computation, their scores mean
  nothing); ``feature_nodes``, ``feature_edges``;
- ``transcoder_graph_s``: the same prompt in the transcoder basis, with the transcoders registered on the
  model's ``mlp.hook_in`` points, else seeded random TopK transcoders of the same width and k on the same
  layers (``transcoder_basis`` says which); ``transcoder_nodes``, ``transcoder_edges``;
- ``peak_rss_mb``: the process's peak resident memory (model included); ``graph_rss_mb``: how much
  the neuron-basis graphs added to the peak reached once the model was loaded and run once;
  ``feature_rss_mb``: how much more the feature-basis graph (its SAEs included) added; ``transcoder_rss_mb``:
  how much more the transcoder-basis graph (its transcoders included) added;
- ``replacement_score``, ``completeness``, ``kept_share``, ``selected_share``, ``nodes``, ``edges``
  (kept by pruning) of the ``--tokens`` graph; ``seconds_by_tokens``: the same at 8, 16 and 32 tokens.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Any

import torch
from django.conf import settings

from browser.catalog.models import Source
from fixtures.tiny_sae import random_sae
from workers.compute.attribution import build_graph
from workers.compute.graph_config import GraphConfig
from workers.compute.graph_scores import graph_scores, prune
from workers.compute.steering import cpu_threads
from workers.pipeline import loader
from workers.pipeline.models import model_get_or_register

HELP = "seconds, memory, nodes, edges and scores of a neuron-basis attribution graph; time by prompt length"
FIXTURE = Path(settings.BASE_DIR) / "fixtures" / "shakespeare-small.jsonl"


def add_arguments(parser: Any) -> None:
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--tokens", type=int, default=16, help="prompt length of the graph reported in full")
    parser.add_argument("--lengths", default="8,16,32", help="prompt lengths timed, comma-separated")
    parser.add_argument("--max-units", type=int, default=GraphConfig().max_units)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (the graph pipeline's own setting)")
    parser.add_argument("--sae-layers", default="5,10,15,20,25", help="layers given random SAEs when none is registered")
    parser.add_argument("--sae-width", type=int, default=4096)
    parser.add_argument("--sae-k", type=int, default=32)


def _prompt(tokenizer: Any, length: int) -> torch.Tensor:
    text = json.loads(FIXTURE.read_text().splitlines()[0])["text"]
    return torch.tensor(tokenizer(text)["input_ids"][:length])


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _saes(model_row: Any, opts: dict[str, Any], device: str) -> tuple[dict[int, Any], str]:
    """The SAEs of the feature-basis graph and what they are."""
    sources = Source.objects.filter(model=model_row, kind=Source.Kind.SAE, hook_point__endswith=".mlp.hook_post")
    registered = {s.layer: loader.source_sae(s, device) for s in sources.order_by("-name")}
    if registered:
        return registered, "registered SAEs on layers " + ",".join(str(k) for k in sorted(registered))
    layers = [int(x) for x in opts["sae_layers"].split(",") if x.strip()]
    saes = {layer: random_sae(model_row.d_mlp, opts["sae_width"], k=opts["sae_k"], seed=layer).to(device)
            for layer in layers}
    return saes, (f"seeded random TopK SAEs (width {opts['sae_width']}, k {opts['sae_k']}) on layers "
                  f"{opts['sae_layers']}: no SAE is registered on {model_row.name}; timing only, scores meaningless")


def _transcoders(model_row: Any, opts: dict[str, Any], device: str) -> tuple[dict[int, Any], str]:
    """The transcoders of the transcoder-basis graph and what they are."""
    sources = Source.objects.filter(model=model_row, kind=Source.Kind.TRANSCODER, hook_point__endswith=".mlp.hook_in")
    registered = {s.layer: loader.source_sae(s, device) for s in sources.order_by("-name")}
    if registered:
        return registered, "registered transcoders on layers " + ",".join(str(k) for k in sorted(registered))
    layers = [int(x) for x in opts["sae_layers"].split(",") if x.strip()]
    tcs = {layer: random_sae(model_row.d_model, opts["sae_width"], k=opts["sae_k"], seed=layer,
                             hook_name=f"blocks.{layer}.mlp.hook_in", apply_b_dec_to_input=False,
                             transcoder=True).to(device) for layer in layers}
    return tcs, (f"seeded random TopK transcoders (width {opts['sae_width']}, k {opts['sae_k']}) on layers "
                 f"{opts['sae_layers']}: no transcoder is registered on {model_row.name}; timing only, scores "
                 "meaningless")


def _one(model: Any, ids: torch.Tensor, config: GraphConfig, device: str,
         saes: dict[int, Any] | None = None) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    graph = build_graph(model, ids.to(device), config, saes=saes)
    pruned = prune(graph.adjacency, graph.layout, graph.logit_probs, config.node_threshold, config.edge_threshold)
    replacement, completeness = graph_scores(graph.adjacency, graph.layout, graph.logit_probs)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return seconds, {"replacement_score": round(replacement, 4), "completeness": round(completeness, 4),
                     "kept_share": round(pruned.kept_share, 4), "selected_share": round(graph.selected_share, 4),
                     "nodes": int(pruned.node_mask.sum()), "edges": int(pruned.edge_mask.sum()),
                     "full_nodes": graph.layout.size, "phases_s": {k: round(v, 2) for k, v in graph.timings.items()}}


def main(opts: dict[str, Any], stderr: Any) -> dict[str, Any]:
    device = loader.device_for(opts["device"])
    model_row = model_get_or_register(opts["model"])
    model, _, tokenizer = loader.model_on(model_row, device)
    config = GraphConfig(max_units=opts["max_units"])
    lengths = sorted({int(x) for x in opts["lengths"].split(",") if x.strip()} | {opts["tokens"]})
    with cpu_threads(opts["threads"] if device == "cpu" else None):
        _one(model, _prompt(tokenizer, 4), GraphConfig(max_units=8), device)  # warm up
        loaded_peak = _peak_mb()
        by_tokens: dict[int, float] = {}
        result: dict[str, Any] = {}
        for length in lengths:
            seconds, facts = _one(model, _prompt(tokenizer, length), config, device)
            by_tokens[length] = round(seconds, 2)
            stderr.write(f"{length} tokens: {seconds:.1f} s, {facts['nodes']} nodes, {facts['edges']} edges\n")
            if length == opts["tokens"]:
                result = facts
        neuron_peak = _peak_mb()
        saes, feature_basis = _saes(model_row, opts, device)
        feature_config = GraphConfig(basis="sae", saes=tuple((k, "bench") for k in sorted(saes)),
                                     max_units=opts["max_units"])
        feature_s, feature_facts = _one(model, _prompt(tokenizer, opts["tokens"]), feature_config, device, saes)
        stderr.write(f"feature basis: {feature_s:.1f} s, {feature_facts['nodes']} nodes\n")
        feature_peak = _peak_mb()
        tcs, transcoder_basis = _transcoders(model_row, opts, device)
        tc_config = GraphConfig(basis="transcoder", saes=tuple((k, "bench") for k in sorted(tcs)),
                                max_units=opts["max_units"])
        tc_s, tc_facts = _one(model, _prompt(tokenizer, opts["tokens"]), tc_config, device, tcs)
        stderr.write(f"transcoder basis: {tc_s:.1f} s, {tc_facts['nodes']} nodes\n")
    return {"model": model_row.name, "device": device, "threads": opts["threads"] if device == "cpu" else None,
            "tokens": opts["tokens"], "max_units": opts["max_units"],
            "neuron_graph_s": by_tokens[opts["tokens"]], "feature_graph_s": round(feature_s, 2),
            "feature_basis": feature_basis, "feature_nodes": feature_facts["nodes"],
            "feature_edges": feature_facts["edges"], "feature_replacement_score": feature_facts["replacement_score"],
            "feature_completeness": feature_facts["completeness"],
            "transcoder_graph_s": round(tc_s, 2), "transcoder_basis": transcoder_basis,
            "transcoder_nodes": tc_facts["nodes"], "transcoder_edges": tc_facts["edges"],
            "transcoder_replacement_score": tc_facts["replacement_score"],
            "transcoder_completeness": tc_facts["completeness"],
            "peak_rss_mb": round(_peak_mb(), 1), "graph_rss_mb": round(neuron_peak - loaded_peak, 1),
            "feature_rss_mb": round(feature_peak - neuron_peak, 1), "transcoder_rss_mb": round(_peak_mb() - feature_peak, 1),
            **result, "seconds_by_tokens": by_tokens, "vocab_size": model_row.vocab_size}
