"""Llama / Qwen2 / Qwen3 decoder for a flat, paged batch.

The three families differ only in flags read from `ModelConfig`: q/k/v (and o) biases,
per-head RMSNorm on q and k (Qwen3), tied embeddings and the RoPE scaling. Module and parameter
names are the HF checkpoint names, so the loader maps tensors one to one (and GPTQ checkpoints
land on the same tree through `make_linear`).

Inputs are flat: `[num_tokens]` ids and positions of every scheduled request back to back;
the attention backend and `AttentionMetadata` know which rows belong to which sequence.
"""

from __future__ import annotations

import torch
from torch import nn

from executor.attention.base import AttentionBackend, AttentionMetadata
from executor.config import ModelConfig
from executor.layers.activation import silu_and_mul
from executor.layers.linear import make_linear
from executor.layers.norm import RMSNorm
from executor.layers.rotary import RotaryEmbedding, apply_rotary

CPU_FEW_ROWS_LOGITS = 9   # up to 8 rows the transposed product is faster on CPU (measured; slower from 10)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, prefix: str) -> None:
        super().__init__()
        h, d = config.hidden_size, config.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, d
        self.scale = d**-0.5
        qc = config.quantization_config
        self.q_proj = make_linear(h, self.num_heads * d, config.qkv_bias, qc, f"{prefix}.q_proj")
        self.k_proj = make_linear(h, self.num_kv_heads * d, config.qkv_bias, qc, f"{prefix}.k_proj")
        self.v_proj = make_linear(h, self.num_kv_heads * d, config.qkv_bias, qc, f"{prefix}.v_proj")
        self.o_proj = make_linear(self.num_heads * d, h, config.o_bias, qc, f"{prefix}.o_proj")
        if config.qk_norm:
            self.q_norm = RMSNorm(d, config.rms_norm_eps)
            self.k_norm = RMSNorm(d, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None
        # Bound by the model runner (not parameters: never saved or loaded).
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None
        self.backend: AttentionBackend | None = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        n = x.shape[0]
        q = self.q_proj(x).view(n, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(n, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(n, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q = self.q_norm(q)
            k = self.k_norm(k)
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin)
        if self.k_cache is None or self.backend is None:
            raise RuntimeError("attention has no KV cache bound; run it through ModelRunner")
        o = self.backend.forward(q, k, v, self.k_cache, self.v_cache, meta, self.scale)
        return self.o_proj(o.reshape(n, self.num_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig, prefix: str) -> None:
        super().__init__()
        h, i, b, qc = config.hidden_size, config.intermediate_size, config.mlp_bias, config.quantization_config
        self.gate_proj = make_linear(h, i, b, qc, f"{prefix}.gate_proj")
        self.up_proj = make_linear(h, i, b, qc, f"{prefix}.up_proj")
        self.down_proj = make_linear(i, h, b, qc, f"{prefix}.down_proj")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_and_mul(self.gate_proj(x), self.up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, index: int) -> None:
        super().__init__()
        prefix = f"model.layers.{index}"
        self.self_attn = Attention(config, f"{prefix}.self_attn")
        self.mlp = MLP(config, f"{prefix}.mlp")
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, h: torch.Tensor, cos, sin, meta: AttentionMetadata) -> torch.Tensor:
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, meta)
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaLikeModel(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LlamaLikeForCausalLM(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaLikeModel(config)
        self.rotary = RotaryEmbedding(config)
        # The LM head stays unquantized even in GPTQ checkpoints.
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    @property
    def attention_layers(self) -> list[Attention]:
        return [layer.self_attn for layer in self.model.layers]

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Final hidden states [num_tokens, hidden] (normed); logits come from compute_logits."""
        h = self.model.embed_tokens(input_ids)
        cos, sin = self.rotary.cos_sin(positions, h.dtype)
        for layer in self.model.layers:
            h = layer(h, cos, sin, meta)
        return self.model.norm(h)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        rows = hidden.shape[0]
        if hidden.device.type == "cpu" and 0 < rows < CPU_FEW_ROWS_LOGITS:
            # For a few rows, CPU BLAS runs `x W^T` as one matrix-vector product per row, reading the
            # whole head (28M weights for SmolLM2) once per row; `W x^T` reads it once. Measured on
            # one core: 21.5 -> 5.4 ms at 2 rows, 9.7 -> 5.4 ms at 1 row (padded to 2, which is faster).
            cols = hidden if rows > 1 else torch.cat([hidden, hidden])   # a real copy: expand() is 3x slower
            return torch.mm(weight, cols.t()).t()[:rows].contiguous()
        return torch.nn.functional.linear(hidden, weight)
