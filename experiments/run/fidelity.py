"""The fidelity protocol: how closely the simulator tracks the executor, on every metric users
read, at four loads, on synthetic and real traces (`folovllm fidelity`, `make fidelity`).

    1. calibrate the simulator on this machine (cached), as `make demo` does;
    2. per workload, the simulator finds the executor's capacity (every request arriving at
       once: the finished-request rate it sustains) under the baseline variant;
    3. the workload is replayed at 25 / 50 / 75 / 90 % of that capacity (its arrival rate
       scaled), with prefix caching on and off and two chunk sizes, in both engines, the
       executor repeated to measure its own run-to-run spread;
    4. every (workload, load, variant) gets the signed error of TTFT, TPOT, ITL and E2EL at
       p50 / p90 / p99 and of output throughput, next to the spread; per-request signed
       errors are pooled; Kendall's tau ranks the variants at each load.

Workloads: `synthetic` (the Azure-conversation-like generator), `azure` (a slice of the real
Azure 2023 conversation trace) and `mooncake` (a slice of the Mooncake conversation trace, with
its shared prefixes), each clipped to CPU size. The real traces are read from paths given on
the command line or found in `../shared/traces`; a workload whose file is absent is skipped,
saying so. Nothing here is tuned to a workload: the same protocol runs on any trace.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from experiments.analysis import compare as compare_mod

LOADS = (0.25, 0.5, 0.75, 0.9)
METRICS = tuple(f"{m}_{q}_s" for m in ("ttft", "tpot", "itl", "e2el") for q in ("p50", "p90", "p99")) + \
    ("output_throughput",)
BAR_METRICS = tuple(m for m in METRICS if "_p99_" not in m)  # the bar is on p50, p90 and throughput


@dataclass
class Workload:
    name: str
    trace: dict  # a spec's trace section
    note: str = ""


@dataclass
class ProtocolConfig:
    # Sized so the whole protocol (3 workloads x 4 loads x 4 variants x 2 executor repeats = 96
    # executor replays) stays near half an hour on two cores.
    num_requests: int = 16
    loads: tuple[float, ...] = LOADS
    chunks: tuple[int, ...] = (64, 256)
    prefix_caching: tuple[bool, ...] = (True, False)
    repeats: int = 2
    max_prompt_len: int = 256
    max_output_len: int = 16
    max_model_len: int = 512
    model: str = "smollm2-135m"
    threads: int = 1
    # The executor's clock (executor.clocks.CLOCKS); calibration uses the same. cpu-ref: engine CPU
    # time at the calibration's host speed, so host drift between calibration and replay drops out.
    clock: str = "cpu-ref"
    workloads: tuple[str, ...] = ("synthetic", "azure", "mooncake")
    paths: dict = field(default_factory=dict)

    @classmethod
    def quick(cls, **kw) -> "ProtocolConfig":
        """Under five minutes on two cores: one workload, two loads, two variants."""
        base = dict(num_requests=12, loads=(0.5, 0.9), chunks=(128,), prefix_caching=(True, False), repeats=2,
                    max_prompt_len=256, max_output_len=16, workloads=("synthetic",))
        base.update(kw)
        return cls(**base)


def default_trace_path(name: str) -> Path | None:
    from experiments.shared_data import azure_conv_trace, mooncake_conv_trace

    candidates = {"azure": azure_conv_trace(), "mooncake": mooncake_conv_trace()}
    path = candidates.get(name)
    return path if path is not None and path.is_file() else None


def workloads(cfg: ProtocolConfig) -> tuple[list[Workload], list[str]]:
    """The protocol's workloads and the notes on any that were skipped."""
    out, skipped = [], []
    clip = {"max_prompt_len": cfg.max_prompt_len, "max_output_len": cfg.max_output_len}
    for name in cfg.workloads:
        if name == "synthetic":
            out.append(Workload(name, {"preset": "azure-conv-like", "params": {"num_requests": cfg.num_requests},
                                       **clip}))
            continue
        path = cfg.paths.get(name) or default_trace_path(name)
        if path is None:
            skipped.append(f"{name}: trace file not found (give --{name} PATH); skipped")
            continue
        # A slice from the middle of the trace (past its start-up), its first requests.
        transforms = [{"op": "window", "start_s": 600.0, "end_s": 1e9}, {"op": "head", "n": cfg.num_requests}]
        trace = {"path": str(Path(path).resolve()), "transforms": transforms, **clip}
        if name == "mooncake":
            # Mooncake's timestamps are quantised: a short slice can land on one tick. Spread
            # each tick's requests over it (seeded), so the slice has a rate to scale.
            trace["arrival_mode"] = "spread"
        out.append(Workload(name, trace, note=f"{Path(path).name}, requests from t=600 s"))
    return out, skipped


def _spec_dict(cfg: ProtocolConfig, wl: Workload, rate_scales: dict[float, float] | None) -> dict:
    grid = {"enable_prefix_caching": list(cfg.prefix_caching), "max_num_batched_tokens": list(cfg.chunks)}
    if rate_scales is not None:
        grid["rate_scale"] = [rate_scales[f] for f in cfg.loads]
    return {
        "name": f"fidelity-{wl.name}", "description": f"fidelity protocol, workload {wl.name}",
        "trace": wl.trace, "model": cfg.model, "cost_model": "calibrated", "dtype": "fp32",
        "engines": ["sim", "executor"] if rate_scales is not None else ["sim"],
        "seeds": [0], "repeats": cfg.repeats, "kv_cache_mib": 256, "executor": {"threads": cfg.threads, "clock": cfg.clock},
        "base": {"max_model_len": cfg.max_model_len, "max_num_seqs": 16}, "grid": grid,
    }


def find_capacity(cfg: ProtocolConfig, wl: Workload, profile: str) -> tuple[float, float]:
    """(capacity in requests/s, the trace's own arrival rate), both from the simulator: the
    capacity is the finished-request rate when every request arrives at once, under the
    protocol's first variant (prefix caching as listed first, smallest chunk)."""
    from experiments.run.runner import build_cost_model, cost_model_desc, resolve_num_blocks
    from experiments.run.spec import parse_spec
    from experiments.run.workload import build_workload
    from experiments.run import model_ref
    from sim import simulate

    spec = parse_spec(_spec_dict(cfg, wl, None))
    variant = spec.variants[0]
    shape = model_ref.model_shape(cfg.model)
    sched = variant.scheduler_config(1 << 20)
    base = build_workload(wl.trace, 0, block_size=sched.block_size, vocab_size=shape.vocab_size,
                          max_model_len=sched.max_model_len)
    arrivals = [r.arrival_time for r in base.requests]
    span = max(arrivals) - min(arrivals)
    offered = (len(arrivals) - 1) / span if span > 0 else float("inf")
    burst = build_workload(wl.trace, 0, rate_scale=1e6, block_size=sched.block_size, vocab_size=shape.vocab_size,
                           max_model_len=sched.max_model_len)
    cost = build_cost_model(cost_model_desc(spec, variant, profile))
    num_blocks = resolve_num_blocks(spec, shape, variant)
    result = simulate(burst.requests, variant.scheduler_config(num_blocks), cost)
    capacity = result.summary["request_throughput"]
    return float(capacity), float(offered)


def rate_scales_for(cfg: ProtocolConfig, capacity: float, offered: float) -> dict[float, float]:
    if not math.isfinite(offered) or offered <= 0:
        raise ValueError("the workload's requests all arrive at once; it has no rate to scale")
    return {f: round(f * capacity / offered, 6) for f in cfg.loads}


# -- analysis -----------------------------------------------------------------------------------
def protocol_rows(out: Path, workload: str, load_of_scale: dict[float, float]) -> list[dict]:
    """One row per (variant, metric): predicted, measured (median of repeats), signed error, spread."""
    runs = compare_mod.load_runs(out)
    rows = []
    if runs.empty:
        return rows
    for variant, group in runs.groupby("variant", sort=False):
        sim = group[group["engine"] == "sim"]
        real = group[group["engine"] == "executor"]
        if sim.empty or real.empty:
            continue
        scale = float(sim.iloc[0].get("rate_scale", 1.0))
        load = min(load_of_scale, key=lambda s: abs(s - scale)) if load_of_scale else scale
        policy = variant.rsplit(",rate_scale=", 1)[0]
        for metric in METRICS:
            if metric not in group:
                continue
            cell = compare_mod.metric_cell(sim.iloc[0], real, metric)
            if cell["predicted"] is None or cell["measured"] is None:
                continue
            rows.append({"workload": workload, "load": load_of_scale.get(load, load), "policy": policy,
                         "variant": variant, "metric": metric, **cell,
                         "sim_dir": sim.iloc[0]["dir"], "exec_dirs": list(real["dir"])})
    return rows


def request_errors(dirs: dict[str, Path], rows: list[dict]) -> pd.DataFrame:
    """Per-request signed TTFT and E2EL errors (simulated vs each executor repeat)."""
    frames = []
    seen = set()
    for r in rows:
        key = (r["workload"], r["variant"])
        if key in seen:
            continue
        seen.add(key)
        sim = pd.read_parquet(dirs[r["workload"]] / r["sim_dir"] / "requests.parquet",
                              columns=["request_id", "ttft_s", "e2el_s"]).set_index("request_id")
        for d in r["exec_dirs"]:
            real = pd.read_parquet(dirs[r["workload"]] / d / "requests.parquet",
                                   columns=["request_id", "ttft_s", "e2el_s"]).set_index("request_id")
            both = sim.add_suffix("_sim").join(real.add_suffix("_real"), how="inner").dropna()
            for col in ("ttft_s", "e2el_s"):
                ok = both[f"{col}_real"] > 0
                err = (both.loc[ok, f"{col}_sim"] - both.loc[ok, f"{col}_real"]) / both.loc[ok, f"{col}_real"]
                frames.append(pd.DataFrame({"workload": r["workload"], "load": r["load"], "variant": r["variant"],
                                            "metric": col, "signed_error": err.values}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def distinguished_tau(cells: list[dict]) -> tuple[float | None, int, int]:
    """Kendall's tau over the pairs of variants the executor itself tells apart: every repeat
    of one beats every repeat of the other (their [min, max] ranges do not overlap). A pair
    inside the executor's own noise has no true order to predict, so it is left out rather
    than scored as a coin toss (below capacity every variant's throughput is the arrival
    rate). Returns (tau or None when no pair is distinguished, pairs distinguished, pairs)."""
    concordant = discordant = distinct = total = 0
    for i in range(len(cells)):
        for j in range(i + 1, len(cells)):
            a, b = cells[i], cells[j]
            total += 1
            if None in (a["measured_min"], a["measured_max"], b["measured_min"], b["measured_max"]):
                continue
            if a["measured_min"] > b["measured_max"]:
                real = 1
            elif b["measured_min"] > a["measured_max"]:
                real = -1
            else:
                continue
            distinct += 1
            pred = (a["predicted"] > b["predicted"]) - (a["predicted"] < b["predicted"])
            if pred == real:
                concordant += 1
            else:
                discordant += 1  # a predicted tie counts against
    tau = (concordant - discordant) / distinct if distinct else None
    return tau, distinct, total


def rankings(rows: list[dict]) -> list[dict]:
    """Kendall's tau between the simulator's and the executor's ranking of the policy
    variants, per workload and load, by output throughput and by TTFT p90: over all pairs
    (`tau`) and over the pairs the executor distinguishes beyond its own spread
    (`tau_distinguished`, the one the bar reads)."""
    df = pd.DataFrame(rows)
    out = []
    if df.empty:
        return out
    for (wl, load), group in df.groupby(["workload", "load"]):
        for metric in ("output_throughput", "ttft_p90_s"):
            g = group[group["metric"] == metric]
            if len(g) < 2:
                continue
            tau_d, distinct, pairs = distinguished_tau(g.to_dict("records"))
            out.append({"workload": wl, "load": load, "metric": metric, "n": len(g),
                        "tau": compare_mod.kendall_tau(g["predicted"], g["measured"]),
                        "tau_distinguished": tau_d, "pairs_distinguished": distinct, "pairs": pairs})
    return out


def headline(rows: list[dict]) -> dict:
    bar = [r["abs_error"] for r in rows if r["metric"] in BAR_METRICS and r["abs_error"] is not None]
    p99 = [r["abs_error"] for r in rows if "_p99_" in r["metric"] and r["abs_error"] is not None]
    spreads = [r["spread"] for r in rows if r["spread"] is not None]
    if not bar:
        return {}
    bar_sorted = sorted(bar)
    return {
        "num_cells": len(bar),
        "median_abs_error": statistics.median(bar),
        "p90_abs_error": bar_sorted[min(len(bar) - 1, math.ceil(0.9 * len(bar)) - 1)],
        "max_abs_error": max(bar),
        "p99_metrics_median_abs_error": statistics.median(p99) if p99 else None,
        "median_spread": statistics.median(spreads) if spreads else None,
    }


def machine_load_warning(out_dirs: list[Path], calibration_load: float | None, cores: int) -> str | None:
    """A warning when executor runs started on a busier machine than calibration saw."""
    from experiments.run import results

    loads = []
    for out in out_dirs:
        runs = compare_mod.load_runs(out)
        if runs.empty:
            continue
        for _, run in runs[runs["engine"] == "executor"].iterrows():
            load = results.read_json(out / run["dir"] / "run.json").get("load_before")
            if load:
                loads.append(load[0])
    if not loads:
        return None
    worst = max(loads)
    ref = calibration_load if calibration_load is not None else 0.0
    if worst > ref + 0.5 * cores:
        return (f"the machine was busier during the replays than during calibration: 1-minute load average up to "
                f"{worst:.1f} on {cores} core(s) (calibration: {ref:.1f}); measured times include other processes' "
                "interference, so read each error against the run-to-run spread beside it")
    return None


def host_speed(out_dirs: dict[str, Path]) -> dict:
    """Per workload, how fast the host ran during the executor's replays relative to the
    calibration (cpu-ref clock: probe time / the profile's reference; above 1 = slower). The
    clock divides this out; the figures show how much it had to."""
    out = {}
    for name, folder in out_dirs.items():
        medians, lows, highs = [], [], []
        for path in sorted(Path(folder).glob("runs/executor-*/run.json")):
            speed = json.loads(path.read_text()).get("speed")
            if speed:
                medians.append(speed["ratio_p50"])
                lows.append(speed["ratio_p10"])
                highs.append(speed["ratio_p90"])
        if medians:
            out[name] = {"replays": len(medians), "median_ratio": statistics.median(medians),
                         "min_replay_median": min(medians), "max_replay_median": max(medians),
                         "p10": min(lows), "p90": max(highs)}
    return out


def step_accounting(out_dirs: dict[str, Path], profile: str) -> dict:
    """Per workload, the cost model priced on the executor's own steps (every repeat, every
    variant, every load pooled), per plan-shape class: what part of each error is the cost
    model's, with queueing and scheduling taken out."""
    from experiments.analysis.step_accounting import account_runs
    from sim.cost.registry import build_cost_model

    model = build_cost_model(profile)
    out = {}
    for name, folder in out_dirs.items():
        files = sorted(Path(folder).glob("runs/executor-*/steps.parquet"))
        if files:
            out[name] = account_runs(files, model)
    return out


def _accounting_lines(acc: dict) -> list[str]:
    from experiments.analysis.step_accounting import SHAPE_CLASSES

    lines = ["## The cost model on the executor's own steps (step MAPE; busy ratio = priced / measured time)", "",
             "| workload | all steps | " + " | ".join(SHAPE_CLASSES) + " |", "|---|---|" + "---|" * len(SHAPE_CLASSES)]

    def cell(s: dict) -> str:
        if not s["steps"]:
            return "-"
        return f"{100 * s['mape']:.1f} % / {s['busy_ratio']:.3f} ({s['steps']})"

    for wl, a in acc.items():
        lines.append(f"| {wl} | {cell(a['overall'])} | " + " | ".join(cell(a["by_class"][c]) for c in SHAPE_CLASSES) + " |")
    return lines + [""]


def _speed_lines(speed: dict) -> list[str]:
    lines = ["## Host speed during the replays (probe time / calibration's reference; above 1 = slower)", "",
             "The cpu-ref clock divides this out of every executor time.", "",
             "| workload | replays | median | replay medians, min-max | probes p10 / p90 |", "|---|---|---|---|---|"]
    for wl, s in speed.items():
        lines.append(f"| {wl} | {s['replays']} | {s['median_ratio']:.3f} | {s['min_replay_median']:.3f}-"
                     f"{s['max_replay_median']:.3f} | {s['p10']:.3f} / {s['p90']:.3f} |")
    return lines + [""]


def format_markdown(rows: list[dict], head: dict, ranks: list[dict], req_err: pd.DataFrame, notes: list[str],
                    accounting: dict | None = None, speed: dict | None = None) -> str:
    lines = ["# Fidelity protocol", ""]
    for n in notes:
        lines.append(f"> **Note:** {n}")
    if notes:
        lines.append("")
    if head:
        lines += [f"Over {head['num_cells']} cells (TTFT/TPOT/ITL/E2EL p50 and p90, output throughput; every "
                  "workload, load and variant): median |error| **{:.1f} %**, 90th percentile {:.1f} %, max {:.1f} %; "
                  "p99 metrics median |error| {}; executor run-to-run spread (median) {}.".format(
                      100 * head["median_abs_error"], 100 * head["p90_abs_error"], 100 * head["max_abs_error"],
                      _pct(head.get("p99_metrics_median_abs_error")), _pct(head.get("median_spread"))), ""]
    df = pd.DataFrame(rows)
    if not df.empty:
        lines += ["## Signed error by workload, load and metric (median over variants; spread in brackets)", ""]
        metrics = [m for m in METRICS if m in set(df["metric"])]
        lines.append("| workload | load | " + " | ".join(_label(m) for m in metrics) + " |")
        lines.append("|---|---|" + "---|" * len(metrics))
        for (wl, load), g in df.groupby(["workload", "load"]):
            cells = []
            for m in metrics:
                gm = g[g["metric"] == m]
                err = gm["signed_error"].dropna()
                spread = gm["spread"].dropna()
                cells.append("-" if err.empty else f"{100 * err.median():+.1f} %"
                             + ("" if spread.empty else f" ({100 * spread.median():.1f})"))
            lines.append(f"| {wl} | {int(round(100 * load))} % | " + " | ".join(cells) + " |")
        lines.append("")
    if ranks:
        lines += ["## Rankings (Kendall tau, simulator vs executor, over the policy variants)", "",
                  "Over all pairs, and over the pairs the executor tells apart beyond its own run-to-run range "
                  "(a pair inside the executor's noise has no order to predict).", "",
                  "| workload | load | metric | variants | tau (all pairs) | tau (distinguished pairs) | pairs distinguished |",
                  "|---|---|---|---|---|---|---|"]
        for r in ranks:
            tau = "-" if r["tau"] is None else f"{r['tau']:.2f}"
            tau_d = "-" if r.get("tau_distinguished") is None else f"{r['tau_distinguished']:.2f}"
            lines.append(f"| {r['workload']} | {int(round(100 * r['load']))} % | {r['metric']} | {r['n']} | {tau} | "
                         f"{tau_d} | {r.get('pairs_distinguished', '-')} of {r.get('pairs', '-')} |")
        lines.append("")
    if not req_err.empty:
        lines += ["## Per-request signed error (pooled)", "", "| workload | metric | p10 | p50 | p90 |", "|---|---|---|---|---|"]
        for (wl, metric), g in req_err.groupby(["workload", "metric"]):
            q = g["signed_error"].quantile([0.1, 0.5, 0.9])
            lines.append(f"| {wl} | {metric} | {100 * q[0.1]:+.1f} % | {100 * q[0.5]:+.1f} % | {100 * q[0.9]:+.1f} % |")
        lines.append("")
    if accounting:
        lines += _accounting_lines(accounting)
    if speed:
        lines += _speed_lines(speed)
    return "\n".join(lines)


def _label(metric: str) -> str:
    if metric == "output_throughput":
        return "throughput"
    name, q, _ = metric.split("_")
    return f"{name.upper()} {q}"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def plot(rows: list[dict], path: Path) -> Path | None:
    """Predicted vs measured per metric (log-log), one colour per load, spread as error bars."""
    df = pd.DataFrame(rows)
    if df.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in BAR_METRICS if m in set(df["metric"])]
    cols = 4
    fig, axes = plt.subplots(math.ceil(len(metrics) / cols), cols, figsize=(4 * cols, 3.6 * math.ceil(len(metrics) / cols)))
    axes = axes.ravel()
    loads = sorted(set(df["load"]))
    cmap = plt.get_cmap("viridis")
    for ax, metric in zip(axes, metrics):
        g = df[df["metric"] == metric]
        for k, load in enumerate(loads):
            gl = g[g["load"] == load]
            yerr = (gl["spread"].fillna(0) * gl["measured"] / 2).values
            ax.errorbar(gl["measured"], gl["predicted"], xerr=yerr, fmt="o", ms=4, color=cmap(k / max(1, len(loads) - 1)),
                        label=f"{int(round(100 * load))} %")
        lo = min(g["measured"].min(), g["predicted"].min())
        hi = max(g["measured"].max(), g["predicted"].max())
        if lo > 0:
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            ax.plot([lo, hi], [1.1 * lo, 1.1 * hi], ":", color="grey", lw=0.6)
            ax.plot([lo, hi], [lo / 1.1, hi / 1.1], ":", color="grey", lw=0.6)
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_title(_label(metric))
        ax.set_xlabel("measured")
        ax.set_ylabel("predicted")
    for ax in axes[len(metrics):]:
        ax.axis("off")
    axes[0].legend(title="load", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def run_protocol(cfg: ProtocolConfig, out_dir: str | Path, *, echo=print) -> dict:
    """Run (or resume) the whole protocol; writes fidelity.md / .json / .csv / .png in out_dir."""
    from experiments.run.calibrate import ensure_profile
    from experiments.run.runner import run_spec
    from experiments.run.spec import parse_spec
    from traces.files import atomic_write_json, atomic_write_text
    from traces.metrics import write_table

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cal_load = os.getloadavg()[0]
    profile = str(ensure_profile(cfg.model, "fp32", echo=echo, threads=cfg.threads, max_model_len=cfg.max_model_len,
                                clock=cfg.clock))
    wls, notes = workloads(cfg)
    rows, dirs, caps = [], {}, {}
    for wl in wls:
        capacity, offered = find_capacity(cfg, wl, profile)
        scales = rate_scales_for(cfg, capacity, offered)
        caps[wl.name] = {"capacity_req_s": capacity, "offered_req_s": offered, "rate_scales": scales}
        echo(f"[{wl.name}] simulated capacity {capacity:.2f} req/s; trace rate {offered:.2f} req/s; "
             f"loads {', '.join(f'{int(100 * f)}%' for f in cfg.loads)} -> rate_scale "
             f"{', '.join(f'{s:g}' for s in scales.values())}")
        spec = parse_spec(_spec_dict(cfg, wl, scales), source=f"<fidelity {wl.name}>")
        dirs[wl.name] = out / wl.name
        run_spec(spec, dirs[wl.name], profile_path=profile, progress=False)
        compare_mod.write_comparison(dirs[wl.name])
        rows += protocol_rows(dirs[wl.name], wl.name, {s: f for f, s in scales.items()})
    cores = os.cpu_count() or 1
    warning = machine_load_warning(list(dirs.values()), cal_load, cores)
    if warning:
        notes.insert(0, warning)
    head = headline(rows)
    ranks = rankings(rows)
    req_err = request_errors(dirs, rows) if rows else pd.DataFrame()
    table = pd.DataFrame([{k: v for k, v in r.items() if k not in ("exec_dirs",)} for r in rows])
    if not table.empty:
        write_table(table, out / "fidelity.csv")
    if not req_err.empty:
        write_table(req_err, out / "request_errors.parquet")
    accounting = step_accounting(dirs, profile)
    speed = host_speed(dirs)
    md = format_markdown(rows, head, ranks, req_err, notes, accounting, speed)
    atomic_write_text(out / "fidelity.md", md + "\n")
    png = plot(rows, out / "fidelity.png")
    summary = {"headline": head, "rankings": ranks, "capacity": caps, "notes": notes, "step_accounting": accounting,
               "host_speed": speed,
               "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items() if k != "paths"},
               "figure": str(png) if png else None}
    atomic_write_json(out / "fidelity.json", summary, allow_nan=True, default=str)
    return summary


# -- the command ----------------------------------------------------------------------------------
def _command():
    import click

    @click.command(name="fidelity")
    @click.option("--out", type=click.Path(file_okay=False), default="results/fidelity", show_default=True)
    @click.option("--quick", is_flag=True, help="One workload, two loads, two variants: under five minutes.")
    @click.option("--azure", type=click.Path(exists=True, dir_okay=False), default=None,
                  help="Azure 2023 conversation trace CSV (default: ../shared/traces if present).")
    @click.option("--mooncake", type=click.Path(exists=True, dir_okay=False), default=None,
                  help="Mooncake conversation trace JSONL (default: ../shared/traces if present).")
    @click.option("--workloads", default=None, help="Comma list of synthetic, azure, mooncake (default: all).")
    @click.option("--num-requests", type=int, default=None, help="Requests per workload.")
    @click.option("--repeats", type=int, default=None, help="Executor repeats per variant (>= 2 gives a spread).")
    @click.option("--clock", type=click.Choice(["cpu-ref", "cpu", "wall"]), default="cpu-ref", show_default=True,
                  help="The executor's clock: the engine thread's CPU time at the calibration's host speed "
                       "(host jitter and speed drift left out), its raw CPU time, or wall time.")
    def fidelity(out, quick, azure, mooncake, workloads, num_requests, repeats, clock):
        """Replay synthetic and real workloads at 25/50/75/90 % of capacity through the simulator
        and the executor; report every metric's error next to the executor's own spread."""
        kw = {"paths": {k: v for k, v in (("azure", azure), ("mooncake", mooncake)) if v}, "clock": clock}
        if workloads:
            names = tuple(w.strip() for w in workloads.split(",") if w.strip())
            bad = [w for w in names if w not in ("synthetic", "azure", "mooncake")]
            if bad:
                raise click.BadParameter(f"unknown workload(s) {bad}; choose from synthetic, azure, mooncake",
                                         param_hint="--workloads")
            kw["workloads"] = names
        if num_requests is not None:
            kw["num_requests"] = num_requests
        if repeats is not None:
            kw["repeats"] = repeats
        cfg = ProtocolConfig.quick(**kw) if quick else ProtocolConfig(**kw)
        try:
            summary = run_protocol(cfg, out, echo=click.echo)
        except (ValueError, FileNotFoundError) as exc:
            raise click.ClickException(str(exc)) from None
        click.echo((Path(out) / "fidelity.md").read_text())
        if not summary["headline"]:
            raise click.ClickException("no variant ran in both engines")

    return fidelity


fidelity = _command()
