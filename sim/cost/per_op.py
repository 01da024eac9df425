"""The profile-driven cost model: a step priced from measured per-operator timings.

    step = layers x layer(T) + embed(T) + attention + LM head(sampled rows) + host overhead

- layer(T): the sum of the profile's per-layer operators at the step's token count T, read off the
  measured curve (made monotone in T by pooling adjacent violators, then interpolated linearly
  between measured token counts; beyond the largest one it grows in proportion to T, the
  compute-bound slope). The profile is for the model's TP degree, so TP is in the numbers.
- embed(T): the profile's embedding column when it has one, else the fitted law.
- attention: from an attention profile in the same folder when there is one (attention.csv, ours
  or Vidur's), else from the fallback model (the fitted roofline for a fitted SKU, else the plain
  roofline).
- LM head and per-step overhead: from the fallback model and the hardware preset.

Selected with `--cost-model profile:DIR` (DIR: a folder with ops.csv or mlp.csv, or the file).
"""

from __future__ import annotations

import numpy as np

from sim.cost.attention_profile import AttentionProfile
from sim.cost.base import CostModel
from sim.cost.op_profile import OpProfile, ProfileError
from sim.hardware import HardwareSpec
from sim.models import ModelShape


def pool_adjacent_violators(y: np.ndarray) -> np.ndarray:
    """The non-decreasing sequence closest to `y` in least squares (isotonic regression)."""
    blocks: list[list[float]] = []  # [sum, count]
    for v in y:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    return np.concatenate([np.full(int(c), s / c) for s, c in blocks])


class MeasuredCurve:
    """Seconds against token count from measurements (see the module doc)."""

    def __init__(self, tokens: np.ndarray, seconds: np.ndarray) -> None:
        self.tokens = np.asarray(tokens, float)
        self.seconds = pool_adjacent_violators(np.asarray(seconds, float))

    def __call__(self, tokens: float) -> float:
        last = self.tokens[-1]
        if tokens > last:
            return float(self.seconds[-1] * tokens / last)
        return float(np.interp(tokens, self.tokens, self.seconds))


class ProfileDrivenCostModel(CostModel):
    def __init__(self, profile: OpProfile, model: ModelShape, hardware: HardwareSpec, fallback: CostModel,
                 attention: AttentionProfile | None = None, tp: int = 1) -> None:
        profile.check_model(model)
        if profile.tp != tp:
            raise ProfileError(f"{profile.path}: profile is for TP {profile.tp}, the model asked for TP {tp}")
        if attention is not None:
            attention.check_model(model, tp)
        self.profile = profile
        self.model = model
        self.hardware = hardware
        self.fallback = fallback
        self.attention = attention
        self.tp = tp
        self._layer = MeasuredCurve(profile.tokens, profile.layer_seconds())
        self._embed = MeasuredCurve(profile.tokens, profile.seconds["embed"]) if "embed" in profile.seconds else None
        self._cache: dict[int, float] = {}

    def layer_seconds(self, tokens: int, ops=None) -> float:
        if ops is None or tuple(ops) == self.profile.layer_ops:
            return self._layer(tokens)
        missing = [op for op in ops if op not in self.profile.seconds]
        if missing:
            raise ProfileError(f"{self.profile.path}: no column for operator(s) {missing}")
        return MeasuredCurve(self.profile.tokens, sum(self.profile.seconds[op] for op in ops))(tokens)

    def _layers(self, tokens: int) -> float:
        t = self._cache.get(tokens)
        if t is None:
            embed = self._embed(tokens) if self._embed is not None else 0.0
            t = self.model.num_layers * self._layer(tokens) + embed
            self._cache[tokens] = t
        return t

    def time_for_shape(self, shape: tuple) -> float:
        n_pre, pre_tok, n_dec, pre_ctx, dec_ctx, pairs, n_sampled = shape
        if self.attention is not None:
            # The shape's prefill context counts the chunk itself; the profile is keyed by what was cached before it.
            attn = self.model.num_layers * self.attention.seconds(n_pre, pre_tok, pre_ctx - pre_tok, n_dec, dec_ctx)
        else:
            attn = self.fallback.attention_seconds(shape)
        return (self._layers(pre_tok + n_dec) + attn + self.fallback.head_seconds(n_sampled)
                + self.hardware.step_overhead_s)

    def describe(self) -> dict:
        return {"kind": "profile", "path": str(self.profile.path), "tp": self.tp, "model": self.model.to_dict(),
                "hardware": self.hardware.to_dict(),
                "attention": str(self.attention.path) if self.attention else None,
                "fallback": self.fallback.describe().get("kind")}
