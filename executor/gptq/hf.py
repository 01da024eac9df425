"""Load a GPTQ model directory into a transformers model, with GPTQLinear in place of nn.Linear.

Why: evaluation (perplexity, KL) and tests need to run GPTQ checkpoints on CPU independently of
our executor, and to run them through the very module the executor uses. Plain (unquantized)
directories load with AutoModelForCausalLM as usual.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from executor.loader import verify_model_dir

from .checkpoint import GPTQCheckpointError, check_layer_tensors, quantized_layer_names, read_gptq_config, read_tensors
from .linear import GPTQLinear


def load_hf_model(model_dir: str | Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A transformers causal LM for `model_dir`, GPTQ-aware; eval mode, on CPU."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model_dir = Path(model_dir).expanduser()
    cfg = read_gptq_config(model_dir)
    if cfg is None:
        # transformers would load a NaN-filled or float-cast tensor without a word; check first
        verify_model_dir(model_dir, check_shapes=False)
        return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).eval()

    raw = json.loads((model_dir / "config.json").read_text())
    raw.pop("quantization_config", None)
    model_type = raw.pop("model_type")
    for key in ("torch_dtype", "dtype", "transformers_version", "_name_or_path"):
        raw.pop(key, None)
    hf_config = AutoConfig.for_model(model_type, **raw)
    model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    tensors = read_tensors(model_dir)
    source = str(model_dir)
    modules = dict(model.named_modules())
    for name in quantized_layer_names(tensors):
        old = modules.get(name)
        if not isinstance(old, nn.Linear):
            raise GPTQCheckpointError(f"{source}: {name}.qweight names no linear layer of a {model_type} model")
        check_layer_tensors(name, tensors, old.in_features, old.out_features, cfg, source)
        has_bias = f"{name}.bias" in tensors
        new = GPTQLinear(old.in_features, old.out_features, bias=has_bias, bits=cfg.bits,
                         group_size=cfg.group_size, desc_act=cfg.desc_act, sym=cfg.sym,
                         checkpoint_format=cfg.checkpoint_format, dtype=dtype)
        try:
            new.load_quantized(tensors.pop(f"{name}.qweight"), tensors.pop(f"{name}.qzeros"),
                               tensors.pop(f"{name}.scales").to(dtype), tensors.pop(f"{name}.g_idx"),
                               tensors.pop(f"{name}.bias").to(dtype) if has_bias else None)
        except ValueError as exc:
            field = str(exc).split(" ", 1)[0].rstrip(":")
            tensor = f"{name}.{field}" if field in ("qweight", "qzeros", "scales", "g_idx", "bias") else name
            raise GPTQCheckpointError(f"{source}: tensor {tensor!r}: {exc}") from None
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, new)
    result = model.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()},
                                   strict=False)
    loaded = {f"{n}.{b}" for n, m in model.named_modules() if isinstance(m, GPTQLinear)
              for b, _ in m.named_buffers(recurse=False)}
    tied = getattr(hf_config, "tie_word_embeddings", False)
    missing = [k for k in result.missing_keys if k not in loaded and not (k == "lm_head.weight" and tied)]
    if missing or result.unexpected_keys:
        raise GPTQCheckpointError(f"{source}: tensors do not match the model: missing {missing[:5]}, "
                                  f"unexpected {result.unexpected_keys[:5]}")
    if tied:
        model.tie_weights()
    return model.eval()


def quantized_memory(model: nn.Module) -> tuple[int, int]:
    """(bytes of all GPTQLinear tensors, bytes the same layers take at 16 bits)."""
    packed = dense = 0
    for mod in model.modules():
        if isinstance(mod, GPTQLinear):
            packed += mod.packed_bytes()
            dense += mod.dense16_bytes()
    return packed, dense
