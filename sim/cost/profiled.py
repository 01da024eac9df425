"""Profiled step cost: a model on physically meaningful plan features, fitted to step times
measured on the real executor, in one of a few *forms* chosen by cross-validation.

The old form (`linear`) is linear in the batch's rows:

    step_s = c_const + c_prefill_tokens * P + c_prefill_requests * Np + c_decode_requests * D
           + c_prefill_context * sum(prefill ctx) + c_decode_context * sum(decode ctx)
           + c_prefill_attn_pairs * sum(q*c + q(q+1)/2) + c_sampled * rows sampled

It misses what a CPU executor does with few rows: the linear layers stream every weight once
per step whatever the batch, so 1-4 rows cost about the same (a *floor*), and the LM head has
its own few-row path (one pass over the head for up to 8 rows). The `floor<F>` forms say so:

    step_s = c_const + c_multi_row * [P + D > 1]               # one row takes the matrix-vector path
           + c_gemm * max(0, P + D - F)                        # rows beyond the weight-streaming floor
           + c_prefill_requests * Np + c_decode_requests * D  # per-row host work, per-chunk attention calls
           + c_decode_context * sum(decode ctx)               # KV read by decodes
           + c_prefill_cached_context * sum(ctx before each chunk)   # KV gathered after a prefix hit
           + c_prefill_attn_pairs * pairs                     # causal attention work of prefill chunks
           + c_sampled * rows sampled + c_lm_head * max(0, sampled - 8)
           + c_has_decode * [D > 0]                           # the batched decode-attention path's setup

Every feature is derived from `traces.timeline.plan_shape(plan)` (what `StepRecord` stores),
so step records from the executor are samples as they are.

The fit is non-negative least squares on *relative* error (each row divided by its measured
time), so a 1 ms decode step weighs as much as a 100 ms prefill, and no coefficient can go
negative and produce nonsense when extrapolating. The form is chosen by cross-validation:
when samples carry a `group` (one replay of a workload through the executor: real step mixes,
not grid points), each group is held out in turn and predicted by a model fitted on the grid
and the other groups; otherwise 5 interleaved folds of the samples. The form with the lowest
held-out MAPE wins and is refitted on all samples; every form's score is kept in the report.

Profile file (JSON, written atomically):

    {"format": "folovllm-step-profile", "version": 2,
     "model": <str or ModelShape dict>, "hardware": <str or dict: name, device, ...>,
     "dtype": "bf16", "weight_bits": 16,
     "form": {"name", "gemm_floor", "lm_head_floor"}, "features": [names...],
     "coefficients": {feature: seconds per unit},
     "fit": {"method", "n_samples", "n_holdout", "holdout_mape", "holdout_max_ape", "train_mape",
             "cv": {form: held-out MAPE}, "cv_scheme", "ranges": {feature: [min, max]}},
     "samples": [{<StepRecord feature fields>, "measured_s": seconds, "group"?: str}, ...]}

Version 1 files (no "form") are the `linear` form. A file with samples and no coefficients is
fitted when loaded.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sim.cost.base import CostModel

FORMAT = "folovllm-step-profile"
VERSION = 2

#: The `linear` form's features (the only form of version 1 profiles).
FEATURES = (
    "const",
    "prefill_tokens",
    "prefill_requests",
    "decode_requests",
    "prefill_context",
    "decode_context",
    "prefill_attn_pairs",
    "sampled",
)

#: Features of the floor forms (see the module doc).
FLOOR_FEATURES = (
    "const",
    "multi_row",
    "gemm_rows_over_floor",
    "prefill_requests",
    "decode_requests",
    "decode_context",
    "prefill_cached_context",
    "prefill_attn_pairs",
    "sampled",
    "lm_head_rows_over_floor",
    "has_decode",
)

# Up to this many sampled rows the CPU executor's LM head reads the head's weights once
# (executor.models.llama_like.CPU_FEW_ROWS_LOGITS - 1); beyond it, once per row.
LM_HEAD_FLOOR = 8


@dataclass(frozen=True)
class Form:
    """Which features a profile uses, and the floors they depend on."""

    name: str
    features: tuple[str, ...]
    gemm_floor: int = 0
    lm_head_floor: int = 0

    def vector(self, shape: tuple) -> tuple[float, ...]:
        values = _feature_values(shape, self.gemm_floor, self.lm_head_floor)
        return tuple(values[name] for name in self.features)

    def to_dict(self) -> dict:
        return {"name": self.name, "gemm_floor": self.gemm_floor, "lm_head_floor": self.lm_head_floor}


def _feature_values(shape: tuple, gemm_floor: int, lm_head_floor: int) -> dict[str, float]:
    n_pre, pre_tok, n_dec, pre_ctx, dec_ctx, pairs, n_sampled = shape
    return {
        "const": 1.0,
        "prefill_tokens": pre_tok,
        "prefill_requests": n_pre,
        "decode_requests": n_dec,
        "prefill_context": pre_ctx,
        "decode_context": dec_ctx,
        "prefill_attn_pairs": pairs,
        "sampled": n_sampled,
        "gemm_rows_over_floor": max(0, pre_tok + n_dec - gemm_floor),
        "prefill_cached_context": pre_ctx - pre_tok,
        "lm_head_rows_over_floor": max(0, n_sampled - lm_head_floor),
        "has_decode": 1.0 if n_dec else 0.0,
        "multi_row": 1.0 if pre_tok + n_dec > 1 else 0.0,
    }


LINEAR = Form("linear", FEATURES)


def floor_form(gemm_floor: int, lm_head_floor: int = LM_HEAD_FLOOR) -> Form:
    return Form(f"floor{gemm_floor}", FLOOR_FEATURES, gemm_floor, lm_head_floor)


#: The forms `fit_profile` chooses among by default.
FORMS = (LINEAR, floor_form(1), floor_form(2), floor_form(4), floor_form(8), floor_form(16))


def _floor_pricer(coef: tuple[float, ...], form: Form):
    """`time_for_shape` of a floor form without building the feature dict (the simulator
    prices every step); the same sum as `form.vector(shape)` dotted with `coef`."""
    c0, c_multi, c_gemm, c_npre, c_ndec, c_dctx, c_pcached, c_pairs, c_samp, c_lm, c_hasdec = coef
    gemm_floor, lm_floor = form.gemm_floor, form.lm_head_floor

    def price(shape: tuple) -> float:
        n_pre, pre_tok, n_dec, pre_ctx, dec_ctx, pairs, n_sampled = shape
        rows = pre_tok + n_dec - gemm_floor
        lm = n_sampled - lm_floor
        return (c0 + (c_multi if pre_tok + n_dec > 1 else 0.0) + c_gemm * (rows if rows > 0 else 0) + c_npre * n_pre + c_ndec * n_dec + c_dctx * dec_ctx
                + c_pcached * (pre_ctx - pre_tok) + c_pairs * pairs + c_samp * n_sampled
                + c_lm * (lm if lm > 0 else 0) + (c_hasdec if n_dec else 0.0))

    return price


def form_from_dict(data: dict | None, features: list | None, where: str) -> Form:
    if not data:
        return LINEAR
    name = data.get("name")
    if name == "linear":
        return LINEAR
    try:
        form = floor_form(int(data["gemm_floor"]), int(data.get("lm_head_floor", LM_HEAD_FLOOR)))
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{where}: field 'form' must name 'linear' or give gemm_floor, got {data!r}") from None
    if features is not None and tuple(features) != form.features:
        # Profiles written before `multi_row` joined the floor forms carry its features less that one.
        if tuple(features) != tuple(f for f in FLOOR_FEATURES if f != "multi_row"):
            raise ValueError(f"{where}: field 'features' {features} does not match form {name!r} "
                             f"({list(form.features)})")
        form = Form(form.name, tuple(features), form.gemm_floor, form.lm_head_floor)
    return form


def features_of_shape(shape: tuple) -> tuple[float, ...]:
    """The `linear` form's feature vector (kept for callers of version 1)."""
    return LINEAR.vector(shape)


# StepRecord field names a sample must carry (sum_context_len covers both kinds of rows).
SAMPLE_FIELDS = (
    "num_prefill_requests",
    "num_prefill_tokens",
    "num_decode_requests",
    "sum_prefill_context_len",
    "sum_context_len",
    "prefill_attn_pairs",
    "num_sampled",
)


def sample_shape(sample, index: int = 0) -> tuple[int, ...]:
    """The plan shape of one sample: a dict or an object with StepRecord's field names."""
    get = sample.get if isinstance(sample, dict) else (lambda k, d=None: getattr(sample, k, d))
    values = {}
    for name in SAMPLE_FIELDS:
        value = get(name, None)
        if value is None:
            raise ValueError(f"profile sample {index}: field {name!r} is missing (StepRecord field names expected)")
        values[name] = int(value)
    dec_ctx = values["sum_context_len"] - values["sum_prefill_context_len"]
    return (
        values["num_prefill_requests"],
        values["num_prefill_tokens"],
        values["num_decode_requests"],
        values["sum_prefill_context_len"],
        dec_ctx,
        values["prefill_attn_pairs"],
        values["num_sampled"],
    )


def sample_seconds(sample, index: int = 0) -> float:
    get = sample.get if isinstance(sample, dict) else (lambda k, d=None: getattr(sample, k, d))
    value = get("measured_s", None)
    if value is None:
        value = get("duration_s", None)
    if value is None or not math.isfinite(float(value)) or float(value) <= 0:
        raise ValueError(f"profile sample {index}: measured_s (or duration_s) must be a positive number, got {value!r}")
    return float(value)


def nnls(a: np.ndarray, b: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """Non-negative least squares, min ||a x - b|| s.t. x >= 0 (Lawson and Hanson's active set)."""
    m, n = a.shape
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    tol = 10 * np.finfo(float).eps * np.abs(a).sum(axis=0).max() * max(m, n)
    w = a.T @ (b - a @ x)
    for _ in range(max_iter or 3 * n):
        if passive.all() or w[~passive].max() <= tol:
            break
        j = int(np.argmax(np.where(passive, -np.inf, w)))
        passive[j] = True
        while True:
            s = np.zeros(n)
            s[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if s[passive].min() > 0:
                break
            blocking = passive & (s <= 0)
            alpha = np.min(x[blocking] / (x[blocking] - s[blocking]))
            x = x + alpha * (s - x)
            passive &= x > tol
            x[~passive] = 0.0
        x = s
        w = a.T @ (b - a @ x)
    return x


def _fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    a = x / y[:, None]  # relative error: every row's target becomes 1
    scale = np.linalg.norm(a, axis=0)
    scale[scale == 0] = 1.0
    return nnls(a / scale, np.ones(len(y))) / scale


def _ape(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.abs(pred - y) / y


class ProfiledCostModel(CostModel):
    def __init__(self, coefficients: dict[str, float], meta: dict | None = None, samples: list[dict] | None = None,
                 form: Form = LINEAR):
        unknown = sorted(set(coefficients) - set(form.features))
        if unknown:
            raise ValueError(f"profile coefficients: unknown feature(s) {unknown} for form {form.name!r}; "
                             f"known: {list(form.features)}")
        self.form = form
        self.coefficients = {name: float(coefficients.get(name, 0.0)) for name in form.features}
        if any(not math.isfinite(v) or v < 0 for v in self.coefficients.values()):
            raise ValueError(f"profile coefficients must be finite and >= 0: {self.coefficients}")
        if sum(self.coefficients.values()) <= 0:
            raise ValueError("profile coefficients are all zero: every step would take no time")
        self._coef = tuple(self.coefficients[name] for name in form.features)
        self._price = _floor_pricer(self._coef, form) if form.features == FLOOR_FEATURES else None
        self.meta = dict(meta or {})
        self.samples = list(samples or [])

    def time_for_shape(self, shape: tuple) -> float:
        if self.form is LINEAR:  # the simulator's hot path: no dict
            n_pre, pre_tok, n_dec, pre_ctx, dec_ctx, pairs, n_sampled = shape
            c = self._coef
            return (c[0] + c[1] * pre_tok + c[2] * n_pre + c[3] * n_dec + c[4] * pre_ctx + c[5] * dec_ctx
                    + c[6] * pairs + c[7] * n_sampled)
        if self._price is not None:
            return self._price(shape)
        return sum(c * v for c, v in zip(self._coef, self.form.vector(shape)))

    @property
    def fit_report(self) -> dict:
        return self.meta.get("fit", {})

    def describe(self) -> dict:
        return {"kind": "profiled", "form": self.form.to_dict(), "coefficients": self.coefficients,
                **{k: v for k, v in self.meta.items() if k in ("model", "hardware", "dtype", "weight_bits", "fit")}}

    # -- files ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "model": self.meta.get("model"),
            "hardware": self.meta.get("hardware"),
            "dtype": self.meta.get("dtype"),
            "weight_bits": self.meta.get("weight_bits"),
            "form": self.form.to_dict(),
            "features": list(self.form.features),
            "coefficients": self.coefficients,
            "fit": self.meta.get("fit", {}),
            "samples": self.samples,
        }

    def save(self, path: str | Path) -> Path:
        from traces.files import atomic_write_json

        path = Path(path)
        atomic_write_json(path, self.to_dict(), indent=1)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ProfiledCostModel":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"profile {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"profile {path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"profile {path}: field 'format' must be {FORMAT!r}")
        if data.get("version") not in (1, VERSION):
            raise ValueError(f"profile {path}: version {data.get('version')!r} is not supported (expected 1 or {VERSION})")
        meta = {k: data.get(k) for k in ("model", "hardware", "dtype", "weight_bits")}
        samples = data.get("samples") or []
        if not data.get("coefficients"):
            if not samples:
                raise ValueError(f"profile {path}: has neither 'coefficients' nor 'samples'")
            return fit_profile(samples, **meta)
        form = form_from_dict(data.get("form"), data.get("features") if data.get("version") == VERSION else None,
                              f"profile {path}")
        try:
            return cls(data["coefficients"], {**meta, "fit": data.get("fit", {})}, samples, form)
        except ValueError as exc:
            raise ValueError(f"profile {path}: {exc}") from None


def _folds(samples: list, n_folds: int) -> tuple[list[np.ndarray], str]:
    """Held-out index sets: one per replay group when there are two or more, else interleaved folds."""
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        g = s.get("group") if isinstance(s, dict) else None
        if g is not None:
            groups.setdefault(str(g), []).append(i)
    if len(groups) >= 2:
        return [np.array(idx) for idx in groups.values()], f"leave-one-replay-out ({len(groups)} replays)"
    n = len(samples)
    return [np.arange(k, n, n_folds) for k in range(n_folds) if k < n], f"{n_folds}-fold interleaved"


def cross_validate(form: Form, shapes: list[tuple], y: np.ndarray, folds: list[np.ndarray]) -> np.ndarray:
    """Absolute percentage error of every held-out sample (pooled over folds)."""
    x = np.array([form.vector(sh) for sh in shapes], dtype=float)
    apes = []
    for test in folds:
        train = np.ones(len(y), dtype=bool)
        train[test] = False
        if train.sum() < len(form.features):
            continue
        coef = _fit(x[train], y[train])
        apes.append(_ape(x[test] @ coef, y[test]))
    return np.concatenate(apes) if apes else np.array([])


def fit_profile(
    samples,
    *,
    model=None,
    hardware=None,
    dtype: str | None = "bf16",
    weight_bits: int | None = 16,
    forms: tuple[Form, ...] | None = None,
    n_folds: int = 5,
) -> ProfiledCostModel:
    """Fit the step model to measured samples (dicts or StepRecords; see module doc), choosing
    among `forms` (default `FORMS`, simplest first) the one with the lowest cross-validated MAPE
    (a later form must be better by 1 % of the MAPE, so ties keep the simpler form)."""
    samples = list(samples)
    forms = tuple(forms or FORMS)
    need = max(len(f.features) for f in forms) + 1
    if len(samples) < need:
        raise ValueError(f"fit_profile: {len(samples)} samples; need at least {need}")
    shapes = [sample_shape(s, i) for i, s in enumerate(samples)]
    y = np.array([sample_seconds(s, i) for i, s in enumerate(samples)], dtype=float)

    folds, scheme = _folds(samples, n_folds)
    cv: dict[str, float] = {}
    best, best_apes = forms[0], None
    for form in forms:
        apes = cross_validate(form, shapes, y, folds)
        if not len(apes):
            continue
        cv[form.name] = float(apes.mean())
        # A later (more elaborate) form must beat the best so far by a margin, not by rounding.
        if best_apes is None or apes.mean() < best_apes.mean() - max(1e-6, 0.01 * best_apes.mean()):
            best, best_apes = form, apes

    fit: dict = {"method": "nnls on relative error", "n_samples": len(y), "form": best.name,
                 "cv_scheme": scheme, "cv": cv}
    if best_apes is not None:
        fit.update(n_holdout=int(len(best_apes)), holdout_mape=float(best_apes.mean()),
                   holdout_max_ape=float(best_apes.max()))
    else:
        fit.update(n_holdout=0, holdout_mape=None, holdout_max_ape=None)
    x = np.array([best.vector(sh) for sh in shapes], dtype=float)
    coef = _fit(x, y)
    fit["train_mape"] = float(_ape(x @ coef, y).mean())
    fit["ranges"] = {name: [float(x[:, j].min()), float(x[:, j].max())] for j, name in enumerate(best.features)}

    rows = []
    for i, (shape, seconds) in enumerate(zip(shapes, y)):
        n_pre, pre_tok, n_dec, pre_ctx, dec_ctx, pairs, n_sampled = shape
        row = {
            "num_prefill_requests": n_pre, "num_prefill_tokens": pre_tok, "num_decode_requests": n_dec,
            "sum_prefill_context_len": pre_ctx, "sum_context_len": pre_ctx + dec_ctx,
            "prefill_attn_pairs": pairs, "num_sampled": n_sampled, "measured_s": float(seconds),
        }
        group = samples[i].get("group") if isinstance(samples[i], dict) else None
        if group is not None:
            row["group"] = str(group)
        rows.append(row)
    meta = {"model": model, "hardware": hardware, "dtype": dtype, "weight_bits": weight_bits, "fit": fit}
    return ProfiledCostModel(dict(zip(best.features, coef.tolist())), meta, rows, best)


def format_fit_report(model: ProfiledCostModel) -> str:
    fit = model.fit_report
    lines = [f"profile fit: {fit.get('n_samples')} samples, {fit.get('method')}, form {model.form.name}"]
    if fit.get("cv"):
        scores = ", ".join(f"{name} {100 * v:.2f}%" for name, v in sorted(fit["cv"].items(), key=lambda kv: kv[1]))
        lines.append(f"  cross-validated MAPE by form ({fit.get('cv_scheme')}): {scores}")
    if fit.get("holdout_mape") is not None:
        lines.append(
            f"  held-out ({fit['n_holdout']} samples): MAPE {100 * fit['holdout_mape']:.2f}%, "
            f"max {100 * fit['holdout_max_ape']:.2f}%"
        )
    if fit.get("train_mape") is not None:
        lines.append(f"  in-sample MAPE {100 * fit['train_mape']:.2f}%")
    lines += [f"  {name:>20s} = {value:.4g}" for name, value in model.coefficients.items()]
    return "\n".join(lines)
