"""Predicted (simulator) vs measured (executor), for every variant run in both engines.

Per variant and metric: the signed error `(predicted - measured) / measured` and its absolute
value, next to the executor's run-to-run spread `(max - min) / median` over repeats (an error
inside the spread is noise, not model error). Across variants: Kendall's tau between the
simulator's and the executor's rankings (by output throughput and by p90 TTFT), implemented
here (tau-b, so ties count correctly). Request-level MAPE of TTFT and E2EL, matched by
request id, is a second view (DESIGN.md "Fidelity").
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pandas as pd

from experiments.run import results

# Every metric users read: latency p50 and p90 of each kind, and throughput. The headline error
# is over all of them (a simulator tuned on p50s can still miss the tails).
METRICS = ("ttft_p50_s", "ttft_p90_s", "tpot_p50_s", "tpot_p90_s", "itl_p50_s", "itl_p90_s", "e2el_p50_s",
           "e2el_p90_s", "output_throughput")
EXTRA_METRICS = ("ttft_mean_s", "ttft_p99_s", "tpot_p99_s", "itl_p99_s", "e2el_p99_s", "request_throughput")
HEADLINE = METRICS
RANKINGS = {"output_throughput": True, "ttft_p90_s": False}  # metric -> higher is better
# The fidelity bar: |signed error| above this is a miss (README "Experiments and the demo"; published
# simulators report 1.9-9 %, DESIGN.md "Fidelity"). Reports mark every cell outside it.
FIDELITY_BAR = 0.10


def kendall_tau(x, y) -> float | None:
    """Kendall's tau-b of two equally long sequences; None when undefined (n < 2, or one
    sequence is constant)."""
    x, y = list(x), list(y)
    if len(x) != len(y):
        raise ValueError(f"kendall_tau: sequences differ in length ({len(x)} vs {len(y)})")
    concordant = discordant = ties_x = ties_y = 0
    n = len(x)
    for i in range(n):
        for j in range(i + 1, n):
            dx = (x[i] > x[j]) - (x[i] < x[j])
            dy = (y[i] > y[j]) - (y[i] < y[j])
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif dx == dy:
                concordant += 1
            else:
                discordant += 1
    denom = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return (concordant - discordant) / denom if denom else None


def signed_error(predicted, measured) -> float | None:
    if predicted is None or measured is None or not measured:
        return None
    return (predicted - measured) / measured


def metric_cell(sim_row, real: pd.DataFrame, metric: str) -> dict:
    """One metric of one variant: the simulator's prediction, the median of the executor's
    repeats, the signed error and the repeats' spread ((max - min) / median)."""
    measured_all = [float(v) for v in real[metric] if v is not None and not pd.isna(v)]
    predicted = sim_row.get(metric)
    predicted = None if predicted is None or pd.isna(predicted) else float(predicted)
    measured = statistics.median(measured_all) if measured_all else None
    spread = (max(measured_all) - min(measured_all)) / measured if measured and len(measured_all) > 1 else None
    err = signed_error(predicted, measured)
    return {"predicted": predicted, "measured": measured, "signed_error": err,
            "abs_error": abs(err) if err is not None else None, "spread": spread, "repeats": len(measured_all),
            "measured_min": min(measured_all) if measured_all else None,
            "measured_max": max(measured_all) if measured_all else None}


def load_runs(out_dir: str | Path) -> pd.DataFrame:
    """One row per finished run in index.json: engine, variant, seed, repeat, dir, summary keys."""
    out = Path(out_dir)
    index = results.read_json(out / "index.json")["jobs"]
    rows = []
    for job in index:
        run_dir = out / job["dir"]
        if not results.is_complete(run_dir):
            continue
        summary = results.read_json(run_dir / "summary.json")
        rows.append({**job, **{k: v for k, v in summary.items() if not isinstance(v, (dict, list))}})
    return pd.DataFrame(rows)


class ComparisonError(ValueError):
    """A results folder holds numbers a comparison must not be built on (e.g. a NaN step duration)."""


def check_step_durations(out: Path, run_dir: str) -> None:
    """Every recorded step duration must be a finite number > 0. pandas' means skip NaN, and the
    summaries turn non-finite metrics into "missing", so a NaN duration would otherwise leave a
    comparison that looks complete while resting on fewer steps than were run."""
    path = out / run_dir / "steps.parquet"
    if not path.is_file():
        return
    steps = pd.read_parquet(path)
    if "duration_s" not in steps.columns or steps.empty:
        return
    dur = steps["duration_s"].to_numpy(dtype=float)
    bad = ~(dur > 0.0) | ~pd.notna(dur) | (dur == math.inf)
    if bad.any():
        row = int(bad.nonzero()[0][0])
        step = steps["step_id"].iloc[row] if "step_id" in steps.columns else row
        raise ComparisonError(f"{path}: step {step} (row {row}) has duration_s={dur[row]!r}; "
                              f"{int(bad.sum())} step duration(s) are not finite numbers > 0, "
                              "so this run cannot be compared")


def _request_mape(out: Path, sim_dir: str, exec_dirs: list[str], column: str) -> float | None:
    sim = pd.read_parquet(out / sim_dir / "requests.parquet", columns=["request_id", column]).set_index("request_id")
    apes = []
    for d in exec_dirs:
        real = pd.read_parquet(out / d / "requests.parquet", columns=["request_id", column]).set_index("request_id")
        both = sim.rename(columns={column: f"{column}_sim"}).join(real.rename(columns={column: f"{column}_real"}),
                                                                 how="inner").dropna()
        both = both[both[f"{column}_real"] > 0]
        if len(both):
            apes.append(float(((both[f"{column}_sim"] - both[f"{column}_real"]).abs() / both[f"{column}_real"]).mean()))
    return statistics.median(apes) if apes else None


def _step_time_error(out: Path, sim_dir: str, exec_dirs: list[str]) -> dict:
    """The cost model's error on the executor's own steps (identical batches): separates
    step-time error from scheduling divergence and noise."""
    try:
        desc = results.read_json(out / sim_dir / "run.json").get("cost_model")
        if not desc:
            return {}
        from experiments.run.runner import build_cost_model

        model = build_cost_model(desc)
    except (OSError, ValueError, KeyError):
        return {}
    from experiments.analysis import step_accounting as sa

    apes, ratios, priced = [], [], []
    for d in exec_dirs:
        steps = pd.read_parquet(out / d / "steps.parquet")
        run = sa.price_steps(steps, model, source=str(out / d / "steps.parquet"))
        if run.empty:
            continue
        bad = run[~((run["predicted_s"] > 0) & run["predicted_s"].map(math.isfinite))]
        if len(bad):
            idx = bad.index[0]
            step = bad["step_id"].iloc[0] if "step_id" in bad else idx
            raise ComparisonError(f"{out / sim_dir}: the cost model predicts {bad['predicted_s'].iloc[0]!r} s for step "
                                  f"{step} of {out / d}")
        apes.append(float(run["ape"].mean()))
        ratios.append(float(run["predicted_s"].sum() / run["duration_s"].sum()))
        priced.append(run)
    if not apes:
        return {}
    by_class = sa.summarize(pd.concat(priced, ignore_index=True))["by_class"]
    return {"step_mape": statistics.median(apes), "step_busy_ratio": statistics.median(ratios),
            **{f"step_mape_{cls}": s["mape"] for cls, s in by_class.items()},
            **{f"steps_{cls}": s["steps"] for cls, s in by_class.items()}}


def compare(out_dir: str | Path) -> dict:
    """The comparison of a results folder (JSON-ready); empty rows when no variant ran in both."""
    out = Path(out_dir)
    runs = load_runs(out)
    rows: list[dict] = []
    per_variant: list[dict] = []
    if runs.empty or not {"sim", "executor"} <= set(runs["engine"]):
        return {"rows": rows, "variants": per_variant, "rankings": {}, "headline": None}
    order = list(dict.fromkeys(runs["variant"]))
    for (variant, seed), group in runs.groupby(["variant", "seed"], sort=False):
        sim = group[group["engine"] == "sim"]
        real = group[group["engine"] == "executor"]
        if sim.empty or real.empty:
            continue
        sim_row = sim.iloc[0]
        entry = {"variant": variant, "seed": int(seed), "rate_scale": float(sim_row.get("rate_scale", 1.0)),
                 "repeats": int(len(real))}
        for metric in METRICS + EXTRA_METRICS:
            if metric not in group:
                continue
            cell = metric_cell(sim_row, real, metric)
            rows.append({"variant": variant, "seed": int(seed), "metric": metric, "headline": metric in METRICS,
                         **cell})
            entry[f"{metric}_predicted"] = cell["predicted"]
            entry[f"{metric}_measured"] = cell["measured"]
        for run_dir in [sim_row["dir"], *real["dir"]]:
            check_step_durations(out, run_dir)
        entry.update(_step_time_error(out, sim_row["dir"], list(real["dir"])))
        entry["request_mape_ttft"] = _request_mape(out, sim_row["dir"], list(real["dir"]), "ttft_s")
        entry["request_mape_e2el"] = _request_mape(out, sim_row["dir"], list(real["dir"]), "e2el_s")
        per_variant.append(entry)
    per_variant.sort(key=lambda e: (order.index(e["variant"]), e["seed"]))

    rankings = {}
    for metric, higher_better in RANKINGS.items():
        pred = [e.get(f"{metric}_predicted") for e in per_variant]
        meas = [e.get(f"{metric}_measured") for e in per_variant]
        if len(per_variant) < 2 or any(v is None for v in pred + meas):
            rankings[metric] = {"tau": None, "same_order": None, "n": len(per_variant)}
            continue
        key = (lambda v: -v) if higher_better else (lambda v: v)
        names = [e["variant"] + (f"@seed{e['seed']}" if len({x['seed'] for x in per_variant}) > 1 else "")
                 for e in per_variant]
        sim_order = [names[i] for i in sorted(range(len(pred)), key=lambda i: key(pred[i]))]
        real_order = [names[i] for i in sorted(range(len(meas)), key=lambda i: key(meas[i]))]
        rankings[metric] = {"tau": kendall_tau(pred, meas), "same_order": sim_order == real_order,
                            "sim_order": sim_order, "executor_order": real_order, "n": len(per_variant)}

    headline_errs = [r["abs_error"] for r in rows if r["metric"] in HEADLINE and r["abs_error"] is not None]
    spreads = [r["spread"] for r in rows if r["metric"] in HEADLINE and r["spread"] is not None]
    all_errs = [r["abs_error"] for r in rows if r["headline"] and r["abs_error"] is not None]
    step_mapes = [e["step_mape"] for e in per_variant if e.get("step_mape") is not None]
    from experiments.analysis.step_accounting import SHAPE_CLASSES

    by_class = {}
    for cls in SHAPE_CLASSES:
        vals = [e[f"step_mape_{cls}"] for e in per_variant if e.get(f"step_mape_{cls}") is not None]
        by_class[cls] = statistics.median(vals) if vals else None
    headline = {
        "metrics": list(HEADLINE),
        "step_time_mape": statistics.median(step_mapes) if step_mapes else None,
        "step_time_mape_by_class": by_class,
        "median_abs_error": statistics.median(headline_errs) if headline_errs else None,
        "max_abs_error": max(headline_errs) if headline_errs else None,
        "mape_all_headline_metrics": statistics.fmean(all_errs) if all_errs else None,
        "median_run_to_run_spread": statistics.median(spreads) if spreads else None,
        "num_variants": len(per_variant),
        "same_ranking": all(r.get("same_order") for r in rankings.values()) if rankings else None,
    }
    return {"rows": rows, "variants": per_variant, "rankings": rankings, "headline": headline}


def write_comparison(out_dir: str | Path) -> dict:
    out = Path(out_dir)
    comparison = compare(out)
    results.write_json_atomic(comparison, out / "comparison.json")
    if comparison["rows"]:
        from traces.metrics import write_table

        write_table(pd.DataFrame(comparison["rows"]), out / "comparison.csv")
    return comparison


def error_table(comparison: dict) -> pd.DataFrame:
    """Headline metrics as a wide table: one row per variant, predicted / measured / error."""
    rows = [r for r in comparison["rows"] if r["headline"]]
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    df["error_%"] = df["signed_error"] * 100
    df["spread_%"] = df["spread"] * 100
    return df[["variant", "seed", "metric", "predicted", "measured", "error_%", "spread_%", "repeats"]]
