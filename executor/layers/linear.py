"""The one place linear layers are created.

Why a factory: GPTQ checkpoints replace every projection with a packed int4 module whose
tensors (qweight, qzeros, scales, g_idx) the loader assigns by HF name. Keeping q/k/v/o and
gate/up/down as separate modules created here means a quantized model and a float model have
the same module tree; only this function knows the difference.
"""

from __future__ import annotations

from torch import nn


def make_linear(in_features: int, out_features: int, bias: bool, quant_config: dict | None, prefix: str) -> nn.Module:
    """An `nn.Linear` (`y = x W^T + b`), or a `GPTQLinear` when the checkpoint is GPTQ.

    `prefix` is the module's HF name (e.g. `model.layers.0.self_attn.q_proj`), used in errors.
    Parameters are created uninitialised on purpose: the loader overwrites every one of them
    and refuses a checkpoint that lacks any.
    """
    if quant_config is None:
        return nn.Linear(in_features, out_features, bias=bias)
    method = quant_config.get("quant_method")
    if method != "gptq":
        raise ValueError(f"{prefix}: quant_method={method!r} unsupported (only 'gptq')")
    from executor.gptq import GPTQLinear  # lazy: float models never import the GPTQ code

    return GPTQLinear(
        in_features,
        out_features,
        bias=bias,
        bits=int(quant_config.get("bits", 4)),
        group_size=int(quant_config.get("group_size", 128)),
        desc_act=bool(quant_config.get("desc_act", False)),
        sym=bool(quant_config.get("sym", True)),
        checkpoint_format=str(quant_config.get("checkpoint_format", "gptq")),
    )
