"""A cost model against measured per-operator timings: one layer, every token count of a profile.

The measured figure is the sum of the profile's per-layer operators; the prediction is the cost
model's price of the same operators (`layer_seconds(tokens, ops)`). Attention, the LM head and
host overheads are not in a per-operator profile, so they are not compared here.

Leave-one-out keeps a figure honest:
- fitted roofline: the laws are refitted on the *other* models' profiles of the same GPU
  (leave-one-model-out), so the profile under test never informs its own prediction;
- profile-driven model: each token count is predicted from the profile without that row
  (leave-one-point-out), which measures the interpolation, not a lookup.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sim.cost.op_profile import OpProfile
from sim.cost.profiles import load_op_profile
from sim.hardware import HardwareSpec, get_hardware


@dataclass(frozen=True)
class ValidationRow:
    tokens: int
    measured_s: float
    predicted_s: float

    @property
    def error(self) -> float:
        return (self.predicted_s - self.measured_s) / self.measured_s


@dataclass
class Validation:
    profile: OpProfile
    cost_model: str
    hardware: str
    leave_one_out: bool
    rows: list[ValidationRow]
    note: str = ""

    @property
    def abs_errors(self) -> np.ndarray:
        return np.array([abs(r.error) for r in self.rows])

    @property
    def median_abs_error(self) -> float:
        return float(np.median(self.abs_errors))

    @property
    def max_abs_error(self) -> float:
        return float(self.abs_errors.max())

    def summary_line(self) -> str:
        return (f"median |error| {100 * self.median_abs_error:.1f}% (max {100 * self.max_abs_error:.1f}%) "
                f"over {len(self.rows)} points")

    def table(self, every: int = 1) -> str:
        lines = [f"{'tokens':>7s} {'measured ms':>12s} {'predicted ms':>13s} {'error':>8s}"]
        for i, r in enumerate(self.rows):
            if i % every == 0 or i == len(self.rows) - 1:
                lines.append(f"{r.tokens:7d} {r.measured_s * 1e3:12.4f} {r.predicted_s * 1e3:13.4f} {100 * r.error:+7.1f}%")
        return "\n".join(lines)


def default_fit_dir(profile: OpProfile) -> Path | None:
    """For a profile in Vidur's layout (<sku>/<org>/<model>/mlp.csv): its <sku> folder."""
    return profile.path.resolve().parents[2] if profile.device and len(profile.path.resolve().parents) > 2 else None


def _leave_model_out_fitted(profile: OpProfile, hw: HardwareSpec, fit_dir: Path | None, tp: int):
    from sim.cost.fit_laws import find_profiles, fit_sku, sku_of
    from sim.cost.fitted import FittedRooflineCostModel

    fit_dir = fit_dir or default_fit_dir(profile)
    if fit_dir is None:
        raise ValueError(f"{profile.path}: --leave-one-out needs --fit-dir (a folder with the other profiles of {hw.name})")
    others = [p for p in find_profiles(fit_dir) if sku_of(p) == hw.name and p.label != profile.label
              and p.path.resolve() != profile.path.resolve()]
    if not others:
        raise ValueError(f"no other profiles of {hw.name} under {fit_dir} to fit on (leave-one-model-out)")
    laws = fit_sku(hw.name, others)
    model = FittedRooflineCostModel(profile.model_shape(), hw, laws, "bf16", tp)
    return model, f"fitted on {laws.source}"


def validate(profile_path: str | Path, hardware: str, cost_model: str = "roofline", tp: int = 1,
             leave_one_out: bool = False, fit_dir: str | Path | None = None) -> Validation:
    from sim.cost.registry import build_cost_model

    profile = load_op_profile(profile_path, tp)
    hw = get_hardware(hardware)
    shape = profile.model_shape()
    ops = profile.layer_ops
    measured = profile.layer_seconds()
    note = ""
    name = cost_model.partition(":")[0]
    if name == "profile" and cost_model in ("profile", f"profile:{profile_path}"):
        from sim.cost.per_op import ProfileDrivenCostModel

        fallback = build_cost_model("roofline-ideal", model=shape, hardware=hw, tp=tp)
        if leave_one_out:
            predicted = [ProfileDrivenCostModel(profile.without(i), shape, hw, fallback, tp=tp).layer_seconds(int(t), ops)
                         for i, t in enumerate(profile.tokens)]
            note = "each token count predicted from the profile without it (leave-one-point-out)"
        else:
            model = ProfileDrivenCostModel(profile, shape, hw, fallback, tp=tp)
            predicted = [model.layer_seconds(int(t), ops) for t in profile.tokens]
            note = "in sample: the profile predicts itself (use --leave-one-out)"
    else:
        if leave_one_out and name in ("roofline", "roofline-fitted"):
            model, note = _leave_model_out_fitted(profile, hw, Path(fit_dir) if fit_dir else None, tp)
        elif leave_one_out:
            raise ValueError(f"--leave-one-out applies to roofline / roofline-fitted and profile, not {cost_model!r}")
        else:
            model = build_cost_model(cost_model, model=shape, hardware=hw, tp=tp)
            note = model.describe().get("kind", "")
        if not hasattr(model, "layer_seconds"):
            raise ValueError(f"cost model {cost_model!r} cannot price one layer's operators")
        predicted = [model.layer_seconds(int(t), ops) for t in profile.tokens]
    rows = [ValidationRow(int(t), float(m), float(p)) for t, m, p in zip(profile.tokens, measured, predicted)]
    return Validation(profile, cost_model, hw.name, leave_one_out, rows, note)
