"""Reference attention in plain PyTorch (CPU and GPU).

Work is planned once per step (shared by every layer) and split in two shapes:
- rows that are a single query token (decodes, and a fully cached prompt's last token): on CUDA
  one batched masked attention over each sequence's gathered K/V (padded to the longest); on
  the CPU one gather of every row's blocks, unpadded, then attention row by row. Padding made a
  CPU decode step cost rows x the longest context instead of the sum of contexts (a 16-row
  step with contexts of 50-900 tokens: 231 ms padded against 154 ms row by row, 30 layers of
  SmolLM2-135M), and the simulator's step shape carries the sum; the per-row call costs about
  15 us per layer, less than the padding it saves once contexts differ by a block;
- multi-token rows run per sequence with SDPA: plain causal on the fresh K/V when there is no
  cached prefix, otherwise over the K/V gathered from the cache with a bottom-right causal mask.

Why the gathers look the way they do (measured on the 2-core CPU machine, one thread, 16 decodes
over 650 cached tokens, SmolLM2-135M): the gather of cached K/V was over half of a decode step.
`cache[blocks_2d]` (advanced indexing) runs a per-element index kernel and allocates a fresh
multi-megabyte tensor per layer and per K/V; glibc serves such sizes with mmap or a heap it
trims again, so the pages are faulted in anew on some steps and not on others, depending on
what ran before. That made identical plans take different times. `index_select` over a flat
block list copies whole blocks (one memcpy each, 3-5x faster), and writing into a workspace the
backend keeps (grown, never shrunk, shared by the layers of a step, which run one after
another) means the same pages are reused every step: no allocation, no page faults.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from executor.attention.base import AttentionBackend, AttentionMetadata


@dataclass
class _StepPlan:
    decode_rows: torch.Tensor | None  # [nD] token rows of single-token sequences
    decode_rows_slice: slice | None  # the same rows when they are contiguous (a plain view, no gather)
    decode_blocks: torch.Tensor | None  # [nD * max_blocks] block ids, row-major (whole blocks are gathered)
    decode_shape: tuple[int, int]  # (nD, max_blocks)
    decode_mask: torch.Tensor | None  # [nD, 1, 1, max_blocks * block_size] True = attend
    decode_segments: list | None  # CPU, unpadded: (row, token offset in the gather, length) per decode
    prefills: list  # (start, end, fresh, blocks [nb] or None, length, mask [q, L] or None)


def _plan(meta: AttentionMetadata, device: torch.device) -> _StepPlan:
    q_lens, seq_lens = meta.query_lens_host, meta.seq_lens_host
    starts = [0]
    for n in q_lens:
        starts.append(starts[-1] + n)
    bs = meta.block_size
    tables = meta.block_tables.to(torch.int64)
    dec = [s for s, n in enumerate(q_lens) if n == 1]
    decode_rows = decode_blocks = decode_mask = rows_slice = segments = None
    decode_shape = (0, 0)
    if dec and device.type == "cpu":
        # every decode's own blocks, back to back (no padding), and where each row's tokens start
        counts = [-(-seq_lens[s] // bs) for s in dec]
        decode_blocks = torch.cat([tables[s, :n] for s, n in zip(dec, counts)])
        decode_shape = (len(dec), sum(counts))
        segments, offset = [], 0
        for s, n in zip(dec, counts):
            segments.append((starts[s], offset, seq_lens[s]))
            offset += n * bs
    elif dec:
        n_blocks = -(-max(seq_lens[s] for s in dec) // bs)
        decode_shape = (len(dec), n_blocks)
        if dec == list(range(dec[0], dec[0] + len(dec))):
            decode_blocks = tables[dec[0] : dec[0] + len(dec), :n_blocks].reshape(-1)
        else:
            decode_blocks = tables[torch.tensor(dec, device=device), :n_blocks].reshape(-1)
        lens = torch.tensor([seq_lens[s] for s in dec], device=device)
        pos = torch.arange(n_blocks * bs, device=device)
        decode_mask = (pos[None, :] < lens[:, None])[:, None, None, :]
        row_starts = [starts[s] for s in dec]
        decode_rows = torch.tensor(row_starts, device=device)
        if row_starts == list(range(row_starts[0], row_starts[0] + len(row_starts))):
            rows_slice = slice(row_starts[0], row_starts[0] + len(row_starts))
    prefills = []
    for s, n in enumerate(q_lens):
        if n <= 1:
            continue
        L = seq_lens[s]
        if n == L:
            prefills.append((starts[s], starts[s] + n, True, None, L, None))
        else:
            blocks = tables[s, : -(-L // bs)].contiguous()
            q_pos = torch.arange(L - n, L, device=device)
            mask = torch.arange(L, device=device)[None, :] <= q_pos[:, None]
            prefills.append((starts[s], starts[s] + n, False, blocks, L, mask))
    return _StepPlan(decode_rows, rows_slice, decode_blocks, decode_shape, decode_mask, segments, prefills)


class _Workspace:
    """Two flat buffers (K and V) that CPU gathers write into, grown (by a quarter more than
    asked, so a run whose contexts grow step by step reallocates a few times, not every step)
    and never shrunk. On CUDA it hands out nothing: the caching allocator already reuses
    memory, and a buffer kept across steps would sit outside the KV budget's profiled peak."""

    def __init__(self) -> None:
        self._bufs: dict[tuple, torch.Tensor] = {}

    def get(self, which: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
        if device.type != "cpu":
            return None
        n = 1
        for s in shape:
            n *= s
        key = (which, dtype, device)
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < n:
            buf = self._bufs[key] = torch.empty(n + n // 4, dtype=dtype, device=device)
        return buf[:n].view(shape)


def gather_blocks(cache: torch.Tensor, blocks: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """cache [num_blocks, block_size, H, D] rows `blocks` -> [len(blocks), block_size, H, D] (into `out` if given)."""
    if out is None:
        return torch.index_select(cache, 0, blocks)
    return torch.index_select(cache, 0, blocks, out=out)


class TorchAttentionBackend(AttentionBackend):
    name = "torch"

    def __init__(self) -> None:
        self._workspace = _Workspace()

    def forward(self, q, k, v, k_cache, v_cache, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
        bs = k_cache.shape[1]
        flat_k = k_cache.view(-1, num_kv_heads, head_dim)
        flat_v = v_cache.view(-1, num_kv_heads, head_dim)
        flat_k.index_copy_(0, meta.slot_mapping, k.to(k_cache.dtype))
        flat_v.index_copy_(0, meta.slot_mapping, v.to(v_cache.dtype))

        plan = meta.scratch.get("torch")
        if plan is None:
            plan = meta.scratch["torch"] = _plan(meta, q.device)
        ws = self._workspace
        out = torch.empty_like(q)
        if plan.decode_segments is not None:
            # gather every decode's blocks once (unpadded), then attend row by row over its own slice
            nblocks = plan.decode_shape[1]
            blk_shape = (nblocks, bs, num_kv_heads, head_dim)
            kg = gather_blocks(k_cache, plan.decode_blocks, ws.get("k", blk_shape, k_cache.dtype, k_cache.device))
            vg = gather_blocks(v_cache, plan.decode_blocks, ws.get("v", blk_shape, v_cache.dtype, v_cache.device))
            kg = kg.view(-1, num_kv_heads, head_dim)
            vg = vg.view(-1, num_kv_heads, head_dim)
            for row, offset, length in plan.decode_segments:
                ks = kg[offset : offset + length].transpose(0, 1)[None].to(q.dtype)
                vs = vg[offset : offset + length].transpose(0, 1)[None].to(q.dtype)
                o = F.scaled_dot_product_attention(q[row : row + 1, :, None, :], ks, vs, scale=scale, enable_gqa=True)
                out[row] = o[0, :, 0, :]
        elif plan.decode_blocks is not None:
            # gather whole blocks (one index per block, not per token) into the workspace, mask the tail
            nd, nb = plan.decode_shape
            blk_shape = (nd * nb, bs, num_kv_heads, head_dim)
            kd = gather_blocks(k_cache, plan.decode_blocks, ws.get("k", blk_shape, k_cache.dtype, k_cache.device))
            vd = gather_blocks(v_cache, plan.decode_blocks, ws.get("v", blk_shape, v_cache.dtype, v_cache.device))
            kd = kd.view(nd, nb * bs, num_kv_heads, head_dim).transpose(1, 2).to(q.dtype)
            vd = vd.view(nd, nb * bs, num_kv_heads, head_dim).transpose(1, 2).to(q.dtype)
            rows = plan.decode_rows_slice if plan.decode_rows_slice is not None else plan.decode_rows
            qd = q[rows][:, :, None, :]  # [nD, H, 1, D]
            od = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=plan.decode_mask, scale=scale, enable_gqa=True)
            out[rows] = od[:, :, 0, :]
        for start, end, fresh, blocks, length, mask in plan.prefills:
            qs = q[start:end].transpose(0, 1)[None]  # [1, H, n, D]
            if fresh:
                ks = k[start:end].transpose(0, 1)[None]
                vs = v[start:end].transpose(0, 1)[None]
                o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale, enable_gqa=True)
            else:
                blk_shape = (blocks.shape[0], bs, num_kv_heads, head_dim)
                kg = gather_blocks(k_cache, blocks, ws.get("k", blk_shape, k_cache.dtype, k_cache.device))
                vg = gather_blocks(v_cache, blocks, ws.get("v", blk_shape, v_cache.dtype, v_cache.device))
                ks = kg.view(-1, num_kv_heads, head_dim)[:length].transpose(0, 1)[None].to(q.dtype)
                vs = vg.view(-1, num_kv_heads, head_dim)[:length].transpose(0, 1)[None].to(q.dtype)
                o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scale, enable_gqa=True)
            out[start:end] = o[0].transpose(0, 1)
        return out
