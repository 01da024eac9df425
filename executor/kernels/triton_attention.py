"""Paged-KV attention in Triton: the KV scatter and one mixed prefill/decode attention kernel.

Why one kernel: with chunked prefill and prefix caching nearly every step mixes decodes, prefill chunks
that continue an already-cached prefix, and fresh prompts. All of them are "some query rows of one
sequence attend causally to that sequence's cache", so a single FlashAttention-style kernel that reads
K/V through the block table serves them all, and its launch grid depends only on tensor shapes (not on
lengths read from the device), which keeps it CUDA-graph capturable.

Layout of the work (the design of vLLM's unified Triton attention, written from its description):

* A program owns one *query block* of one sequence and one KV head. Its ``BLOCK_M`` rows pack
  ``BLOCK_Q`` query tokens times the ``GROUP`` query heads that share the KV head (GQA), so even a decode
  (one token) feeds ``tl.dot`` with a full 16-row tile and every K/V tile is loaded once per group.
* Query blocks are numbered ``query_start_loc[s] // BLOCK_Q + s + local_block``; the grid is the upper
  bound ``num_tokens // BLOCK_Q + num_seqs`` and a program finds its sequence by binary search.
  Programs left over by that bound exit at once.
* K/V are walked in tiles of ``TILE`` positions; each position's physical block comes from the block
  table, so ``TILE`` is independent of the cache's block size.
* Online softmax in fp32 (base-2 exponent). For small decode batches the KV range is also split into
  ``num_splits`` segments (third grid axis, flash-decoding) whose partial results a second kernel merges.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._triton_common import WIDEN_BF16_DOT, Launch, check_device, dot_precision, tile_dot

__all__ = [
    "store_kv",
    "paged_attention",
    "plan_store_kv",
    "plan_paged_attention",
    "choose_num_splits",
    "attention_tiles",
    "AttentionTiles",
]

_LOG2E = 1.4426950408889634


# --------------------------------------------------------------------------------------------------
# store_kv: scatter this step's K/V rows into the paged cache
# --------------------------------------------------------------------------------------------------

@triton.jit
def _store_kv_kernel(
    key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
    stride_key_t, stride_key_h, stride_val_t, stride_val_h,
    stride_kc_b, stride_kc_s, stride_kc_h,
    stride_vc_b, stride_vc_s, stride_vc_h,
    NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
    HEADS_PAD: tl.constexpr, DIM_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr,
):
    token = tl.program_id(0)
    slot = tl.load(slot_ptr + token).to(tl.int64)
    block = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE
    heads = tl.arange(0, HEADS_PAD)
    dims = tl.arange(0, DIM_PAD)
    # slot < 0 marks a padding token: the whole row is masked off, nothing is read or written.
    slot_2d = tl.zeros([HEADS_PAD, DIM_PAD], tl.int64) + slot
    mask = (heads[:, None] < NUM_KV_HEADS) & (dims[None, :] < HEAD_DIM) & (slot_2d >= 0)
    k = tl.load(key_ptr + token * stride_key_t + heads[:, None] * stride_key_h + dims[None, :], mask=mask)
    v = tl.load(value_ptr + token * stride_val_t + heads[:, None] * stride_val_h + dims[None, :], mask=mask)
    k_dst = k_cache_ptr + block * stride_kc_b + offset * stride_kc_s + heads[:, None] * stride_kc_h + dims[None, :]
    v_dst = v_cache_ptr + block * stride_vc_b + offset * stride_vc_s + heads[:, None] * stride_vc_h + dims[None, :]
    tl.store(k_dst, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def store_kv(key, value, k_cache, v_cache, slot_mapping) -> None:
    """Write K/V of this step's tokens into the paged cache.

    key/value: [num_tokens, num_kv_heads, head_dim]; k_cache/v_cache: [num_blocks, block_size,
    num_kv_heads, head_dim]; slot_mapping: int64 [num_tokens], slot = block_id * block_size + offset;
    slot < 0 means skip (padding rows of a CUDA-graph batch). Slots are not range-checked on the device
    (that would need a host sync): an out-of-range slot is the caller's bug.
    """
    _check_cache_pair(k_cache, v_cache)
    num_tokens = key.shape[0]
    kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    for name, t in (("key", key), ("value", value)):
        if t.dim() != 3 or t.shape[1] != kv_heads or t.shape[2] != head_dim or t.shape[0] != num_tokens:
            raise ValueError(f"{name} shape {tuple(t.shape)} != (num_tokens, {kv_heads}, {head_dim})")
        if t.stride(2) != 1:
            raise ValueError(f"{name} must be contiguous in head_dim (stride {t.stride(2)})")
    if slot_mapping.dim() != 1 or slot_mapping.shape[0] != num_tokens:
        raise ValueError(f"slot_mapping shape {tuple(slot_mapping.shape)} != ({num_tokens},)")
    if slot_mapping.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"slot_mapping must be int64 (or int32), got {slot_mapping.dtype}")
    check_device(key, value, k_cache, v_cache, slot_mapping)
    for launch in plan_store_kv(key, value, k_cache, v_cache, slot_mapping):
        launch()


def plan_store_kv(key, value, k_cache, v_cache, slot_mapping) -> list[Launch]:
    """The launches ``store_kv`` makes (none for zero tokens); shapes are validated by the caller."""
    num_tokens = key.shape[0]
    kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    if num_tokens == 0:
        return []
    return [Launch(
        _store_kv_kernel, (num_tokens,),
        (key, value, k_cache, v_cache, slot_mapping,
         key.stride(0), key.stride(1), value.stride(0), value.stride(1),
         k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
         v_cache.stride(0), v_cache.stride(1), v_cache.stride(2)),
        dict(NUM_KV_HEADS=kv_heads, HEAD_DIM=head_dim,
             HEADS_PAD=triton.next_power_of_2(kv_heads), DIM_PAD=triton.next_power_of_2(head_dim),
             BLOCK_SIZE=k_cache.shape[1]),
    )]


def _check_cache_pair(k_cache, v_cache) -> None:
    if k_cache.dim() != 4:
        raise ValueError(f"k_cache must be [num_blocks, block_size, num_kv_heads, head_dim], got {tuple(k_cache.shape)}")
    if k_cache.shape != v_cache.shape or k_cache.dtype != v_cache.dtype:
        raise ValueError(
            f"k_cache {tuple(k_cache.shape)}/{k_cache.dtype} and v_cache {tuple(v_cache.shape)}/{v_cache.dtype} differ"
        )
    if k_cache.stride(3) != 1 or v_cache.stride(3) != 1:
        raise ValueError("k_cache/v_cache must be contiguous in head_dim")


# --------------------------------------------------------------------------------------------------
# paged_attention
# --------------------------------------------------------------------------------------------------

@triton.jit
def _find_sequence(query_start_loc_ptr, num_seqs, pid, BLOCK_Q: tl.constexpr):
    """Largest s with query_start_loc[s] // BLOCK_Q + s <= pid (first query block of s is at or before pid)."""
    lo: tl.int32 = 0
    hi: tl.int32 = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        first_block = tl.load(query_start_loc_ptr + mid) // BLOCK_Q + mid
        if first_block <= pid:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


# num_seqs seeds a loop-carried variable of the binary search: it must stay a runtime i32 even when it
# equals 1 (Triton would otherwise specialise it into a compile-time constant).
@triton.jit(do_not_specialize=["num_seqs"])
def _paged_attention_kernel(
    out_ptr, query_ptr, k_cache_ptr, v_cache_ptr,
    block_tables_ptr, seq_lens_ptr, query_start_loc_ptr,
    part_acc_ptr, part_max_ptr, part_sum_ptr,
    scale_log2,
    num_seqs,
    stride_q_t, stride_q_h, stride_o_t, stride_o_h,
    stride_k_b, stride_k_s, stride_k_h,
    stride_v_b, stride_v_s, stride_v_h,
    stride_bt,
    NUM_HEADS: tl.constexpr, GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr, DIM_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr, TILE: tl.constexpr,
    NUM_SPLITS: tl.constexpr, DOT_PRECISION: tl.constexpr, WIDEN_DOT: tl.constexpr,
):
    pid = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)

    seq = _find_sequence(query_start_loc_ptr, num_seqs, pid, BLOCK_Q)
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    q_block = pid - (q_start // BLOCK_Q + seq)
    if q_block * BLOCK_Q >= q_len:
        return  # a spare program of the grid's upper bound
    seq_len = tl.load(seq_lens_ptr + seq)
    context_len = seq_len - q_len  # tokens cached before this step's queries

    rows = tl.arange(0, BLOCK_M)
    token_in_seq = q_block * BLOCK_Q + rows // GROUP
    head = kv_head * GROUP + rows % GROUP
    row_ok = (rows // GROUP < BLOCK_Q) & (token_in_seq < q_len)
    query_pos = context_len + token_in_seq  # absolute position of each row's token
    dims = tl.arange(0, DIM_PAD)
    dim_ok = dims < HEAD_DIM

    token = (q_start + token_in_seq).to(tl.int64)
    q = tl.load(query_ptr + token[:, None] * stride_q_t + head[:, None] * stride_q_h + dims[None, :],
                mask=row_ok[:, None] & dim_ok[None, :], other=0.0)

    # Keys this query block can see: up to its last token's position (causal), at most seq_len.
    kv_end = tl.minimum(context_len + (q_block + 1) * BLOCK_Q, seq_len)
    num_tiles = tl.cdiv(kv_end, TILE)
    tiles_per_split = tl.cdiv(num_tiles, NUM_SPLITS)
    tile_begin = split * tiles_per_split
    tile_end = tl.minimum(tile_begin + tiles_per_split, num_tiles)

    running_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    running_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, DIM_PAD], tl.float32)
    table_row = block_tables_ptr + seq.to(tl.int64) * stride_bt
    offs_tile = tl.arange(0, TILE)

    for tile in range(tile_begin, tile_end):
        key_pos = tile * TILE + offs_tile
        key_ok = key_pos < kv_end
        physical = tl.load(table_row + key_pos // BLOCK_SIZE, mask=key_ok, other=0).to(tl.int64)
        in_block = key_pos % BLOCK_SIZE
        k = tl.load(k_cache_ptr + physical[None, :] * stride_k_b + in_block[None, :] * stride_k_s
                    + kv_head * stride_k_h + dims[:, None],
                    mask=dim_ok[:, None] & key_ok[None, :], other=0.0)  # [DIM_PAD, TILE]
        v = tl.load(v_cache_ptr + physical[:, None] * stride_v_b + in_block[:, None] * stride_v_s
                    + kv_head * stride_v_h + dims[None, :],
                    mask=key_ok[:, None] & dim_ok[None, :], other=0.0)  # [TILE, DIM_PAD]

        scores = tile_dot(q, k, DOT_PRECISION, WIDEN_DOT) * scale_log2
        visible = row_ok[:, None] & key_ok[None, :] & (key_pos[None, :] <= query_pos[:, None])
        scores = tl.where(visible, scores, float("-inf"))

        new_max = tl.maximum(running_max, tl.max(scores, axis=1))
        # Rows that have seen no visible key yet keep max = -inf; subtract 0 instead to avoid NaN.
        safe_max = tl.where(new_max > float("-inf"), new_max, 0.0)
        probs = tl.exp2(scores - safe_max[:, None])
        rescale = tl.exp2(running_max - safe_max)
        running_sum = running_sum * rescale + tl.sum(probs, axis=1)
        acc = acc * rescale[:, None] + tile_dot(probs.to(v.dtype), v, DOT_PRECISION, WIDEN_DOT)
        running_max = new_max

    if NUM_SPLITS == 1:
        result = acc / tl.where(running_sum > 0.0, running_sum, 1.0)[:, None]
        tl.store(out_ptr + token[:, None] * stride_o_t + head[:, None] * stride_o_h + dims[None, :],
                 result.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & dim_ok[None, :])
    else:
        # Partials laid out [num_tokens, NUM_HEADS, NUM_SPLITS(, DIM_PAD)], merged by _merge_splits_kernel.
        part = (token * NUM_HEADS + head) * NUM_SPLITS + split
        tl.store(part_max_ptr + part, running_max, mask=row_ok)
        tl.store(part_sum_ptr + part, running_sum, mask=row_ok)
        tl.store(part_acc_ptr + part[:, None] * DIM_PAD + dims[None, :], acc, mask=row_ok[:, None])


@triton.jit
def _merge_splits_kernel(
    out_ptr, part_acc_ptr, part_max_ptr, part_sum_ptr,
    stride_o_t, stride_o_h,
    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, DIM_PAD: tl.constexpr, NUM_SPLITS: tl.constexpr,
):
    """Combine the per-split (max, sum, unnormalised acc) of one (token, head) by log-sum-exp."""
    token = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    splits = tl.arange(0, NUM_SPLITS)
    dims = tl.arange(0, DIM_PAD)
    base = (token * NUM_HEADS + head) * NUM_SPLITS
    maxes = tl.load(part_max_ptr + base + splits)
    sums = tl.load(part_sum_ptr + base + splits)
    acc = tl.load(part_acc_ptr + (base + splits)[:, None] * DIM_PAD + dims[None, :])
    overall = tl.max(maxes, axis=0)
    safe = tl.where(overall > float("-inf"), overall, 0.0)
    weight = tl.exp2(maxes - safe)  # 0 for splits that saw no key (max = -inf)
    total = tl.sum(sums * weight, axis=0)
    merged = tl.sum(acc * weight[:, None], axis=0) / tl.where(total > 0.0, total, 1.0)
    tl.store(out_ptr + token * stride_o_t + head * stride_o_h + dims, merged.to(out_ptr.dtype.element_ty),
             mask=dims < HEAD_DIM)


@dataclass(frozen=True)
class AttentionTiles:
    """Compile-time tile shape of one paged_attention launch."""

    block_m: int  # rows of a query block = block_q tokens x GROUP heads (padded to a power of two)
    block_q: int  # query tokens per query block
    tile: int  # key positions per inner-loop step
    dim_pad: int  # head_dim rounded up to a power of two


def attention_tiles(group: int, head_dim: int, max_query_len: int) -> AttentionTiles:
    """16 rows feed one tensor-core tile for decode; batches with longer query runs get 64-row blocks."""
    rows = 16 if max_query_len * group <= 16 else 64
    block_m = max(rows, triton.next_power_of_2(group))
    dim_pad = triton.next_power_of_2(head_dim)
    return AttentionTiles(block_m=block_m, block_q=block_m // group, tile=32 if dim_pad <= 128 else 16,
                          dim_pad=dim_pad)


def choose_num_splits(num_seqs: int, num_kv_heads: int, max_query_len: int, max_seq_len: int,
                      target_programs: int = 132) -> int:
    """Flash-decoding split count: only pure-decode batches too small to fill the GPU get split.

    Results never depend on this choice (segments are cut on the device from each seq_len), so a
    CUDA graph captured with one value stays correct for any lengths replayed later.
    """
    if max_query_len != 1 or num_seqs * num_kv_heads >= target_programs or max_seq_len < 512:
        return 1
    wanted = target_programs * 2 // max(1, num_seqs * num_kv_heads)
    by_length = max_seq_len // 256
    return int(min(16, triton.next_power_of_2(max(1, min(wanted, by_length)))))


def paged_attention(query, k_cache, v_cache, block_tables, seq_lens, query_start_loc,
                    max_query_len: int, max_seq_len: int, scale: float, out=None, *, num_splits=None):
    """Causal GQA attention of a mixed prefill/decode batch over the paged cache, in one launch.

    query: [num_tokens, num_heads, head_dim], sequence s owns rows query_start_loc[s]:query_start_loc[s+1];
    k_cache/v_cache: [num_blocks, block_size, num_kv_heads, head_dim] already holding this step's K/V;
    block_tables: int32 [num_seqs, max_blocks_per_seq]; seq_lens: int32 [num_seqs], context length
    including this step's tokens; query_start_loc: int32 [num_seqs + 1].
    Row j of sequence s sits at position seq_lens[s] - q_len_s + j and sees cache positions 0..that.
    Query head h reads KV head h // (num_heads // num_kv_heads). Returns out [num_tokens, num_heads,
    head_dim] in query's dtype (fp32 accumulation, online softmax).

    max_query_len / max_seq_len only pick tile shapes and the split count; correctness does not depend
    on them (pass fixed values when capturing a CUDA graph). A sequence with seq_len 0 and q_len 0
    (graph padding) costs one idle program; rows without any visible key come out as zeros.
    """
    _check_cache_pair(k_cache, v_cache)
    if query.dim() != 3:
        raise ValueError(f"query must be [num_tokens, num_heads, head_dim], got {tuple(query.shape)}")
    num_tokens, num_heads, head_dim = query.shape
    num_kv_heads, cache_dim = k_cache.shape[2], k_cache.shape[3]
    if cache_dim != head_dim:
        raise ValueError(f"query head_dim {head_dim} != cache head_dim {cache_dim}")
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads={num_heads} is not a multiple of num_kv_heads={num_kv_heads}")
    if query.stride(2) != 1:
        raise ValueError("query must be contiguous in head_dim")
    if query.dtype != k_cache.dtype:
        raise TypeError(f"query dtype {query.dtype} != cache dtype {k_cache.dtype}")
    num_seqs = seq_lens.shape[0]
    if block_tables.dim() != 2 or block_tables.shape[0] != num_seqs:
        raise ValueError(f"block_tables shape {tuple(block_tables.shape)} != (num_seqs={num_seqs}, max_blocks)")
    if block_tables.stride(1) != 1:
        raise ValueError("block_tables must be contiguous along its rows")
    if query_start_loc.shape != (num_seqs + 1,):
        raise ValueError(f"query_start_loc shape {tuple(query_start_loc.shape)} != ({num_seqs + 1},)")
    for name, t in (("block_tables", block_tables), ("seq_lens", seq_lens), ("query_start_loc", query_start_loc)):
        if t.dtype != torch.int32:
            raise TypeError(f"{name} must be int32, got {t.dtype}")
    if out is None:
        out = torch.empty_like(query)
    elif out.shape != query.shape or out.dtype != query.dtype or out.stride(2) != 1:
        raise ValueError(f"out must match query {tuple(query.shape)}/{query.dtype}, contiguous in head_dim")
    check_device(query, k_cache, v_cache, block_tables, seq_lens, query_start_loc, out)
    for launch in plan_paged_attention(query, k_cache, v_cache, block_tables, seq_lens, query_start_loc,
                                       max_query_len, max_seq_len, scale, out, num_splits):
        launch()
    return out


def plan_paged_attention(query, k_cache, v_cache, block_tables, seq_lens, query_start_loc,
                         max_query_len: int, max_seq_len: int, scale: float, out, num_splits) -> list[Launch]:
    """The launches ``paged_attention`` makes, with their partial-result buffers allocated.

    Shapes are validated by the caller. Separate from the launch so ``compile_check`` can compile exactly
    these kernel variants for a GPU target on a machine without one (meta tensors suffice).
    """
    num_tokens, num_heads, head_dim = query.shape
    num_kv_heads = k_cache.shape[2]
    block_size = k_cache.shape[1]
    num_seqs = seq_lens.shape[0]
    if num_tokens == 0 or num_seqs == 0:
        return []

    group = num_heads // num_kv_heads
    tiles = attention_tiles(group, head_dim, max_query_len)
    block_m, block_q, tile, dim_pad = tiles.block_m, tiles.block_q, tiles.tile, tiles.dim_pad
    if num_splits is None:
        num_splits = choose_num_splits(num_seqs, num_kv_heads, max_query_len, max_seq_len)
    if num_splits < 1 or num_splits & (num_splits - 1):
        raise ValueError(f"num_splits must be a power of two >= 1, got {num_splits}")

    if num_splits > 1:
        part_max = torch.empty(num_tokens, num_heads, num_splits, dtype=torch.float32, device=query.device)
        part_sum = torch.empty_like(part_max)
        part_acc = torch.empty(num_tokens, num_heads, num_splits, dim_pad, dtype=torch.float32, device=query.device)
    else:
        part_max = part_sum = part_acc = out  # unused by the kernel in this mode

    grid = (num_tokens // block_q + num_seqs, num_kv_heads, num_splits)
    launches = [Launch(
        _paged_attention_kernel, grid,
        (out, query, k_cache, v_cache, block_tables, seq_lens, query_start_loc,
         part_acc, part_max, part_sum,
         scale * _LOG2E, num_seqs,
         query.stride(0), query.stride(1), out.stride(0), out.stride(1),
         k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
         v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
         block_tables.stride(0)),
        dict(NUM_HEADS=num_heads, GROUP=group, HEAD_DIM=head_dim, DIM_PAD=dim_pad, BLOCK_SIZE=block_size,
             BLOCK_M=block_m, BLOCK_Q=block_q, TILE=tile, NUM_SPLITS=num_splits,
             DOT_PRECISION=dot_precision(query.dtype),
             WIDEN_DOT=WIDEN_BF16_DOT and query.dtype == torch.bfloat16,
             num_warps=4),
    )]
    if num_splits > 1:
        launches.append(Launch(
            _merge_splits_kernel, (num_tokens, num_heads),
            (out, part_acc, part_max, part_sum, out.stride(0), out.stride(1)),
            dict(NUM_HEADS=num_heads, HEAD_DIM=head_dim, DIM_PAD=dim_pad, NUM_SPLITS=num_splits),
        ))
    return launches
