"""Bit packing of the GPTQ checkpoint layout (AutoGPTQ / GPTQModel / HF).

Why a module of its own: the layout is the contract with every other GPTQ tool, so it
is written once, here, and tested bit for bit against a slow loop that follows the
documented layout literally (tests/executor/test_gptq_packing.py).

Layout, for `bits` in {2, 4, 8} (pack factor f = 32 // bits values per int32 word):
- `qweight` int32 [K // f, N]: value (k, n) is field `k % f` of word `qweight[k // f, n]`,
  i.e. it is packed along the *input* dimension K; field j occupies bits j*bits ... j*bits+bits-1,
  so the lowest field holds the lowest row.
- `qzeros` int32 [G, N // f]: zero point (g, n) is field `n % f` of word `qzeros[g, n // f]`,
  i.e. packed along the *output* dimension N.
Words are signed int32 (the checkpoint dtype); a value with the top bit set is simply negative.
"""

from __future__ import annotations

import torch

SUPPORTED_BITS = (2, 4, 8)


def pack_factor(bits: int) -> int:
    """How many `bits`-wide values one int32 word holds."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits={bits} is not supported (supported: {', '.join(map(str, SUPPORTED_BITS))})")
    return 32 // bits


def _fields_to_int32(words: torch.Tensor) -> torch.Tensor:
    """int64 words in [0, 2**32) -> int32 with the same bit pattern (two's complement)."""
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.to(torch.int32)


def _check_values(values: torch.Tensor, bits: int, what: str) -> None:
    if values.is_floating_point():
        raise TypeError(f"{what}: expected an integer tensor, got {values.dtype}")
    if values.numel() and (int(values.min()) < 0 or int(values.max()) >= 2**bits):
        raise ValueError(f"{what}: values must lie in [0, {2**bits - 1}] for {bits}-bit packing, "
                         f"got [{int(values.min())}, {int(values.max())}]")


def pack_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """[K, N] integers in [0, 2**bits) -> int32 [K // f, N], packed along K (the `qweight` layout)."""
    f = pack_factor(bits)
    _check_values(values, bits, "pack_rows")
    k, n = values.shape
    if k % f:
        raise ValueError(f"pack_rows: {k} rows is not a multiple of the pack factor {f} ({bits}-bit)")
    v = values.to(torch.int64).reshape(k // f, f, n)
    shifts = (torch.arange(f, dtype=torch.int64, device=values.device) * bits).view(1, f, 1)
    return _fields_to_int32((v << shifts).sum(dim=1))


def unpack_rows(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 [K // f, N] -> int32 [K, N] field values (inverse of `pack_rows`)."""
    f = pack_factor(bits)
    kp, n = packed.shape
    shifts = (torch.arange(f, dtype=torch.int32, device=packed.device) * bits).view(1, f, 1)
    fields = (packed.to(torch.int32).unsqueeze(1) >> shifts) & (2**bits - 1)
    return fields.reshape(kp * f, n)


def pack_cols(values: torch.Tensor, bits: int) -> torch.Tensor:
    """[G, N] integers in [0, 2**bits) -> int32 [G, N // f], packed along N (the `qzeros` layout)."""
    f = pack_factor(bits)
    _check_values(values, bits, "pack_cols")
    g, n = values.shape
    if n % f:
        raise ValueError(f"pack_cols: {n} columns is not a multiple of the pack factor {f} ({bits}-bit)")
    v = values.to(torch.int64).reshape(g, n // f, f)
    shifts = (torch.arange(f, dtype=torch.int64, device=values.device) * bits).view(1, 1, f)
    return _fields_to_int32((v << shifts).sum(dim=2))


def unpack_cols(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 [G, N // f] -> int32 [G, N] field values (inverse of `pack_cols`)."""
    f = pack_factor(bits)
    g, npk = packed.shape
    shifts = (torch.arange(f, dtype=torch.int32, device=packed.device) * bits).view(1, 1, f)
    fields = (packed.to(torch.int32).unsqueeze(2) >> shifts) & (2**bits - 1)
    return fields.reshape(g, npk * f)


def v1_zeros_to_v2(qzeros_v1: torch.Tensor, bits: int) -> torch.Tensor:
    """AutoGPTQ's v1 ("gptq") format stores zero - 1 in each field; return the true zeros, packed.

    Each field is incremented modulo 2**bits, field by field (no carry between fields), so a
    true zero of 0 (stored as all ones) comes back as 0.
    """
    zeros = (unpack_cols(qzeros_v1, bits) + 1) & (2**bits - 1)
    return pack_cols(zeros, bits)


def v2_zeros_to_v1(qzeros_v2: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of `v1_zeros_to_v2`: store zero - 1 per field (modulo 2**bits)."""
    zeros = (unpack_cols(qzeros_v2, bits) - 1) & (2**bits - 1)
    return pack_cols(zeros, bits)


def dequantize(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor,
               bits: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """W[k, n] = scales[g_idx[k], n] * (q[k, n] - z[g_idx[k], n]), as [K, N] in `dtype`.

    `qzeros` must hold true zero points (v2 convention). Works on any device.
    """
    q = unpack_rows(qweight, bits)                         # [K, N]
    z = unpack_cols(qzeros, bits)                          # [G, N]
    g = g_idx.to(torch.long)
    s = scales.to(dtype)
    return (q.to(dtype) - z.index_select(0, g).to(dtype)) * s.index_select(0, g)
