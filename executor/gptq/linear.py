"""GPTQLinear: a linear layer whose weight lives as packed GPTQ integers.

Buffers carry the exact checkpoint names and shapes (`qweight`, `qzeros`, `scales`, `g_idx`,
optional `bias`), so a loader can assign checkpoint tensors by name with shape checks and then
call `post_load()`, which normalises conventions once: v1 ("gptq") zeros stored minus one
become true zeros, so every compute path sees the v2 convention.

Forward paths:
- CUDA, 4-bit, few rows (decode-sized M <= `triton_max_m`): the fused Triton w4a16 kernel
  (executor.kernels.triton_w4a16), which reads 0.5 byte per weight;
- otherwise: dequantize to a dense [K, N] matrix, then one matmul (cuBLAS / CPU BLAS).
  On CPU the dense matrix is cached per layer while a process-wide budget allows
  (`set_dequant_cache_budget`), because CPU runs are about correctness and speed of
  evaluation, not about memory; on GPU nothing is cached (the point of int4 is memory).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .packing import SUPPORTED_BITS, dequantize, pack_factor, v1_zeros_to_v2

CHECKPOINT_FORMATS = ("gptq", "gptq_v2")

_cache_budget_bytes = 2 * 1024**3
_cache_used_bytes = 0


def set_dequant_cache_budget(num_bytes: int) -> None:
    """How many bytes of dense dequantized CPU weights all GPTQLinear layers may cache together."""
    global _cache_budget_bytes
    _cache_budget_bytes = int(num_bytes)


def _reserve_cache(num_bytes: int) -> bool:
    global _cache_used_bytes
    if _cache_used_bytes + num_bytes > _cache_budget_bytes:
        return False
    _cache_used_bytes += num_bytes
    return True


def _release_cache(num_bytes: int) -> None:
    global _cache_used_bytes
    _cache_used_bytes = max(0, _cache_used_bytes - num_bytes)


def num_groups(in_features: int, group_size: int) -> int:
    """G = ceil(K / group_size); group_size -1 means one group spanning all of K."""
    return 1 if group_size == -1 else math.ceil(in_features / group_size)


def validate_layer_shape(in_features: int, out_features: int, bits: int, group_size: int) -> None:
    """Raise ValueError naming the problem when a layer cannot be stored in the GPTQ layout."""
    f = pack_factor(bits)  # raises for unsupported bits
    if group_size != -1 and group_size <= 0:
        raise ValueError(f"group_size must be a positive integer or -1, got {group_size}")
    if in_features % f:
        raise ValueError(f"in_features={in_features} is not a multiple of {f}: qweight packs {f} "
                         f"{bits}-bit rows per int32 word")
    if out_features % f:
        raise ValueError(f"out_features={out_features} is not a multiple of {f}: qzeros packs {f} "
                         f"{bits}-bit columns per int32 word")


class GPTQLinear(nn.Module):
    """y = x @ dequant(qweight) + bias, with the HF/AutoGPTQ/GPTQModel buffer layout."""

    triton_max_m = 64

    def __init__(self, in_features: int, out_features: int, bias: bool = False, bits: int = 4,
                 group_size: int = 128, desc_act: bool = False, sym: bool = True,
                 checkpoint_format: str = "gptq", dtype: torch.dtype = torch.float16, device=None):
        super().__init__()
        if checkpoint_format not in CHECKPOINT_FORMATS:
            raise ValueError(f"checkpoint_format must be one of {CHECKPOINT_FORMATS}, got {checkpoint_format!r}")
        validate_layer_shape(in_features, out_features, bits, group_size)
        f = pack_factor(bits)
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size, self.desc_act, self.sym = bits, group_size, desc_act, sym
        self.checkpoint_format = checkpoint_format
        G = num_groups(in_features, group_size)
        self.register_buffer("qweight", torch.zeros(in_features // f, out_features, dtype=torch.int32, device=device))
        self.register_buffer("qzeros", torch.zeros(G, out_features // f, dtype=torch.int32, device=device))
        self.register_buffer("scales", torch.zeros(G, out_features, dtype=dtype, device=device))
        default_g_idx = torch.arange(in_features, dtype=torch.int32, device=device) // (
            in_features if group_size == -1 else group_size)
        self.register_buffer("g_idx", default_g_idx)
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device))
        else:
            self.bias = None
        self._zeros_are_true = checkpoint_format == "gptq_v2"
        self._dense: torch.Tensor | None = None
        self._dense_bytes = 0

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, desc_act={self.desc_act}, sym={self.sym}, "
                f"bias={self.bias is not None}")

    # ---- loading -------------------------------------------------------------------------------
    def post_load(self) -> None:
        """Check the loaded tensors and convert v1 zeros (stored minus one) to true zeros, once."""
        G = self.qzeros.shape[0]
        if self.g_idx.numel():
            lo, hi = int(self.g_idx.min()), int(self.g_idx.max())
            if lo < 0 or hi >= G:
                raise ValueError(f"g_idx values must lie in [0, {G - 1}] (there are {G} groups), got [{lo}, {hi}]")
        self.g_idx = self.g_idx.to(torch.int32)
        if not self._zeros_are_true:
            self.qzeros = v1_zeros_to_v2(self.qzeros, self.bits)
            self._zeros_are_true = True
        self.drop_cache()

    def load_quantized(self, qweight, qzeros, scales, g_idx, bias=None, checkpoint_format: str | None = None) -> None:
        """Assign checkpoint tensors with shape checks (for callers without a loader), then post_load."""
        fmt = checkpoint_format or self.checkpoint_format
        if fmt not in CHECKPOINT_FORMATS:
            raise ValueError(f"checkpoint_format must be one of {CHECKPOINT_FORMATS}, got {fmt!r}")
        for name, t in (("qweight", qweight), ("qzeros", qzeros), ("scales", scales), ("g_idx", g_idx)):
            mine = getattr(self, name)
            if tuple(t.shape) != tuple(mine.shape):
                raise ValueError(f"{name}: checkpoint shape {tuple(t.shape)} != expected {tuple(mine.shape)} "
                                 f"(in={self.in_features}, out={self.out_features}, bits={self.bits}, "
                                 f"group_size={self.group_size})")
            setattr(self, name, t.to(device=mine.device, dtype=mine.dtype if name != "scales" else t.dtype))
        if (bias is None) != (self.bias is None):
            raise ValueError(f"bias: checkpoint {'has no' if bias is None else 'has a'} bias but the layer "
                             f"was built with bias={self.bias is not None}")
        if bias is not None:
            if tuple(bias.shape) != (self.out_features,):
                raise ValueError(f"bias: checkpoint shape {tuple(bias.shape)} != expected ({self.out_features},)")
            self.bias = bias.to(self.qweight.device)
        self._zeros_are_true = fmt == "gptq_v2"
        self.post_load()

    # ---- compute -------------------------------------------------------------------------------
    def true_qzeros(self) -> torch.Tensor:
        """qzeros in the v2 convention (true zero points), whatever the checkpoint stored."""
        return self.qzeros if self._zeros_are_true else v1_zeros_to_v2(self.qzeros, self.bits)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dense weight as [K, N] (input-major, the checkpoint orientation)."""
        return dequantize(self.qweight, self.true_qzeros(), self.scales, self.g_idx, self.bits, dtype)

    def drop_cache(self) -> None:
        if self._dense is not None:
            _release_cache(self._dense_bytes)
        self._dense, self._dense_bytes = None, 0

    def _dense_for(self, x: torch.Tensor) -> torch.Tensor:
        dense = self._dense
        if dense is not None and dense.dtype == x.dtype and dense.device == x.device:
            return dense
        self.drop_cache()
        dense = self.dequantized_weight(x.dtype)
        if x.device.type == "cpu" and _reserve_cache(dense.numel() * dense.element_size()):
            self._dense, self._dense_bytes = dense, dense.numel() * dense.element_size()
        return dense

    def _triton_ok(self, x2d: torch.Tensor) -> bool:
        if not (x2d.is_cuda and self.bits == 4 and x2d.shape[0] <= self.triton_max_m):
            return False
        try:
            from executor.kernels import triton_kernels_usable
            return triton_kernels_usable(x2d.device)
        except ImportError:
            return False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2d = x.reshape(-1, self.in_features)
        if self._triton_ok(x2d):
            from executor.kernels.triton_w4a16 import w4a16_matmul
            scales = self.scales if self.scales.dtype == x2d.dtype else self.scales.to(x2d.dtype)
            group = self.in_features if self.group_size == -1 else self.group_size
            y = w4a16_matmul(x2d, self.qweight, scales, self.true_qzeros(), self.g_idx, group)
            y = y.to(x.dtype)
        else:
            y = x2d @ self._dense_for(x2d)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*shape[:-1], self.out_features)

    # ---- accounting ----------------------------------------------------------------------------
    def packed_bytes(self) -> int:
        """Bytes of the quantized tensors as stored (int32 qweight/qzeros/g_idx, 16-bit scales and bias),
        whatever float dtype they were upcast to for compute."""
        ints = sum(t.numel() * 4 for t in (self.qweight, self.qzeros, self.g_idx))
        floats = self.scales.numel() + (self.bias.numel() if self.bias is not None else 0)
        return ints + 2 * floats

    def dense16_bytes(self) -> int:
        """Bytes the same layer takes as a 16-bit nn.Linear (weight + bias)."""
        return 2 * (self.in_features * self.out_features + (self.out_features if self.bias is not None else 0))
