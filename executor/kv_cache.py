"""The paged KV cache: per layer K and V of shape [num_blocks, block_size, kv_heads, head_dim].

The policy layer owns block *ids*; this module owns the memory they index. Its size comes
from a byte budget, so the same budget can be handed to the paged and the contiguous policies.
"""

from __future__ import annotations

import torch

from executor.config import ModelConfig


class KVBudgetError(ValueError):
    """The KV memory budget cannot hold even one request."""


def bytes_per_block(config: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * config.num_layers * block_size * config.num_kv_heads * config.head_dim * elem


def blocks_for_budget(config: ModelConfig, block_size: int, dtype: torch.dtype, budget_bytes: int,
                      *, min_blocks: int = 1) -> int:
    per_block = bytes_per_block(config, block_size, dtype)
    n = int(budget_bytes // per_block)
    if n < min_blocks:
        raise KVBudgetError(
            f"KV budget of {budget_bytes} bytes holds {n} block(s) of {per_block} bytes "
            f"(block_size={block_size}), but at least {min_blocks} are needed to serve one "
            f"request of max_model_len tokens; raise kv_cache_memory or lower max_model_len"
        )
    return n


class KVCache:
    def __init__(self, config: ModelConfig, num_blocks: int, block_size: int, *, dtype: torch.dtype,
                 device: str | torch.device) -> None:
        if num_blocks < 1:
            raise KVBudgetError(f"num_blocks={num_blocks}: the KV cache needs at least one block")
        self.num_blocks, self.block_size, self.dtype = num_blocks, block_size, dtype
        # One allocation; zeros so padded (masked) reads never meet NaN garbage.
        self.storage = torch.zeros(
            2, config.num_layers, num_blocks, block_size, config.num_kv_heads, config.head_dim,
            dtype=dtype, device=device,
        )
        self.k = list(self.storage[0].unbind(0))
        self.v = list(self.storage[1].unbind(0))

    @property
    def nbytes(self) -> int:
        return self.storage.numel() * self.storage.element_size()

    def bind(self, model, backend) -> None:
        """Point each attention layer at its cache tensors and the backend that reads them."""
        layers = model.attention_layers
        if len(layers) != len(self.k):
            raise ValueError(f"model has {len(layers)} attention layers, cache has {len(self.k)}")
        for attn, k, v in zip(layers, self.k, self.v):
            attn.k_cache, attn.v_cache, attn.backend = k, v, backend
