"""`bench graph_ct`: our transcoder-basis attribution graph against circuit-tracer's on the same model,
prompt and transcoders, node for node, timed side by side.

circuit-tracer is never a dependency of the product: ``--python`` names another interpreter (a
virtual environment with ``circuit-tracer`` installed; docs/design.md, "Against circuit-tracer", says how), which runs
``workers/bench/circuit_tracer_side.py``. Both sides read the same files: SmolLM2 as a plain
transformers directory and seeded TopK transcoders on every layer (``fixtures.tiny_sae.random_sae``,
written with ``export_sae``'s circuit-tracer layout). Random transcoders are enough: the comparison is
of the attribution (which features are nodes, their values, the edges), not of transcoder quality.

Compared on the nodes both graphs have: feature activations, feature->feature and token->feature
edges (the direct effects on a feature's pre-activation through frozen attention and norms), and
the logit targets. What is known to differ by definition, reported, not counted as a mismatch:
circuit-tracer zeroes every feature at position 0 (the BOS attention sink) and gives that
position's error nodes no edges; its logit nodes are demeaned logits (the unembedding column minus
the vocabulary mean), ours are the logits themselves; its error nodes leave the decoder bias to the
bias term, ours count it in the error; it keeps active features that cannot reach the targets (the
last layer before the last position), which ours never selects.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from django.conf import settings

from fixtures.tiny_sae import random_sae
from workers.bench.graph import FIXTURE
from workers.compute.attribution import build_graph
from workers.compute.graph_config import GraphConfig
from workers.compute.loading import local_files
from workers.compute.sae.files import write_circuit_tracer
from workers.compute.steering import cpu_threads
from workers.pipeline import loader
from workers.pipeline.graphs import GRAPH_THREADS
from workers.pipeline.models import model_get_or_register

HELP = ("our transcoder-basis attribution graph vs circuit-tracer's (run by --python, another "
        "environment) on SmolLM2, the same prompt and seeded transcoders: node sets, activations, "
        "edges, seconds side by side")
SIDE = Path(__file__).with_name("circuit_tracer_side.py")


def add_arguments(parser: Any) -> None:
    parser.add_argument("--python", required=True,
                        help="a Python with circuit-tracer installed (never this product's environment)")
    parser.add_argument("--tokens", type=int, default=8, help="prompt length in tokens")
    parser.add_argument("--width", type=int, default=256, help="transcoder width")
    parser.add_argument("--k", type=int, default=2, help="TopK's k (every layer x position x k features are active)")
    parser.add_argument("--threads", type=int, default=GRAPH_THREADS,
                        help="CPU threads of our side (default: the graph pipeline's own setting; 0: torch's own)")
    parser.add_argument("--ct-threads", type=int, default=None,
                        help="CPU threads of circuit-tracer's side (default: the same as --threads; 0: torch's own)")


def compat_model_dir(source: Path, target: Path) -> Path:
    """The model directory written the way transformers 4.5x (circuit-tracer's pin) reads it: the
    rope base under its old name, a tokenizer class it knows, safetensors metadata and the tied
    embedding stored under both names."""
    from safetensors.torch import load_file, save_file

    target.mkdir(parents=True, exist_ok=True)
    config = json.loads((source / "config.json").read_text())
    if "rope_parameters" in config:
        config["rope_theta"] = config["rope_parameters"]["rope_theta"]
    config["architectures"] = ["LlamaForCausalLM"]
    (target / "config.json").write_text(json.dumps(config, indent=1))
    tok_config = json.loads((source / "tokenizer_config.json").read_text())
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    (target / "tokenizer_config.json").write_text(json.dumps(tok_config))
    (target / "tokenizer.json").write_bytes((source / "tokenizer.json").read_bytes())
    tensors = load_file(str(source / "model.safetensors"))
    if "model.embed_tokens.weight" not in tensors:
        tensors["model.embed_tokens.weight"] = tensors["lm_head.weight"].clone()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(target / "model.safetensors"), metadata={"format": "pt"})
    return target


def compare(ours: Any, theirs: dict[str, Any]) -> dict[str, Any]:
    """Node sets, activations and edges on the nodes both graphs have (see the module docstring)."""
    units, n_ct = ours.units.tolist(), len(theirs["active_features"])
    layout = ours.layout
    o_index = {tuple(u): i for i, u in enumerate(units)}
    c_index = {tuple(u): i for i, u in enumerate(theirs["active_features"].tolist())}
    common = sorted(set(o_index) & set(c_index))
    oi = torch.tensor([o_index[u] for u in common])
    ci = torch.tensor([c_index[u] for u in common])
    t = layout.tokens
    o_tok = torch.arange(layout.units + layout.errors, layout.units + layout.errors + t)
    c_tok = torch.arange(n_ct + layout.errors, n_ct + layout.errors + t)
    a_o, a_c = ours.adjacency, theirs["adjacency"]

    def gap(rows_o: torch.Tensor, cols_o: torch.Tensor, rows_c: torch.Tensor, cols_c: torch.Tensor) -> dict[str, float]:
        mine, other = a_o[rows_o][:, cols_o], a_c[rows_c][:, cols_c]
        scale = float(other.abs().max())
        return {"max_abs_diff": float((mine - other).abs().max()), "max_abs": scale}

    last_layer = layout.errors // t - 1
    only_ct = set(c_index) - set(o_index)
    return {
        "our_units": len(units), "ct_features": n_ct, "common": len(common),
        "ours_only_at_position_0": sum(1 for u in o_index if u[1] == 0 and u not in c_index),
        "ours_only_elsewhere": sum(1 for u in o_index if u[1] != 0 and u not in c_index),
        "ct_only_unreachable": sum(1 for u in only_ct if u[0] == last_layer and u[1] < t - 1),
        "ct_only_other": sum(1 for u in only_ct if not (u[0] == last_layer and u[1] < t - 1)),
        "activation_max_abs_diff": float((ours.values[oi] - theirs["activation_values"][ci]).abs().max()),
        "same_tokens": ours.tokens == theirs["input_tokens"].tolist(),
        "same_logit_targets": ours.logit_tokens.tolist() == theirs["logit_tokens"].tolist(),
        "feature_to_feature": gap(oi, oi, ci, ci), "token_to_feature": gap(oi, o_tok, ci, c_tok),
    }


def main(opts: dict[str, Any], stderr: Any) -> dict[str, Any]:
    if not 2 <= opts["tokens"] <= 64 or not 1 <= opts["k"] <= opts["width"]:
        raise ValueError("--tokens must be 2-64 and --k between 1 and --width")
    row = model_get_or_register("smollm2-135m")
    model, _, tokenizer = loader.model_on(row, "cpu")
    text = json.loads(FIXTURE.read_text().splitlines()[0])["text"]
    # circuit-tracer puts a special token first when the prompt has none (position 0 is the attention
    # sink it leaves out); both sides get the same ids, BOS first.
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.pad_token_id
    ids = torch.tensor([bos, *tokenizer(text)["input_ids"][:opts["tokens"] - 1]])
    n_layers, d_model = row.n_layers, row.d_model
    transcoders = {layer: random_sae(d_model, opts["width"], k=opts["k"], seed=layer,
                                     hook_name=f"blocks.{layer}.mlp.hook_in", apply_b_dec_to_input=False,
                                     transcoder=True).eval() for layer in range(n_layers)}
    with tempfile.TemporaryDirectory(prefix="graph-ct-") as tmp:
        folder = Path(tmp)
        for tc in transcoders.values():
            write_circuit_tracer(tc, folder / "transcoders")
        stderr.write("writing the model for transformers 4.5x...\n")
        model_dir = compat_model_dir(Path(local_files(row.location, Path(settings.CACHE_DIR))), folder / "model")
        stderr.write("circuit-tracer...\n")
        subprocess.run([opts["python"], str(SIDE), str(model_dir), str(folder / "transcoders"), str(opts["k"]),
                        json.dumps(ids.tolist()), str(folder / "ct.pt"),
                        str(opts["threads"] if opts["ct_threads"] is None else opts["ct_threads"])],
                       check=True, timeout=3600)
        theirs = torch.load(folder / "ct.pt", weights_only=False)
    stderr.write(f"circuit-tracer: {theirs['seconds']:.1f} s; ours...\n")
    config = GraphConfig(basis="transcoder", saes=tuple((layer, "bench") for layer in range(n_layers)),
                         max_units=min(2048, n_layers * len(ids) * opts["k"]), batch_size=64)
    with cpu_threads(opts["threads"] or None):
        build_graph(model, ids[:4], GraphConfig(basis="transcoder", saes=config.saes, max_units=8), saes=transcoders)
        started = time.perf_counter()
        ours = build_graph(model, ids, config, saes=transcoders)
        our_s = time.perf_counter() - started
        threads = torch.get_num_threads()
    return {"tokens": len(ids), "width": opts["width"], "k": opts["k"], "threads": threads,
            "ct_threads": theirs.get("threads"), "our_s": round(our_s, 2),
            "ct_s": round(float(theirs["seconds"]), 2), "our_vs_ct_time": round(our_s / float(theirs["seconds"]), 2),
            "our_phases_s": {k: round(v, 2) for k, v in ours.timings.items()}, **compare(ours, theirs)}
