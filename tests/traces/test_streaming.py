"""A streamed run (finished requests and steps written to disk as they end) gives the same
tables and summary as the in-memory recorder, and ITL percentiles bit for bit."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import traces
from policy import SchedulerConfig
from sim import simulate
from sim.cost.roofline import RooflineCostModel
from traces.streaming import FLUSH_ROWS, StreamingRecorder, weighted_percentile
from traces.timeline import TimelineRecorder

COST = RooflineCostModel.from_names("llama-3-8b", "h100-sxm")


@pytest.mark.parametrize("seed", range(5))
def test_weighted_percentile_is_numpys(seed):
    rng = np.random.default_rng(seed)
    values = rng.choice(rng.random(50), size=40) * 10.0 ** rng.integers(-4, 2)
    weights = rng.integers(1, 30, size=40)
    expanded = np.repeat(values, weights)
    ps = (0, 1, 37.5, 50, 90, 99, 99.9, 100)
    assert weighted_percentile(values, weights, ps) == [float(v) for v in np.percentile(expanded, ps)]


@pytest.mark.parametrize("caching,blocks", [(True, 6000), (False, 700)])
def test_streamed_run_matches_the_in_memory_run(tmp_path, monkeypatch, caching, blocks):
    monkeypatch.setattr("traces.streaming.FLUSH_ROWS", 97)  # many row groups
    table = traces.generate("azure-conv-like", seed=5, num_requests=300, rate_scale=6.0)
    config = SchedulerConfig(num_blocks=blocks, block_size=16, max_model_len=8192, max_num_seqs=64,
                             max_num_batched_tokens=512, enable_prefix_caching=caching)

    def requests():
        return table.iter_requests(block_size=16, vocab_size=32000)

    memory = simulate(requests(), config, COST, recorder=TimelineRecorder())
    streamed = simulate(requests(), config, COST, recorder=StreamingRecorder(tmp_path / "run"))
    if not caching:
        assert memory.stats.num_preemptions > 0  # gaps that span several steps are exercised
    assert not streamed.recorder.timelines, "finished requests must leave memory"
    pd.testing.assert_frame_equal(streamed.requests_df, memory.requests_df)
    pd.testing.assert_frame_equal(streamed.steps_df, memory.steps_df)
    a, b = streamed.summary, memory.summary
    assert a.keys() == b.keys()
    for key in a:
        if key == "itl_mean_s":
            assert a[key] == pytest.approx(b[key], rel=1e-12)
        else:
            assert a[key] == b[key], key
    slo = dict(slo_ttft_s=0.05, slo_tpot_s=0.01, slo_e2el_s=2.0)
    a, b = streamed.with_slo(**slo).summary, memory.with_slo(**slo).summary
    assert 0 < a["num_good"] < a["num_finished"]
    assert {k: v for k, v in a.items() if k != "itl_mean_s"} == {k: v for k, v in b.items() if k != "itl_mean_s"}
    out = streamed.write(tmp_path / "written", formats=("parquet", "csv"))
    assert pd.read_parquet(out / "requests.parquet").shape == memory.requests_df.shape
    assert FLUSH_ROWS > 97


def test_cli_stream_writes_the_same_summary(tmp_path):
    import json

    from click.testing import CliRunner

    from experiments.cli import main

    base = ["sim", "--preset", "azure-conv-like", "--param", "num_requests=150", "--quiet", "--format", "parquet"]
    assert CliRunner().invoke(main, [*base, "--out", str(tmp_path / "a")]).exit_code == 0
    res = CliRunner().invoke(main, [*base, "--stream", "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    a = json.loads((tmp_path / "a" / "summary.json").read_text())
    b = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert b.pop("itl_mean_s") == pytest.approx(a.pop("itl_mean_s"), rel=1e-12)
    assert a == b
    # The streamed file is in finish order, with the arrival index to restore the other order.
    streamed = pd.read_parquet(tmp_path / "b" / "requests.parquet").sort_values("_arrival_index")
    memory = pd.read_parquet(tmp_path / "a" / "requests.parquet")
    for col in ("request_id", "ttft_s", "tpot_s", "e2el_s", "output_len", "finish_s"):
        pd.testing.assert_series_equal(streamed[col].reset_index(drop=True), memory[col].reset_index(drop=True),
                                       check_names=False, check_exact=True, obj=col)  # NaN (rejected) == NaN
    res = CliRunner().invoke(main, ["sim", "--preset", "azure-conv-like", "--param", "num_requests=5", "--stream"])
    assert res.exit_code != 0 and "--out" in res.output
