"""`bench graph_ct`: the comparison of our graph with circuit-tracer's counts what it should, on two
hand-built graphs with planted differences (circuit-tracer itself runs only in the bench)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch

from workers.bench.graph_ct import compare, compat_model_dir
from workers.compute.graph_scores import Layout


def test_compare_matches_nodes_by_layer_position_index_and_separates_the_known_differences() -> None:
    # 2 layers x 3 positions, 2 logits. Ours: a position-0 unit (circuit-tracer zeroes those) and two
    # shared ones; theirs: the shared two (listed in the other order) and a last-layer unit at an
    # earlier position, which cannot reach the targets.
    ours_units = torch.tensor([[0, 0, 5], [0, 1, 7], [1, 2, 3]])
    their_units = torch.tensor([[1, 2, 3], [0, 1, 7], [1, 1, 9]])
    T, E, K = 3, 6, 2
    lay_o = Layout(units=3, errors=E, tokens=T, logits=K)
    n_o, n_c = lay_o.size, 3 + E + T + K
    a_o, a_c = torch.zeros(n_o, n_o), torch.zeros(n_c, n_c)
    a_o[2, 1], a_c[0, 1] = 0.5, 0.5 + 1e-3  # feature (0,1,7) -> feature (1,2,3): off by 1e-3
    a_o[1, 3 + E], a_c[1, 3 + E] = 0.25, 0.25  # token 0 -> feature (0,1,7): equal
    ours = SimpleNamespace(units=ours_units, layout=lay_o, values=torch.tensor([9.0, 1.0, 2.0] + [0.0] * (n_o - 3)),
                           adjacency=a_o, tokens=[1, 2, 3], logit_tokens=torch.tensor([4, 5]))
    theirs = {"active_features": their_units, "activation_values": torch.tensor([2.0, 1.5, 0.7]), "adjacency": a_c,
              "input_tokens": torch.tensor([1, 2, 3]), "logit_tokens": torch.tensor([4, 6])}
    got = compare(ours, theirs)
    assert got["common"] == 2 and got["our_units"] == 3 and got["ct_features"] == 3
    assert got["ours_only_at_position_0"] == 1 and got["ours_only_elsewhere"] == 0
    assert got["ct_only_unreachable"] == 1 and got["ct_only_other"] == 0
    assert got["activation_max_abs_diff"] == 0.5  # (0,1,7): 1.0 against 1.5
    assert abs(got["feature_to_feature"]["max_abs_diff"] - 1e-3) < 1e-6
    assert got["token_to_feature"]["max_abs_diff"] == 0.0
    assert got["same_tokens"] and not got["same_logit_targets"]


def test_compat_model_dir_writes_what_transformers_4_reads(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "llama", "tie_word_embeddings": True,
                                                 "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}}))
    (src / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "TokenizersBackend", "bos_token": "<s>"}))
    (src / "tokenizer.json").write_text("{}")
    head = torch.arange(6.0).reshape(3, 2)
    save_file({"lm_head.weight": head}, str(src / "model.safetensors"))
    out = compat_model_dir(src, tmp_path / "out")
    config = json.loads((out / "config.json").read_text())
    assert config["rope_theta"] == 100000.0 and config["architectures"] == ["LlamaForCausalLM"]
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    tensors = load_file(str(out / "model.safetensors"))
    assert torch.equal(tensors["model.embed_tokens.weight"], head) and torch.equal(tensors["lm_head.weight"], head)
    from safetensors import safe_open
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
