"""transformers' own greedy generate, the reference the executor must match token for token."""

from __future__ import annotations

import torch


def hf_greedy(model_dir, prompts: list[list[int]], max_new_tokens: int, *, pad_id: int = 0,
              eos_token_id: int | None = None) -> list[list[int]]:
    """Left-padded static batch, greedy. With eos_token_id=None every row generates exactly
    max_new_tokens (ignore_eos); otherwise rows are cut after their first eos."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    width = max(map(len, prompts))
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id,
                              eos_token_id=eos_token_id)
    # generate() merges the model's own generation config: clear its eos too, or it stops there
    # (and min_new_tokens would instead *mask* eos, which the engine's ignore_eos does not do).
    model.generation_config.eos_token_id = eos_token_id
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)[:, width:].tolist()
    if eos_token_id is not None:
        out = [row[: row.index(eos_token_id) + 1] if eos_token_id in row else row for row in out]
    return out


def hf_logits(model_dir, token_ids: list[int]) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor([token_ids])).logits[0]
