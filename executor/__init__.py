"""The real engine: Llama/Qwen2/Qwen3 models on a paged KV cache, driven by the policy layer.

Main entry points (imported lazily so `import executor` stays cheap):
`LLMEngine`, `SamplingParams`, `Output` (executor.engine / executor.sampler),
`load_model` (executor.loader), `prompt_logits` (executor.api), `resolve_model` (executor.models_registry).
"""

from __future__ import annotations

_EXPORTS = {
    "LLMEngine": "executor.engine",
    "Output": "executor.engine",
    "SamplingParams": "executor.sampler",
    "load_model": "executor.loader",
    "prompt_logits": "executor.api",
    "resolve_model": "executor.models_registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'executor' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
