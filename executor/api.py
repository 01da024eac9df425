"""Small entry points other layers use without building an engine."""

from __future__ import annotations

import torch

from executor.attention.registry import get_backend
from executor.kv_cache import KVCache
from executor.model_runner import build_step_inputs
from policy.utils import cdiv


@torch.inference_mode()
def prompt_logits(model, token_ids: list[int], *, backend: str = "torch", block_size: int = 16) -> torch.Tensor:
    """Logits [len(token_ids), vocab] (float32) of a full-sequence forward through the paged path,
    using a throwaway KV cache just big enough for the sequence."""
    token_ids = [int(t) for t in token_ids]
    if not token_ids:
        raise ValueError("prompt_logits: token_ids is empty")
    vocab = model.config.vocab_size
    bad = [t for t in token_ids if not 0 <= t < vocab]
    if bad:
        raise ValueError(f"prompt_logits: token id(s) {bad[:5]} outside the vocabulary [0, {vocab})")
    param = next(model.parameters())
    device = param.device
    dtype = param.dtype if param.is_floating_point() else torch.float32
    num_blocks = cdiv(len(token_ids), block_size)
    cache = KVCache(model.config, num_blocks, block_size, dtype=dtype, device=device)
    saved = [(a.k_cache, a.v_cache, a.backend) for a in model.attention_layers]
    cache.bind(model, get_backend(backend, device))
    inputs = build_step_inputs([(token_ids, 0, list(range(num_blocks)))], [False], block_size, device)
    try:
        hidden = model(inputs.input_ids, inputs.positions, inputs.meta)
        return model.compute_logits(hidden).to(torch.float32)
    finally:
        # drop the throwaway cache; an engine sharing this model keeps its own binding
        for attn, (k, v, b) in zip(model.attention_layers, saved):
            attn.k_cache, attn.v_cache, attn.backend = k, v, b
