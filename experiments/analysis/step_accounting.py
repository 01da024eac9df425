"""Step-level accounting: each executed step's measured time beside the cost model's price for
the same plan.

A fidelity gap on TTFT or throughput has two possible sources: the cost model mispricing
steps, or everything else (queueing that amplifies small errors, host jitter, a busy machine).
Pricing the executor's *own* steps removes scheduling from the comparison: the batch is the
one that really ran, so any difference is the cost model's (or the machine's noise). Split by
plan-shape class, it says which kind of step the model gets wrong.

Classes (exclusive, from the plan shape a step record stores):
- `after-prefix-hit`: a prefill chunk reads cached context (a prefix-cache hit, or a later
  chunk of a chunked prompt: the shape cannot tell them apart), with or without decodes;
- `prefill-only`: fresh prefill chunks only;
- `mixed`: fresh prefill chunks beside decodes;
- `decode-only`.

`python -m experiments.analysis.step_accounting RUN_DIR_OR_STEPS.parquet [...] --profile PROFILE.json`
prints the table; `account(steps, model)` returns it as data.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

SHAPE_CLASSES = ("prefill-only", "decode-only", "mixed", "after-prefix-hit")

#: StepRecord columns the accounting reads.
COLUMNS = ("duration_s", "num_prefill_requests", "num_prefill_tokens", "num_decode_requests",
           "sum_context_len", "sum_prefill_context_len", "prefill_attn_pairs", "num_sampled")


def shape_of_row(row) -> tuple[int, ...]:
    """The plan shape (`traces.timeline.plan_shape` order) of one steps-table row."""
    pre_ctx = int(row["sum_prefill_context_len"])
    return (int(row["num_prefill_requests"]), int(row["num_prefill_tokens"]), int(row["num_decode_requests"]),
            pre_ctx, int(row["sum_context_len"]) - pre_ctx, int(row["prefill_attn_pairs"]), int(row["num_sampled"]))


def shape_class(shape: tuple) -> str:
    n_pre, pre_tok, n_dec, pre_ctx = shape[0], shape[1], shape[2], shape[3]
    if n_pre and pre_ctx > pre_tok:
        return "after-prefix-hit"
    if n_pre:
        return "mixed" if n_dec else "prefill-only"
    return "decode-only"


def price_steps(steps: pd.DataFrame, model, *, source: str = "steps table") -> pd.DataFrame:
    """The steps that did work, with `shape_class`, `predicted_s` and `ape` added. Bad input
    (a missing column, a non-positive or missing duration) raises naming `source` and the row."""
    missing = [c for c in COLUMNS if c not in steps.columns]
    if missing:
        raise ValueError(f"{source}: column(s) {missing} missing; expected the columns of traces.timeline.StepRecord")
    worked = steps[(steps["num_prefill_requests"] + steps["num_decode_requests"]) > 0]
    classes, predicted = [], []
    for idx, row in worked.iterrows():
        dur = row["duration_s"]
        if dur is None or not math.isfinite(float(dur)) or float(dur) <= 0:
            raise ValueError(f"{source}: row {idx}: field 'duration_s' must be a positive number, got {dur!r}")
        shape = shape_of_row(row)
        classes.append(shape_class(shape))
        predicted.append(float(model.time_for_shape(shape)))
    out = worked.copy()
    out["shape_class"] = classes
    out["predicted_s"] = predicted
    out["ape"] = (out["predicted_s"] - out["duration_s"]).abs() / out["duration_s"]
    return out


def account(steps: pd.DataFrame, model, *, source: str = "steps table") -> dict:
    """Step-level MAPE overall and per shape class, and the busy-time ratio (sum of prices over
    sum of measured times: the bias that accumulates into throughput and queueing)."""
    return summarize(price_steps(steps, model, source=source))


def summarize(priced: pd.DataFrame | None) -> dict:
    """`account`'s figures from steps `price_steps` already priced."""

    def summary(part: pd.DataFrame | None) -> dict:
        if part is None or part.empty:
            return {"steps": 0, "mape": None, "busy_ratio": None, "measured_s": 0.0, "predicted_s": 0.0}
        return {"steps": int(len(part)), "mape": float(part["ape"].mean()),
                "busy_ratio": float(part["predicted_s"].sum() / part["duration_s"].sum()),
                "measured_s": float(part["duration_s"].sum()), "predicted_s": float(part["predicted_s"].sum())}

    return {"overall": summary(priced),
            "by_class": {cls: summary(None if priced is None else priced[priced["shape_class"] == cls])
                         for cls in SHAPE_CLASSES}}


def account_runs(step_files: list[Path], model) -> dict:
    """`account` over the steps of several runs pooled (one steps.parquet per run)."""
    priced = [price_steps(pd.read_parquet(path), model, source=str(path)) for path in step_files]
    return summarize(pd.concat(priced, ignore_index=True) if priced else None)


def format_accounting(acc: dict) -> str:
    lines = [f"{'class':18s} {'steps':>6s} {'MAPE':>7s} {'busy ratio':>10s} {'measured s':>10s}"]
    rows = [("all", acc["overall"])] + list(acc["by_class"].items())
    for name, s in rows:
        mape = "-" if s["mape"] is None else f"{100 * s['mape']:.1f}%"
        ratio = "-" if s["busy_ratio"] is None else f"{s['busy_ratio']:.3f}"
        lines.append(f"{name:18s} {s['steps']:6d} {mape:>7s} {ratio:>10s} {s['measured_s']:10.2f}")
    return "\n".join(lines)


def _steps_path(arg: str) -> Path:
    path = Path(arg)
    if path.is_dir():
        path = path / "steps.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{arg}: no steps.parquet there")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Price an executor run's steps with a cost model, per shape class.")
    ap.add_argument("runs", nargs="+", help="run folders (with steps.parquet) or steps.parquet files")
    ap.add_argument("--profile", required=True, help="cost model: a profile JSON (or 'roofline' with --model/--hardware)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--hardware", default=None)
    args = ap.parse_args(argv)
    from sim.cost.registry import build_cost_model as load_cost_model

    model = load_cost_model(args.profile, model=args.model, hardware=args.hardware)
    print(format_accounting(account_runs([_steps_path(r) for r in args.runs], model)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
