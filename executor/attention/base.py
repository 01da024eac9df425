"""The attention interface every backend implements, and the per-step metadata it reads.

A step's tokens come as one flat batch: sequence s owns rows
`query_start_loc[s] : query_start_loc[s+1]` and, after this step writes its K/V, has
`seq_lens[s]` tokens in the paged cache. Its rows are the *last* `q_len` positions, so causal
masking is bottom-right aligned. This one description covers fresh prompts, prefill chunks
over a cached prefix and decodes, so a mixed batch is a single forward pass.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [num_tokens] int64: flat cache slot of each token (-1 = padding row)
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32
    seq_lens: torch.Tensor  # [num_seqs] int32, INCLUDING this step's tokens
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int32
    max_query_len: int
    max_seq_len: int
    block_size: int
    # Host copies: the reference backend plans its work from these without device syncs.
    query_lens_host: list[int] = field(default_factory=list)
    seq_lens_host: list[int] = field(default_factory=list)
    # Per-step precomputations a backend shares across layers (index tensors, masks).
    scratch: dict = field(default_factory=dict)

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_host) if self.seq_lens_host else int(self.seq_lens.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.slot_mapping.shape[0])

    @property
    def is_pure_decode(self) -> bool:
        return self.max_query_len == 1

    @property
    def all_fresh_prefill(self) -> bool:
        """Every sequence attends only to its own new tokens (no cached prefix). Computed once
        per step (layers ask every time)."""
        fresh = self.scratch.get("all_fresh")
        if fresh is None:
            fresh = self.scratch["all_fresh"] = bool(self.seq_lens_host) and self.query_lens_host == self.seq_lens_host
        return fresh


class AttentionBackend(ABC):
    """Writes this step's K/V into the paged cache, then attends.

    q: [num_tokens, num_heads, head_dim]; k, v: [num_tokens, num_kv_heads, head_dim];
    caches: [num_blocks, block_size, num_kv_heads, head_dim]. Returns [num_tokens, num_heads, head_dim].
    """

    name: str = "?"
    #: True when forward() never syncs with the host and keeps static shapes (CUDA graphs).
    graph_capturable: bool = False

    @classmethod
    def create(cls, device: torch.device) -> "AttentionBackend":
        """Build the backend for `device` (backends that hold device state take it)."""
        return cls()

    @abstractmethod
    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor: ...
