"""SAEs on tensors alone: file formats against references written from the raw files, training
on planted features, the shuffle buffer, quality and relations against brute force."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fixtures.tiny_sae import planted_features, planted_stream, random_sae
from workers.compute.sae import files, quality, relations
from workers.compute.sae.model import SaeConfig, SparseAutoencoder
from workers.compute.sae.train import TrainConfig, shuffled_batches, train


def _write_saelens(path: Path, cfg: dict[str, object], tensors: dict[str, torch.Tensor]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, str(path / "sae_weights.safetensors"))
    return path


def _reference_encode(path: Path, x: torch.Tensor) -> torch.Tensor:
    """SAELens encode written directly from the files, independent of the product's classes."""
    cfg = json.loads((path / "cfg.json").read_text())
    t = load_file(str(path / "sae_weights.safetensors"))
    if cfg.get("normalize_activations") == "constant_norm_rescale":
        x = x * ((cfg["d_in"] ** 0.5) / x.norm(dim=-1, keepdim=True))  # SAELens's x_norm_coeff
    if cfg.get("apply_b_dec_to_input", True):
        x = x - t["b_dec"]
    pre = x @ t["W_enc"] + t["b_enc"]
    if cfg["architecture"] == "jumprelu":
        return torch.where(pre > t["threshold"], torch.relu(pre), 0.0)
    k = cfg.get("k") or cfg.get("activation_fn_kwargs", {}).get("k")
    if k is None:
        return torch.relu(pre)
    out = torch.zeros_like(pre)
    for row in range(pre.shape[0]):
        order = pre[row].argsort(descending=True)[:k]
        out[row, order] = torch.relu(pre[row, order])
    return out


SAELENS_CFGS = [
    {"architecture": "topk", "k": 5, "apply_b_dec_to_input": True},
    {"architecture": "standard", "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 3},
     "apply_b_dec_to_input": False},
    {"architecture": "standard", "activation_fn_str": "relu", "apply_b_dec_to_input": True,
     "normalize_activations": "constant_norm_rescale"},
    {"architecture": "jumprelu", "apply_b_dec_to_input": False},
]


@pytest.mark.parametrize("extra", SAELENS_CFGS)
def test_saelens_import_encodes_like_the_reference_and_round_trips(extra: dict[str, object], tmp_path: Path) -> None:
    arch = {"topk": "topk", "standard": "relu", "jumprelu": "jumprelu"}[str(extra["architecture"])]
    source = random_sae(24, 40, architecture=arch, seed=3)
    cfg = {"d_in": 24, "d_sae": 40, "hook_name": "blocks.1.mlp.hook_post", **extra}
    path = _write_saelens(tmp_path / "in", cfg, source.tensors())
    sae = files.read_dir(path)
    x = torch.randn(50, 24, generator=torch.Generator().manual_seed(1))
    assert torch.equal(sae.encode(x), _reference_encode(path, x))
    assert (sae.encode(x) > 0).any() and sae.cfg.hook_name == "blocks.1.mlp.hook_post"

    files.write_dir(sae, tmp_path / "out")
    again = files.read_dir(tmp_path / "out")
    assert again.cfg == sae.cfg
    exported = load_file(str(tmp_path / "out" / "sae_weights.safetensors"))
    original = load_file(str(path / "sae_weights.safetensors"))
    assert exported.keys() == original.keys()
    assert all(torch.equal(exported[key], original[key]) for key in original)
    assert torch.equal(again.encode(x), sae.encode(x))


def test_sparsify_directory_imports(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    weights = {"encoder.weight": torch.randn(48, 16, generator=g), "encoder.bias": torch.randn(48, generator=g),
               "W_dec": torch.randn(48, 16, generator=g), "b_dec": torch.randn(16, generator=g)}
    path = tmp_path / "layers.2.mlp"
    path.mkdir()
    save_file(weights, str(path / "sae.safetensors"))
    (path / "cfg.json").write_text(json.dumps({"expansion_factor": 3, "normalize_decoder": True, "num_latents": 48,
                                               "k": 6, "multi_topk": False, "skip_connection": False, "d_in": 16}))
    sae = files.read_dir(path, hook_name="blocks.2.mlp.hook_post")
    assert (sae.cfg.architecture, sae.cfg.k, sae.cfg.d_sae, sae.cfg.hook_name) == ("topk", 6, 48,
                                                                                    "blocks.2.mlp.hook_post")
    x = torch.randn(30, 16, generator=g)
    # sparsify: relu(encoder(x - b_dec)), top k latents kept.
    pre = torch.relu((x - weights["b_dec"]) @ weights["encoder.weight"].T + weights["encoder.bias"])
    top = pre.topk(6, dim=-1)
    want = torch.zeros_like(pre).scatter_(-1, top.indices, top.values)
    assert torch.allclose(sae.encode(x), want, atol=1e-5, rtol=1e-5)
    assert torch.equal(sae.encode(x) > 0, want > 0)
    assert torch.allclose(sae(x), want @ weights["W_dec"] + weights["b_dec"], atol=1e-4)


def _bad(tmp_path: Path, cfg: dict[str, object], tensors: dict[str, torch.Tensor]) -> Path:
    return _write_saelens(tmp_path / "bad", {"d_in": 8, "d_sae": 16, "architecture": "standard", **cfg}, tensors)


def _good_tensors() -> dict[str, torch.Tensor]:
    return random_sae(8, 16, architecture="relu").tensors()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("missing", "missing W_dec"),
        ("shape", r"W_enc has shape \[8, 12\], expected \[8, 16\]"),
        ("nan", "b_enc holds NaN or infinite values"),
        ("inf", "W_dec holds NaN or infinite values"),
        ("arch", "unsupported SAE architecture 'gated'"),
        ("k", "a TopK SAE needs 1 <= k <= d_sae"),
        ("json", "is not valid JSON"),
        ("empty", "holds neither sae_weights.safetensors"),
    ],
)
def test_bad_files_are_refused(change: str, message: str, tmp_path: Path) -> None:
    tensors = _good_tensors()
    cfg: dict[str, object] = {}
    if change == "missing":
        del tensors["W_dec"]
    elif change == "shape":
        tensors["W_enc"] = torch.zeros(8, 12)
    elif change == "nan":
        tensors["b_enc"][3] = float("nan")
    elif change == "inf":
        tensors["W_dec"][0, 0] = float("inf")
    elif change == "arch":
        cfg = {"architecture": "gated"}
    elif change == "k":
        cfg = {"architecture": "topk", "k": 99}
    path = _bad(tmp_path, cfg, tensors)
    if change == "json":
        (path / "cfg.json").write_text("{not json")
    if change == "empty":
        (path / "sae_weights.safetensors").unlink()
    with pytest.raises(files.SaeFileError, match=message):
        files.read_dir(path)


def test_shuffle_buffer_yields_every_token_reuse_times_mixed() -> None:
    chunks = [torch.arange(i * 100, (i + 1) * 100, dtype=torch.float32)[:, None] for i in range(20)]
    g = torch.Generator().manual_seed(0)
    batches = list(shuffled_batches(chunks, buffer_tokens=400, batch_tokens=50, generator=g, reuse=2))
    seen = torch.cat(batches).flatten().long()
    assert len(batches) == 80 and torch.equal(seen.bincount(minlength=2000), torch.full((2000,), 2))
    assert int(batches[0].max() - batches[0].min()) > 200  # drawn from several chunks


def test_topk_training_recovers_planted_features() -> None:
    features = planted_features(64, 32)
    config = TrainConfig(architecture="topk", d_sae=128, k=4, steps=800, batch_tokens=256, lr=3e-3,
                         buffer_tokens=4096, dead_after_tokens=20_000)
    result = train(planted_stream(features, 120, 2048, active=3 / 64), 32, config)
    W = result.sae.W_dec.detach()
    best = (features @ (W / W.norm(dim=1, keepdim=True)).T).max(1).values
    assert float(best.mean()) >= 0.9
    assert result.loss_curve[-1]["fvu"] < result.loss_curve[0]["fvu"]
    # Folding the input scale keeps the SAE exact on raw activations.
    x = next(planted_stream(features, 1, 512, active=3 / 64, seed=9))
    assert quality.reconstruction_quality(result.sae, [x])["fvu"] < 0.2


def test_relu_training_lowers_loss_and_is_sparse() -> None:
    features = planted_features(32, 16)
    config = TrainConfig(architecture="relu", d_sae=64, l1_coefficient=3.0, steps=200, batch_tokens=256,
                         lr=3e-3, buffer_tokens=2048)
    result = train(planted_stream(features, 30, 2048, active=2 / 32), 16, config)
    assert result.loss_curve[-1]["loss"] < result.loss_curve[0]["loss"] / 2
    assert result.loss_curve[-1]["l0"] < 12 < result.loss_curve[0]["l0"]
    W = result.sae.W_dec.detach()
    assert float((features @ (W / W.norm(dim=1, keepdim=True)).T).max(1).values.mean()) > 0.8


def test_reconstruction_quality_against_brute_force() -> None:
    sae = random_sae(12, 30, architecture="topk", k=3, seed=2)
    chunks = [torch.randn(40, 12, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    x = torch.cat(chunks)
    f = sae.encode(x)
    with torch.no_grad():
        fvu = ((x - sae(x)) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    got = quality.reconstruction_quality(sae, chunks)
    assert got["fvu"] == pytest.approx(float(fvu), rel=1e-5)
    assert got["l0"] == pytest.approx(float((f > 0).sum(1).float().mean()))
    assert got["dead_fraction"] == pytest.approx(float(((f > 0).sum(0) == 0).float().mean()))


def _tiny_gpt2() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=2, n_head=2, bos_token_id=0,
                        eos_token_id=0, initializer_range=0.5)  # large weights: the MLP matters
    return GPT2LMHeadModel(config).eval()


def test_loss_recovered_is_one_for_an_exact_sae_and_splices_the_hook() -> None:
    from workers.compute.hooks import architecture_for

    model, arch = _tiny_gpt2(), architecture_for("gpt2")
    d = 64  # GPT-2's MLP: 4 * n_embd neurons
    eye = torch.eye(d)
    exact = SparseAutoencoder(SaeConfig(architecture="relu", d_in=d, d_sae=2 * d, apply_b_dec_to_input=False),
                              {"W_enc": torch.cat([eye, -eye], 1), "b_enc": torch.zeros(2 * d),
                               "W_dec": torch.cat([eye, -eye], 0), "b_dec": torch.zeros(d)})
    ids = torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    got = quality.loss_recovered(model, arch, 2, "blocks.1.mlp.hook_post", exact, [(ids, mask)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    clean = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 50), ids[:, 1:].reshape(-1))
    assert got["ce_clean"] == pytest.approx(float(clean), rel=1e-5)
    assert got["ce_sae"] == pytest.approx(got["ce_clean"], rel=1e-5)
    assert got["ce_zero"] != pytest.approx(got["ce_clean"], rel=1e-3)
    assert got["loss_recovered"] == pytest.approx(1.0, abs=1e-3)
    half = exact.with_config(architecture="relu")
    with torch.no_grad():
        half.W_dec[d:] = 0  # reconstructs relu(x) only: somewhere between clean and zero
    partial = quality.loss_recovered(model, arch, 2, "blocks.1.mlp.hook_post", half, [(ids, mask)])
    assert partial["ce_sae"] != pytest.approx(got["ce_clean"], rel=1e-4)


def test_relations_against_brute_force() -> None:
    W_dec = torch.randn(50, 20, generator=torch.Generator().manual_seed(0))
    values, indices = relations.nearest_by_cosine(W_dec, top=4)
    cos = torch.nn.functional.cosine_similarity(W_dec[:, None], W_dec[None], dim=-1)
    for f in range(50):
        others = [(float(cos[f, j]), j) for j in range(50) if j != f]
        want = sorted(others, reverse=True)[:4]
        assert indices[f].tolist() == [j for _, j in want]
        assert values[f].tolist() == pytest.approx([v for v, _ in want], abs=1e-5)
    shares = relations.neuron_alignment(W_dec)
    assert torch.allclose(shares.sum(1), torch.ones(50))
    (fv, fi), (nv, ni) = relations.top_alignment(shares, top=3)
    assert fi[7].tolist() == W_dec[7].abs().argsort(descending=True)[:3].tolist()
    assert ni[5].tolist() == shares[:, 5].argsort(descending=True)[:3].tolist()
    assert fv[7, 0] == pytest.approx(float(W_dec[7].abs().max() / W_dec[7].abs().sum()))


def test_sparse_accumulator_state_equals_the_dense_one() -> None:
    from workers.compute.sae.stats import SparseUnitAccumulator
    from workers.compute.stats import Batch, UnitAccumulator

    sae = random_sae(16, 96, architecture="topk", k=5, seed=4)
    g = torch.Generator().manual_seed(0)
    dense = UnitAccumulator(96, k=4, samples=3, hist_stride=3, seed=7, unit_offset=5)
    sparse = SparseUnitAccumulator(96, k=4, samples=3, hist_stride=3, seed=7, unit_offset=5)
    for b in range(4):
        acts = sae.encode(torch.randn(6, 10, 16, generator=g)).detach()
        invalid = torch.rand(6, 10, generator=g) < 0.2
        invalid[2] = True  # a context without a valid token
        batch = Batch(acts, torch.arange(b * 6, b * 6 + 6), invalid, b * 60)
        dense.update(batch)
        sparse.update(batch)
    want, got = dense.state(), sparse.state()
    assert want.keys() == got.keys()
    for key in want:
        if key == "total":
            assert torch.allclose(got[key].double(), want[key].double(), atol=8)  # 2^-16 steps
        else:
            assert torch.equal(got[key], want[key]), key
    assert int(want["fire"].sum()) > 0 and int((want["fire"] == 0).sum()) > 0
