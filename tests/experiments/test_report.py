"""Reports: one self-contained HTML file that a browser renders with its figures, and a
Markdown summary; plus the whole path sim + executor -> comparison -> report (slow)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from experiments.report import write_report
from experiments.runner import run_spec
from experiments.spec import load_spec

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
    from experiments.runner_cli import report

    result = CliRunner().invoke(report, [str(tmp_path)])
    assert result.exit_code != 0 and "not a results folder" in result.output


def _chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, text=True, timeout=90)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium (/usr/bin/chromium, Debian package 'chromium') "
                                             "is not installed; `make install` installs it")
def test_report_renders_in_headless_chromium(sim_results, tmp_path):
    html_path, _ = write_report(sim_results)
    dom = _chromium(["--dump-dom", html_path.resolve().as_uri()], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert len(re.findall(r"<img[^>]+src=\"data:image/png;base64,", dom.stdout)) >= 4
    assert 'id="summary"' in dom.stdout and "<td>prefix-off/rate_scale=2.0</td>" in dom.stdout
    shot = tmp_path / "shot.png"
    res = _chromium([f"--screenshot={shot}", "--window-size=1200,2400", html_path.resolve().as_uri()], tmp_path)
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)
    assert pixels.std() > 0.05  # not a blank page: text, tables and plots


@pytest.mark.slow
def test_sim_and_executor_end_to_end(tmp_path, monkeypatch):
    """Calibrate a tiny random model, replay one trace through both engines, compare, report."""
    monkeypatch.setenv("FOLOVLLM_CACHE", str(tmp_path / "cache"))
    from experiments.runner_cli import calibrate, run

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
