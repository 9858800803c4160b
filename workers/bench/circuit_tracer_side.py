"""circuit-tracer's half of ``bench graph_ct``: run by *another* Python (a virtual
environment with ``circuit-tracer`` installed), never imported by the product.

    PYTHON workers/bench/circuit_tracer_side.py MODEL_DIR TRANSCODER_DIR K TOKENS_JSON OUT.pt [THREADS]

MODEL_DIR is a plain transformers directory (LlamaForCausalLM), TRANSCODER_DIR holds one
``layer_N.safetensors`` per layer in circuit-tracer's layout (the product's ``export_sae --layout
circuit-tracer``). circuit-tracer's own loader knows ReLU and JumpReLU layer files only, so each layer
is built here as its ``SingleLayerTranscoder`` with its own ``TopK(K)`` activation. Writes the graph
(active features, activation values, dense adjacency, logit targets and probabilities) and the
seconds ``attribute`` took. THREADS sets torch's CPU threads (0 or absent: torch's own).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

BATCH = 64  # rows per backward pass, as the product's side uses


def run_side(model_dir: str, transcoder_dir: str, k: int, tokens_json: str, out: str, threads: int | None = None) -> None:
    import torch
    from circuit_tracer import attribute
    from circuit_tracer.replacement_model import ReplacementModel
    from circuit_tracer.transcoder.activation_functions import TopK
    from circuit_tracer.transcoder.single_layer_transcoder import SingleLayerTranscoder, TranscoderSet
    from safetensors.torch import load_file

    if threads:
        torch.set_num_threads(threads)
    files = sorted(Path(transcoder_dir).glob("layer_*.safetensors"), key=lambda p: int(p.stem.split("_")[1]))
    layers: dict[int, SingleLayerTranscoder] = {}
    for path in files:
        tensors = load_file(str(path))
        layer = int(path.stem.split("_")[1])
        d_sae, d_model = tensors["W_enc"].shape
        tc = SingleLayerTranscoder(d_model, d_sae, TopK(k), layer, skip_connection="W_skip" in tensors,
                                   device=torch.device("cpu"), dtype=torch.float32)
        tc.load_state_dict({name: t for name, t in tensors.items() if name in dict(tc.named_parameters())})
        layers[layer] = tc
    transcoders = TranscoderSet(layers, feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out")
    loaded = time.perf_counter()
    model = ReplacementModel.from_pretrained_and_transcoders(model_dir, transcoders, backend="nnsight",
                                                             device=torch.device("cpu"), dtype=torch.float32)
    model_s = time.perf_counter() - loaded
    ids = torch.tensor(json.loads(tokens_json))
    attribute(ids[:4], model, max_n_logits=10, desired_logit_prob=0.95, batch_size=BATCH)  # warm up
    started = time.perf_counter()
    graph = attribute(ids, model, max_n_logits=10, desired_logit_prob=0.95, batch_size=BATCH)
    seconds = time.perf_counter() - started
    torch.save({"input_tokens": graph.input_tokens, "active_features": graph.active_features, "activation_values": graph.activation_values,
                "selected_features": graph.selected_features, "adjacency": graph.adjacency_matrix,
                "logit_tokens": torch.tensor([int(t.vocab_idx) for t in graph.logit_targets]),
                "logit_probs": graph.logit_probabilities, "seconds": seconds, "model_load_s": model_s, "threads": torch.get_num_threads(),
                "n_pos": graph.n_pos}, out)


if __name__ == "__main__":
    run_side(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5],
             int(sys.argv[6]) if len(sys.argv) > 6 else None)
