"""Capacity search: SLO and grid parsing, the bisection's answer checked by replaying at the
found rate (meets) and 1.1x it (fails), early stopping only on certain failure, the CLI."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import traces
from experiments.run.capacity import (Job, SLOParseError, SLOTerm, parse_grid, parse_slo, probe, run_jobs, search,
                                  _Watch)
from experiments.cli import main
from policy import SchedulerConfig
from sim.cost.roofline import RooflineCostModel

COST = RooflineCostModel.from_names("llama-3-8b", "h100-sxm")
TABLE = traces.generate("azure-conv-like", seed=2, num_requests=250)
CONFIG = SchedulerConfig(num_blocks=4000, block_size=16, max_model_len=8192, max_num_seqs=16,
                         max_num_batched_tokens=512, enable_prefix_caching=False)
SLO = "ttft_p90=400ms,tpot_p90=25ms"


def test_parse_slo():
    assert parse_slo("ttft_p90=2s, tpot_p90=100ms") == [SLOTerm("ttft", "p90", 2.0), SLOTerm("tpot", "p90", 0.1)]
    assert parse_slo("e2el_mean=1500ms")[0].limit_s == pytest.approx(1.5)


@pytest.mark.parametrize("bad,needle", [
    ("ttft_p90=2", "METRIC_STAT=VALUE UNIT"), ("ttft=2s", "METRIC_STAT"), ("latency_p90=2s", "unknown metric"),
    ("ttft_p95=2s", "unknown statistic"), ("ttft_p90=0s", "positive"), ("", "empty"), ("ttft_p90=2h", "UNIT"),
])
def test_unparsable_slo_is_a_clear_error(bad, needle):
    with pytest.raises(SLOParseError, match=needle):
        parse_slo(bad)


def test_parse_grid():
    assert parse_grid(["max_num_seqs=8,16", "chunk=512"]) == [
        {"max_num_seqs": 8, "max_num_batched_tokens": 512}, {"max_num_seqs": 16, "max_num_batched_tokens": 512}]
    assert parse_grid(["seqs=8;chunk=256,512"]) == [
        {"max_num_seqs": 8, "max_num_batched_tokens": 256}, {"max_num_seqs": 8, "max_num_batched_tokens": 512}]
    assert parse_grid([]) == [{}]
    with pytest.raises(ValueError, match="KEY=V1"):
        parse_grid(["max_num_seqs"])


def test_found_rate_meets_the_slo_and_1_1x_does_not():
    terms = parse_slo(SLO)
    result = search(TABLE, CONFIG, COST, terms, vocab_size=32000, tolerance=0.02)
    assert result.max_scale > 0
    at = probe(TABLE, CONFIG, COST, terms, result.max_scale, 32000)
    above = probe(TABLE, CONFIG, COST, terms, result.max_scale * 1.1, 32000)
    assert at.meets and at.complete
    assert not above.meets, above
    assert at.rate == pytest.approx(result.max_rate)


def test_early_stop_only_when_the_percentile_is_certain_to_fail():
    # p90 of 10 values: index floor(9 * 0.9) = 8, so it fails once 10 - 8 = 2 values exceed.
    watch = _Watch([SLOTerm("ttft", "p90", 1.0)], 10)
    assert watch.thresholds == [2]
    terms = parse_slo(SLO)
    stopped = probe(TABLE, CONFIG, COST, terms, 20.0, 32000)
    assert not stopped.meets and not stopped.complete
    full = probe(TABLE, CONFIG, COST, [SLOTerm("ttft", "mean", 0.4), SLOTerm("tpot", "mean", 0.025)], 20.0, 32000)
    assert full.complete and not full.meets  # mean terms never stop early; the full run agrees


def test_local_processes_and_cli(tmp_path):
    path = tmp_path / "t.parquet"
    traces.write(TABLE, path)
    res = CliRunner().invoke(main, ["capacity", "--trace", str(path), "--slo", SLO, "--grid", "max_num_seqs=4,16",
                                    "--num-blocks", "4000", "--max-num-batched-tokens", "512", "--no-prefix-caching",
                                    "--jobs", "2", "--out", str(tmp_path / "cap"), "--quiet"])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "cap" / "capacity.json").read_text())
    rates = [r["max_rate"] for r in data["ranking"]]
    assert rates == sorted(rates, reverse=True) and rates[0] > 0
    assert data["ranking"][0]["knobs"] == {"max_num_seqs": 16}
    assert (tmp_path / "cap" / "goodput_vs_rate.png").stat().st_size > 0


@pytest.mark.parametrize("args,needle", [
    (["--slo", "ttft_p90=fast"], "--slo"),
    (["--slo", SLO, "--grid", "bogus_knob=1"], "unknown knob"),
])
def test_cli_bad_input(tmp_path, args, needle):
    res = CliRunner().invoke(main, ["capacity", "--preset", "azure-conv-like", "--param", "num_requests=20", *args])
    assert res.exit_code != 0 and needle in res.output


def test_ray_cluster():
    ray = pytest.importorskip("ray", reason="Ray is not installed (optional); `folovllm capacity --ray` needs it")
    job = Job("ray", {}, None, {"preset": "azure-conv-like", "seed": 2, "num_requests": 120}, None,
              dict(num_blocks=4000, block_size=16, max_model_len=8192, max_num_seqs=16, max_num_batched_tokens=512,
                   enable_prefix_caching=False), "llama-3-8b", "h100-sxm", "bf16", "roofline", SLO, 0.05)
    ray.init(num_cpus=2, ignore_reinit_error=True, log_to_driver=False)
    try:
        local, remote = run_jobs([job])[0], run_jobs([job], use_ray=True)[0]
    finally:
        ray.shutdown()
    assert remote.max_rate == local.max_rate > 0
