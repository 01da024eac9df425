"""Custom GPU kernels of the executor (Triton) and their pure-torch references.

* ``triton_attention``: ``store_kv`` (scatter K/V into the paged cache) and ``paged_attention``
  (one launch for a mixed batch of decodes, prefix-continuing chunks and fresh prefills).
* ``triton_w4a16``: ``w4a16_matmul``, fused GPTQ int4 dequant + matmul for decode-sized M.
* ``reference``: the same maths in plain torch; the tests' oracle and a CPU fallback.
* ``compile_check``: compiles the exact launches above for sm_80/sm_90 without a GPU
  (``python -m executor.kernels.compile_check``); ``experiments/bench/kernels.py`` times them on one.

Importing this package does not import Triton; the kernel modules do. On a machine without CUDA the
kernels only run with ``TRITON_INTERPRET=1`` set before Triton is first imported.
"""

from __future__ import annotations

import os

from .reference import dequantize_w4, paged_attention_reference, store_kv_reference, w4a16_matmul_reference

__all__ = [
    "dequantize_w4",
    "paged_attention_reference",
    "store_kv_reference",
    "w4a16_matmul_reference",
    "triton_kernels_usable",
]


def triton_kernels_usable(device) -> bool:
    """Whether the Triton kernels can run on tensors of ``device`` in this process.

    CUDA needs an importable triton; any other device needs the Triton interpreter (TRITON_INTERPRET=1),
    which is only honoured if it was set before triton was first imported.
    """
    try:
        import triton  # noqa: F401
        from triton import knobs
    except ImportError:
        return False
    device_type = getattr(device, "type", str(device).split(":")[0])
    if device_type == "cuda":
        return not knobs.runtime.interpret
    return bool(knobs.runtime.interpret) and os.environ.get("TRITON_INTERPRET", "") not in ("", "0")
