"""GPU attention: the project's Triton paged kernels (`executor.kernels.triton_attention`).

Every step writes its K/V with `store_kv` and attends with the one mixed prefill/decode kernel
`paged_attention`. When a step holds only fresh prompts (no cached prefix, no decodes) and
PyTorch's built-in FlashAttention-2 varlen entry works on this device (checked once against
SDPA at start-up), that step uses it instead: it is the fastest causal prefill available
without the flash-attn package. The kernel path syncs nothing with the host and keeps static
grids, so decode steps can be captured in CUDA graphs.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from executor.attention.base import AttentionBackend, AttentionMetadata


class TritonAttentionBackend(AttentionBackend):
    name = "triton"
    graph_capturable = True

    @classmethod
    def create(cls, device: torch.device) -> "AttentionBackend":
        return cls(device)

    def __init__(self, device: torch.device, *, use_varlen_prefill: bool = True) -> None:
        from executor.kernels.triton_attention import paged_attention, store_kv

        self._store_kv = store_kv
        self._paged_attention = paged_attention
        self.varlen = _probe_varlen(device) if (use_varlen_prefill and device.type == "cuda") else None

    def forward(self, q, k, v, k_cache, v_cache, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        self._store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        if self.varlen is not None and meta.all_fresh_prefill and meta.max_query_len > 1:
            cu = meta.query_start_loc
            return self.varlen(q, k, v, cu, meta.max_query_len, scale)
        return self._paged_attention(
            q, k_cache, v_cache, meta.block_tables, meta.seq_lens, meta.query_start_loc,
            meta.max_query_len, meta.max_seq_len, scale,
        )


def _make_varlen_call():
    """A function (q, k, v, cu_seqlens, max_len, scale) -> out for causal packed prefill, or None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        varlen_attn = None
    if varlen_attn is not None:
        params = inspect.signature(varlen_attn).parameters

        def call(q, k, v, cu, max_len, scale):
            kwargs = {"scale": scale}
            if "window_size" in params:
                kwargs["window_size"] = (-1, 0)
            elif "is_causal" in params:
                kwargs["is_causal"] = True
            else:
                raise TypeError("varlen_attn has neither window_size nor is_causal")
            if q.shape[1] != k.shape[1]:
                if "enable_gqa" in params:
                    kwargs["enable_gqa"] = True
            return varlen_attn(q, k, v, cu, cu, max_len, max_len, **kwargs)

        return call
    aten = getattr(torch.ops.aten, "_flash_attention_forward", None)
    if aten is None:
        return None

    def call_aten(q, k, v, cu, max_len, scale):
        out = aten(q, k, v, cu, cu, max_len, max_len, 0.0, True, False, scale=scale)
        return out[0] if isinstance(out, tuple) else out

    return call_aten


def _probe_varlen(device: torch.device):
    """Return the varlen call only if it reproduces SDPA on a small GQA batch in bf16 on this device."""
    call = _make_varlen_call()
    if call is None:
        return None
    try:
        gen = torch.Generator(device=device).manual_seed(0)
        lens = [5, 19]
        heads, kv_heads, dim = 4, 2, 64
        total = sum(lens)
        q = torch.randn(total, heads, dim, device=device, dtype=torch.bfloat16, generator=gen)
        k = torch.randn(total, kv_heads, dim, device=device, dtype=torch.bfloat16, generator=gen)
        v = torch.randn(total, kv_heads, dim, device=device, dtype=torch.bfloat16, generator=gen)
        cu = torch.tensor([0, lens[0], total], dtype=torch.int32, device=device)
        out = call(q, k, v, cu, max(lens), dim**-0.5)
        start = 0
        for n in lens:
            ref = F.scaled_dot_product_attention(
                q[start:start + n].transpose(0, 1)[None].float(), k[start:start + n].transpose(0, 1)[None].float(),
                v[start:start + n].transpose(0, 1)[None].float(), is_causal=True, scale=dim**-0.5, enable_gqa=True,
            )[0].transpose(0, 1)
            err = (out[start:start + n].float() - ref).abs().max().item()
            if not err < 2e-2:
                return None
            start += n
        return call
    except Exception:  # any API or kernel mismatch on this build: use the Triton kernel for everything
        return None
