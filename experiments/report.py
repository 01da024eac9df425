"""One self-contained HTML report (figures embedded as base64 PNG) and a Markdown summary
of a results folder: summary table, latency CDFs, throughput vs rate, KV usage and batch size
over time, prefix hits, preemptions, and the predicted-vs-measured panel.

Plots with matplotlib (Agg), tables with pandas, the page with jinja2.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd

from experiments import compare as compare_mod
from experiments import results

SUMMARY_COLUMNS = [
    ("variant", "variant"), ("engine", "engine"), ("seed", "seed"), ("repeat", "rep"),
    ("num_finished", "finished"), ("num_rejected", "rejected"),
    ("ttft_p50_s", "TTFT p50 (s)"), ("ttft_p90_s", "TTFT p90 (s)"), ("tpot_p50_s", "TPOT p50 (s)"),
    ("itl_p50_s", "ITL p50 (s)"), ("e2el_p50_s", "E2EL p50 (s)"), ("output_throughput", "out tok/s"),
    ("request_throughput", "req/s"), ("goodput", "goodput req/s"), ("prefix_hit_rate", "prefix hit"),
    ("num_preemptions", "preemptions"), ("num_blocks", "KV blocks"), ("kv_usage_max", "KV max"),
    ("mean_batch_requests", "mean batch"),
    ("makespan_s", "makespan (s)"),
]
ENGINE_STYLE = {"sim": "--", "executor": "-"}


# -- formatting -----------------------------------------------------------------------------
def fmt(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and (math.isnan(v) or math.isinf(v))):
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if v == 0:
            return "0"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}g}"
    return str(v)


def pct(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def markdown_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(no rows)_\n"
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(fmt(row[c]) if not isinstance(row[c], str) else row[c] for c in cols) + " |")
    return "\n".join(lines) + "\n"


def html_table(df: pd.DataFrame, table_id: str) -> str:
    if df.empty:
        return "<p><i>(no rows)</i></p>"
    shown = df.copy()
    for c in shown.columns:
        shown[c] = [html.escape(v) if isinstance(v, str) else fmt(v) for v in shown[c]]
    return shown.to_html(index=False, escape=False, table_id=table_id, border=0)


# -- data -----------------------------------------------------------------------------------
def summary_frame(runs: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c, _ in SUMMARY_COLUMNS if c in runs.columns]
    df = runs[cols].copy()
    return df.rename(columns=dict(SUMMARY_COLUMNS))


def _load(out: Path, rel: str, name: str) -> pd.DataFrame:
    return pd.read_parquet(out / rel / f"{name}.parquet")


# -- figures --------------------------------------------------------------------------------
def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _first_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """One run per (variant, engine): the first seed and repeat (curves stay readable)."""
    return runs.sort_values(["seed", "repeat"]).groupby(["variant", "engine"], sort=False).head(1)


def _colors(variants: list[str]) -> dict:
    plt = _plt()
    cmap = plt.get_cmap("tab10" if len(variants) <= 10 else "tab20")
    return {v: cmap(i % cmap.N) for i, v in enumerate(variants)}


def fig_cdfs(out: Path, runs: pd.DataFrame, colors: dict) -> list[dict]:
    plt = _plt()
    figs = []
    for column, title in (("ttft_s", "TTFT CDF"), ("tpot_s", "TPOT CDF")):
        fig, ax = plt.subplots(figsize=(8, 4.2))
        drawn = 0
        for _, run in _first_runs(runs).iterrows():
            values = _load(out, run["dir"], "requests")[column].dropna().to_numpy()
            if not len(values):
                continue
            values = np.sort(values)
            ax.step(values, np.arange(1, len(values) + 1) / len(values), where="post",
                    linestyle=ENGINE_STYLE.get(run["engine"], "-"), color=colors[run["variant"]],
                    label=f"{run['variant']} [{run['engine']}]")
            drawn += 1
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xlabel(column.replace("_s", " (s)").upper())
        ax.set_ylabel("fraction of requests")
        ax.set_xscale("log")
        from matplotlib.ticker import NullFormatter

        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        ax.set_title(f"{title} (solid: executor, dashed: simulator)")
        figs.append({"title": title, "data": _png(fig)})
    return figs


def fig_throughput_vs_rate(out: Path, runs: pd.DataFrame, colors: dict, spec: dict) -> list[dict]:
    if runs["rate_scale"].nunique() < 2:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.2))
    families = {}
    for _, run in runs.iterrows():
        family = run["variant"].split("/rate_scale=")[0].split(",rate_scale=")[0]
        req = _load(out, run["dir"], "requests")
        span = float(req["arrival_s"].max() - req["arrival_s"].min())
        rate = (len(req) - 1) / span if span > 0 else float("nan")
        families.setdefault((family, run["engine"]), []).append((rate, run.get("output_throughput")))
    fam_colors = _colors(sorted({f for f, _ in families}))
    for (family, engine), pts in families.items():
        pts = sorted((r, t) for r, t in pts if t is not None and not pd.isna(t))
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", linestyle=ENGINE_STYLE.get(engine, "-"),
                    color=fam_colors[family], label=f"{family} [{engine}]")
    ax.set_xlabel("offered request rate (req/s)")
    ax.set_ylabel("output throughput (tok/s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Throughput vs request rate")
    return [{"title": "Throughput vs request rate", "data": _png(fig)}]


def fig_over_time(out: Path, runs: pd.DataFrame, colors: dict) -> list[dict]:
    plt = _plt()
    first = _first_runs(runs)
    engines = list(dict.fromkeys(first["engine"]))
    fig, axes = plt.subplots(2, len(engines), figsize=(6 * len(engines), 6.5), squeeze=False, sharex="col")
    for j, engine in enumerate(engines):
        for _, run in first[first["engine"] == engine].iterrows():
            steps = _load(out, run["dir"], "steps")
            if steps.empty:
                continue
            t = steps["start_s"].to_numpy()
            axes[0][j].step(t, steps["kv_usage"].to_numpy(), where="post", color=colors[run["variant"]],
                            label=run["variant"], linewidth=1)
            axes[1][j].step(t, steps["num_requests"].to_numpy(), where="post", color=colors[run["variant"]],
                            label=run["variant"], linewidth=1)
        axes[0][j].set_title(f"KV usage [{engine}]")
        axes[0][j].set_ylabel("used / total blocks")
        axes[1][j].set_title(f"running batch size [{engine}]")
        axes[1][j].set_ylabel("requests in step")
        axes[1][j].set_xlabel("time (s)")
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
        if axes[0][j].get_legend_handles_labels()[0]:  # an HTTP client's runs have no steps to draw
            axes[0][j].legend(fontsize=7)
    return [{"title": "KV usage and running batch size over time", "data": _png(fig)}]


def fig_prefix_preemptions(runs: pd.DataFrame, colors: dict) -> list[dict]:
    plt = _plt()
    first = _first_runs(runs)
    labels = [f"{r['variant']}\n[{r['engine']}]" for _, r in first.iterrows()]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 0.7 * len(labels) + 4), 4))
    x = np.arange(len(labels))
    hit = [r.get("prefix_hit_rate") or 0.0 for _, r in first.iterrows()]
    pre = [r.get("num_preemptions") or 0 for _, r in first.iterrows()]
    col = [colors[r["variant"]] for _, r in first.iterrows()]
    axes[0].bar(x, hit, color=col)
    axes[0].set_title("prefix-cache hit rate (tokens)")
    axes[0].set_ylim(0, 1)
    axes[1].bar(x, pre, color=col)
    axes[1].set_title("preemptions")
    for ax in axes:
        ax.set_xticks(x)
        ax.set_xticklabels(labels, fontsize=6, rotation=60, ha="right")
        ax.grid(alpha=0.3, axis="y")
    return [{"title": "Prefix hit rate and preemptions", "data": _png(fig)}]


def fig_predicted_vs_measured(comparison: dict, colors: dict) -> list[dict]:
    rows = [r for r in comparison["rows"] if r["headline"] and r["predicted"] and r["measured"]]
    if not rows:
        return []
    plt = _plt()
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.3 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        pts = [r for r in rows if r["metric"] == metric]
        for r in pts:
            ax.scatter(r["measured"], r["predicted"], color=colors.get(r["variant"], "k"), s=30, label=r["variant"])
            if r.get("spread"):
                ax.errorbar(r["measured"], r["predicted"], xerr=r["spread"] * r["measured"] / 2,
                            color=colors.get(r["variant"], "k"), fmt="none", linewidth=0.8)
        lo = min(min(r["measured"], r["predicted"]) for r in pts) * 0.8
        hi = max(max(r["measured"], r["predicted"]) for r in pts) * 1.2
        ax.plot([lo, hi], [lo, hi], color="gray", linewidth=0.8)
        ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="green", alpha=0.08)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        if hi / lo > 20:
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("measured (executor)", fontsize=8)
        ax.set_ylabel("predicted (sim)", fontsize=8)
        ax.tick_params(labelsize=7)
    handles, labels = axes[0][0].get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    fig.legend(uniq.values(), uniq.keys(), fontsize=7, loc="lower center", ncol=min(4, len(uniq)),
               bbox_to_anchor=(0.5, -0.12))
    fig.suptitle("Predicted vs measured (band: ±10%; bars: executor run-to-run spread)", fontsize=10)
    return [{"title": "Predicted vs measured", "data": _png(fig)}]


# -- the report -----------------------------------------------------------------------------
def write_report(out_dir: str | Path) -> tuple[Path, Path]:
    """Write report.html and report.md into `out_dir` (atomically); returns their paths."""
    import jinja2
    import yaml

    out = Path(out_dir)
    if not (out / "index.json").is_file():
        raise FileNotFoundError(f"{out}: not a results folder (no index.json); run `folovllm run SPEC --out {out}`")
    spec_info = results.read_json(out / "spec.json")
    spec = spec_info["spec"]
    env = results.read_json(out / "environment.json") if (out / "environment.json").is_file() else {}
    runs = compare_mod.load_runs(out)
    if runs.empty:
        raise ValueError(f"{out}: no finished runs to report yet")
    comparison = compare_mod.write_comparison(out)
    variants = [v["name"] for v in spec_info["variants"]]
    colors = _colors(variants)

    figures = []
    figures += fig_predicted_vs_measured(comparison, colors)
    figures += fig_cdfs(out, runs, colors)
    figures += fig_throughput_vs_rate(out, runs, colors, spec)
    figures += fig_over_time(out, runs, colors)
    figures += fig_prefix_preemptions(runs, colors)

    summary = summary_frame(runs)
    err = compare_mod.error_table(comparison)
    notes = []
    planned = len(results.read_json(out / "index.json")["jobs"])
    if len(runs) < planned:
        notes.append(f"{planned - len(runs)} of {planned} planned run(s) have not finished; rerun the spec to complete them.")
    rejected = int(runs.get("num_rejected", pd.Series(dtype=int)).fillna(0).sum())
    if rejected:
        notes.append(f"{rejected} request(s) were rejected by the scheduler across runs (see each run's requests table).")
    for _, run in runs.iterrows():
        info = results.read_json(out / run["dir"] / "run.json")
        wl = info.get("workload") or {}
        if wl.get("num_prompts_clipped") or wl.get("num_outputs_clipped"):
            notes.append(f"workload clipping: {wl.get('num_prompts_clipped', 0)} prompt(s) and "
                         f"{wl.get('num_outputs_clipped', 0)} output length(s) of {wl.get('num_requests')} requests were "
                         "clipped to the spec's limits.")
            break
    loads = []
    for _, run in runs[runs["engine"] == "executor"].iterrows():
        load = results.read_json(out / run["dir"] / "run.json").get("load_before")
        if load:
            loads.append(load[0])
    cores = env.get("cpu_count") or 1
    if loads and max(loads) > 0.75 * cores:
        notes.append(f"the machine was busy during executor runs: 1-minute load average up to {max(loads):.1f} on "
                     f"{cores} core(s) before a run. Other processes compete for the CPU, so measured times include "
                     "their interference; compare the error with the run-to-run spread.")
    env_rows = pd.DataFrame([(k, str(v)) for k, v in _flatten(env).items()], columns=["field", "value"])
    headline = comparison.get("headline")

    template_dir = Path(__file__).parent / "templates"
    jenv = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template_dir)), autoescape=True)
    page = jenv.get_template("report.html.j2").render(
        name=spec.get("name", out.name), description=spec.get("description", ""),
        generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), out_dir=str(out),
        engines=list(dict.fromkeys(runs["engine"])), num_runs=len(runs), headline=headline,
        rankings=comparison.get("rankings", {}), error_table=html_table(err, "errors") if not err.empty else "",
        summary_table=html_table(summary, "summary"), figures=figures, notes=notes,
        environment_table=html_table(env_rows, "environment"), spec_yaml=yaml.safe_dump(spec, sort_keys=False),
        pct=pct, fmt=fmt,
    )
    html_path = _write_text(out / "report.html", page)

    md = [f"# {spec.get('name', out.name)}\n", f"{spec.get('description', '')}\n"]
    if headline:
        md.append("## Predicted vs measured\n")
        md.append(f"Median |error| across {', '.join(headline['metrics'])} over {headline['num_variants']} variant(s): "
                  f"**{pct(headline['median_abs_error'])}** (max {pct(headline['max_abs_error'])}); executor run-to-run "
                  f"spread (median) {pct(headline['median_run_to_run_spread'])}; cost-model error on the executor's own "
                  f"steps (median step MAPE) {pct(headline.get('step_time_mape'))}.\n")
        for metric, r in comparison["rankings"].items():
            same = "" if r.get("same_order") is None else (" — same order" if r["same_order"] else " — different order")
            md.append(f"- ranking by {metric}: Kendall tau = {fmt(r.get('tau'))}{same}")
        md.append("")
        md.append(markdown_table(err))
    md.append("## Summary per variant and engine\n")
    md.append(markdown_table(summary))
    if notes:
        md.append("## Notes\n")
        md.extend(f"- {n}" for n in notes)
        md.append("")
    md.append("## Environment\n")
    md.append(markdown_table(env_rows))
    md.append(f"Figures: see report.html ({len(figures)} figures).\n")
    md_path = _write_text(out / "report.md", "\n".join(md))
    return html_path, md_path


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _write_text(path: Path, text: str) -> Path:
    import os

    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path
