"""Fused GPTQ int4 x fp16/bf16 matmul for decode-sized batches (split-K Triton kernel).

Why: a decode step multiplies a handful of activation rows by every weight matrix, so it is bound by
reading the weights. Dequantizing to a dense matrix first moves 0.5 + 2 + 2 bytes per parameter; this
kernel reads the packed int4 words (0.5 byte/param plus the small scale/zero tables) and dequantizes
in registers right before ``tl.dot``. N is small for some layers (896 for Qwen2.5-0.5B's o/down
projections), so the K loop is split across programs (split-K) to occupy every SM; the partial sums go
to an fp32 buffer that one ``sum`` reduces (deterministic, unlike atomics).

Large M (prefill) should use ``dequantize_w4`` + ``torch.mm`` (cuBLAS) instead; see the module
``reference``.

Group handling: checkpoints without act-order have ``g_idx[k] == k // group_size``; then a K tile lies
inside one group and needs one row of scales/zeros. Act-order checkpoints (``desc_act=True``) permute
the groups, so that path gathers a scale/zero per weight row (slower, but exact, with no repacking).
Which path applies is decided on the host once per ``g_idx`` tensor and remembered.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .reference import _check_w4_shapes, dequantize_w4
from ._triton_common import WIDEN_BF16_DOT, Launch, check_device, dot_precision, tile_dot

__all__ = ["w4a16_matmul", "dequantize_w4", "g_idx_is_sequential", "w4_tiles", "W4Tiles", "DEFAULT_UNPACK", "plan_w4a16"]


@triton.jit
def _w4a16_kernel(
    x_ptr, qweight_ptr, scales_ptr, qzeros_ptr, g_idx_ptr, out_ptr,
    M, N, K,
    stride_x_m, stride_x_k, stride_qw_k, stride_s_g, stride_qz_g,
    stride_out_split, stride_out_m,
    GROUP_SIZE: tl.constexpr, ACT_ORDER: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr, DOT_PRECISION: tl.constexpr, WIDEN_DOT: tl.constexpr,
    UNPACK_BY_RESHAPE: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    zero_shift = (offs_n % 8) * 4  # nibble of column n inside its qzeros word

    num_k_tiles = tl.cdiv(K, BLOCK_K)
    tiles_per_split = tl.cdiv(num_k_tiles, SPLIT_K)
    tile_begin = pid_k * tiles_per_split
    tile_end = tl.minimum(tile_begin + tiles_per_split, num_k_tiles)

    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for tile in range(tile_begin, tile_end):
        offs_k = tile * BLOCK_K + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        x = tl.load(x_ptr + offs_m[:, None] * stride_x_m + offs_k[None, :] * stride_x_k,
                    mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        if UNPACK_BY_RESHAPE:
            # Load each packed word once ([BLOCK_K/8, BLOCK_N]), spread its 8 nibbles along a new middle
            # axis and fold that axis into K: row 8*w + i is nibble i of word w.
            offs_kw = tile * (BLOCK_K // 8) + tl.arange(0, BLOCK_K // 8)
            words = tl.load(qweight_ptr + offs_kw[:, None] * stride_qw_k + offs_n[None, :],
                            mask=(offs_kw[:, None] < K // 8) & n_ok[None, :], other=0)
            nibble_shift = tl.arange(0, 8) * 4
            q = tl.reshape((words[:, None, :] >> nibble_shift[None, :, None]) & 0xF, (BLOCK_K, BLOCK_N))
        else:
            # Each weight row k reads word k // 8 and keeps nibble k % 8 (repeated words hit L1).
            packed = tl.load(qweight_ptr + (offs_k[:, None] // 8) * stride_qw_k + offs_n[None, :],
                             mask=k_ok[:, None] & n_ok[None, :], other=0)
            q = (packed >> ((offs_k[:, None] % 8) * 4)) & 0xF
        if ACT_ORDER:
            group = tl.load(g_idx_ptr + offs_k, mask=k_ok, other=0)
            scale = tl.load(scales_ptr + group[:, None] * stride_s_g + offs_n[None, :],
                            mask=k_ok[:, None] & n_ok[None, :], other=0.0).to(tl.float32)
            zero_word = tl.load(qzeros_ptr + group[:, None] * stride_qz_g + offs_n[None, :] // 8,
                                mask=k_ok[:, None] & n_ok[None, :], other=0)
            zero = (zero_word >> zero_shift[None, :]) & 0xF
            w = (q - zero).to(tl.float32) * scale
        else:
            group = (tile * BLOCK_K) // GROUP_SIZE  # BLOCK_K divides GROUP_SIZE: one group per tile
            scale = tl.load(scales_ptr + group * stride_s_g + offs_n, mask=n_ok, other=0.0).to(tl.float32)
            zero_word = tl.load(qzeros_ptr + group * stride_qz_g + offs_n // 8, mask=n_ok, other=0)
            zero = (zero_word >> zero_shift) & 0xF
            w = (q - zero[None, :]).to(tl.float32) * scale[None, :]
        acc += tile_dot(x, w.to(x.dtype), DOT_PRECISION, WIDEN_DOT)

    out = out_ptr + pid_k * stride_out_split + offs_m[:, None] * stride_out_m + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


# g_idx tensors are model weights that live for the whole run, so the host-side check (one device sync)
# is done once per tensor, keyed by identity and invalidated by in-place edits (tensor._version).
_SEQUENTIAL_CACHE: dict[int, tuple] = {}


def g_idx_is_sequential(g_idx: torch.Tensor, group_size: int) -> bool:
    """True when g_idx[k] == k // group_size for every k (no act-order permutation)."""
    key = id(g_idx)
    hit = _SEQUENTIAL_CACHE.get(key)
    if hit is not None and hit[0]() is g_idx and hit[1] == g_idx._version and hit[2] == group_size:
        return hit[3]
    expected = torch.arange(g_idx.shape[0], device=g_idx.device) // group_size
    result = bool(torch.equal(g_idx.to(torch.int64), expected))
    ref = weakref.ref(g_idx, lambda _dead, key=key: _SEQUENTIAL_CACHE.pop(key, None))
    _SEQUENTIAL_CACHE[key] = (ref, g_idx._version, group_size, result)
    return result


def _largest_pow2_divisor(n: int, cap: int) -> int:
    d = 1
    while d * 2 <= cap and n % (d * 2) == 0:
        d *= 2
    return d


#: How the kernel expands packed words: "reshape" loads every int32 word once and unpacks it in
#: registers; "rows" loads word k // 8 for every row k (8 redundant loads per word, served by L1).
#: Both are exact; which is faster on a given GPU is measured by experiments/bench/kernels.py.
DEFAULT_UNPACK = "reshape"


@dataclass(frozen=True)
class W4Tiles:
    """Compile-time tile shape of one w4a16 launch."""

    block_m: int
    block_n: int
    block_k: int
    act_order: bool  # gather scales/zeros per weight row (g_idx not sequential, or groups < 16 rows)


def w4_tiles(m: int, n: int, group_size: int, sequential_groups: bool, unpack: str = DEFAULT_UNPACK) -> W4Tiles:
    """BLOCK_K divides the group so a sequential tile needs one scale row; BLOCK_N grows with N.

    The "rows" unpacking stages 8x the weight bytes in shared memory, so it keeps BLOCK_N at 64
    (128 would need ~169 KiB per program, over an A100's limit).
    """
    block_k = _largest_pow2_divisor(group_size, 128) if sequential_groups else 64
    act_order = not sequential_groups or block_k < 16  # tl.dot needs K tiles >= 16
    if act_order:
        block_k = 64
    block_m = 16 if m <= 16 else (32 if m <= 32 else 64)
    block_n = 128 if n >= 2048 and block_m <= 16 and unpack == "reshape" else 64
    return W4Tiles(block_m=block_m, block_n=block_n, block_k=block_k, act_order=act_order)


def w4a16_matmul(x, qweight, scales, qzeros, g_idx, group_size: int, *, sequential_groups=None,
                 split_k=None, target_programs: int = 264, unpack: str = DEFAULT_UNPACK) -> torch.Tensor:
    """y = x @ W with W[i, o] = (q[i, o] - z[g_idx[i], o]) * scales[g_idx[i], o], never materialising W.

    x: [M, K] fp16/bf16/fp32; qweight: int32 [K // 8, N] (8 nibbles along K, lowest nibble = lowest
    row); qzeros: int32 [n_groups, N // 8] holding the true zero point (GPTQ "v2"); scales: [n_groups, N];
    g_idx: int32 [K]. Returns [M, N] in x's dtype. Meant for small M (decode).

    sequential_groups: skip the (cached, one-sync) g_idx check, e.g. while capturing a CUDA graph.
    split_k: override the split-K factor (default: enough programs to fill ``target_programs``).
    unpack: "reshape" or "rows", see ``DEFAULT_UNPACK``.
    """
    _check_w4_shapes(qweight, scales, qzeros, g_idx)
    if x.dim() != 2:
        raise ValueError(f"x must be [M, K], got {tuple(x.shape)}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"x must be fp16/bf16/fp32, got {x.dtype}")
    m, k = x.shape
    n = qweight.shape[1]
    if k != qweight.shape[0] * 8:
        raise ValueError(f"x has K={k} columns, qweight packs K={qweight.shape[0] * 8} rows")
    if group_size <= 0 or k % group_size:
        raise ValueError(f"group_size={group_size} must divide K={k} (use group_size=K for one group)")
    if scales.shape[0] != k // group_size:
        raise ValueError(f"scales has {scales.shape[0]} groups, K/group_size = {k // group_size}")
    if qweight.stride(1) != 1 or scales.stride(1) != 1 or qzeros.stride(1) != 1 or g_idx.stride(0) != 1:
        raise ValueError("qweight, scales, qzeros and g_idx must be contiguous along their last dimension")
    check_device(x, qweight, scales, qzeros, g_idx)
    if m == 0:
        return torch.empty(0, n, dtype=x.dtype, device=x.device)

    if sequential_groups is None:
        sequential_groups = g_idx_is_sequential(g_idx, group_size)
    out, launches = plan_w4a16(x, qweight, scales, qzeros, g_idx, group_size, sequential_groups, split_k,
                               target_programs, unpack)
    for launch in launches:
        launch()
    if out.dim() == 2:
        return out
    return out.sum(dim=0).to(x.dtype)


def plan_w4a16(x, qweight, scales, qzeros, g_idx, group_size: int, sequential_groups: bool, split_k,
               target_programs: int, unpack: str):
    """(output buffer, launches) of one ``w4a16_matmul``; the buffer is [split_k, M, N] fp32 when split.

    Shapes are validated by the caller; meta tensors suffice (used by ``compile_check``).
    """
    m, k = x.shape
    n = qweight.shape[1]
    if unpack not in ("reshape", "rows"):
        raise ValueError(f"unpack must be 'reshape' or 'rows', got {unpack!r}")
    tiles = w4_tiles(m, n, group_size, sequential_groups, unpack)
    grid_mn = triton.cdiv(m, tiles.block_m) * triton.cdiv(n, tiles.block_n)
    if split_k is None:
        split_k = max(1, min(triton.cdiv(k, tiles.block_k), 32, triton.cdiv(target_programs, grid_mn)))
    if split_k < 1:
        raise ValueError(f"split_k must be >= 1, got {split_k}")
    if split_k == 1:
        out = torch.empty(m, n, dtype=x.dtype, device=x.device)
        stride_split = 0
    else:
        out = torch.empty(split_k, m, n, dtype=torch.float32, device=x.device)
        stride_split = out.stride(0)
    grid = (triton.cdiv(m, tiles.block_m), triton.cdiv(n, tiles.block_n), split_k)
    launch = Launch(
        _w4a16_kernel, grid,
        (x, qweight, scales, qzeros, g_idx, out,
         m, n, k,
         x.stride(0), x.stride(1), qweight.stride(0), scales.stride(0), qzeros.stride(0),
         stride_split, out.stride(-2)),
        dict(GROUP_SIZE=group_size, ACT_ORDER=tiles.act_order, UNPACK_BY_RESHAPE=unpack == "reshape",
             BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k, SPLIT_K=split_k,
             DOT_PRECISION=dot_precision(x.dtype), WIDEN_DOT=WIDEN_BF16_DOT and x.dtype == torch.bfloat16,
             num_warps=4),
    )
    return out, [launch]
