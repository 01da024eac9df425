"""Attention backends by name. The base class knows none of its implementations: each entry
here names the module and class to import when that backend is asked for, so optional
packages (triton, flash-attn) are imported only by the engines that use them."""

from __future__ import annotations

import importlib
import os

import torch

from executor.attention.base import AttentionBackend

_BACKENDS: dict[str, str] = {
    "torch": "executor.attention.torch_backend:TorchAttentionBackend",
    "triton": "executor.attention.triton_backend:TritonAttentionBackend",
    "flash-attn": "executor.attention.flash_backend:FlashAttnBackend",
}
BACKEND_NAMES = tuple(_BACKENDS)


def register_backend(name: str, target: str) -> None:
    """Make `get_backend(name, ...)` build `target` ("module:Class", constructed with the device)."""
    _BACKENDS[name] = target
    global BACKEND_NAMES
    BACKEND_NAMES = tuple(_BACKENDS)


def get_backend(name: str, device: torch.device | str) -> AttentionBackend:
    device = torch.device(device)
    target = _BACKENDS.get(name)
    if target is None:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(_BACKENDS)}")
    if name == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            "attention backend 'triton' needs a CUDA device (or TRITON_INTERPRET=1 for slow CPU checks); "
            f"got device {device}"
        )
    module, cls = target.split(":")
    backend_cls = getattr(importlib.import_module(module), cls)
    return backend_cls.create(device)
