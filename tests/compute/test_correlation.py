"""Streaming Pearson correlation (workers/compute/correlation.py) against torch.corrcoef."""

from __future__ import annotations

import pytest
import torch

from workers.compute.correlation import FOLD_TOKENS, SPARSE_BELOW, CorrelationAccumulator


def _pearson_brute_force(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    full = torch.corrcoef(torch.cat([x, y], dim=1).T.to(torch.float64))  # [(n_x + n_y), (n_x + n_y)]
    return torch.nan_to_num(full[: x.shape[1], x.shape[1] :], nan=0.0)


def _activations(seed: int, T: int = 600, n_y: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y = torch.relu(torch.randn(T, n_y, generator=gen) * 2 - 1)  # sparse, ReLU-like features
    x = y @ torch.randn(n_y, 5, generator=gen) + 0.3 * torch.randn(T, 5, generator=gen) + 4.0  # offset means
    y[:, 7] = 0.0  # a dead feature
    return x.float(), y.float()


def _sae_like(seed: int, T: int, n_y: int = 64, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """y with exactly k non-zeros per row (a TopK SAE), x neurons mixing them plus noise and offsets."""
    gen = torch.Generator().manual_seed(seed)
    pre = torch.randn(T, n_y, generator=gen)
    top = pre.topk(k, dim=1)
    y = torch.zeros(T, n_y).scatter_(1, top.indices, top.values.abs() + 0.1)
    y[:, 5] = 0.0  # dead
    x = y @ torch.randn(n_y, 6, generator=gen) + 0.5 * torch.randn(T, 6, generator=gen) + 3.0
    return torch.nn.functional.gelu(x).float(), y


def test_streaming_correlation_equals_corrcoef() -> None:
    x, y = _activations(7)
    acc = CorrelationAccumulator(5, 9)
    for start in range(0, len(x), 64):
        acc.update(x[start : start + 64], y[start : start + 64])
    r = acc.correlation()
    assert torch.allclose(r, _pearson_brute_force(x, y), atol=1e-10)
    assert (r[:, 7] == 0).all()


def test_sparse_path_equals_corrcoef_over_valid_rows() -> None:
    """The harvest's float32 path: only valid rows count, across a float64 fold, within float32
    rounding of corrcoef's float64."""
    T = FOLD_TOKENS + 3000  # crosses one fold of the float32 table into float64
    x, y = _sae_like(3, T)
    valid = torch.rand(T, generator=torch.Generator().manual_seed(4)) > 0.1
    acc = CorrelationAccumulator(6, 64)
    for start in range(0, T, 2048):
        part = slice(start, start + 2048)
        acc.update_sparse(x[part], y[part], valid[part])
    assert acc.n == int(valid.sum())
    want = _pearson_brute_force(x[valid], y[valid])
    r = acc.correlation()
    assert torch.allclose(r, want, atol=2e-5), float((r - want).abs().max())
    assert (r[:, 5] == 0).all()
    # the same sums as the float64 path, up to float32 rounding
    exact = CorrelationAccumulator(6, 64)
    exact.update(x[valid], y[valid])
    for name, value in exact.sums().items():
        assert torch.allclose(acc.sums()[name], value, rtol=1e-5, atol=1e-2), name
    # what a shard stores gives back the same correlations
    stored = CorrelationAccumulator.from_state(acc.state())
    assert torch.allclose(stored.correlation(), r, atol=1e-6)


def test_correlation_shards_merge_to_the_whole() -> None:
    x, y = _activations(8)
    whole = CorrelationAccumulator(5, 9)
    whole.update(x, y)
    first, second = CorrelationAccumulator(5, 9), CorrelationAccumulator(5, 9)
    first.update(x[:250], y[:250])
    second.update(x[250:], y[250:])
    stored = CorrelationAccumulator.from_state(second.state())  # a shard's partial: float32 cross sums
    second = CorrelationAccumulator.from_state({k: v.clone() for k, v in second.sums().items()})
    assert torch.allclose(stored.correlation(), second.correlation(), atol=1e-6)
    first.merge(second)
    assert first.n == whole.n
    for k, v in whole.sums().items():
        assert torch.allclose(first.sums()[k], v, rtol=1e-12, atol=1e-9), k
    assert torch.allclose(first.correlation(), whole.correlation(), atol=1e-12)


def test_sparse_shards_merge_to_one_pass() -> None:
    x, y = _sae_like(5, 4000)
    valid = torch.ones(4000, dtype=torch.bool)
    whole, a, b = CorrelationAccumulator(6, 64), CorrelationAccumulator(6, 64), CorrelationAccumulator(6, 64)
    whole.update_sparse(x, y, valid)
    a.update_sparse(x[:1500], y[:1500], valid[:1500])
    b.update_sparse(x[1500:], y[1500:], valid[1500:])  # its own shift
    a.merge(CorrelationAccumulator.from_state(b.state()))
    assert torch.allclose(a.correlation(), whole.correlation(), atol=1e-5)
    # what the run stores after the merge (centred again on a's shift, float32 cross sums)
    assert torch.allclose(CorrelationAccumulator.from_state(a.state()).correlation(), whole.correlation(), atol=1e-5)
    assert torch.equal(CorrelationAccumulator.from_state(a.state()).shift, a.shift)


def test_transposed_swaps_rows_and_columns() -> None:
    x, y = _activations(10)
    acc = CorrelationAccumulator(5, 9)
    acc.update(x, y)
    assert torch.allclose(acc.transposed().correlation(), acc.correlation().T, atol=1e-12)


def test_correlation_top_k_per_row() -> None:
    x, y = _activations(9)
    acc = CorrelationAccumulator(5, 9)
    acc.update(x, y)
    r = _pearson_brute_force(x, y)
    for by_abs in (False, True):
        values, indices = acc.top_k(3, by_abs=by_abs)
        key = r.abs() if by_abs else r
        for row in range(5):
            want = sorted(range(9), key=lambda j: (-float(key[row, j]), j))[:3]
            assert indices[row].tolist() == want
            assert torch.allclose(values[row], r[row, want], atol=1e-10)


def test_correlation_rejects_mismatched_shapes() -> None:
    acc = CorrelationAccumulator(2, 3)
    with pytest.raises(ValueError):
        acc.update(torch.zeros(4, 2), torch.zeros(5, 3))
    with pytest.raises(ValueError):
        acc.update(torch.zeros(4, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError):
        acc.update_sparse(torch.zeros(4, 2), torch.zeros(4, 3), torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError):
        acc.merge(CorrelationAccumulator(3, 3))


def test_harvest_pairs_each_sae_with_the_neurons_of_its_hook() -> None:
    from workers.compute.config import HarvestConfig, SourceConfig
    from workers.compute.harvest import SourceRuntime
    from workers.pipeline.harvest import correlation_pairs

    def encode(acts: torch.Tensor) -> torch.Tensor:
        return acts

    runtimes = [SourceRuntime("blocks.1.mlp.hook_post", "blocks.1.mlp.hook_post", 48, 0),
                SourceRuntime("blocks.2.mlp.hook_post", "blocks.2.mlp.hook_post", 48, 1 << 21),
                SourceRuntime("feat", "blocks.1.mlp.hook_post", 64, 2 << 21, encode, sparse=True),
                SourceRuntime("resid", "blocks.2.hook_resid_post", 16, 3 << 21, encode, sparse=True)]
    sources = tuple(SourceConfig(name=rt.name, hook=rt.hook) for rt in runtimes)
    pairs = correlation_pairs(runtimes, HarvestConfig(sources=sources), torch.device("cpu"))
    assert [(p.neurons, p.features, p.stride) for p in pairs] == [("blocks.1.mlp.hook_post", "feat", 4)]
    assert (pairs[0].accumulator.n_x, pairs[0].accumulator.n_y) == (48, 64)
    assert correlation_pairs(runtimes, HarvestConfig(sources=sources, corr_stride=0), torch.device("cpu")) == []
    with pytest.raises(ValueError, match="correlation stride"):
        HarvestConfig(sources=sources, corr_stride=-1)


def test_sparse_y_takes_the_sparse_path_and_agrees_with_dense() -> None:
    """SAE-like y (a few non-zeros per row) in the float64 path: the non-zero-only cross sums equal
    the dense product."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(400, 7, generator=g)
    y = torch.zeros(400, 300)
    cols = torch.randint(0, 300, (400, 4), generator=g)
    y.scatter_(1, cols, torch.rand(400, 4, generator=g) + 0.1)  # at most 4 of 300 per row: sparse
    assert torch.count_nonzero(y) < SPARSE_BELOW * y.numel()
    acc = CorrelationAccumulator(7, 300)
    for start in range(0, 400, 100):
        acc.update(x[start:start + 100], y[start:start + 100])
    dense = x.double().T @ y.double()
    assert torch.allclose(acc.sums()["sxy"], dense, rtol=1e-12, atol=1e-12)
    expected = torch.corrcoef(torch.cat([x, y], dim=1).double().T)[:7, 7:]
    varies = y.std(dim=0) > 0
    assert torch.allclose(acc.correlation()[:, varies], expected[:, varies], atol=1e-9)
