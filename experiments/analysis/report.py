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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.analysis import compare as compare_mod
from experiments.run import results
from experiments.analysis.metric_names import header, metric_name, scaled

# Key columns first (pinned when the table scrolls), then metrics; headers come from metric_names.
ID_COLUMNS = [("variant", "variant"), ("engine", "engine"), ("seed", "seed"), ("repeat", "rep")]
SUMMARY_METRICS = ["num_finished", "num_rejected", "ttft_p50_s", "ttft_p90_s", "tpot_p50_s", "itl_p50_s", "e2el_p50_s",
                   "output_throughput", "request_throughput", "goodput", "prefix_hit_rate", "prefix_block_hit_rate",
                   "num_preemptions", "num_blocks", "kv_usage_max", "mean_batch_requests", "makespan_s"]
SUMMARY_COLUMNS = ID_COLUMNS + [(k, header(k)) for k in SUMMARY_METRICS]
PINNED = 2  # variant and engine stay in view when a wide table scrolls sideways
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


def html_table(df: pd.DataFrame, table_id: str, *, pinned: int = 0, cell_classes: pd.DataFrame | None = None,
               cell_titles: pd.DataFrame | None = None) -> str:
    """An HTML table; the first `pinned` columns stay in view when it scrolls sideways (CSS
    `position: sticky`), and `cell_classes` / `cell_titles` (same shape as `df`) mark cells."""
    if df.empty:
        return "<p><i>(no rows)</i></p>"

    def cls(j: int, extra: str = "") -> str:
        names = ([f"pin pin{j + 1}"] if j < pinned else []) + ([extra] if extra else [])
        return f' class="{" ".join(names)}"' if names else ""

    head = "".join(f"<th{cls(j)} scope=\"col\">{html.escape(str(c))}</th>" for j, c in enumerate(df.columns))
    body = []
    for i in range(len(df)):
        cells = []
        for j, c in enumerate(df.columns):
            v = df.iat[i, j]
            text = html.escape(v) if isinstance(v, str) else fmt(v)
            extra = " ".join(x for x in ("" if cell_classes is None else (cell_classes.iat[i, j] or ""),
                                         "text" if isinstance(v, str) else "") if x)
            title = "" if cell_titles is None else (cell_titles.iat[i, j] or "")
            title_attr = f' title="{html.escape(title)}"' if title else ""
            cells.append(f"<td{cls(j, extra)}{title_attr}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table id="{table_id}" class="data{" pinned" if pinned else ""}">'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


# -- data -----------------------------------------------------------------------------------
def summary_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run, human headers with units, values in those units (ms, %, tok/s)."""
    cols = [c for c, _ in SUMMARY_COLUMNS if c in runs.columns]
    df = runs[cols].copy()
    for c in cols:
        if c in SUMMARY_METRICS:
            df[c] = [scaled(c, None if pd.isna(v) else v) if not isinstance(v, str) else v for v in df[c]]
    return df.rename(columns=dict(SUMMARY_COLUMNS))


def cluster_frame(out: Path, runs: pd.DataFrame) -> pd.DataFrame:
    """The cluster view of runs that simulated several replicas behind a router: one row per
    replica (requests routed there, their share, TTFT p50/p90, prefix hit rate, busy time)
    and a `cluster` row over every request with the router's load imbalance (the busiest
    replica's requests over the mean). Empty when every run had one replica."""
    rows = []
    for _, run in runs.iterrows():
        summary = results.read_json(out / run["dir"] / "summary.json")
        if (summary.get("num_replicas") or 1) < 2:
            continue
        routed = summary.get("routed") or []
        total = sum(routed)
        busy = summary.get("busy_s_per_replica") or [None] * len(routed)
        head = {"variant": run["variant"], "engine": run["engine"], "seed": run["seed"],
                "router": summary.get("router")}
        for i, rep in enumerate(summary.get("per_replica") or []):
            rows.append({**head, "replica": str(i), "requests": routed[i] if i < len(routed) else None,
                         "load share %": 100.0 * routed[i] / total if total and i < len(routed) else None,
                         "TTFT p50 ms": _ms(rep.get("ttft_p50_s")), "TTFT p90 ms": _ms(rep.get("ttft_p90_s")),
                         "prefix hit rate %": _pct100(rep.get("prefix_hit_rate")),
                         "busy s": busy[i] if i < len(busy) else None, "imbalance": None})
        rows.append({**head, "replica": "cluster", "requests": total, "load share %": 100.0 if total else None,
                     "TTFT p50 ms": _ms(summary.get("ttft_p50_s")), "TTFT p90 ms": _ms(summary.get("ttft_p90_s")),
                     "prefix hit rate %": _pct100(summary.get("prefix_hit_rate")),
                     "busy s": sum(b for b in busy if b is not None) if any(b is not None for b in busy) else None,
                     "imbalance": summary.get("load_imbalance_requests")})
    return pd.DataFrame(rows)


CLUSTER_LEGEND = [
    ("requests", "requests the router sent to the replica (cluster: all of them)"),
    ("load share %", "the replica's share of the requests"),
    ("TTFT p50 ms / p90 ms", "time to first token of the replica's requests (cluster: over every request)"),
    ("prefix hit rate %", "prompt tokens served from the replica's prefix cache"),
    ("busy s", "simulated time the replica spent in steps (cluster: the sum)"),
    ("imbalance", "the busiest replica's requests over the mean (1 = perfectly even)"),
]


def _ms(v):
    return None if v is None else 1e3 * v


def _pct100(v):
    return None if v is None else 100.0 * v


def error_frame(comparison: dict) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The predicted-vs-measured table with human metric names and units, plus per-cell CSS
    classes and hover titles marking errors outside the fidelity bar (and inside the spread)."""
    err = compare_mod.error_table(comparison)
    if err.empty:
        return err, err, err
    bar = compare_mod.FIDELITY_BAR
    shown = pd.DataFrame({
        "variant": err["variant"], "seed": err["seed"],
        "metric": [header(m) for m in err["metric"]],
        "predicted": [scaled(m, v) for m, v in zip(err["metric"], err["predicted"])],
        "measured": [scaled(m, v) for m, v in zip(err["metric"], err["measured"])],
        "error %": err["error_%"], "spread %": err["spread_%"], "repeats": err["repeats"],
    })
    classes = pd.DataFrame("", index=shown.index, columns=shown.columns)
    titles = pd.DataFrame("", index=shown.index, columns=shown.columns)
    for i, (e, sp) in enumerate(zip(err["error_%"], err["spread_%"])):
        if e is None or pd.isna(e):
            continue
        e, sp = e / 100, (None if sp is None or pd.isna(sp) else sp / 100)
        if abs(e) > bar:
            classes.iat[i, 5] = "miss"
            titles.iat[i, 5] = f"outside the ±{bar:.0%} fidelity bar"
            if sp is not None and abs(e) <= sp:
                classes.iat[i, 5] = "miss noisy"
                titles.iat[i, 5] += " (but inside the executor's run-to-run spread)"
    return shown, classes, titles


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


def log_axis_ticks(ax, lo: float, hi: float) -> None:
    """Readable ticks on a log x axis over [lo, hi]: 1-2-5 steps per decade, or every integer
    multiple when the data spans less than a decade (matplotlib alone labels one tick, or none)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    decades = math.log10(hi / lo) if lo > 0 and hi > lo else 0.0
    subs = (1.0, 2.0, 5.0) if decades >= 1.0 else tuple(float(k) for k in range(1, 10))
    ax.xaxis.set_major_locator(LogLocator(base=10.0, subs=subs, numticks=40))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.6g}"))
    ax.xaxis.set_minor_locator(LogLocator(base=10.0, subs=tuple(float(k) for k in range(1, 10)), numticks=40))
    ax.xaxis.set_minor_formatter(NullFormatter())


def fig_cdfs(out: Path, runs: pd.DataFrame, colors: dict) -> list[dict]:
    plt = _plt()
    figs = []
    for column, name in (("ttft_s", "TTFT"), ("tpot_s", "TPOT")):
        title = f"{name} CDF"
        fig, ax = plt.subplots(figsize=(8, 4.2))
        drawn, lo, hi = 0, math.inf, 0.0
        for _, run in _first_runs(runs).iterrows():
            values = _load(out, run["dir"], "requests")[column].dropna().to_numpy() * 1e3
            values = np.sort(values[values > 0])
            if not len(values):
                continue
            lo, hi = min(lo, float(values[0])), max(hi, float(values[-1]))
            ax.step(values, np.arange(1, len(values) + 1) / len(values), where="post",
                    linestyle=ENGINE_STYLE.get(run["engine"], "-"), color=colors[run["variant"]],
                    label=f"{run['variant']} [{run['engine']}]")
            drawn += 1
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xlabel(f"{name} (ms, log scale)")
        ax.set_ylabel("fraction of requests")
        ax.set_xscale("log")
        log_axis_ticks(ax, lo, hi)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(alpha=0.3, which="major")
        ax.grid(alpha=0.1, which="minor")
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
    first = first[[not _load(out, r["dir"], "steps").empty for _, r in first.iterrows()]]
    if first.empty:
        return []
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
    """Bar charts of prefix-cache hit rates (tokens and blocks) and of preemptions, each drawn
    only when it has something to show: an all-zero chart is noise a reader must decode."""
    plt = _plt()
    first = _first_runs(runs)
    labels = [f"{r['variant']}\n[{r['engine']}]" for _, r in first.iterrows()]
    x = np.arange(len(labels))
    col = [colors[r["variant"]] for _, r in first.iterrows()]

    def value(r, key):
        v = r.get(key)
        return 0.0 if v is None or pd.isna(v) else float(v)

    hit = [value(r, "prefix_hit_rate") for _, r in first.iterrows()]
    block_hit = [value(r, "prefix_block_hit_rate") for _, r in first.iterrows()]
    pre = [value(r, "num_preemptions") for _, r in first.iterrows()]
    panels = []
    if any(hit) or any(block_hit):
        panels.append(("prefix-cache hit rate (%)", "hit"))
    if any(pre):
        panels.append(("preemptions", "pre"))
    if not panels:
        return []
    fig, axes = plt.subplots(1, len(panels), figsize=(max(8, 0.7 * len(labels) + 4), 4), squeeze=False)
    for ax, (title, kind) in zip(axes[0], panels):
        if kind == "hit":
            width = 0.4
            ax.bar(x - width / 2, [100 * h for h in hit], width, color=col, label="tokens")
            ax.bar(x + width / 2, [100 * h for h in block_hit], width, color=col, alpha=0.5, hatch="//",
                   label="full prompt blocks")
            ax.set_ylim(0, 100)
            ax.legend(fontsize=7)
        else:
            ax.bar(x, pre, color=col)
        ax.set_title(title)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, fontsize=6, rotation=60, ha="right")
        ax.grid(alpha=0.3, axis="y")
    title = " and ".join(("prefix hit rate" if k == "hit" else "preemptions") for _, k in panels)
    return [{"title": title[0].upper() + title[1:], "data": _png(fig)}]


def _compact_tick(v, _pos=None) -> str:
    """100000 -> "100k": axis labels that do not run into each other."""
    if abs(v) >= 1e4:
        return f"{v / 1e3:,.4g}k"
    return f"{v:,.4g}"


def fig_predicted_vs_measured(comparison: dict, colors: dict) -> list[dict]:
    rows = [{**r, "predicted": scaled(r["metric"], r["predicted"]), "measured": scaled(r["metric"], r["measured"])}
            for r in comparison["rows"] if r["headline"] and r["predicted"] and r["measured"]]
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
        if hi / lo <= 20:  # linear axes: few ticks, compact labels (ms values run to six digits)
            from matplotlib.ticker import FuncFormatter, MaxNLocator

            for axis in (ax.xaxis, ax.yaxis):
                axis.set_major_locator(MaxNLocator(nbins=4))
                axis.set_major_formatter(FuncFormatter(_compact_tick))
        ax.set_title(header(metric), fontsize=9)
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
@dataclass
class ReportData:
    """Everything one report shows, read once from a results folder (HTML and Markdown both
    render from this)."""

    out: Path
    spec: dict
    env: dict
    runs: pd.DataFrame
    comparison: dict
    figures: list
    summary: pd.DataFrame
    err: pd.DataFrame
    err_classes: pd.DataFrame
    err_titles: pd.DataFrame
    cluster: pd.DataFrame  # per-replica rows of multi-replica runs (empty otherwise)
    notes: list[str]  # facts a reader may want (bottom of the page)
    warnings: list[str]  # things that change how to read the numbers (top, beside the headline)

    @property
    def headline(self) -> dict | None:
        return self.comparison.get("headline")

    @property
    def env_rows(self) -> pd.DataFrame:
        return pd.DataFrame([(k, str(v)) for k, v in _flatten(self.env).items()], columns=["field", "value"])


def write_report(out_dir: str | Path) -> tuple[Path, Path]:
    """Write report.html and report.md into `out_dir` (atomically); returns their paths."""
    data = gather(Path(out_dir))
    html_path = _write_text(data.out / "report.html", render_html(data))
    md_path = _write_text(data.out / "report.md", render_markdown(data))
    return html_path, md_path


def gather(out: Path) -> ReportData:
    if not (out / "index.json").is_file():
        raise FileNotFoundError(f"{out}: not a results folder (no index.json); run `folovllm run SPEC --out {out}`")
    spec_info = results.read_json(out / "spec.json")
    spec = spec_info["spec"]
    env = results.read_json(out / "environment.json") if (out / "environment.json").is_file() else {}
    runs = compare_mod.load_runs(out)
    if runs.empty:
        raise ValueError(f"{out}: no finished runs to report yet")
    comparison = compare_mod.write_comparison(out)
    colors = _colors([v["name"] for v in spec_info["variants"]])
    figures = (fig_predicted_vs_measured(comparison, colors) + fig_cdfs(out, runs, colors)
               + fig_throughput_vs_rate(out, runs, colors, spec) + fig_over_time(out, runs, colors)
               + fig_prefix_preemptions(runs, colors))
    err, err_classes, err_titles = error_frame(comparison)
    notes, warnings = _notes_and_warnings(out, runs, env)
    return ReportData(out, spec, env, runs, comparison, figures, summary_frame(runs), err, err_classes, err_titles,
                      cluster_frame(out, runs), notes, warnings)


def _notes_and_warnings(out: Path, runs: pd.DataFrame, env: dict) -> tuple[list[str], list[str]]:
    notes, warnings = [], []
    planned = len(results.read_json(out / "index.json")["jobs"])
    if len(runs) < planned:
        warnings.append(f"{planned - len(runs)} of {planned} planned run(s) have not finished; rerun the spec to complete them.")
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
        warnings.append(f"The machine was busy during executor runs: 1-minute load average up to {max(loads):.1f} on "
                        f"{cores} core(s) before a run. Other processes compete for the CPU, so measured times include "
                        "their interference; compare the error with the run-to-run spread.")
    return notes, warnings


def render_html(d: ReportData) -> str:
    import jinja2
    import yaml

    err, err_classes = d.err, d.err_classes
    num_misses = int((err_classes == "miss").sum().sum() + (err_classes == "miss noisy").sum().sum()) \
        if not err.empty else 0
    template_dir = Path(__file__).parent / "templates"
    jenv = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template_dir)), autoescape=True)
    return jenv.get_template("report.html.j2").render(
        name=d.spec.get("name", d.out.name), description=d.spec.get("description", ""),
        generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), out_dir=str(d.out),
        engines=list(dict.fromkeys(d.runs["engine"])), num_runs=len(d.runs), headline=d.headline,
        rankings=d.comparison.get("rankings", {}),
        error_table=html_table(err, "errors", pinned=1, cell_classes=err_classes, cell_titles=d.err_titles)
        if not err.empty else "",
        summary_table=html_table(d.summary, "summary-table", pinned=PINNED), figures=d.figures, notes=d.notes,
        cluster_table=html_table(d.cluster, "cluster-table", pinned=2) if not d.cluster.empty else "",
        cluster_legend=CLUSTER_LEGEND,
        warnings=d.warnings, bar=compare_mod.FIDELITY_BAR, num_misses=num_misses,
        summary_legend=summary_legend(d.summary.columns), label=lambda key: metric_name(key).label,
        environment_table=html_table(d.env_rows, "environment"), spec_yaml=yaml.safe_dump(d.spec, sort_keys=False),
        pct=pct, fmt=fmt,
    )


def render_markdown(d: ReportData) -> str:
    md = [f"# {d.spec.get('name', d.out.name)}\n", f"{d.spec.get('description', '')}\n"]
    md.extend(f"> **Warning:** {w}\n" for w in d.warnings)
    headline = d.headline
    if headline:
        md += _markdown_fidelity(d, headline)
    md.append("## Summary per variant and engine\n")
    md.append(markdown_table(d.summary))
    if not d.cluster.empty:
        md.append("## Cluster view: per replica\n")
        md.append(markdown_table(d.cluster))
        md.extend(f"- **{col}**: {meaning}" for col, meaning in CLUSTER_LEGEND)
        md.append("")
    if d.notes:
        md.append("## Notes\n")
        md.extend(f"- {n}" for n in d.notes)
        md.append("")
    md.append("## Environment\n")
    md.append(markdown_table(d.env_rows))
    md.append(f"Figures: see report.html ({len(d.figures)} figures).\n")
    return "\n".join(md)


def _markdown_fidelity(d: ReportData, headline: dict) -> list[str]:
    err, err_classes = d.err, d.err_classes
    md = ["## Predicted vs measured\n"]
    md.append(f"Median |error| across {', '.join(metric_name(m).label for m in headline['metrics'])} over {headline['num_variants']} variant(s): "
              f"**{pct(headline['median_abs_error'])}** (max {pct(headline['max_abs_error'])}); executor run-to-run "
              f"spread (median) {pct(headline['median_run_to_run_spread'])}; cost-model error on the executor's own "
              f"steps (median step MAPE) {pct(headline.get('step_time_mape'))}.\n")
    by_class = headline.get("step_time_mape_by_class") or {}
    if any(v is not None for v in by_class.values()):
        md.append("Step MAPE by plan shape: " + ", ".join(f"{cls} {pct(v)}" for cls, v in by_class.items()
                                                        if v is not None) + ".\n")
    for metric, r in d.comparison["rankings"].items():
        same = "" if r.get("same_order") is None else (" — same order" if r["same_order"] else " — different order")
        md.append(f"- ranking by {metric_name(metric).label}: Kendall tau = {fmt(r.get('tau'))}{same}")
    md.append("")
    if err.empty:
        return md
    marked = err.copy()
    marked["error %"] = [f"{fmt(v)}{' ✗' if 'miss' in c else ''}" for v, c in zip(err["error %"], err_classes["error %"])]
    md.append(markdown_table(marked))
    md.append(f"error % = (predicted − measured) / measured × 100 (negative: the simulator predicts less than "
              "was measured: optimistic for a latency, pessimistic for a throughput); ✗ marks "
              f"|error| above the ±{compare_mod.FIDELITY_BAR:.0%} fidelity bar. spread % = (max − min) / median of "
              "the executor's repeats × 100: an error inside it is measurement noise.\n")
    return md


def summary_legend(columns) -> list[tuple[str, str]]:
    """What each summary column means (shown under the table)."""
    meaning = {
        "rep": "executor repeat of the same variant (0, 1, ...)",
        "TTFT p50 (ms)": "time to first token: first output token − arrival; median over requests",
        "TTFT p90 (ms)": "time to first token, 90th percentile",
        "TPOT p50 (ms)": "time per output token after the first: (finish − first token) / (output tokens − 1)",
        "ITL p50 (ms)": "inter-token latency: every gap between consecutive output tokens",
        "E2EL p50 (ms)": "end-to-end latency: finish − arrival",
        "output throughput (tok/s)": "output tokens / makespan",
        "request throughput (req/s)": "finished requests / makespan",
        "goodput (req/s)": "requests per second meeting the spec's SLOs",
        "prefix hit, tokens (%)": "share of admitted prompt tokens served from the prefix cache",
        "prefix hit, blocks (%)": "share of full prompt KV blocks found in the prefix cache",
        "KV blocks": "size of the paged KV pool",
        "KV usage max (%)": "highest share of KV blocks in use at any step",
        "mean batch (req)": "requests per engine step, mean over steps",
        "makespan (s)": "first arrival to last finish",
    }
    return [(c, meaning[c]) for c in columns if c in meaning]


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _write_text(path: Path, text: str) -> Path:
    from traces.files import atomic_write_text

    atomic_write_text(path, text)
    return path
