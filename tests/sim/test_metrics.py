"""traces.metrics implements DESIGN.md's definitions exactly (on hand-made timelines)."""

from __future__ import annotations

import numpy as np
import pytest

from traces import metrics
from traces.timeline import RequestTimeline, StepRecord


def _tl(rid, arrival, tokens, *, status="finished", sched=None, prompt=10, cached=0, preempt=0):
    t = RequestTimeline(rid, arrival, prompt, max(len(tokens), 1))
    t.token_times = list(tokens)
    t.status = status
    t.first_scheduled_s = sched if sched is not None else (arrival if tokens else None)
    t.finish_s = tokens[-1] if tokens and status == "finished" else (arrival if status == "rejected" else None)
    t.num_cached_tokens = cached
    t.num_preemptions = preempt
    return t


@pytest.fixture
def timelines():
    return [
        _tl("a", 0.0, [1.0, 1.5, 3.0], sched=0.5, prompt=100, cached=32),  # ttft 1, tpot 1, e2el 3
        _tl("b", 1.0, [2.0], prompt=50),  # one token: no TPOT, no ITL
        _tl("c", 2.0, [2.5, 2.75, 3.0, 4.0, 6.0], sched=2.25, prompt=20, preempt=2),  # ttft .5, tpot .875
        _tl("d", 3.0, [], status="rejected", prompt=9000),
    ]


def test_request_table_definitions(timelines):
    df = metrics.requests_table(timelines).set_index("request_id")
    assert list(df.index) == ["a", "b", "c", "d"]
    assert df.loc["a", "ttft_s"] == 1.0 and df.loc["a", "tpot_s"] == pytest.approx(1.0)
    assert df.loc["a", "e2el_s"] == 3.0 and df.loc["a", "queue_s"] == 0.5
    assert np.isnan(df.loc["b", "tpot_s"]) and df.loc["b", "ttft_s"] == 1.0
    assert df.loc["c", "tpot_s"] == pytest.approx((6.0 - 2.5) / 4)
    assert df.loc["d", "status"] == "rejected" and np.isnan(df.loc["d", "ttft_s"])


def test_itl_pools_every_gap_within_requests_only(timelines):
    gaps = metrics.itl_gaps(timelines)
    assert sorted(gaps.tolist()) == pytest.approx(sorted([0.5, 1.5, 0.25, 0.25, 1.0, 2.0]))


def test_itl_gaps_are_np_diff_within_each_request_bit_for_bit():
    rng = np.random.default_rng(0)
    timelines = {}
    for i in range(50):
        n = int(rng.integers(0, 40))
        t = RequestTimeline(f"r{i}", 0.0, 8, 40, token_times=np.cumsum(rng.random(n) * 0.1).tolist())
        t.status = "finished" if i % 7 else "aborted"
        timelines[t.request_id] = t
    expected = [np.diff(np.array(t.token_times)) for t in timelines.values()
                if len(t.token_times) > 1 and t.status == "finished"]
    assert np.array_equal(metrics.itl_gaps(timelines), np.concatenate(expected))
    everyone = [np.diff(np.array(t.token_times)) for t in timelines.values() if len(t.token_times) > 1]
    assert np.array_equal(metrics.itl_gaps(timelines, finished_only=False), np.concatenate(everyone))
    assert metrics.itl_gaps({}).shape == (0,)


def test_summary_definitions(timelines):
    req = metrics.requests_table(timelines)
    steps = metrics.steps_table([
        StepRecord(1, 0.0, 1.0, 1, 1, 0, 100, 0, 100, 100, 0, 0, 5, 10),
        StepRecord(2, 1.0, 3.0, 2, 0, 2, 0, 2, 200, 0, 0, 0, 8, 10),
    ])
    s = metrics.summarize(req, steps, metrics.itl_gaps(timelines), slo_ttft_s=0.9, slo_tpot_s=1.0)
    assert (s["num_requests"], s["num_finished"], s["num_rejected"], s["num_aborted"]) == (4, 3, 1, 0)
    assert s["makespan_s"] == 6.0  # last finish (c at 6.0) - first arrival (a at 0.0)
    assert s["total_output_tokens"] == 9 and s["output_throughput"] == pytest.approx(9 / 6)
    assert s["request_throughput"] == pytest.approx(3 / 6)
    assert s["total_token_throughput"] == pytest.approx((170 + 9) / 6)
    assert s["ttft_mean_s"] == pytest.approx((1.0 + 1.0 + 0.5) / 3)
    assert s["ttft_p50_s"] == pytest.approx(1.0)
    assert s["tpot_count"] == 2 and s["tpot_mean_s"] == pytest.approx((1.0 + 0.875) / 2)
    assert s["e2el_p99_s"] == pytest.approx(np.percentile([3.0, 1.0, 4.0], 99))
    assert s["itl_count"] == 6 and s["itl_mean_s"] == pytest.approx(5.5 / 6)
    assert s["queue_mean_s"] == pytest.approx((0.5 + 0.0 + 0.25) / 3)
    # goodput: only c meets TTFT <= 0.9 and TPOT <= 1.0 (b fails TTFT; a fails TTFT)
    assert s["num_good"] == 1 and s["goodput"] == pytest.approx(1 / 6)
    # prefix hit rate over admitted requests' prompt tokens (d never admitted)
    assert s["prefix_hit_rate"] == pytest.approx(32 / 170)
    assert s["num_preemptions"] == 2 and s["num_preempted_requests"] == 1
    # time-weighted KV usage: (0.5 * 1 + 0.8 * 3) / 4
    assert s["kv_usage_mean"] == pytest.approx(0.725) and s["kv_usage_max"] == pytest.approx(0.8)


def test_one_token_requests_meet_any_tpot_slo():
    tls = [_tl("x", 0.0, [0.1])]
    s = metrics.summarize(metrics.requests_table(tls), metrics.steps_table([]), slo_tpot_s=1e-9)
    assert s["num_good"] == 1 and s["tpot_mean_s"] is None


def test_write_atomically_and_reject_unknown_formats(tmp_path, timelines):
    df = metrics.requests_table(timelines)
    metrics.write_table(df, tmp_path / "r.csv")
    metrics.write_table(df, tmp_path / "r.parquet")
    import pandas as pd

    back = pd.read_parquet(tmp_path / "r.parquet")
    assert back.request_id.tolist() == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="parquet or .csv"):
        metrics.write_table(df, tmp_path / "r.xlsx")
    with pytest.raises(ValueError):
        metrics.write_json({"x": float("nan")}, tmp_path / "s.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "r.parquet"]


def test_token_times_table(timelines):
    df = metrics.token_times_table(timelines)
    assert len(df) == 9 and df[df.request_id == "c"].token_index.tolist() == [0, 1, 2, 3, 4]


def test_block_hit_rate_beside_the_token_hit_rate(timelines):
    # admitted: a (100 tokens, 32 cached), b (50, 0), c (20, 0); rejected d does not count.
    # Full 16-token blocks: 6 + 3 + 1 = 10; cached blocks: 2. A fully cached 32-token prompt
    # recomputes its last token (31 cached) and still hits both of its blocks.
    summary = metrics.summarize(metrics.requests_table(timelines), metrics.steps_table([]), block_size=16)
    assert summary["prefix_hit_rate"] == pytest.approx(32 / 170)
    assert (summary["prefix_hit_blocks"], summary["prefix_query_blocks"]) == (2, 10)
    assert summary["prefix_block_hit_rate"] == pytest.approx(0.2)
    full = metrics.requests_table([_tl("e", 0.0, [1.0], prompt=32, cached=31)])
    assert metrics.block_hit_rate(full, 16)["prefix_block_hit_rate"] == 1.0
    assert "prefix_block_hit_rate" not in metrics.summarize(metrics.requests_table(timelines), metrics.steps_table([]))
