"""Profiled step cost: a linear model on physically meaningful plan features, fitted to step
times measured on the real executor.

    step_s = c_const + c_prefill_tokens * P + c_prefill_requests * Np + c_decode_requests * D
           + c_prefill_context * sum(prefill ctx) + c_decode_context * sum(decode ctx)
           + c_prefill_attn_pairs * sum(q*c + q(q+1)/2) + c_sampled * rows sampled

Each term is a cost the hardware pays: a fixed per-step cost (weights streamed once, launches,
host work), per-token GEMM work, per-request bookkeeping, KV bytes read by prefill and decode
attention, causal attention FLOPs, and LM-head + sampling per sampled row. The features are
`traces.timeline.plan_shape(plan)`, which is what `StepRecord` stores, so step records from the
executor are samples as they are.

The fit is non-negative least squares on *relative* error (each row divided by its measured
time), so a 1 ms decode step weighs as much as a 100 ms prefill, and no coefficient can go
negative and produce nonsense when extrapolating. The held-out error is measured on every
`holdout_every`-th sample with the model fitted on the others; the stored coefficients are then
refitted on all samples.

Profile file (JSON, written atomically):

    {"format": "folovllm-step-profile", "version": 1,
     "model": <str or ModelShape dict>, "hardware": <str or dict: name, device, ...>,
     "dtype": "bf16", "weight_bits": 16,
     "features": [FEATURES...], "coefficients": {feature: seconds per unit},
     "fit": {"method", "n_samples", "n_holdout", "holdout_mape", "holdout_max_ape", "train_mape",
             "ranges": {feature: [min, max]}},
     "samples": [{<StepRecord feature fields>, "measured_s": seconds}, ...]}

A file with samples and no coefficients is fitted when loaded.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from sim.cost.base import CostModel

FORMAT = "folovllm-step-profile"
VERSION = 1

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


def features_of_shape(shape: tuple) -> tuple[float, ...]:
    n_pre, pre_tok, n_dec, pre_ctx, dec_ctx, pairs, n_sampled = shape
    return (1.0, pre_tok, n_pre, n_dec, pre_ctx, dec_ctx, pairs, n_sampled)


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
    def __init__(self, coefficients: dict[str, float], meta: dict | None = None, samples: list[dict] | None = None):
        unknown = sorted(set(coefficients) - set(FEATURES))
        if unknown:
            raise ValueError(f"profile coefficients: unknown feature(s) {unknown}; known: {list(FEATURES)}")
        self.coefficients = {name: float(coefficients.get(name, 0.0)) for name in FEATURES}
        if any(not math.isfinite(v) or v < 0 for v in self.coefficients.values()):
            raise ValueError(f"profile coefficients must be finite and >= 0: {self.coefficients}")
        if sum(self.coefficients.values()) <= 0:
            raise ValueError("profile coefficients are all zero: every step would take no time")
        self._coef = tuple(self.coefficients[name] for name in FEATURES)
        self.meta = dict(meta or {})
        self.samples = list(samples or [])

    def time_for_shape(self, shape: tuple) -> float:
        n_pre, pre_tok, n_dec, pre_ctx, dec_ctx, pairs, n_sampled = shape
        c = self._coef
        return (c[0] + c[1] * pre_tok + c[2] * n_pre + c[3] * n_dec + c[4] * pre_ctx + c[5] * dec_ctx
                + c[6] * pairs + c[7] * n_sampled)

    @property
    def fit_report(self) -> dict:
        return self.meta.get("fit", {})

    def describe(self) -> dict:
        return {"kind": "profiled", "coefficients": self.coefficients,
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
            "features": list(FEATURES),
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
        if data.get("version") != VERSION:
            raise ValueError(f"profile {path}: version {data.get('version')!r} is not supported (expected {VERSION})")
        meta = {k: data.get(k) for k in ("model", "hardware", "dtype", "weight_bits")}
        samples = data.get("samples") or []
        if not data.get("coefficients"):
            if not samples:
                raise ValueError(f"profile {path}: has neither 'coefficients' nor 'samples'")
            return fit_profile(samples, **meta)
        try:
            return cls(data["coefficients"], {**meta, "fit": data.get("fit", {})}, samples)
        except ValueError as exc:
            raise ValueError(f"profile {path}: {exc}") from None


def fit_profile(
    samples,
    *,
    model=None,
    hardware=None,
    dtype: str | None = "bf16",
    weight_bits: int | None = 16,
    holdout_every: int = 5,
) -> ProfiledCostModel:
    """Fit the linear step model to measured samples (dicts or StepRecords; see module doc)."""
    samples = list(samples)
    if len(samples) < len(FEATURES) + 1:
        raise ValueError(f"fit_profile: {len(samples)} samples; need at least {len(FEATURES) + 1}")
    shapes = [sample_shape(s, i) for i, s in enumerate(samples)]
    x = np.array([features_of_shape(sh) for sh in shapes], dtype=float)
    y = np.array([sample_seconds(s, i) for i, s in enumerate(samples)], dtype=float)

    fit: dict = {"method": "nnls on relative error", "n_samples": len(y)}
    holdout = np.zeros(len(y), dtype=bool)
    if holdout_every and len(y) >= 2 * len(FEATURES):
        holdout[holdout_every - 1 :: holdout_every] = True
    if holdout.any():
        coef = _fit(x[~holdout], y[~holdout])
        ape = _ape(x[holdout] @ coef, y[holdout])
        fit.update(n_holdout=int(holdout.sum()), holdout_mape=float(ape.mean()), holdout_max_ape=float(ape.max()))
    else:
        fit.update(n_holdout=0, holdout_mape=None, holdout_max_ape=None)
    coef = _fit(x, y)
    fit["train_mape"] = float(_ape(x @ coef, y).mean())
    fit["ranges"] = {name: [float(x[:, j].min()), float(x[:, j].max())] for j, name in enumerate(FEATURES)}

    rows = []
    for shape, seconds in zip(shapes, y):
        n_pre, pre_tok, n_dec, pre_ctx, dec_ctx, pairs, n_sampled = shape
        rows.append({
            "num_prefill_requests": n_pre, "num_prefill_tokens": pre_tok, "num_decode_requests": n_dec,
            "sum_prefill_context_len": pre_ctx, "sum_context_len": pre_ctx + dec_ctx,
            "prefill_attn_pairs": pairs, "num_sampled": n_sampled, "measured_s": float(seconds),
        })
    meta = {"model": model, "hardware": hardware, "dtype": dtype, "weight_bits": weight_bits, "fit": fit}
    return ProfiledCostModel(dict(zip(FEATURES, coef.tolist())), meta, rows)


def format_fit_report(model: ProfiledCostModel) -> str:
    fit = model.fit_report
    lines = [f"profile fit: {fit.get('n_samples')} samples, {fit.get('method')}"]
    if fit.get("holdout_mape") is not None:
        lines.append(
            f"  held-out ({fit['n_holdout']} samples): MAPE {100 * fit['holdout_mape']:.2f}%, "
            f"max {100 * fit['holdout_max_ape']:.2f}%"
        )
    if fit.get("train_mape") is not None:
        lines.append(f"  in-sample MAPE {100 * fit['train_mape']:.2f}%")
    lines += [f"  {name:>20s} = {value:.4g}" for name, value in model.coefficients.items()]
    return "\n".join(lines)
