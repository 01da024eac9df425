"""Step cost models: how long one engine step (one plan) takes.

All of them price a plan from the same few numbers, `traces.timeline.plan_shape(plan)`, so
the simulator computes those once per step and the step records both engines write carry
exactly the features a profile fit needs."""

from sim.cost.base import ConstantCostModel, CostModel

__all__ = ["ConstantCostModel", "CostModel"]
