"""RoPE frequencies for every supported scaling type equal transformers' own."""

from __future__ import annotations

import pytest
import torch

from executor.config import ModelConfig
from executor.layers.rotary import rope_inv_freq
from executor.models_registry import SHAPES

SCALINGS = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 4.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 1024},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024},
}


@pytest.mark.parametrize("kind", list(SCALINGS))
def test_inv_freq_matches_transformers(kind):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    fields = dict(SHAPES["tiny-llama"], head_dim=32, rope_theta=10000.0, max_position_embeddings=4096)
    fields.pop("rope_scaling")
    if SCALINGS[kind] is not None:
        fields["rope_scaling"] = SCALINGS[kind]
    ours, scaling = rope_inv_freq(ModelConfig.from_dict(fields))
    hf_cfg = LlamaConfig(**{k: v for k, v in fields.items() if k not in ("architectures",)})
    if kind == "default":
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        theirs, their_scaling = LlamaRotaryEmbedding.compute_default_rope_parameters(hf_cfg, "cpu")
    else:
        theirs, their_scaling = ROPE_INIT_FUNCTIONS[kind](hf_cfg, "cpu")
    torch.testing.assert_close(ours, theirs.to(torch.float32), rtol=1e-6, atol=0)
    assert scaling == pytest.approx(their_scaling)
