"""Baseline: transformers' `generate()` in static batches (left-padded), on the same workload.

This is the "before" of continuous batching: each batch runs until its longest member is
done (finished rows keep computing padding), and nothing new joins until the batch ends.
Throughput counts only the tokens each request asked for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class HFBaselineResult:
    wall_s: float
    num_requests: int
    output_tokens: int  # useful tokens: each request's own max_tokens (ignore_eos) or up to its eos
    computed_tokens: int  # rows x generated positions, padding included
    outputs: list[list[int]]

    @property
    def output_throughput(self) -> float:
        return self.output_tokens / self.wall_s if self.wall_s > 0 else float("nan")


class HFStaticBatchRunner:
    def __init__(self, model_dir: str | Path, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        from transformers import AutoModelForCausalLM

        self.device = torch.device(device)
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(self.device).eval()
        cfg = self.model.config
        eos = cfg.eos_token_id
        self.eos_token_id = eos[0] if isinstance(eos, list) else eos
        self.pad_token_id = cfg.pad_token_id if cfg.pad_token_id is not None else (self.eos_token_id or 0)

    @torch.inference_mode()
    def run(self, prompts: list[list[int]], max_tokens: list[int], *, batch_size: int, temperature: float = 0.0,
            ignore_eos: bool = True, seed: int = 0) -> HFBaselineResult:
        from transformers import GenerationConfig

        if len(prompts) != len(max_tokens):
            raise ValueError(f"{len(prompts)} prompts but {len(max_tokens)} max_tokens")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be >= 1")
        torch.manual_seed(seed)
        outputs: list[list[int]] = []
        useful = computed = 0
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        for b in range(0, len(prompts), batch_size):
            batch, limits = prompts[b : b + batch_size], max_tokens[b : b + batch_size]
            width = max(map(len, batch))
            ids = torch.tensor([[self.pad_token_id] * (width - len(p)) + list(p) for p in batch], device=self.device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=self.device)
            new = max(limits)
            config = GenerationConfig(
                max_new_tokens=new, do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
                top_k=None, top_p=None, pad_token_id=self.pad_token_id,
                eos_token_id=None if ignore_eos else self.eos_token_id,
            )
            # generate() merges the model's generation config; its eos must go too for ignore_eos
            # (min_new_tokens would mask eos instead, which is not what ignore_eos means).
            self.model.generation_config.eos_token_id = config.eos_token_id
            gen = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config)[:, width:].tolist()
            computed += len(batch) * len(gen[0]) if gen else 0
            for row, limit in zip(gen, limits):
                row = row[:limit]
                if not ignore_eos and self.eos_token_id in row:
                    row = row[: row.index(self.eos_token_id) + 1]
                outputs.append(row)
                useful += len(row)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return HFBaselineResult(time.perf_counter() - start, len(prompts), useful, computed, outputs)
