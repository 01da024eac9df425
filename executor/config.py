"""Model configuration: the few `config.json` fields the executor needs, validated.

One record covers the three supported families, which differ only by flags:
Llama (no q/k/v biases unless `attention_bias`), Qwen2 (q/k/v biases) and Qwen3 (no biases,
RMSNorm on q and k per head). Anything else is refused with the architecture named, rather
than loaded into a model that computes something different.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SUPPORTED_ARCHITECTURES = {
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "LlamaForCausalLM": "llama",
}
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


class UnsupportedModelError(ValueError):
    """The model directory describes a model this executor cannot run."""


@dataclass(frozen=True)
class ModelConfig:
    family: str  # qwen2 | qwen3 | llama
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None  # {"rope_type": ..., factor, ...} or None for plain RoPE
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None
    torch_dtype: str | None
    quantization_config: dict | None = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def rope_type(self) -> str:
        return (self.rope_scaling or {}).get("rope_type", "default")

    @property
    def eos_token_id(self) -> int | None:
        return self.eos_token_ids[0] if self.eos_token_ids else None

    @property
    def kv_bytes_per_token(self) -> int:
        """Per token, all layers, K and V, in elements (multiply by the element size)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "ModelConfig":
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (an HF model directory needs config.json)")
        from executor.checkpoint_checks import read_json_file

        return cls.from_dict(read_json_file(path), source=str(path))

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "config") -> "ModelConfig":
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
        try:
            config = cls._from_dict(data, source)
        except (TypeError, AttributeError) as exc:
            raise ValueError(f"{source}: a field has the wrong type ({exc})") from None
        except ValueError as exc:
            if str(exc).startswith(source):
                raise
            raise ValueError(f"{source}: a field has a bad value ({exc})") from None
        config._check_sizes(source)
        return config

    def _check_sizes(self, source: str) -> None:
        """Sizes a checkpoint's tensor shapes are checked against: nonsense here is a bad config.json."""
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                     "head_dim", "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise ValueError(f"{source}: {name}={getattr(self, name)} must be >= 1")

    @classmethod
    def _from_dict(cls, data: dict, source: str) -> "ModelConfig":
        archs = data.get("architectures") or []
        arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
        if arch is None:
            raise UnsupportedModelError(
                f"{source}: unsupported architecture {archs or data.get('model_type')!r}; "
                f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        family = SUPPORTED_ARCHITECTURES[arch]

        def need(name: str, default=None):
            value = data.get(name, default)
            if value is None:
                raise ValueError(f"{source}: field {name!r} is missing")
            return value

        hidden = int(need("hidden_size"))
        heads = int(need("num_attention_heads"))
        kv_heads = int(data.get("num_key_value_heads") or heads)
        head_dim = int(data.get("head_dim") or hidden // heads)
        if heads % kv_heads:
            raise ValueError(f"{source}: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}")
        act = data.get("hidden_act", "silu")
        if act != "silu":
            raise UnsupportedModelError(f"{source}: hidden_act={act!r} unsupported (only 'silu')")
        if data.get("use_sliding_window"):
            raise UnsupportedModelError(f"{source}: use_sliding_window=true is unsupported")
        if float(data.get("partial_rotary_factor", 1.0)) != 1.0:
            raise UnsupportedModelError(f"{source}: partial_rotary_factor != 1 is unsupported")

        theta, scaling = _rope_fields(data, source)
        eos = data.get("eos_token_id")
        eos_ids = tuple(int(x) for x in eos) if isinstance(eos, list) else ((int(eos),) if eos is not None else ())
        attention_bias = bool(data.get("attention_bias", False))
        quant = data.get("quantization_config")
        if quant is not None:
            method = quant.get("quant_method")
            if method != "gptq":
                raise UnsupportedModelError(f"{source}: quantization_config.quant_method={method!r} unsupported (only 'gptq')")
        return cls(
            family=family,
            architecture=arch,
            vocab_size=int(need("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(need("intermediate_size")),
            num_layers=int(need("num_hidden_layers")),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            rms_norm_eps=float(data.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=int(data.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(data.get("tie_word_embeddings", False)),
            qkv_bias=True if family == "qwen2" else attention_bias,
            o_bias=False if family == "qwen2" else attention_bias,
            mlp_bias=bool(data.get("mlp_bias", False)) if family == "llama" else False,
            qk_norm=family == "qwen3",
            eos_token_ids=eos_ids,
            bos_token_id=data.get("bos_token_id"),
            torch_dtype=data.get("torch_dtype") or data.get("dtype"),
            quantization_config=quant,
            raw=data,
        )

    def expected_tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Names and shapes of an unquantized checkpoint of this config (HF naming)."""
        h, q, kv, inter = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, self.intermediate_size
        shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (self.vocab_size, h), "model.norm.weight": (h,)}
        if not self.tie_word_embeddings:
            shapes["lm_head.weight"] = (self.vocab_size, h)
        for i in range(self.num_layers):
            p = f"model.layers.{i}."
            shapes[p + "input_layernorm.weight"] = (h,)
            shapes[p + "post_attention_layernorm.weight"] = (h,)
            for name, (out, inp) in {"q_proj": (q, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, q)}.items():
                shapes[p + f"self_attn.{name}.weight"] = (out, inp)
                if (name != "o_proj" and self.qkv_bias) or (name == "o_proj" and self.o_bias):
                    shapes[p + f"self_attn.{name}.bias"] = (out,)
            if self.qk_norm:
                shapes[p + "self_attn.q_norm.weight"] = (self.head_dim,)
                shapes[p + "self_attn.k_norm.weight"] = (self.head_dim,)
            for name, (out, inp) in {"gate_proj": (inter, h), "up_proj": (inter, h), "down_proj": (h, inter)}.items():
                shapes[p + f"mlp.{name}.weight"] = (out, inp)
                if self.mlp_bias:
                    shapes[p + f"mlp.{name}.bias"] = (out,)
        return shapes


def _rope_fields(data: dict, source: str) -> tuple[float, dict | None]:
    """RoPE base and scaling from either the transformers-5 `rope_parameters` dict or the
    older top-level `rope_theta` + `rope_scaling` pair."""
    params = data.get("rope_parameters")
    if isinstance(params, dict) and params:
        theta = float(params.get("rope_theta", data.get("rope_theta", 10000.0)))
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        theta = float(data.get("rope_theta", 10000.0))
        scaling = dict(data.get("rope_scaling") or {})
    if scaling:
        rope_type = scaling.get("rope_type", scaling.get("type", "default"))
        scaling["rope_type"] = rope_type
        scaling.pop("type", None)
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise UnsupportedModelError(
                f"{source}: rope scaling type {rope_type!r} unsupported; supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
            )
        if rope_type == "default":
            scaling = None
    return theta, scaling or None
