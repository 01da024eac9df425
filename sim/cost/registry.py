"""Cost models by name: the one place a `--cost-model` / spec `cost_model:` string becomes a model.

    roofline          the default for named GPUs: the fitted roofline where the SKU has fitted
                      operator laws (sim/cost/sku_laws.py) and the weights are 16-bit; otherwise
                      the plain roofline
    roofline-fitted   the fitted roofline, or an error when the SKU has no laws
    roofline-ideal    the plain roofline (ceilings from the hardware preset)
    profile:PATH      the profile-driven model (PATH: a folder with ops.csv or Vidur's mlp.csv)
    constant[:STEP_S[:PER_TOKEN_S]]   fixed costs, for tests (default 0.01 s + 1e-4 s per token)
    PATH.json         the CPU calibrated model (sim.cost.profiled), a fitted step profile

Each entry is a small factory that imports its model lazily, so `sim.cost.base` imports none of
them and adding a model is one `register` call.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sim.cost.base import CostModel
from sim.hardware import HardwareSpec, get_hardware
from sim.models import ModelShape, get_model_shape


@dataclass(frozen=True)
class BuildContext:
    """What a factory may need besides its own argument."""

    model: str | ModelShape | None
    hardware: str | HardwareSpec | None
    dtype: str = "bf16"
    weight_bits: int = 16
    tp: int = 1

    def model_shape(self, kind: str) -> ModelShape:
        if self.model is None:
            raise ValueError(f"cost model {kind!r} needs a model (name, directory or shape)")
        return self.model if isinstance(self.model, ModelShape) else get_model_shape(self.model)

    def hardware_spec(self, kind: str) -> HardwareSpec:
        if self.hardware is None:
            raise ValueError(f"cost model {kind!r} needs a hardware name or .json")
        return self.hardware if isinstance(self.hardware, HardwareSpec) else get_hardware(self.hardware)


Factory = Callable[[str | None, BuildContext], CostModel]
_REGISTRY: dict[str, tuple[Factory, str]] = {}


def register(name: str, factory: Factory, help: str) -> None:
    if name in _REGISTRY:
        raise ValueError(f"cost model {name!r} is already registered")
    _REGISTRY[name] = (factory, help)


def names() -> list[str]:
    return sorted(_REGISTRY)


def describe_names() -> str:
    return "; ".join(f"{name}: {help}" for name, (_, help) in sorted(_REGISTRY.items()))


def is_known(spec: str) -> bool:
    """Whether `spec` names a registered model (a .json path is checked when built)."""
    return spec.split(":", 1)[0] in _REGISTRY or spec.endswith(".json")


def build_cost_model(spec: str, *, model=None, hardware=None, dtype: str = "bf16", weight_bits: int = 16,
                     tp: int = 1) -> CostModel:
    ctx = BuildContext(model, hardware, dtype, weight_bits, tp)
    name, _, arg = spec.partition(":")
    if name in _REGISTRY:
        return _REGISTRY[name][0](arg or None, ctx)
    if spec.endswith(".json") or Path(spec).is_file():
        return _REGISTRY["calibrated"][0](spec, ctx)
    raise ValueError(f"cost model {spec!r}: expected one of {names()} (NAME or NAME:ARG) or a profile .json path")


# -- the models ------------------------------------------------------------------------------


def _ideal(arg, ctx: BuildContext) -> CostModel:
    from sim.cost.roofline import RooflineCostModel

    return RooflineCostModel(ctx.model_shape("roofline-ideal"), ctx.hardware_spec("roofline-ideal"), ctx.dtype,
                             ctx.weight_bits, ctx.tp)


def _fitted(arg, ctx: BuildContext, *, strict: bool = True) -> CostModel | None:
    from sim.cost.fitted import FittedRooflineCostModel
    from sim.cost.op_laws import laws_for

    hw = ctx.hardware_spec("roofline-fitted")
    laws = laws_for(hw.name)
    usable = laws is not None and ctx.weight_bits == 16 and ctx.dtype in ("bf16", "fp16")
    if not usable:
        if strict:
            why = f"no fitted operator laws for {hw.name!r}" if laws is None else "the laws are for 16-bit weights"
            raise ValueError(f"cost model 'roofline-fitted': {why}; use roofline-ideal")
        return None
    return FittedRooflineCostModel(ctx.model_shape("roofline-fitted"), hw, laws, ctx.dtype, ctx.tp)


def _default_roofline(arg, ctx: BuildContext) -> CostModel:
    return _fitted(arg, ctx, strict=False) or _ideal(arg, ctx)


def _profile(arg, ctx: BuildContext) -> CostModel:
    from sim.cost.profiles import load_attention_profile, load_op_profile
    from sim.cost.per_op import ProfileDrivenCostModel

    if not arg:
        raise ValueError("cost model 'profile:PATH' needs the profile folder or file after the colon")
    hw = ctx.hardware_spec("profile")
    profile = load_op_profile(arg, ctx.tp)
    if profile.device is not None:
        from sim.cost.fit_laws import sku_of

        sku = sku_of(profile)
        if sku is not None and sku != hw.name:
            raise ValueError(f"profile {profile.path} was measured on {profile.device!r} ({sku}), "
                             f"but the hardware is {hw.name!r}")
    fallback = _default_roofline(None, ctx)
    return ProfileDrivenCostModel(profile, ctx.model_shape("profile"), hw, fallback,
                                  load_attention_profile(profile.path, ctx.tp), ctx.tp)


def _constant(arg, ctx: BuildContext) -> CostModel:
    from sim.cost.base import ConstantCostModel

    if not arg:
        return ConstantCostModel(0.01, 1e-4)
    try:
        values = [float(v) for v in arg.split(":")]
    except ValueError:
        raise ValueError(f"cost model 'constant:{arg}': expected constant:STEP_S[:PER_TOKEN_S[:PER_REQUEST_S]]") from None
    return ConstantCostModel(*values)


def _calibrated(arg, ctx: BuildContext) -> CostModel:
    from sim.cost.profiled import ProfiledCostModel

    return ProfiledCostModel.load(arg)


register("roofline", _default_roofline, "fitted roofline for GPUs with fitted laws, else roofline-ideal")
register("roofline-fitted", _fitted, "roofline with per-SKU operator laws fitted to measured kernels")
register("roofline-ideal", _ideal, "plain roofline from the hardware preset's ceilings")
register("profile", _profile, "profile-driven: profile:DIR with ops.csv or Vidur's mlp.csv")
register("constant", _constant, "constant[:STEP_S[:PER_TOKEN_S]] fixed costs")
register("calibrated", _calibrated, "a CPU step-profile .json (what `folovllm calibrate` writes)")
