"""What every Triton kernel of this package shares: device checks and a dot that survives the interpreter.

Why a module: the attention and w4a16 kernels must agree on how fp32 inputs are multiplied (IEEE, not
TF32, so CPU tests against fp32/fp64 references are meaningful) and on the interpreter workaround below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import triton
import triton.language as tl
from triton import knobs

#: True when Triton was imported with TRITON_INTERPRET=1 (kernels then run on CPU tensors, slowly).
INTERPRETED = bool(knobs.runtime.interpret)

#: Triton 3.9's interpreter multiplies bf16 tiles in tl.dot as raw uint16 bits (it stores bf16 as
#: uint16), so under the interpreter bf16 dot operands are widened to fp32 first. Compiled kernels
#: always feed bf16 straight to the tensor cores.
WIDEN_BF16_DOT = INTERPRETED


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs must not silently drop to TF32; fp16/bf16 ignore the setting."""
    return "ieee" if dtype == torch.float32 else "tf32"


@triton.jit
def tile_dot(a, b, PRECISION: tl.constexpr, WIDEN: tl.constexpr):
    """tl.dot with fp32 accumulation; WIDEN works around the interpreter's bf16 dot (see above)."""
    if WIDEN:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PRECISION)


def check_device(*tensors: torch.Tensor) -> None:
    """All tensors on one device, and that device is one the kernels can run on in this process."""
    device = tensors[0].device
    for t in tensors:
        if t.device != device:
            raise ValueError(f"all tensors must be on one device; got {device} and {t.device}")
    if device.type != "cuda" and not INTERPRETED:
        raise RuntimeError(
            f"Triton kernels need CUDA tensors (got {device}); on CPU set TRITON_INTERPRET=1 before "
            "importing triton, or call executor.kernels.reference instead"
        )


@dataclass
class Launch:
    """One kernel launch, built separately from running it so the exact variants can also be compiled
    ahead of time for a GPU target on a machine without one (see ``compile_check``)."""

    kernel: Any  # a triton JITFunction (or InterpretedFunction)
    grid: tuple
    args: tuple
    kwargs: dict = field(default_factory=dict)  # constexprs and launch options (num_warps)

    def __call__(self) -> None:
        self.kernel[self.grid](*self.args, **self.kwargs)
