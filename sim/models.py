"""Model shapes: everything a cost model or a memory planner needs to know about a
transformer, and nothing it does not (no weights, no torch).

A shape comes from a named preset (the models this project talks about) or from a Hugging
Face `config.json`, so a model directory the executor runs is priced from the same numbers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class ModelShape:
    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    max_position_embeddings: int = 4096
    attention_bias: bool = False  # Qwen2 has q/k/v biases (tiny, counted for completeness)
    gated_mlp: bool = True  # SwiGLU (gate and up projections); False: one up projection (GPT/phi style)

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def linear_params_per_layer(self) -> int:
        """Weights of the matmuls in one decoder layer (q, k, v, o, gate, up, down)."""
        h = self.hidden_size
        attn = h * self.q_dim + 2 * h * self.kv_dim + self.q_dim * h
        mlp = (3 if self.gated_mlp else 2) * h * self.intermediate_size
        return attn + mlp

    @property
    def linear_params(self) -> int:
        return self.num_layers * self.linear_params_per_layer

    @property
    def small_params(self) -> int:
        """Norm weights and biases: read every step but negligible in FLOPs."""
        per_layer = 2 * self.hidden_size + (self.q_dim + 2 * self.kv_dim if self.attention_bias else 0)
        return self.num_layers * per_layer + self.hidden_size

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        """The LM head's own weights; zero extra storage when tied to the embeddings."""
        return self.vocab_size * self.hidden_size

    @property
    def num_params(self) -> int:
        lm_head = 0 if self.tie_word_embeddings else self.lm_head_params
        return self.linear_params + self.small_params + self.embedding_params + lm_head

    def kv_bytes_per_token(self, kv_bytes_per_elem: int) -> int:
        """K and V of one token across all layers."""
        return 2 * self.num_layers * self.kv_dim * kv_bytes_per_elem

    def to_dict(self) -> dict:
        return asdict(self)


def shard(shape: ModelShape, tp: int) -> ModelShape:
    """The part of `shape` one GPU holds under tensor parallelism of degree `tp` (Megatron
    style, as vLLM shards): attention heads, KV heads (replicated when fewer than `tp`), the FFN
    width and the LM head's vocabulary are split; the hidden size and the layer count are not.
    Every cost model prices this shard, so TP is handled in one place."""
    if tp == 1:
        return shape
    if tp < 1 or shape.num_heads % tp or shape.intermediate_size % tp:
        raise ValueError(
            f"model {shape.name!r}: tensor parallel degree {tp} must divide the {shape.num_heads} attention heads "
            f"and the FFN width {shape.intermediate_size}"
        )
    if shape.num_kv_heads >= tp and shape.num_kv_heads % tp:
        raise ValueError(f"model {shape.name!r}: tensor parallel degree {tp} does not divide {shape.num_kv_heads} KV heads")
    return replace(
        shape,
        num_heads=shape.num_heads // tp,
        num_kv_heads=max(1, shape.num_kv_heads // tp),
        intermediate_size=shape.intermediate_size // tp,
        vocab_size=-(-shape.vocab_size // tp),
    )


def _preset(name, layers, hidden, heads, kv_heads, head_dim, inter, vocab, tied, max_pos, bias=False) -> ModelShape:
    return ModelShape(name, layers, hidden, heads, kv_heads, head_dim, inter, vocab, tied, max_pos, bias)


# Numbers from each model's published HF config.json.
MODEL_PRESETS: dict[str, ModelShape] = {
    s.name: s
    for s in (
        _preset("qwen2.5-0.5b", 24, 896, 14, 2, 64, 4864, 151936, True, 32768, bias=True),
        _preset("qwen2.5-1.5b", 28, 1536, 12, 2, 128, 8960, 151936, True, 32768, bias=True),
        _preset("qwen2.5-7b", 28, 3584, 28, 4, 128, 18944, 152064, False, 32768, bias=True),
        _preset("qwen3-0.6b", 28, 1024, 16, 8, 128, 3072, 151936, True, 40960),
        _preset("qwen3-8b", 36, 4096, 32, 8, 128, 12288, 151936, False, 40960),
        _preset("llama-2-7b", 32, 4096, 32, 32, 128, 11008, 32000, False, 4096),
        _preset("llama-3-8b", 32, 4096, 32, 8, 128, 14336, 128256, False, 8192),
        _preset("smollm2-135m", 30, 576, 9, 3, 64, 1536, 49152, True, 8192),
    )
}


def _normalise(name: str) -> str:
    key = name.strip().lower().split("/")[-1]
    for suffix in ("-instruct", "-chat", "-hf", "-base"):
        key = key.removesuffix(suffix)
    return key.replace("_", "-").replace("meta-", "").replace("llama3", "llama-3").replace("llama2", "llama-2")


def get_model_shape(name_or_dir: str | Path) -> ModelShape:
    """A preset by name (case-insensitive; HF-style ids such as `Qwen/Qwen3-0.6B` work), or the
    shape read from a model directory / a `config.json` path."""
    path = Path(name_or_dir)
    if path.is_dir() or path.suffix == ".json":
        config_path = path / "config.json" if path.is_dir() else path
        if not config_path.is_file():
            raise FileNotFoundError(f"model {str(name_or_dir)!r}: no config.json at {config_path}")
        return shape_from_hf_config(config_path)
    key = _normalise(str(name_or_dir))
    if key in MODEL_PRESETS:
        return MODEL_PRESETS[key]
    raise ValueError(
        f"unknown model {str(name_or_dir)!r}: not a directory with config.json and not a preset; "
        f"known presets: {', '.join(sorted(MODEL_PRESETS))}"
    )


def shape_from_hf_config(config_path: str | Path) -> ModelShape:
    """Read the fields a decoder-only HF config carries (Llama / Qwen2 / Qwen3 / SmolLM2 naming)."""
    config_path = Path(config_path)
    try:
        cfg = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config_path}: not valid JSON ({exc})") from None
    cfg = cfg.get("text_config", cfg)  # multimodal wrappers keep the LM under text_config

    def need(key: str):
        if key not in cfg:
            raise ValueError(f"{config_path}: field {key!r} is missing (needed for the model shape)")
        return cfg[key]

    hidden = int(need("hidden_size"))
    heads = int(need("num_attention_heads"))
    head_dim = cfg.get("head_dim") or hidden // heads
    model_type = str(cfg.get("model_type", ""))
    return ModelShape(
        name=cfg.get("_name_or_path") or config_path.parent.name or model_type,
        num_layers=int(need("num_hidden_layers")),
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(head_dim),
        intermediate_size=int(need("intermediate_size")),
        vocab_size=int(need("vocab_size")),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
        attention_bias=bool(cfg.get("attention_bias", model_type == "qwen2")),
    )


def gptq_bits_from_hf_config(config_path: str | Path) -> tuple[int, int] | None:
    """(bits, group_size) when the config declares GPTQ quantization, else None."""
    path = Path(config_path)
    path = path / "config.json" if path.is_dir() else path
    if not path.is_file():
        return None
    qcfg = json.loads(path.read_text()).get("quantization_config") or {}
    if str(qcfg.get("quant_method", "")).lower() != "gptq":
        return None
    return int(qcfg.get("bits", 4)), int(qcfg.get("group_size", 128))


class ContextTooLongError(ValueError):
    """max_model_len asks for more positions than the model was trained with."""


def check_max_model_len(shape: ModelShape, max_model_len: int, *, allow_longer: bool = False,
                        override_hint: str | None = "pass --allow-long-max-model-len") -> None:
    """Refuse a `max_model_len` beyond the model's `max_position_embeddings`: the simulator would
    happily price 131,072-token contexts for an 8,192-position model, and the numbers would look
    real. `allow_longer` is the explicit override (e.g. to study a RoPE-extended variant)."""
    if max_model_len < 1:
        raise ValueError(f"max_model_len={max_model_len} must be >= 1")
    if max_model_len > shape.max_position_embeddings and not allow_longer:
        raise ContextTooLongError(
            f"max_model_len={max_model_len:,} exceeds {shape.name}'s max_position_embeddings="
            f"{shape.max_position_embeddings:,}; lower it"
            + (f", or {override_hint} to simulate beyond the trained context anyway" if override_hint else "")
        )
