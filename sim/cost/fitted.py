"""The fitted roofline: the default cost model for named GPUs.

Same parts as the plain roofline (`roofline-ideal`, sim.cost.roofline), but the decoder layers'
projections and elementwise operators, the embedding gather and the LM head are priced by the
per-SKU operator laws fitted to measured kernels (sim.cost.op_laws; coefficients in
sim/cost/sku_laws.py, made by `python -m sim.cost.fit_laws`). Those laws carry the launch floors,
tile quantisation and the soft memory/compute ridge a plain roofline misses. Attention (no
attention profiles were available to fit) and the per-step host overhead stay the plain
roofline's.

Step = layers x sum(op laws at T tokens) + embed(T) + LM head(sampled rows) + attention + overhead.
"""

from __future__ import annotations

from sim.cost.base import CostModel
from sim.cost.layer_ops import ELEMENTWISE_OPS, GEMM_OPS, LAYER_OPS, elementwise_bytes_per_token, gemm_dims
from sim.cost.op_laws import SkuLaws
from sim.cost.roofline import RooflineCostModel
from sim.hardware import DTYPE_BYTES, HardwareSpec
from sim.models import ModelShape, shard


class FittedRooflineCostModel(CostModel):
    def __init__(self, model: ModelShape, hardware: HardwareSpec, laws: SkuLaws, dtype: str = "bf16",
                 tp: int = 1) -> None:
        if DTYPE_BYTES.get(dtype) != 2:
            raise ValueError(f"the fitted roofline's laws are for 16-bit kernels; dtype {dtype!r} needs roofline-ideal")
        self.ideal = RooflineCostModel(model, hardware, dtype, 16, tp)
        self.laws = laws
        self.full_model = model
        self.shard = shard(model, tp)
        self.tp = tp
        self.dtype = dtype
        self.hardware = hardware
        self._dims = gemm_dims(self.shard)
        self._bytes = elementwise_bytes_per_token(self.shard, 2)
        self._gemm = {op: laws.gemm_law(op) for op in GEMM_OPS}
        self._elem = {op: laws.elementwise_law(op) for op in (*ELEMENTWISE_OPS, "embed")}
        self._head_law = laws.gemm_law("lm_head")
        self._layers_cache: dict[int, float] = {}
        self._head_cache: dict[int, float] = {}

    def layer_seconds(self, tokens: int, ops=LAYER_OPS) -> float:
        """One layer's operators at `tokens` tokens (only those in `ops`, for comparing with a
        profile that measured a subset)."""
        t = 0.0
        for op in ops:
            if op in self._gemm:
                k, n = self._dims[op]
                t += self._gemm[op].seconds(tokens, k, n)
            elif op in self._elem:
                t += self._elem[op].seconds(tokens * self._bytes[op])
        return t

    def _layers(self, tokens: int) -> float:
        t = self._layers_cache.get(tokens)
        if t is None:
            t = self.shard.num_layers * self.layer_seconds(tokens) + self._elem["embed"].seconds(tokens * self._bytes["embed"])
            self._layers_cache[tokens] = t
        return t

    def head_seconds(self, n_sampled: int) -> float:
        t = self._head_cache.get(n_sampled)
        if t is None:
            h = self.shard.hidden_size
            t = 0.0
            if n_sampled:
                t = (self._elem["input_norm"].seconds(n_sampled * self._bytes["input_norm"])  # the final norm
                     + self._head_law.seconds(n_sampled, h, self.shard.vocab_size)
                     + n_sampled * self.ideal._logits_s)
            self._head_cache[n_sampled] = t
        return t

    def attention_seconds(self, shape: tuple) -> float:
        return self.ideal.attention_seconds(shape)

    def time_for_shape(self, shape: tuple) -> float:
        tokens = shape[1] + shape[2]
        return (self._layers(tokens) + self.head_seconds(shape[6]) + self.ideal.attention_seconds(shape)
                + self.hardware.step_overhead_s)

    def describe(self) -> dict:
        return {"kind": "roofline-fitted", "model": self.full_model.to_dict(), "tp": self.tp,
                "hardware": self.hardware.to_dict(), "dtype": self.dtype, "laws": self.laws.to_dict()}
