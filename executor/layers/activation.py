"""SwiGLU: the gated MLP activation of Llama and Qwen (`silu(gate) * up`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def silu_and_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up
