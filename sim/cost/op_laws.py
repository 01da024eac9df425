"""How fast a GPU really runs a GEMM or an elementwise kernel of a given shape: a few numbers per
SKU, fitted to measured operator profiles (`sim.cost.fit_laws`), so a model that was never
profiled is priced from its shape alone.

A plain roofline says a (M x K) @ (K x N) GEMM takes max(bytes / bandwidth, flops / peak). Measured
kernels differ from it in three ways, each one term here:

- a launch floor: even a tiny kernel costs a few microseconds (`floor_s`);
- tile quantisation: the GEMM computes whole tiles of `tile_m` rows, so 129 tokens cost what 256
  do on the compute side (`M` is rounded up to a multiple of `tile_m`). Up to `small_tile_m`
  rows cuBLAS runs a narrower tile, so 72 tokens cost more than 64 (a step seen in the
  profiles of both GPUs);
- no sharp ridge: memory and compute overlap imperfectly near the ridge, so the two times combine
  as a p-norm (p = 2.5 for GEMMs, 2 for elementwise kernels) instead of a max; the achieved
  bandwidth and FLOP rate are fitted, not datasheet peaks.

    gemm(M, K, N)  = floor + ((bytes / bw)^p + (2 K N padded(M) / flops)^p)^(1/p)
    padded(M)      = ceil(M / small_tile_m) small_tile_m   if M <= small_tile_m
                     ceil(M / tile_m) tile_m               otherwise
    elementwise(b) = ((floor)^p + (b / bw)^p)^(1/p)       b = bytes moved

Each projection role (qkv, o, up, down) has its own GEMM law and each elementwise operator its
own law, per SKU: cuBLAS picks different kernels for a wide-N and a deep-K matrix, and a fused
norm is a different kernel from a residual add. None of them is per model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

GEMM_P_NORM = 2.5  # chosen once for both SKUs by leave-one-model-out (2, 2.5, 3 tried; README)
ELEMENTWISE_P_NORM = 2.0
TILE_M = 128
SMALL_TILE_M = 64


def padded_rows(m: int, tile_m: int = TILE_M, small_tile_m: int = SMALL_TILE_M) -> int:
    """The rows a GEMM of `m` rows really computes: whole tiles, narrower ones for small `m`."""
    tile = small_tile_m if m <= small_tile_m else tile_m
    return math.ceil(m / tile) * tile


@dataclass(frozen=True)
class GemmLaw:
    floor_s: float
    bytes_per_s: float
    flops_per_s: float
    tile_m: int = TILE_M
    p: float = GEMM_P_NORM
    small_tile_m: int = SMALL_TILE_M

    def seconds(self, m: int, k: int, n: int, elem: int = 2) -> float:
        mem = (k * n + m * (k + n)) * elem / self.bytes_per_s
        comp = 2.0 * k * n * padded_rows(m, self.tile_m, self.small_tile_m) / self.flops_per_s
        return self.floor_s + (mem**self.p + comp**self.p) ** (1.0 / self.p)


@dataclass(frozen=True)
class ElementwiseLaw:
    floor_s: float
    bytes_per_s: float
    p: float = ELEMENTWISE_P_NORM

    def seconds(self, nbytes: float) -> float:
        return (self.floor_s**self.p + (nbytes / self.bytes_per_s) ** self.p) ** (1.0 / self.p)


@dataclass(frozen=True)
class SkuLaws:
    """Everything the fitted roofline knows about one GPU SKU."""

    sku: str  # hardware preset name (sim.hardware), e.g. "h100-sxm"
    gemm: dict[str, GemmLaw]  # projection role (layer_ops.GEMM_OPS) -> law
    elementwise: dict[str, ElementwiseLaw]  # elementwise op (layer_ops.ELEMENTWISE_OPS + embed) -> law
    source: str = ""  # which profiles it was fitted to

    def gemm_law(self, op: str) -> GemmLaw:
        """The law of a projection role; other GEMMs (the LM head) use the widest-N role's."""
        return self.gemm.get(op) or self.gemm["up_proj"]

    def elementwise_law(self, op: str) -> ElementwiseLaw:
        if op in self.elementwise:
            return self.elementwise[op]
        return self.elementwise["add"]  # a plain streaming kernel

    def to_dict(self) -> dict:
        return {"sku": self.sku, "source": self.source,
                "gemm": {k: asdict(v) for k, v in self.gemm.items()},
                "elementwise": {k: asdict(v) for k, v in self.elementwise.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "SkuLaws":
        return cls(data["sku"], {k: GemmLaw(**v) for k, v in data["gemm"].items()},
                   {k: ElementwiseLaw(**v) for k, v in data["elementwise"].items()}, data.get("source", ""))


def laws_for(sku: str) -> SkuLaws | None:
    """The fitted laws shipped for a hardware preset name, or None (sim/cost/sku_laws.py)."""
    from sim.cost.sku_laws import SKU_LAWS

    data = SKU_LAWS.get(sku)
    return SkuLaws.from_dict(data) if data else None
