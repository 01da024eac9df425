"""GPTQ 4-bit weights: the algorithm, the HF/AutoGPTQ/GPTQModel checkpoint layout, and GPTQLinear.

- `packing`: the bit layout of qweight / qzeros (and v1 <-> v2 zeros conventions);
- `quantizer`: GPTQ for one linear layer (Hessian, dampening, Cholesky, lazy blocks, groups, act-order);
- `sequential`: layer-by-layer quantization of a transformers model from calibration text;
- `checkpoint`: quantization_config parsing/validation, shape checks, atomic directory writes;
- `linear`: GPTQLinear, the inference module the executor builds for GPTQ checkpoints;
- `hf`: load a GPTQ directory into a transformers model (eval without our executor);
- `cli`: `folovllm quantize` and `folovllm eval {ppl,kl}`.
"""

from .checkpoint import GPTQCheckpointError, GPTQConfig, read_gptq_config
from .linear import GPTQLinear, set_dequant_cache_budget
from .packing import dequantize, pack_cols, pack_rows, unpack_cols, unpack_rows

__all__ = [
    "GPTQCheckpointError",
    "GPTQConfig",
    "GPTQLinear",
    "dequantize",
    "pack_cols",
    "pack_rows",
    "read_gptq_config",
    "set_dequant_cache_budget",
    "unpack_cols",
    "unpack_rows",
    "weight_bytes",
]


def weight_bytes(in_features: int, out_features: int, bits: int = 4, group_size: int = 128,
                 bias: bool = False) -> int:
    """Bytes one GPTQ linear stores (qweight + qzeros + fp16 scales + int32 g_idx + fp16 bias).

    For cost models: a 16-bit layer is 2 * in * out bytes; at 4 bits, group 128 this is ~0.26x.
    """
    from .linear import num_groups
    from .packing import pack_factor

    f = pack_factor(bits)
    G = num_groups(in_features, group_size)
    return (4 * (in_features // f) * out_features + 4 * G * (out_features // f) + 2 * G * out_features
            + 4 * in_features + (2 * out_features if bias else 0))
