"""Sampling parameters and the batched sampler.

Stop decisions belong to the policy (`Request.check_stop`); the sampler only makes sure a
request below `min_tokens` cannot *pick* its eos/stop tokens. Everything is vectorised over
the rows of a step; only seeded rows draw their noise from a private generator, seeded by
(seed, output index), so a seeded request samples the same tokens whatever it is batched
with, and whether or not it was preempted and recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from executor.numerics import check_step_logits


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 or -1 = off
    top_p: float = 1.0
    seed: int | None = None
    max_tokens: int = 16
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature={self.temperature}: must be >= 0")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"SamplingParams.top_p={self.top_p}: must be in (0, 1]")
        if self.top_k < -1:
            raise ValueError(f"SamplingParams.top_k={self.top_k}: must be -1, 0 (off) or >= 1")
        if self.max_tokens < 1:
            raise ValueError(f"SamplingParams.max_tokens={self.max_tokens}: must be >= 1")
        if not (0 <= self.min_tokens <= self.max_tokens):
            raise ValueError(f"SamplingParams.min_tokens={self.min_tokens}: must be in [0, max_tokens]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class SampleRow:
    """What the sampler needs to know about one row besides its logits."""

    params: SamplingParams
    num_output_tokens: int  # tokens generated so far (this row samples the next one)
    eos_token_id: int | None
    request_id: str | None = None  # named in errors (e.g. non-finite logits)


_SEED_MIX = 0x9E3779B97F4A7C15


class Sampler:
    def __init__(self, device: torch.device | str = "cpu", seed: int = 0) -> None:
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.num_calls = 0  # sampling steps so far: names the step when the caller gives none

    def __call__(self, logits: torch.Tensor, rows: list[SampleRow], *, step: int | None = None) -> torch.Tensor:
        """logits [N, vocab] -> token ids [N] (int64, on logits.device).

        Non-finite logits raise `NonFiniteError` naming the step and the requests: argmax over
        NaNs is token 0, so a broken model would otherwise "generate" forever without a word."""
        n, vocab = logits.shape
        if n != len(rows):
            raise ValueError(f"sampler got {n} logit rows for {len(rows)} requests")
        self.num_calls += 1
        check_step_logits(logits, step=self.num_calls if step is None else step,
                          request_ids=[r.request_id if r.request_id is not None else f"row {i}"
                                       for i, r in enumerate(rows)])
        logits = logits.to(torch.float32)
        self._mask_min_tokens(logits, rows, vocab)
        temps = [r.params.temperature for r in rows]
        if all(t == 0.0 for t in temps):
            return logits.argmax(dim=-1)
        out = logits.argmax(dim=-1)
        rand_idx = [i for i, t in enumerate(temps) if t > 0.0]
        sub = logits[rand_idx] / torch.tensor([temps[i] for i in rand_idx], device=logits.device)[:, None]
        top_k = [rows[i].params.top_k for i in rand_idx]
        top_p = [rows[i].params.top_p for i in rand_idx]
        noise = self._exponential_noise(sub.shape, [rows[i] for i in rand_idx], logits.device)
        if any(k > 0 for k in top_k) or any(p < 1.0 for p in top_p):
            sorted_logits, sorted_idx = sub.sort(dim=-1, descending=True)
            ranks = torch.arange(vocab, device=logits.device)[None, :]
            ks = torch.tensor([k if k > 0 else vocab for k in top_k], device=logits.device)[:, None]
            sorted_logits = sorted_logits.masked_fill(ranks >= ks, float("-inf"))
            probs = sorted_logits.softmax(dim=-1)
            ps = torch.tensor(top_p, device=logits.device, dtype=probs.dtype)[:, None]
            # keep the smallest prefix whose mass reaches top_p (the first token always stays)
            probs = probs.masked_fill((probs.cumsum(dim=-1) - probs) > ps, 0.0)
            choice = (probs / noise).argmax(dim=-1, keepdim=True)
            picked = sorted_idx.gather(1, choice)[:, 0]
        else:
            picked = (sub.softmax(dim=-1) / noise).argmax(dim=-1)
        out[torch.tensor(rand_idx, device=logits.device)] = picked
        return out

    @staticmethod
    def _mask_min_tokens(logits: torch.Tensor, rows: list[SampleRow], vocab: int) -> None:
        r_idx: list[int] = []
        c_idx: list[int] = []
        for i, row in enumerate(rows):
            p = row.params
            if row.num_output_tokens >= p.min_tokens:
                continue
            banned = set(p.stop_token_ids)
            if not p.ignore_eos and row.eos_token_id is not None:
                banned.add(row.eos_token_id)
            for t in banned:
                if 0 <= t < vocab:
                    r_idx.append(i)
                    c_idx.append(t)
        if r_idx:
            logits[r_idx, c_idx] = float("-inf")

    def _exponential_noise(self, shape, rows: list[SampleRow], device: torch.device) -> torch.Tensor:
        """Exp(1) noise: argmax(p / E) is a draw from p (the exponential race, no CDF search)."""
        noise = torch.empty(shape, device=device)
        noise.exponential_(generator=self.generator)
        for i, row in enumerate(rows):
            if row.params.seed is not None:
                key = (row.params.seed * _SEED_MIX + row.num_output_tokens) % (2**63)
                gen = torch.Generator(device=device).manual_seed(key)
                noise[i].exponential_(generator=gen)
        return noise
