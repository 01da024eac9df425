"""The packed GPTQ layout, checked bit for bit against slow loops that follow the documented layout."""

from __future__ import annotations

import pytest
import torch

from executor.gptq.packing import (dequantize, pack_cols, pack_factor, pack_rows, unpack_cols, unpack_rows,
                                   v1_zeros_to_v2, v2_zeros_to_v1)


def to_int32(word: int) -> int:
    return word - 2**32 if word >= 2**31 else word


def slow_pack_qweight(values: list[list[int]], bits: int) -> list[list[int]]:
    """Value (k, n) goes to bits (k % f)*bits... of word [k // f][n]: the documented qweight layout."""
    f = 32 // bits
    K, N = len(values), len(values[0])
    words = [[0] * N for _ in range(K // f)]
    for k in range(K):
        for n in range(N):
            for b in range(bits):
                if (values[k][n] >> b) & 1:
                    words[k // f][n] |= 1 << ((k % f) * bits + b)
    return [[to_int32(w) for w in row] for row in words]


def slow_pack_qzeros(values: list[list[int]], bits: int) -> list[list[int]]:
    """Zero (g, n) goes to bits (n % f)*bits... of word [g][n // f]: the documented qzeros layout."""
    f = 32 // bits
    G, N = len(values), len(values[0])
    words = [[0] * (N // f) for _ in range(G)]
    for g in range(G):
        for n in range(N):
            for b in range(bits):
                if (values[g][n] >> b) & 1:
                    words[g][n // f] |= 1 << ((n % f) * bits + b)
    return [[to_int32(w) for w in row] for row in words]


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_qweight_and_qzeros_packing_match_the_documented_bit_layout(bits):
    g = torch.Generator().manual_seed(bits)
    f = 32 // bits
    values = torch.randint(0, 2**bits, (3 * f, 2 * f), generator=g, dtype=torch.int32)
    values[-1, 0] = 2**bits - 1     # top field all ones: the word must come out negative
    expected_w = torch.tensor(slow_pack_qweight(values.tolist(), bits), dtype=torch.int32)
    expected_z = torch.tensor(slow_pack_qzeros(values.tolist(), bits), dtype=torch.int32)
    assert torch.equal(pack_rows(values, bits), expected_w)
    assert torch.equal(pack_cols(values, bits), expected_z)
    assert int(pack_rows(values, bits)[-1, 0]) < 0
    assert torch.equal(unpack_rows(expected_w, bits), values)
    assert torch.equal(unpack_cols(expected_z, bits), values)


def test_known_words():
    # rows 0..7 of one column hold 0..7: nibble k holds k -> 0x76543210
    assert pack_rows(torch.arange(8, dtype=torch.int32).view(8, 1), 4).item() == 0x76543210
    # eight zeros of 8 (symmetric 4-bit): v2 word 0x88888888, v1 (zero - 1) word 0x77777777
    eights = torch.full((1, 8), 8, dtype=torch.int32)
    assert pack_cols(eights, 4).item() == to_int32(0x88888888)
    assert v2_zeros_to_v1(pack_cols(eights, 4), 4).item() == 0x77777777
    assert torch.equal(v1_zeros_to_v2(torch.tensor([[0x77777777]], dtype=torch.int32), 4), pack_cols(eights, 4))


def test_v1_conversion_is_per_field_without_carry():
    zeros = torch.tensor([[0, 15, 1, 7, 8, 0, 3, 14]], dtype=torch.int32)
    v1 = v2_zeros_to_v1(pack_cols(zeros, 4), 4)
    assert unpack_cols(v1, 4).tolist() == [[15, 14, 0, 6, 7, 15, 2, 13]]
    assert torch.equal(unpack_cols(v1_zeros_to_v2(v1, 4), 4), zeros)


def test_dequantize_matches_the_formula_elementwise():
    g = torch.Generator().manual_seed(1)
    K, N, gs = 48, 16, 16
    q = torch.randint(0, 16, (K, N), generator=g, dtype=torch.int32)
    z = torch.randint(0, 16, (K // gs, N), generator=g, dtype=torch.int32)
    s = torch.rand(K // gs, N, generator=g).to(torch.float16)
    g_idx = torch.randperm(K, generator=g).to(torch.int32) // gs     # act-order style, non-monotone
    W = dequantize(pack_rows(q, 4), pack_cols(z, 4), s, g_idx, 4)
    for k in range(0, K, 7):
        for n in range(0, N, 3):
            gi = int(g_idx[k])
            assert W[k, n].item() == pytest.approx(float(s[gi, n]) * (int(q[k, n]) - int(z[gi, n])), abs=0)


def test_bad_inputs_are_rejected_with_reasons():
    with pytest.raises(ValueError, match="bits=3"):
        pack_factor(3)
    with pytest.raises(ValueError, match="multiple of the pack factor 8"):
        pack_rows(torch.zeros(12, 8, dtype=torch.int32), 4)
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        pack_cols(torch.full((1, 8), 16, dtype=torch.int32), 4)
