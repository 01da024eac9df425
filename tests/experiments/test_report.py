"""Reports: one self-contained HTML file that a browser renders with its figures, and a
Markdown summary; plus the whole path sim + executor -> comparison -> report (slow)."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from experiments.analysis.report import write_report
from experiments.run.runner import run_spec
from experiments.run.spec import load_spec

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def sim_results(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("sim_report")
    spec = {
        "name": "report-test", "description": "two variants swept over the request rate",
        "trace": {"preset": "shared-prefix", "params": {"num_groups": 3, "prompts_per_group": 8, "system_prompt_len": 256,
                                                    "question_len": 64, "output_len": 16, "rate": 4.0}},
        "model": "qwen3-0.6b", "hardware": "h100-sxm", "engines": ["sim"],
        "base": {"max_model_len": 1024},
        "variants": [{"name": "prefix-on"}, {"name": "prefix-off", "enable_prefix_caching": False}],
        "grid": {"rate_scale": [0.5, 2.0]},
    }
    (tmp / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = tmp / "out"
    run_spec(load_spec(tmp / "spec.yaml"), out, workers=1, progress=False)
    return out


def test_report_html_and_markdown(sim_results):
    html_path, md_path = write_report(sim_results)
    page = html_path.read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) >= 4  # CDFs, throughput vs rate, KV/batch over time, prefix/preemptions
    for data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Throughput vs request rate" in page and "TTFT CDF" in page
    assert '<table' in page and "prefix-on/rate_scale=0.5" in page
    assert "src=\"http" not in page and "href=\"http" not in page  # self-contained
    md = md_path.read_text()
    assert md.startswith("# report-test") and "| variant | engine |" in md


def test_report_cli_on_a_folder_that_is_not_results(tmp_path):
    from experiments.run.commands import report

    result = CliRunner().invoke(report, [str(tmp_path)])
    assert result.exit_code != 0 and "not a results folder" in result.output


def _chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, text=True, timeout=90)


def _demo_like(sim_results: Path, tmp_path: Path) -> Path:
    """The sim-only results plus, per variant, an "executor" run (a copy of the sim run with its
    throughput moved by +30 % for one variant) recorded on a busy machine: the shape of a demo
    report (comparison table, a miss against the fidelity bar, the machine-load warning) without
    running the executor."""
    out = tmp_path / "demo-like"
    shutil.copytree(sim_results, out)
    index = json.loads((out / "index.json").read_text())
    extra = []
    for k, job in enumerate(j for j in index["jobs"] if j["engine"] == "sim"):
        src, dst = out / job["dir"], out / (job["dir"] + "-exec")
        shutil.copytree(src, dst)
        run = json.loads((dst / "run.json").read_text())
        (dst / "run.json").write_text(json.dumps({**run, "engine": "executor", "load_before": [5.0, 4.0, 3.0]}))
        summary = json.loads((dst / "summary.json").read_text())
        if k == 0:
            summary["output_throughput"] *= 1.3
        (dst / "summary.json").write_text(json.dumps(summary))
        extra.append({**job, "engine": "executor", "dir": job["dir"] + "-exec"})
    index["jobs"] += extra
    (out / "index.json").write_text(json.dumps(index))
    return out


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium (/usr/bin/chromium, Debian package 'chromium') "
                                             "is not installed; `make install` installs it")
def test_report_renders_in_headless_chromium(sim_results, tmp_path):
    """At 1400 px (issue 17's screenshot width): every summary column is on the page without
    scrolling, the legend explains error and spread, the load warning sits at the top beside the
    headline, and a cell outside the fidelity bar is marked."""
    from experiments.analysis.report import SUMMARY_COLUMNS, summary_frame
    from experiments.analysis.compare import load_runs

    out = _demo_like(sim_results, tmp_path)
    html_path, md_path = write_report(out)
    dom = _chromium(["--window-size=1400,3000", "--dump-dom", html_path.resolve().as_uri()], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = dom.stdout
    assert len(re.findall(r"<img[^>]+src=\"data:image/png;base64,", page)) >= 4
    assert 'id="summary"' in page and re.search(r'<td class="pin pin1[^"]*">prefix-off/rate_scale=2\.0</td>', page)

    # every summary column, with its human header, and the table fits: no scroll hint at 1400 px
    table = re.search(r'<div class="scroll( overflows)?"><table id="summary-table".*?</table>', page, re.S)
    assert table and table.group(1) is None, "summary table overflows the page at 1400 px"
    headers = [html.unescape(h) for h in re.findall(r"<th(?:\s[^>]*)?>(.*?)</th>", table.group(0))]
    expected = list(summary_frame(load_runs(out)).columns)
    assert headers == expected
    for key in ("ttft_p50_s", "output_throughput", "prefix_block_hit_rate", "kv_usage_max", "mean_batch_requests",
                "makespan_s"):
        assert dict(SUMMARY_COLUMNS)[key] in headers
    assert "TTFT p50 (ms)" in headers and "ttft_p50_s" not in page.split('id="spec"')[0]

    # the legend explains error % and spread %
    legend = re.search(r'<dl class="legend" id="legend">(.*?)</dl>', page, re.S)
    assert legend and "error %" in legend.group(1) and "spread %" in legend.group(1)
    assert "(predicted − measured) / measured" in legend.group(1)

    # warnings at the top, beside the headline, before any table
    top = page.index('<div class="top">')
    assert top < page.index('id="warnings"') < page.index('id="headline"') < page.index('id="fidelity"')
    assert "The machine was busy during executor runs" in page[page.index('id="warnings"'):page.index('id="headline"')]
    assert page.index('id="warnings"') < page.index('id="summary"')

    # the +30 % throughput cell misses the ±10 % bar and is marked
    errors = re.search(r'<table id="errors".*?</table>', page, re.S).group(0)
    assert len(re.findall(r'<td class="miss"', errors)) == 1
    assert "1 cell(s) outside it" in page
    assert "| output throughput (tok/s) |" in md_path.read_text() or "output throughput (tok/s)" in md_path.read_text()

    shot = tmp_path / "shot.png"
    res = _chromium([f"--screenshot={shot}", "--window-size=1400,2400", html_path.resolve().as_uri()], tmp_path)
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)
    assert pixels.std() > 0.05  # not a blank page: text, tables and plots


def test_no_empty_preemption_chart_and_readable_log_ticks(sim_results):
    """No run preempted: no preemptions chart (issue 17 saw an empty one). The CDF axes get
    several labelled ticks even when the data spans less than a decade."""
    from experiments.analysis.compare import load_runs
    from experiments.analysis.report import _colors, _plt, fig_prefix_preemptions, log_axis_ticks

    runs = load_runs(sim_results)
    assert int(runs["num_preemptions"].sum()) == 0
    titles = [f["title"] for f in fig_prefix_preemptions(runs, _colors(list(runs["variant"].unique())))]
    assert titles == ["Prefix hit rate"]
    plt = _plt()
    fig, ax = plt.subplots()
    ax.set_xscale("log")
    ax.set_xlim(1.6, 7.5)
    log_axis_ticks(ax, 1.6, 7.5)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text() and 1.6 <= t.get_position()[0] <= 7.5]
    plt.close(fig)
    assert len(labels) >= 3, labels


@pytest.mark.slow
def test_sim_and_executor_end_to_end(tmp_path, monkeypatch):
    """Calibrate a tiny random model, replay one trace through both engines, compare, report."""
    monkeypatch.setenv("FOLOVLLM_CACHE", str(tmp_path / "cache"))
    from experiments.run.commands import calibrate, run

    profile = tmp_path / "profile.json"
    res = CliRunner().invoke(calibrate, ["--model", "random:tiny-qwen2", "--out", str(profile), "--quick",
                                         "--repeats", "2"])
    assert res.exit_code == 0, res.output
    assert "held-out" in res.output and profile.is_file()
    spec = {
        "name": "e2e", "trace": {"preset": "poisson", "params": {"num_requests": 12, "rate": 20.0},
                                 "max_prompt_len": 64, "max_output_len": 8},
        "model": "random:tiny-qwen2", "cost_model": str(profile), "engines": ["sim", "executor"],
        "repeats": 2, "kv_cache_mib": 4, "base": {"max_model_len": 256, "max_num_batched_tokens": 128},
        "variants": [{"name": "cont", "max_num_seqs": 8}, {"name": "static", "batching": "static", "max_num_seqs": 8}],
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    res = CliRunner().invoke(run, [str(tmp_path / "spec.yaml"), "--out", str(out), "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "sim vs executor: median |error|" in res.output
    comparison = json.loads((out / "comparison.json").read_text())
    assert {r["metric"] for r in comparison["rows"]} >= {"ttft_p50_s", "tpot_p50_s", "output_throughput"}
    assert comparison["headline"]["num_variants"] == 2
    assert all(r["repeats"] == 2 for r in comparison["rows"])
    # The executor replayed the same request list: same ids, prompt and output lengths.
    index = json.loads((out / "index.json").read_text())["jobs"]
    import pandas as pd

    tables = [pd.read_parquet(out / j["dir"] / "requests.parquet").set_index("request_id") for j in index
              if j["variant"] == "cont"]
    for t in tables[1:]:
        assert (t[["prompt_len", "output_len"]] == tables[0][["prompt_len", "output_len"]]).all().all()
    page = (out / "report.html").read_text()
    assert "Predicted vs measured" in page and "Kendall tau" in page


def test_report_shows_the_cluster_view_of_multi_replica_runs(tmp_path):
    spec = {
        "name": "routers-test", "description": "three routers over three replicas",
        "trace": {"preset": "shared-prefix", "params": {"num_groups": 4, "prompts_per_group": 10, "system_prompt_len": 256,
                                                    "question_len": 32, "output_len": 16, "rate": 40.0}},
        "model": "qwen3-0.6b", "hardware": "h100-sxm", "engines": ["sim"],
        "base": {"max_model_len": 1024, "replicas": 3},
        "grid": {"router": ["round-robin", "least-tokens", "prefix-aware"]},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    run_spec(load_spec(tmp_path / "spec.yaml"), out, workers=1, progress=False)
    html_path, md_path = write_report(out)
    md = md_path.read_text()
    assert "## Cluster view: per replica" in md
    section = md.split("## Cluster view: per replica", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| router=")]
    assert len(rows) == 3 * (3 + 1)  # three replicas and the cluster row, per router
    header = section.splitlines()[2]
    for col in ("replica", "requests", "load share %", "TTFT p50 ms", "TTFT p90 ms", "prefix hit rate %"):
        assert col in header
    round_robin = [r for r in rows if r.startswith("| router=round-robin ")]
    assert [r.split(" | ")[4] for r in round_robin] == ["0", "1", "2", "cluster"]
    assert [r.split(" | ")[5] for r in round_robin] == ["14", "13", "13", "40"]
    page = html_path.read_text()
    assert 'id="cluster-table"' in page and "Cluster view: per replica" in page


def test_single_replica_reports_have_no_cluster_view(sim_results):
    _, md_path = write_report(sim_results)
    assert "Cluster view" not in md_path.read_text()
