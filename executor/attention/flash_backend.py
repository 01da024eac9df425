"""Optional backend on the `flash-attn` package (absent on the project's GPU image).

Uses `flash_attn_varlen_func` with a paged `block_table` (flash-attn >= 2.5), which needs cache
blocks whose size is a multiple of 256. K/V are written with a plain index_copy.
"""

from __future__ import annotations

import torch

from executor.attention.base import AttentionBackend, AttentionMetadata


class FlashAttnBackend(AttentionBackend):
    name = "flash-attn"

    @classmethod
    def create(cls, device: torch.device) -> "AttentionBackend":
        return cls(device)

    def __init__(self, device: torch.device) -> None:
        try:
            from flash_attn import flash_attn_varlen_func
        except ImportError as exc:
            raise ValueError(
                "attention backend 'flash-attn' needs the flash-attn package, which is not installed; "
                "use attention_backend='triton' (GPU) or 'torch'"
            ) from exc
        if torch.device(device).type != "cuda":
            raise ValueError(f"attention backend 'flash-attn' needs a CUDA device, got {device}")
        self._varlen = flash_attn_varlen_func

    def forward(self, q, k, v, k_cache, v_cache, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        if meta.block_size % 256:
            raise ValueError(f"flash-attn paged KV needs block_size % 256 == 0, got {meta.block_size}")
        kvh, d = k_cache.shape[2], k_cache.shape[3]
        k_cache.view(-1, kvh, d).index_copy_(0, meta.slot_mapping, k)
        v_cache.view(-1, kvh, d).index_copy_(0, meta.slot_mapping, v)
        cu_k = torch.zeros(meta.seq_lens.shape[0] + 1, dtype=torch.int32, device=q.device)
        cu_k[1:] = meta.seq_lens.cumsum(0)
        return self._varlen(
            q, k_cache, v_cache, meta.query_start_loc, cu_k, meta.max_query_len, meta.max_seq_len,
            softmax_scale=scale, causal=True, block_table=meta.block_tables,
        )
