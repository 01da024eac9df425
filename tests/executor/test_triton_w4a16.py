"""Fused GPTQ int4 matmul against dequantize + matmul, and the packing helpers it relies on.

On CPU the kernel runs under TRITON_INTERPRET=1 (set below and in conftest.py before triton is
imported); on a CUDA machine the same tests exercise the compiled kernel.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton", reason="triton is not installed")

from hypothesis import given, settings, strategies as st  # noqa: E402
from tests.hypothesis_budget import examples

from executor.kernels import _triton_common  # noqa: E402
from executor.kernels.reference import (  # noqa: E402
    dequantize_w4,
    pack_int4_cols,
    pack_int4_rows,
    unpack_int4_cols,
    unpack_int4_rows,
    w4a16_matmul_reference,
)
from executor.kernels.triton_w4a16 import g_idx_is_sequential, w4a16_matmul  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

if DEVICE == "cpu" and not _triton_common.INTERPRETED:
    pytest.skip(
        "no CUDA and triton was imported before TRITON_INTERPRET=1 could be set; run this file alone",
        allow_module_level=True,
    )


def make_gptq(k, n, group_size, act_order=False, scale_dtype=torch.float32, seed=0):
    """Random GPTQ layer: unpacked ints (for an independent check) and the packed checkpoint tensors."""
    gen = torch.Generator().manual_seed(seed)
    groups = k // group_size
    q = torch.randint(0, 16, (k, n), generator=gen)
    zeros = torch.randint(0, 16, (groups, n), generator=gen)
    scales = (torch.rand(groups, n, generator=gen) * 0.05 + 0.005).to(scale_dtype)
    g_idx = torch.arange(k) // group_size
    if act_order:
        g_idx = g_idx[torch.randperm(k, generator=gen)]
    packed = dict(qweight=pack_int4_rows(q), scales=scales, qzeros=pack_int4_cols(zeros),
                  g_idx=g_idx.to(torch.int32))
    return q, zeros, packed


def to_device(packed):
    return {name: t.to(DEVICE) for name, t in packed.items()}


def test_pack_unpack_round_trip_and_nibble_order():
    values = torch.randint(0, 16, (16, 24))
    assert torch.equal(unpack_int4_rows(pack_int4_rows(values)), values)
    assert torch.equal(unpack_int4_cols(pack_int4_cols(values)), values)
    # Lowest nibble = lowest row/column; a top nibble >= 8 makes the int32 word negative.
    word = pack_int4_rows(torch.tensor([[1], [2], [0], [0], [0], [0], [0], [15]]))
    assert word.item() == 0x1 + (0x2 << 4) - 2**32 + (15 << 28)


def test_dequantize_matches_gptq_formula():
    q, zeros, packed = make_gptq(64, 16, 32, act_order=True, seed=1)
    g = packed["g_idx"].long()
    expected = (q - zeros[g]).float() * packed["scales"][g]
    torch.testing.assert_close(dequantize_w4(**packed), expected, atol=0, rtol=0)


@pytest.mark.parametrize(
    "m,k,n,group_size,act_order",
    [
        (1, 576, 64, 32, False),    # SmolLM2 hidden size, decode row
        (3, 576, 64, 64, True),     # act-order: groups permuted across rows
        (5, 576, 192, 32, True),
        (2, 256, 136, 128, False),  # N not a multiple of the column tile
        (20, 256, 64, 128, False),  # M spans two row tiles
        (4, 128, 64, 128, True),
    ],
)
def test_matches_dequantize_then_matmul(m, k, n, group_size, act_order):
    q, zeros, packed = make_gptq(k, n, group_size, act_order, seed=k + n + m)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
    packed_dev = to_device(packed)
    y = w4a16_matmul(x.to(DEVICE), group_size=group_size, **packed_dev)
    assert y.shape == (m, n) and y.dtype == x.dtype
    expected = w4a16_matmul_reference(x, **packed)
    torch.testing.assert_close(y.cpu(), expected, atol=1e-4, rtol=1e-4)


def test_split_k_factor_does_not_change_the_result():
    _, _, packed = make_gptq(512, 64, 64, seed=3)
    x = torch.randn(2, 512, device=DEVICE)
    packed = to_device(packed)
    single = w4a16_matmul(x, group_size=64, split_k=1, **packed)
    for split_k in (3, 8, 16):  # 16 > number of K tiles: some splits own no tile at all
        torch.testing.assert_close(w4a16_matmul(x, group_size=64, split_k=split_k, **packed), single,
                                   atol=1e-4, rtol=1e-4)


def test_sequential_fast_path_agrees_with_gather_path():
    _, _, packed = make_gptq(256, 64, 32, seed=4)
    x = torch.randn(3, 256, device=DEVICE)
    packed = to_device(packed)
    fast = w4a16_matmul(x, group_size=32, sequential_groups=True, **packed)
    gather = w4a16_matmul(x, group_size=32, sequential_groups=False, **packed)
    torch.testing.assert_close(fast, gather, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("act_order", [False, True])
def test_both_unpack_strategies_are_exact(act_order):
    """The two ways of expanding packed words must agree with the reference bit for bit in fp32."""
    _, _, packed = make_gptq(192, 72, 64, act_order, seed=8)
    x = torch.randn(2, 192, generator=torch.Generator().manual_seed(8))
    expected = w4a16_matmul_reference(x, **packed)
    for unpack in ("reshape", "rows"):
        y = w4a16_matmul(x.to(DEVICE), group_size=64, unpack=unpack, split_k=1, **to_device(packed))
        torch.testing.assert_close(y.cpu(), expected, atol=1e-4, rtol=1e-4, msg=f"unpack={unpack}")


def test_sequential_detection_is_cached_and_sees_in_place_edits():
    g = torch.arange(128, dtype=torch.int32) // 32
    assert g_idx_is_sequential(g, 32)
    assert not g_idx_is_sequential(g, 64)
    g[[0, 127]] = g[[127, 0]]  # an act-order swap done in place must not hit the stale cache entry
    assert not g_idx_is_sequential(g, 32)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_half_precision_activations(dtype, tol):
    _, _, packed = make_gptq(256, 64, 128, scale_dtype=dtype, seed=5)
    x = torch.randn(4, 256).to(dtype)
    y = w4a16_matmul(x.to(DEVICE), group_size=128, **to_device(packed))
    assert y.dtype == dtype
    expected = w4a16_matmul_reference(x, **packed).float()
    torch.testing.assert_close(y.float().cpu(), expected, atol=tol * expected.abs().max().item(), rtol=tol)


def test_strided_activation_rows():
    """Activations sliced out of a wider buffer (row stride > K) are read correctly."""
    _, _, packed = make_gptq(128, 64, 32, seed=6)
    wide = torch.randn(3, 200)
    x = wide[:, 10:138]
    y = w4a16_matmul(x.to(DEVICE), group_size=32, **to_device(packed))
    torch.testing.assert_close(y.cpu(), w4a16_matmul_reference(x.contiguous(), **packed), atol=1e-4, rtol=1e-4)


def test_bad_inputs_raise_clear_errors():
    _, _, packed = make_gptq(128, 64, 32)
    with pytest.raises(ValueError, match="x has K=64 columns, qweight packs K=128"):
        w4a16_matmul(torch.zeros(1, 64), group_size=32, **packed)
    with pytest.raises(ValueError, match="group_size=48 must divide K=128"):
        w4a16_matmul(torch.zeros(1, 128), group_size=48, **packed)
    with pytest.raises(ValueError, match="scales has 4 groups, K/group_size = 2"):
        w4a16_matmul(torch.zeros(1, 128), group_size=64, **packed)
    with pytest.raises(TypeError, match="qweight/qzeros must be int32"):
        w4a16_matmul(torch.zeros(1, 128), group_size=32, **{**packed, "qweight": packed["qweight"].long()})


@settings(max_examples=examples(8), deadline=None, derandomize=True)
@given(
    m=st.integers(1, 6),
    k_groups=st.integers(1, 4),
    group_size=st.sampled_from([32, 64]),
    n_words=st.integers(1, 12),
    act_order=st.booleans(),
)
def test_random_layers_match_reference(m, k_groups, group_size, n_words, act_order):
    k, n = k_groups * group_size, n_words * 8
    _, _, packed = make_gptq(k, n, group_size, act_order, seed=m * 100 + n)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(n))
    y = w4a16_matmul(x.to(DEVICE), group_size=group_size, **to_device(packed))
    torch.testing.assert_close(y.cpu(), w4a16_matmul_reference(x, **packed), atol=1e-4, rtol=1e-4)
