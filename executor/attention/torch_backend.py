"""Reference attention in plain PyTorch (CPU and GPU).

Work is planned once per step (shared by every layer) and split in two shapes:
- rows that are a single query token (decodes, and a fully cached prompt's last token) run as
  one batched masked attention over each sequence's gathered K/V (padded to the longest);
- multi-token rows run per sequence with SDPA: plain causal on the fresh K/V when there is no
  cached prefix, otherwise over the K/V gathered from the cache with a bottom-right causal mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from executor.attention.base import AttentionBackend, AttentionMetadata


@dataclass
class _StepPlan:
    decode_rows: torch.Tensor | None  # [nD] token rows of single-token sequences
    decode_blocks: torch.Tensor | None  # [nD, max_blocks] block ids (whole blocks are gathered)
    decode_mask: torch.Tensor | None  # [nD, 1, 1, max_blocks * block_size] True = attend
    prefills: list  # (start, end, fresh, blocks [nb] or None, length, mask [q, L] or None)


def _plan(meta: AttentionMetadata, device: torch.device) -> _StepPlan:
    q_lens, seq_lens = meta.query_lens_host, meta.seq_lens_host
    starts = [0]
    for n in q_lens:
        starts.append(starts[-1] + n)
    bs = meta.block_size
    tables = meta.block_tables.to(torch.int64)
    dec = [s for s, n in enumerate(q_lens) if n == 1]
    decode_rows = decode_blocks = decode_mask = None
    if dec:
        n_blocks = -(-max(seq_lens[s] for s in dec) // bs)
        idx = torch.tensor(dec, device=device)
        decode_blocks = tables[idx, :n_blocks]
        lens = torch.tensor([seq_lens[s] for s in dec], device=device)
        pos = torch.arange(n_blocks * bs, device=device)
        decode_mask = (pos[None, :] < lens[:, None])[:, None, None, :]
        decode_rows = torch.tensor([starts[s] for s in dec], device=device)
    prefills = []
    for s, n in enumerate(q_lens):
        if n <= 1:
            continue
        L = seq_lens[s]
        if n == L:
            prefills.append((starts[s], starts[s] + n, True, None, L, None))
        else:
            blocks = tables[s, : -(-L // bs)]
            q_pos = torch.arange(L - n, L, device=device)
            mask = torch.arange(L, device=device)[None, :] <= q_pos[:, None]
            prefills.append((starts[s], starts[s] + n, False, blocks, L, mask))
    return _StepPlan(decode_rows, decode_blocks, decode_mask, prefills)


class TorchAttentionBackend(AttentionBackend):
    name = "torch"

    def forward(self, q, k, v, k_cache, v_cache, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
        flat_k = k_cache.view(-1, num_kv_heads, head_dim)
        flat_v = v_cache.view(-1, num_kv_heads, head_dim)
        flat_k.index_copy_(0, meta.slot_mapping, k.to(k_cache.dtype))
        flat_v.index_copy_(0, meta.slot_mapping, v.to(v_cache.dtype))

        plan = meta.scratch.get("torch")
        if plan is None:
            plan = meta.scratch["torch"] = _plan(meta, q.device)
        out = torch.empty_like(q)
        if plan.decode_rows is not None:
            # gather whole blocks (one index per block, not per token), mask the tail
            nd, nb = plan.decode_blocks.shape
            qd = q[plan.decode_rows][:, :, None, :]  # [nD, H, 1, D]
            kd = k_cache[plan.decode_blocks].view(nd, nb * k_cache.shape[1], num_kv_heads, head_dim)
            vd = v_cache[plan.decode_blocks].view(nd, nb * v_cache.shape[1], num_kv_heads, head_dim)
            od = F.scaled_dot_product_attention(qd, kd.transpose(1, 2).to(q.dtype), vd.transpose(1, 2).to(q.dtype),
                                                attn_mask=plan.decode_mask, scale=scale, enable_gqa=True)
            out[plan.decode_rows] = od[:, :, 0, :]
        for start, end, fresh, blocks, length, mask in plan.prefills:
            qs = q[start:end].transpose(0, 1)[None]  # [1, H, n, D]
            if fresh:
                ks = k[start:end].transpose(0, 1)[None]
                vs = v[start:end].transpose(0, 1)[None]
                o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale, enable_gqa=True)
            else:
                ks = k_cache[blocks].view(-1, num_kv_heads, head_dim)[:length].transpose(0, 1)[None].to(q.dtype)
                vs = v_cache[blocks].view(-1, num_kv_heads, head_dim)[:length].transpose(0, 1)[None].to(q.dtype)
                o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scale, enable_gqa=True)
            out[start:end] = o[0].transpose(0, 1)
        return out
