"""What a spec's `model:` names, seen from each engine.

The simulator needs a shape (no weights, no torch); the executor needs an HF directory. Both
must agree on the vocabulary (synthetic token ids) and the KV bytes per token (the pool size
in blocks), so both views come from the same config numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from sim.hardware import DTYPE_BYTES
from sim.models import ModelShape, get_model_shape, gptq_bits_from_hf_config, shape_from_hf_config

SMOLLM2 = "smollm2-135m"


def _cache_root() -> Path:
    base = os.environ.get("FOLOVLLM_CACHE")
    return Path(base) if base else Path.home() / ".cache" / "folovllm"


def model_shape(model: str) -> ModelShape:
    """The shape the simulator prices (`random:<shape>` read from the executor's shape table)."""
    if model.startswith("random:"):
        from executor.models_registry import SHAPES  # a plain dict; torch is imported lazily there

        name = model.split(":", 1)[1]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.json"
            path.write_text(json.dumps({**SHAPES[name], "_name_or_path": name}))
            return shape_from_hf_config(path)
    return get_model_shape(Path(model).expanduser() if Path(model).expanduser().is_dir() else model)


def model_identity(model: str) -> dict:
    """What identifies the model in a result's cache key: the name, plus the config's content
    for a directory (so replacing the checkpoint invalidates old results)."""
    path = Path(model).expanduser()
    if path.is_dir():
        digest = hashlib.sha256((path / "config.json").read_bytes()).hexdigest()
        files = sorted((p.name, p.stat().st_size) for p in path.glob("*.safetensors"))
        return {"dir": str(path.resolve()), "config_sha256": digest, "weights": files}
    return {"name": model}


def is_gptq_dir(model: str) -> bool:
    path = Path(model).expanduser()
    return path.is_dir() and gptq_bits_from_hf_config(path) is not None


def executor_model_dir(model: str) -> Path:
    """Prepare (once) and return the HF directory the executor loads."""
    from executor.models_registry import SHAPES, is_prepared, resolve_model, write_random_model

    if model.startswith("random:"):
        name = model.split(":", 1)[1]
        out = _cache_root() / "models" / f"random-{name}-seed0"
        if not is_prepared(out):
            if name not in SHAPES:
                raise ValueError(f"unknown random shape {name!r}; known: {sorted(SHAPES)}")
            write_random_model(name, out, seed=0)
        return out
    return resolve_model(model)


def kv_block_bytes(shape: ModelShape, block_size: int, dtype: str) -> int:
    return block_size * shape.kv_bytes_per_token(DTYPE_BYTES[dtype])


TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
