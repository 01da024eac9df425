"""GPTQLinear: buffer shapes a loader can fill by name, v1/v2 zeros, act-order, bias, errors."""

from __future__ import annotations

import pytest
import torch

from executor.gptq import GPTQLinear, set_dequant_cache_budget
from executor.gptq.linear import num_groups


def slow_layout(q: torch.Tensor, z: torch.Tensor, zero_offset: int):
    """Pack q [K, N] and z [G, N] (4-bit) with a plain bit loop; zero_offset=1 writes v1 (zero - 1)."""
    K, N = q.shape
    G = z.shape[0]
    qweight = [[0] * N for _ in range(K // 8)]
    for k in range(K):
        for n in range(N):
            qweight[k // 8][n] |= int(q[k, n]) << (4 * (k % 8))
    qzeros = [[0] * (N // 8) for _ in range(G)]
    for g in range(G):
        for n in range(N):
            qzeros[g][n // 8] |= ((int(z[g, n]) - zero_offset) % 16) << (4 * (n % 8))
    signed = lambda rows: torch.tensor([[w - 2**32 if w >= 2**31 else w for w in r] for r in rows], dtype=torch.int32)
    return signed(qweight), signed(qzeros)


def random_layer(K=96, N=24, gs=32, act_order=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    G = num_groups(K, gs)
    q = torch.randint(0, 16, (K, N), generator=g)
    z = torch.randint(0, 16, (G, N), generator=g)
    s = (torch.rand(G, N, generator=g) * 0.02 + 0.001).to(torch.float16)
    g_idx = torch.arange(K) // gs
    if act_order:
        g_idx = g_idx[torch.randperm(K, generator=g)]
    W = s.float()[g_idx] * (q.float() - z.float()[g_idx])       # [K, N], the documented formula
    return q, z, s, g_idx.to(torch.int32), W


@pytest.mark.parametrize("fmt,offset", [("gptq", 1), ("gptq_v2", 0)])
@pytest.mark.parametrize("act_order", [False, True])
def test_forward_matches_the_documented_dequantization(fmt, offset, act_order):
    K, N, gs = 96, 24, 32
    q, z, s, g_idx, W = random_layer(K, N, gs, act_order)
    qweight, qzeros = slow_layout(q, z, offset)
    bias = torch.randn(N).to(torch.float16)
    layer = GPTQLinear(K, N, bias=True, bits=4, group_size=gs, desc_act=act_order, checkpoint_format=fmt)
    # What a loader does: assign checkpoint tensors to the buffers by name (shapes must already agree).
    for name, t in (("qweight", qweight), ("qzeros", qzeros), ("scales", s), ("g_idx", g_idx), ("bias", bias)):
        assert getattr(layer, name).shape == t.shape, name
        setattr(layer, name, t)
    layer.post_load()
    layer.post_load()      # idempotent: v1 zeros are converted once
    x = torch.randn(3, 5, K)
    expected = x @ W + bias.float()
    assert torch.allclose(layer(x), expected, atol=1e-4)
    assert torch.allclose(layer.dequantized_weight(), W)


def test_partial_group_and_cache_budget_do_not_change_results():
    K, N, gs = 96, 16, 64          # groups of 64 and 32
    q, z, s, g_idx, W = random_layer(K, N, gs)
    qweight, qzeros = slow_layout(q, z, 0)
    layer = GPTQLinear(K, N, group_size=gs, checkpoint_format="gptq_v2")
    assert layer.scales.shape == (2, N)
    layer.load_quantized(qweight, qzeros, s, g_idx)
    x = torch.randn(4, K)
    set_dequant_cache_budget(0)
    try:
        uncached = layer(x)
        assert layer._dense is None
    finally:
        set_dequant_cache_budget(2 * 1024**3)
    cached = layer(x)
    assert layer._dense is not None
    assert torch.equal(uncached, cached) and torch.allclose(cached, x @ W, atol=1e-5)


def test_memory_accounting():
    layer = GPTQLinear(576, 1536, group_size=128)
    # qweight 576/8*1536*4 + qzeros 5*192*4 + scales 5*1536*2 + g_idx 576*4
    assert layer.packed_bytes() == 72 * 1536 * 4 + 5 * 192 * 4 + 5 * 1536 * 2 + 576 * 4
    assert layer.packed_bytes() / layer.dense16_bytes() < 0.3


def test_bad_shapes_and_settings_raise_clear_errors():
    with pytest.raises(ValueError, match="bits=3"):
        GPTQLinear(64, 64, bits=3)
    with pytest.raises(ValueError, match="in_features=60"):
        GPTQLinear(60, 64)
    with pytest.raises(ValueError, match="checkpoint_format"):
        GPTQLinear(64, 64, checkpoint_format="marlin")
    layer = GPTQLinear(64, 16, group_size=32)
    q, z, s, g_idx, _ = random_layer(64, 16, 32)
    qweight, qzeros = slow_layout(q, z, 0)
    with pytest.raises(ValueError, match=r"qweight: checkpoint shape \(7, 16\)"):
        layer.load_quantized(qweight[:7], qzeros, s, g_idx)
    with pytest.raises(ValueError, match="g_idx values"):
        layer.load_quantized(qweight, qzeros, s, g_idx + 5, checkpoint_format="gptq_v2")
    with pytest.raises(ValueError, match="bias"):
        layer.load_quantized(qweight, qzeros, s, g_idx, bias=torch.zeros(16), checkpoint_format="gptq_v2")
