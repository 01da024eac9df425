"""Pure-torch references for the Triton kernels.

Why this module exists: every Triton kernel in this package is checked against these functions
(the tests run the kernels under ``TRITON_INTERPRET=1`` on CPU), and an executor running without a
GPU can call them directly as a slow but exact fallback. They favour obviousness over speed: K/V are
gathered token by token through the block table and the causal softmax is written out in full.
"""

from __future__ import annotations

import torch

__all__ = [
    "store_kv_reference",
    "paged_attention_reference",
    "unpack_int4_rows",
    "unpack_int4_cols",
    "pack_int4_rows",
    "pack_int4_cols",
    "dequantize_w4",
    "w4a16_matmul_reference",
]


# --------------------------------------------------------------------------------------------------
# Paged KV cache
# --------------------------------------------------------------------------------------------------

def store_kv_reference(key, value, k_cache, v_cache, slot_mapping) -> None:
    """Scatter this step's K/V rows into the paged cache; slots < 0 are padding and are skipped."""
    num_blocks, block_size = k_cache.shape[0], k_cache.shape[1]
    slots = slot_mapping.to(torch.int64)
    keep = slots >= 0
    if bool((slots[keep] >= num_blocks * block_size).any()):
        raise ValueError(
            f"slot_mapping holds a slot >= num_blocks*block_size = {num_blocks * block_size}"
        )
    flat_k = k_cache.view(num_blocks * block_size, *k_cache.shape[2:])
    flat_v = v_cache.view(num_blocks * block_size, *v_cache.shape[2:])
    flat_k[slots[keep]] = key[keep].to(k_cache.dtype)
    flat_v[slots[keep]] = value[keep].to(v_cache.dtype)


def _gather_context(cache, block_table_row, seq_len: int):
    """Return cache rows 0..seq_len-1 of one sequence as [seq_len, kv_heads, head_dim]."""
    block_size = cache.shape[1]
    positions = torch.arange(seq_len, device=cache.device)
    blocks = block_table_row.to(torch.int64)[positions // block_size]
    return cache[blocks, positions % block_size]


def paged_attention_reference(query, k_cache, v_cache, block_tables, seq_lens, query_start_loc,
                              scale: float, compute_dtype=torch.float64):
    """Causal GQA attention of a mixed prefill/decode batch over a paged cache, one sequence at a time.

    Same contract as ``triton_attention.paged_attention``: row j of sequence s sits at absolute
    position ``seq_lens[s] - q_len_s + j`` and sees cache positions ``0..that position``. Rows with no
    visible key (only possible for padding sequences whose seq_len is 0) come out as zeros.
    """
    num_tokens, num_heads, head_dim = query.shape
    num_kv_heads = k_cache.shape[2]
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads={num_heads} is not a multiple of num_kv_heads={num_kv_heads}")
    group = num_heads // num_kv_heads
    out = torch.zeros(num_tokens, num_heads, head_dim, dtype=compute_dtype, device=query.device)
    starts = query_start_loc.tolist()
    for s, seq_len in enumerate(seq_lens.tolist()):
        q_start, q_end = starts[s], starts[s + 1]
        q_len = q_end - q_start
        if q_len == 0 or seq_len == 0:
            continue
        if q_len > seq_len:
            raise ValueError(f"sequence {s}: {q_len} query tokens but seq_len={seq_len}")
        k = _gather_context(k_cache, block_tables[s], seq_len).to(compute_dtype)
        v = _gather_context(v_cache, block_tables[s], seq_len).to(compute_dtype)
        k = k.repeat_interleave(group, dim=1)  # [seq_len, num_heads, head_dim]
        v = v.repeat_interleave(group, dim=1)
        q = query[q_start:q_end].to(compute_dtype)
        scores = torch.einsum("qhd,khd->hqk", q, k) * scale
        q_pos = torch.arange(seq_len - q_len, seq_len, device=query.device)
        k_pos = torch.arange(seq_len, device=query.device)
        visible = k_pos[None, :] <= q_pos[:, None]
        scores = scores.masked_fill(~visible[None], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[q_start:q_end] = torch.einsum("hqk,khd->qhd", probs, v)
    return out.to(query.dtype)


# --------------------------------------------------------------------------------------------------
# GPTQ int4 (4-bit values packed 8 per int32, lowest nibble first)
# --------------------------------------------------------------------------------------------------

_SHIFTS = torch.arange(0, 32, 4, dtype=torch.int32)


def unpack_int4_rows(packed: torch.Tensor) -> torch.Tensor:
    """[R/8, C] int32 -> [R, C] int32 in 0..15; nibble i of word r holds row 8*r + i."""
    shifts = _SHIFTS.to(packed.device)
    nibbles = (packed.unsqueeze(1) >> shifts[None, :, None]) & 0xF  # [R/8, 8, C]
    return nibbles.reshape(packed.shape[0] * 8, packed.shape[1])


def unpack_int4_cols(packed: torch.Tensor) -> torch.Tensor:
    """[R, C/8] int32 -> [R, C] int32 in 0..15; nibble i of word c holds column 8*c + i."""
    shifts = _SHIFTS.to(packed.device)
    nibbles = (packed.unsqueeze(2) >> shifts[None, None, :]) & 0xF  # [R, C/8, 8]
    return nibbles.reshape(packed.shape[0], packed.shape[1] * 8)


def pack_int4_rows(values: torch.Tensor) -> torch.Tensor:
    """Inverse of ``unpack_int4_rows``: [R, C] values in 0..15 (R % 8 == 0) -> [R/8, C] int32."""
    rows, cols = values.shape
    if rows % 8:
        raise ValueError(f"cannot pack {rows} rows into int32 words of 8 nibbles")
    v = values.to(torch.int64).reshape(rows // 8, 8, cols)
    words = (v << _SHIFTS.to(torch.int64).to(values.device)[None, :, None]).sum(dim=1)
    return _to_int32_bits(words)


def pack_int4_cols(values: torch.Tensor) -> torch.Tensor:
    """Inverse of ``unpack_int4_cols``: [R, C] values in 0..15 (C % 8 == 0) -> [R, C/8] int32."""
    rows, cols = values.shape
    if cols % 8:
        raise ValueError(f"cannot pack {cols} columns into int32 words of 8 nibbles")
    v = values.to(torch.int64).reshape(rows, cols // 8, 8)
    words = (v << _SHIFTS.to(torch.int64).to(values.device)[None, None, :]).sum(dim=2)
    return _to_int32_bits(words)


def _to_int32_bits(words: torch.Tensor) -> torch.Tensor:
    """Reinterpret unsigned 32-bit values held in int64 as int32 (a top nibble >= 8 is negative)."""
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def dequantize_w4(qweight, scales, qzeros, g_idx) -> torch.Tensor:
    """GPTQ int4 -> dense [K, N] in ``scales.dtype``: W[k, n] = (q[k, n] - z[g_idx[k], n]) * s[g_idx[k], n].

    ``qzeros`` holds the true zero point (GPTQ "v2"); convert v1 checkpoints (zero - 1 stored) at load
    time. Also the large-M path: dequantize once, then a plain ``torch.mm``.
    """
    _check_w4_shapes(qweight, scales, qzeros, g_idx)
    q = unpack_int4_rows(qweight)
    z = unpack_int4_cols(qzeros)
    g = g_idx.to(torch.int64)
    w = (q - z[g]).to(torch.float32) * scales[g].to(torch.float32)
    return w.to(scales.dtype)


def w4a16_matmul_reference(x, qweight, scales, qzeros, g_idx) -> torch.Tensor:
    """y = x @ dequantize_w4(...), accumulated in fp32, returned in x's dtype."""
    w = dequantize_w4(qweight, scales, qzeros, g_idx).to(torch.float32)
    return (x.to(torch.float32) @ w).to(x.dtype)


def _check_w4_shapes(qweight, scales, qzeros, g_idx) -> None:
    if qweight.dtype != torch.int32 or qzeros.dtype != torch.int32:
        raise TypeError(f"qweight/qzeros must be int32, got {qweight.dtype}/{qzeros.dtype}")
    if qweight.dim() != 2 or scales.dim() != 2 or qzeros.dim() != 2 or g_idx.dim() != 1:
        raise ValueError("expected qweight [K/8, N], scales [G, N], qzeros [G, N/8], g_idx [K]")
    k, n = qweight.shape[0] * 8, qweight.shape[1]
    groups = scales.shape[0]
    if scales.shape[1] != n:
        raise ValueError(f"scales has {scales.shape[1]} columns, qweight has N={n}")
    if tuple(qzeros.shape) != (groups, n // 8) or n % 8:
        raise ValueError(f"qzeros shape {tuple(qzeros.shape)} != (groups={groups}, N/8={n // 8})")
    if g_idx.shape[0] != k:
        raise ValueError(f"g_idx has {g_idx.shape[0]} entries, qweight has K={k} rows")
