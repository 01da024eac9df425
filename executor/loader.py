"""Weights from an HF model directory (config.json + safetensors, sharded or not).

Every tensor the module tree expects (parameters and persistent buffers, e.g. GPTQ's
qweight/qzeros/scales/g_idx) must be in the checkpoint with the right shape, and every
checkpoint tensor must land somewhere; otherwise the error names the tensors and the file.
"""

from __future__ import annotations

from pathlib import Path

import torch

from executor.checkpoint_checks import CheckpointError, check_tensor, open_safetensors, read_json_file, read_tensor
from executor.config import ModelConfig
from executor.models.llama_like import LlamaLikeForCausalLM
from executor.layers.rotary import RotaryEmbedding

# Checkpoint entries that are derived, not learned: accepted and ignored.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


__all__ = ["CheckpointError", "build_model", "checkpoint_files", "load_model", "load_weights", "verify_model_dir"]


def checkpoint_files(model_dir: Path) -> dict[str, Path]:
    """Map tensor name -> safetensors file, from the shard index when there is one."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json_file(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: no 'weight_map' object")
        files = {name: model_dir / fname for name, fname in weight_map.items()}
        for path in set(files.values()):
            if not path.is_file():
                raise CheckpointError(f"{index}: shard {path.name} is listed but missing")
        return files
    shards = sorted(model_dir.glob("*.safetensors"))
    if not shards:
        raise CheckpointError(f"{model_dir}: no *.safetensors files (only safetensors checkpoints are supported)")
    files: dict[str, Path] = {}
    for path in shards:
        with open_safetensors(path) as f:
            for name in f.keys():
                if name in files:
                    raise CheckpointError(f"tensor {name!r} appears in both {files[name].name} and {path.name}")
                files[name] = path
    return files


def build_model(config: ModelConfig, *, device: str | torch.device, dtype: torch.dtype) -> LlamaLikeForCausalLM:
    """The module tree with uninitialised storage on `device` (built on the meta device first,
    so a 7B model never materialises in float32 on the host)."""
    with torch.device("meta"):
        model = LlamaLikeForCausalLM(config)
    for p in model.parameters():
        p.data = p.data.to(dtype)
    model = model.to_empty(device=device)
    model.rotary = RotaryEmbedding(config).to(device)  # derived buffer: recompute, never load
    return model


def load_model(model_dir: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Build the model for `model_dir/config.json` and fill it from the safetensors there."""
    model_dir = Path(model_dir)
    config = ModelConfig.from_dir(model_dir)
    model = build_model(config, device=device, dtype=dtype)
    load_weights(model, model_dir)
    model.eval().requires_grad_(False)
    return model


def load_weights(model: torch.nn.Module, model_dir: Path) -> None:
    targets = model.state_dict(keep_vars=True)
    files = checkpoint_files(model_dir)
    tied = getattr(model, "lm_head", "absent") is None

    unexpected = [n for n in files if n not in targets and not n.endswith(_IGNORED_SUFFIXES)
                  and not (tied and n == "lm_head.weight")]
    if unexpected:
        by_file: dict[str, list[str]] = {}
        for n in unexpected:
            by_file.setdefault(files[n].name, []).append(n)
        detail = "; ".join(f"{f}: {', '.join(sorted(ns)[:8])}{' ...' if len(ns) > 8 else ''}" for f, ns in by_file.items())
        raise CheckpointError(f"{model_dir}: {len(unexpected)} unexpected tensor(s) the model has no place for: {detail}")
    missing = sorted(n for n in targets if n not in files)
    if missing:
        raise CheckpointError(
            f"{model_dir}: {len(missing)} tensor(s) missing from the checkpoint: "
            f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}"
        )

    by_file: dict[Path, list[str]] = {}
    for name in targets:
        by_file.setdefault(files[name], []).append(name)
    with torch.no_grad():
        for path, names in by_file.items():
            with open_safetensors(path) as f:
                stored = set(f.keys())
                if name_not_in := next((n for n in names if n not in stored), None):
                    raise CheckpointError(f"{path}: tensor {name_not_in!r} is listed in the shard index but not in the file")
                for name in names:
                    target = targets[name]
                    shape = tuple(f.get_slice(name).get_shape())
                    if shape != tuple(target.shape):
                        raise CheckpointError(
                            f"{path}: tensor {name!r} has shape {list(shape)}, the model expects {list(target.shape)}"
                        )
                    # dtype and finiteness once, on the stored tensor: copy_ would cast a float qweight
                    # to int32 without a word, and NaN weights only show up as a NaN perplexity.
                    target.copy_(check_tensor(path, name, read_tensor(f, path, name)))
    for module_name, module in model.named_modules():
        post_load = getattr(module, "post_load", None)
        if callable(post_load):
            try:
                post_load()
            except ValueError as exc:
                # e.g. GPTQ g_idx out of range: name the file and the tensor, not just the rule
                tensor = next((f"{module_name}.{field}" for field in ("g_idx", "qzeros", "qweight")
                               if field in str(exc) and f"{module_name}.{field}" in files), module_name)
                where = files.get(tensor, model_dir)
                raise CheckpointError(f"{where}: tensor {tensor!r}: {exc}") from None


def verify_model_dir(model_dir: Path, *, check_shapes: bool = True) -> None:
    """Check a whole HF directory before a tool that trusts it (the quantizer, transformers):
    config.json parses, every shard opens, every tensor has a documented dtype and finite values
    and (for an unquantized checkpoint of a supported architecture, with `check_shapes`) the
    shape config.json implies. Streams every tensor once; nothing stays in memory."""
    model_dir = Path(model_dir)
    expected: dict[str, tuple[int, ...]] = {}
    if check_shapes:
        config = ModelConfig.from_dir(model_dir)
        if config.quantization_config is None:
            expected = config.expected_tensor_shapes()
    files = checkpoint_files(model_dir)
    missing = sorted(n for n in expected if n not in files)
    if missing:
        raise CheckpointError(f"{model_dir}: {len(missing)} tensor(s) missing from the checkpoint: "
                              f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    by_file: dict[Path, list[str]] = {}
    for name, path in files.items():
        by_file.setdefault(path, []).append(name)
    for path, names in by_file.items():
        with open_safetensors(path) as f:
            for name in names:
                tensor = check_tensor(path, name, read_tensor(f, path, name))
                want = expected.get(name)
                if want is not None and tuple(tensor.shape) != want:
                    raise CheckpointError(f"{path}: tensor {name!r} has shape {list(tensor.shape)}, "
                                          f"config.json implies {list(want)}")
