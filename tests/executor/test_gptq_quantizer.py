"""The GPTQ algorithm for one layer: grid, groups (incl. a partial last group), act-order, error feedback."""

from __future__ import annotations

import pytest
import torch

from executor.gptq.quantizer import HessianAccumulator, gptq_quantize, rtn_quantize


def correlated_inputs(K: int, rows: int = 2048, seed: int = 0) -> torch.Tensor:
    """Inputs with strongly correlated features and uneven scales, like real activations."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(K // 4, K, generator=g)
    X = torch.randn(rows, K // 4, generator=g) @ basis + 0.1 * torch.randn(rows, K, generator=g)
    return X * (0.2 + 3 * torch.rand(K, generator=g))


def output_error(W: torch.Tensor, W_hat: torch.Tensor, X: torch.Tensor) -> float:
    return float(((X @ (W - W_hat).T) ** 2).sum())


def hessian(X: torch.Tensor) -> torch.Tensor:
    acc = HessianAccumulator(X.shape[1])
    for chunk in X.split(500):
        acc.add(chunk)
    return acc.H


def test_hessian_accumulator_is_the_running_mean_of_2xxt():
    X = torch.randn(1000, 16, dtype=torch.float64)
    assert torch.allclose(hessian(X.float()), 2 * X.T @ X / 1000, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("desc_act", [False, True])
def test_gptq_beats_round_to_nearest_on_the_layer_output(sym, desc_act):
    K, N = 96, 48
    X = correlated_inputs(K)
    W = torch.randn(N, K, generator=torch.Generator().manual_seed(1)) * 0.05
    gptq = gptq_quantize(W, hessian(X), bits=4, group_size=32, sym=sym, desc_act=desc_act)
    rtn = rtn_quantize(W, bits=4, group_size=32, sym=sym)
    assert output_error(W, gptq.dequantized, X) < 0.8 * output_error(W, rtn.dequantized, X)


@pytest.mark.parametrize("sym", [True, False])
def test_codes_scales_zeros_reproduce_the_dequantized_weight_exactly(sym):
    K, N = 96, 16
    W = torch.randn(N, K) * 0.1
    res = gptq_quantize(W, hessian(correlated_inputs(K)), bits=4, group_size=64, sym=sym)
    assert res.qint.shape == (K, N) and res.qint.dtype == torch.int32
    assert int(res.qint.min()) >= 0 and int(res.qint.max()) <= 15
    g = res.g_idx.long()
    rebuilt = res.scales.float()[g] * (res.qint.float() - res.zeros.float()[g])    # [K, N]
    assert torch.equal(rebuilt.T, res.dequantized)
    if sym:
        assert bool((res.zeros == 8).all())


def test_partial_last_group_when_width_is_not_a_multiple_of_the_group():
    K, N = 96, 8    # 96 = 64 + 32: group 1 is half size
    res = gptq_quantize(torch.randn(N, K), hessian(correlated_inputs(K)), bits=4, group_size=64)
    assert res.scales.shape == (2, N) and res.zeros.shape == (2, N)
    assert res.g_idx.tolist() == [0] * 64 + [1] * 32


def test_act_order_groups_follow_decreasing_hessian_diagonal():
    K, N, gs = 64, 8, 16
    X = correlated_inputs(K)
    H = hessian(X)
    res = gptq_quantize(torch.randn(N, K), H, bits=4, group_size=gs, desc_act=True)
    order = torch.argsort(torch.diag(H), descending=True, stable=True)
    assert res.g_idx[order].tolist() == [i // gs for i in range(K)]
    assert res.g_idx.tolist() != sorted(res.g_idx.tolist())      # non-monotone, as act-order checkpoints are
    assert torch.bincount(res.g_idx.long()).tolist() == [gs] * (K // gs)


def test_one_group_spanning_all_inputs():
    res = gptq_quantize(torch.randn(8, 40), hessian(correlated_inputs(40)), bits=4, group_size=-1)
    assert res.scales.shape == (1, 8) and res.g_idx.tolist() == [0] * 40


def test_dead_inputs_get_zero_weights_and_no_nans():
    K, N = 32, 8
    X = correlated_inputs(K)
    X[:, 5] = 0.0
    res = gptq_quantize(torch.randn(N, K), hessian(X), bits=4, group_size=16, sym=False)
    assert torch.isfinite(res.dequantized).all()
    assert bool((res.dequantized[:, 5] == 0).all())


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="disagree"):
        gptq_quantize(torch.randn(4, 8), torch.eye(7))
    with pytest.raises(ValueError, match="damp"):
        gptq_quantize(torch.randn(4, 8), torch.eye(8), damp=1.5)


def test_static_groups_with_act_order_keep_g_idx_monotone_and_beat_rtn():
    K, N, gs = 96, 24, 32
    X = correlated_inputs(K)
    W = torch.randn(N, K, generator=torch.Generator().manual_seed(2)) * 0.05
    res = gptq_quantize(W, hessian(X), bits=4, group_size=gs, sym=False, desc_act=True, static_groups=True)
    assert res.g_idx.tolist() == [k // gs for k in range(K)]      # no permutation needed to load it
    g = res.g_idx.long()
    rebuilt = res.scales.float()[g] * (res.qint.float() - res.zeros.float()[g])
    assert torch.equal(rebuilt.T, res.dequantized)
    rtn = rtn_quantize(W, bits=4, group_size=gs, sym=False)
    assert torch.equal(res.scales, rtn.scales) and torch.equal(res.zeros, rtn.zeros)  # grid fixed from the original weights
    assert output_error(W, res.dequantized, X) < 0.8 * output_error(W, rtn.dequantized, X)


def test_static_groups_reproduce_weights_already_on_the_grid_exactly():
    """A model dequantized from a 4-bit file sits on a per-group grid; static groups keep it lossless
    even with act-order, where groups formed along the processing order would not line up."""
    K, N, gs = 64, 16, 32
    gen = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 16, (N, K), generator=gen)
    codes[:, ::gs] = 0           # every group spans the whole code range, so min/max finds the grid
    codes[:, 1::gs] = 15
    scales = (0.01 + 0.02 * torch.rand(N, K // gs, generator=gen)).half().float()
    zeros = torch.randint(1, 15, (N, K // gs), generator=gen).float()
    W = (scales.repeat_interleave(gs, 1) * (codes - zeros.repeat_interleave(gs, 1))).float()
    X = correlated_inputs(K)
    res = gptq_quantize(W, hessian(X), bits=4, group_size=gs, sym=False, desc_act=True, static_groups=True)
    assert torch.equal(res.dequantized, W)
    dynamic = gptq_quantize(W, hessian(X), bits=4, group_size=gs, sym=False, desc_act=True)
    assert output_error(W, dynamic.dequantized, X) > 0
