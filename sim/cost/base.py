"""The one interface every step cost model implements, and the simplest model of all.

Models are built by name in sim.cost.registry; this module imports none of them."""

from __future__ import annotations

from policy.plan import SchedulerOutput
from traces.timeline import plan_shape


class CostModel:
    """`step_time(plan) -> seconds`. Subclasses implement `time_for_shape(shape)`, where
    `shape = traces.timeline.plan_shape(plan)`; the engine calls that directly with the shape
    it already computed for the step record."""

    def step_time(self, plan: SchedulerOutput) -> float:
        return self.time_for_shape(plan_shape(plan))

    def time_for_shape(self, shape: tuple) -> float:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> dict:
        """What the model is, as JSON-ready data (written next to the results)."""
        return {"kind": type(self).__name__}


class ConstantCostModel(CostModel):
    """`step_s` per step plus optional per-token and per-request terms: for tests and
    back-of-the-envelope runs whose timings can be computed by hand."""

    def __init__(self, step_s: float, per_token_s: float = 0.0, per_request_s: float = 0.0) -> None:
        if step_s < 0 or per_token_s < 0 or per_request_s < 0 or step_s + per_token_s + per_request_s <= 0:
            raise ValueError(
                f"ConstantCostModel(step_s={step_s}, per_token_s={per_token_s}, per_request_s={per_request_s}): "
                "terms must be >= 0 and not all zero"
            )
        self.step_s = step_s
        self.per_token_s = per_token_s
        self.per_request_s = per_request_s

    def time_for_shape(self, shape: tuple) -> float:
        n_pre, pre_tok, n_dec = shape[0], shape[1], shape[2]
        return self.step_s + self.per_token_s * (pre_tok + n_dec) + self.per_request_s * (n_pre + n_dec)

    def describe(self) -> dict:
        return {"kind": "constant", "step_s": self.step_s, "per_token_s": self.per_token_s,
                "per_request_s": self.per_request_s}
