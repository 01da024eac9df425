"""Every shared real trace loads through the auto-detected reader, and its statistics match
the figures published in its SOURCE.md (numbers copied from those files)."""

from __future__ import annotations

import numpy as np
import pytest

import traces
from traces.readers import detect_format
from traces.stats import describe

from tests.traces.helpers import AZURE_CODE, AZURE_CONV, MOONCAKE, VIDUR_CODE, VIDUR_CONV, real_trace

# (file, detected format, SOURCE.md figures)
EXPECTED = {
    AZURE_CODE: ("azure", dict(n=8819, duration=3435.9, rate=2.57, cv=13.2, peak_1s=67, peak_10s=32.7, peak_60s=10.5,
                               prompt=(2047.8, 1469, 5188, 7436, 3, 7437), output=(27.9, 13, 55, 251, 6, 1899))),
    AZURE_CONV: ("azure", dict(n=19366, duration=3501.7, rate=5.53, cv=1.09, peak_1s=16, peak_10s=9.8, peak_60s=8.45,
                               prompt=(1154.7, 1020, 2734, 4142, 2, 14050), output=(211.1, 129, 424, 601, 7, 1000))),
    MOONCAKE: ("mooncake", dict(n=8940, duration=2700.0, rate=3.31, cv=2.99, peak_1s=23, peak_10s=None, peak_60s=4.12,
                                prompt=(12224.3, 7112, 27541, 87237, 891, 124847), output=(347.1, 355, 605, 1183, 1, 2000))),
}
EXPECTED[VIDUR_CODE] = ("vidur", EXPECTED[AZURE_CODE][1])
EXPECTED[VIDUR_CONV] = ("vidur", EXPECTED[AZURE_CONV][1])


@pytest.mark.parametrize("relpath", sorted(EXPECTED))
def test_real_trace_stats_match_source_md(relpath):
    path = real_trace(relpath)
    fmt, want = EXPECTED[relpath]
    assert detect_format(path) == fmt
    table = traces.load(path)
    s = describe(table)
    assert s["num_requests"] == len(table) == want["n"]
    assert s["duration_s"] == pytest.approx(want["duration"], abs=0.05)
    assert s["rate_rps"] == pytest.approx(want["rate"], abs=0.005)
    assert s["interarrival_cv"] == pytest.approx(want["cv"], abs=0.05)
    assert s["peak_1s"] == want["peak_1s"]
    if want["peak_10s"] is not None:
        assert s["peak_10s_rps"] == pytest.approx(want["peak_10s"], abs=0.05)
    assert s["peak_60s_rps"] == pytest.approx(want["peak_60s"], abs=0.05)
    for key, (mean, p50, p90, p99, lo, hi) in (("prompt_len", want["prompt"]), ("output_len", want["output"])):
        got = s[key]
        assert got["mean"] == pytest.approx(mean, abs=0.05)
        assert (got["p50"], got["p90"], got["p99"], got["min"], got["max"]) == pytest.approx((p50, p90, p99, lo, hi), abs=0.5)
    assert s["total_prompt_tokens"] == int(table.df["prompt_len"].sum())


def test_mooncake_prefix_structure_matches_source_md():
    table = traces.load(real_trace(MOONCAKE))
    reuse = describe(table)["prefix_reuse"]
    assert reuse["blocks_referenced"] == 217_677
    assert reuse["distinct_blocks"] == 140_684
    assert reuse["block_hit_share"] == pytest.approx(0.354, abs=0.0005)
    assert (table.df["hash_block_size"] == 512).all()
    assert all(h[0] == 0 for h in table.df["block_hashes"])  # every request starts with the common block 0
    assert any("batch" in n for n in table.notes)


def test_mooncake_spread_replay_is_seeded_ordered_and_inside_the_bucket():
    path = real_trace(MOONCAKE)
    batch = traces.load(path, arrival_mode="batch")
    a = traces.load(path, arrival_mode="spread", seed=7)
    b = traces.load(path, arrival_mode="spread", seed=7)
    c = traces.load(path, arrival_mode="spread", seed=8)
    assert np.array_equal(a.df["arrival_s"], b.df["arrival_s"])
    assert not np.array_equal(a.df["arrival_s"], c.df["arrival_s"])
    spread, recorded = a.df["arrival_s"].to_numpy(), batch.df["arrival_s"].to_numpy()
    assert (np.diff(spread) >= 0).all()
    assert (spread >= recorded).all() and (spread < recorded + 3.0 + 1e-9).all()
    assert describe(a)["interarrival_cv"] < 1.5  # the 3-s quantisation no longer dominates
    assert any("spread" in n and "seed 7" in n for n in a.notes)


@pytest.mark.parametrize("azure, vidur", [(AZURE_CODE, VIDUR_CODE), (AZURE_CONV, VIDUR_CONV)])
def test_azure_and_its_vidur_copy_give_the_same_request_table(azure, vidur):
    a, v = traces.load(real_trace(azure)).df, traces.load(real_trace(vidur)).df
    assert list(a["request_id"]) == list(v["request_id"])
    assert np.array_equal(a["prompt_len"], v["prompt_len"])
    assert np.array_equal(a["output_len"], v["output_len"])
    assert np.abs(a["arrival_s"].to_numpy() - v["arrival_s"].to_numpy()).max() < 1e-6  # Vidur rounds to 1 us


def test_real_trace_requests_stream_in_arrival_order_with_exact_lengths():
    table = traces.load(real_trace(MOONCAKE))
    last = -1.0
    for k, req in enumerate(table.iter_requests(block_size=16, vocab_size=151_936)):
        row = table.df.iloc[k]
        assert req.arrival_time >= last
        last = req.arrival_time
        assert req.request_id == row["request_id"] and req.max_tokens == row["output_len"]
        assert len(req.prompt_token_ids) == row["prompt_len"]
        if k == 20:
            break
