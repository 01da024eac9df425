"""The operators of one decoder layer, by name, with the shapes a kernel sees.

Measured profiles (Vidur's `mlp.csv`, the project's own `ops.csv`) time these operators one by
one, and the fitted and profile-driven cost models price them one by one, so the names and the
shapes live here once. Attention itself is not among them: it depends on the context, not only
on the token count, and is priced separately.

Shapes are those of the per-GPU shard (`sim.models.shard`), so tensor parallelism is already
folded in: a GEMM is (tokens x K) @ (K x N); an elementwise operator moves a number of bytes per
token.
"""

from __future__ import annotations

from sim.models import ModelShape

# Per-layer operators, in execution order. `up_proj` is the fused gate+up projection of a
# gated MLP (one up projection otherwise); `add` is the layer's residual additions.
GEMM_OPS = ("qkv_proj", "o_proj", "up_proj", "down_proj")
ELEMENTWISE_OPS = ("input_norm", "rope", "post_attn_norm", "act", "add")
LAYER_OPS = ("input_norm", "qkv_proj", "rope", "o_proj", "post_attn_norm", "up_proj", "act", "down_proj", "add")
# Once per step, not per layer.
STEP_OPS = ("embed",)
ALL_OPS = STEP_OPS + LAYER_OPS


def gemm_dims(shard: ModelShape) -> dict[str, tuple[int, int]]:
    """(K, N) of each projection of one layer of the shard."""
    h, q, kv, f = shard.hidden_size, shard.q_dim, shard.kv_dim, shard.intermediate_size
    return {
        "qkv_proj": (h, q + 2 * kv),
        "o_proj": (q, h),
        "up_proj": (h, (2 if shard.gated_mlp else 1) * f),
        "down_proj": (f, h),
    }


def elementwise_bytes_per_token(shard: ModelShape, elem: int = 2) -> dict[str, int]:
    """Bytes one token moves through each elementwise operator (read + write, activations only)."""
    h, q, kv, f = shard.hidden_size, shard.q_dim, shard.kv_dim, shard.intermediate_size
    return {
        "input_norm": 2 * h * elem,
        "rope": 2 * (q + kv) * elem,
        "post_attn_norm": 2 * h * elem,
        "act": (3 if shard.gated_mlp else 2) * f * elem,
        "add": 3 * h * elem,
        "embed": 2 * h * elem,
    }
