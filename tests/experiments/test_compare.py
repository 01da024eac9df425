"""Predicted-vs-measured comparison and Kendall's tau."""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path

import pandas as pd
import pytest

from experiments.analysis.compare import compare, kendall_tau


def brute_tau_b(x, y):
    pairs = list(itertools.combinations(range(len(x)), 2))
    num = sum(((x[i] > x[j]) - (x[i] < x[j])) * ((y[i] > y[j]) - (y[i] < y[j])) for i, j in pairs)
    n0 = len(pairs)
    n1 = sum(1 for i, j in pairs if x[i] == x[j])
    n2 = sum(1 for i, j in pairs if y[i] == y[j])
    return num / math.sqrt((n0 - n1) * (n0 - n2))


def test_kendall_tau_known_values():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    assert kendall_tau([1], [2]) is None
    assert kendall_tau([1, 1, 1], [1, 2, 3]) is None  # one ranking is all ties
    with pytest.raises(ValueError, match="differ in length"):
        kendall_tau([1, 2], [1])


def test_kendall_tau_b_matches_the_definition_with_ties():
    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(2, 9)
        x = [rng.randint(0, 4) for _ in range(n)]
        y = [rng.randint(0, 4) for _ in range(n)]
        if len(set(x)) < 2 or len(set(y)) < 2:
            continue
        assert kendall_tau(x, y) == pytest.approx(brute_tau_b(x, y))


def _fake_run(out: Path, name: str, summary: dict, ttft: list[float]) -> str:
    d = out / "runs" / name
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps(summary))
    (d / "run.json").write_text("{}")
    pd.DataFrame({"request_id": [f"r{i}" for i in range(len(ttft))], "ttft_s": ttft,
                  "e2el_s": [t * 2 for t in ttft]}).to_parquet(d / "requests.parquet")
    pd.DataFrame({"step_id": [0]}).to_parquet(d / "steps.parquet")
    return f"runs/{name}"


def test_compare_errors_spread_and_rankings(tmp_path):
    jobs = []

    def add(engine, variant, repeat, thr, ttft90, ttft):
        summary = {"ttft_p50_s": ttft90 / 2, "ttft_p90_s": ttft90, "tpot_p50_s": 0.05, "e2el_p50_s": 1.0,
                   "output_throughput": thr}
        rel = _fake_run(tmp_path, f"{engine}-{variant}-{repeat}", summary, ttft)
        jobs.append({"engine": engine, "variant": variant, "seed": 0, "repeat": repeat, "rate_scale": 1.0,
                     "dir": rel})

    add("sim", "fast", 0, 110.0, 1.0, [0.5, 1.0])
    add("executor", "fast", 0, 100.0, 1.0, [0.5, 1.0])
    add("executor", "fast", 1, 90.0, 1.0, [0.5, 1.0])
    add("sim", "slow", 0, 40.0, 3.0, [1.0, 2.0])
    add("executor", "slow", 0, 50.0, 2.0, [2.0, 2.0])
    (tmp_path / "index.json").write_text(json.dumps({"jobs": jobs}))

    comp = compare(tmp_path)
    thr = {r["variant"]: r for r in comp["rows"] if r["metric"] == "output_throughput"}
    # measured = median over repeats (95); spread = (100 - 90) / 95
    assert thr["fast"]["measured"] == pytest.approx(95.0)
    assert thr["fast"]["signed_error"] == pytest.approx((110 - 95) / 95)
    assert thr["fast"]["spread"] == pytest.approx(10 / 95)
    assert thr["slow"]["signed_error"] == pytest.approx(-0.2)
    assert thr["slow"]["abs_error"] == pytest.approx(0.2)
    assert comp["rankings"]["output_throughput"]["tau"] == 1.0
    assert comp["rankings"]["output_throughput"]["same_order"] is True
    assert comp["rankings"]["output_throughput"]["sim_order"] == ["fast", "slow"]
    slow = next(v for v in comp["variants"] if v["variant"] == "slow")
    assert slow["request_mape_ttft"] == pytest.approx((0.5 + 0.0) / 2)
    assert comp["headline"]["num_variants"] == 2


def test_compare_without_both_engines_is_empty(tmp_path):
    rel = _fake_run(tmp_path, "a", {"output_throughput": 1.0}, [0.1])
    (tmp_path / "index.json").write_text(json.dumps({"jobs": [{"engine": "sim", "variant": "a", "seed": 0,
                                                                "repeat": 0, "rate_scale": 1.0, "dir": rel}]}))
    comp = compare(tmp_path)
    assert comp["rows"] == [] and comp["headline"] is None


# issue 17: "the simulator and the comparison refuse NaN durations" (pandas means skip NaN silently).
@pytest.mark.parametrize("bad", [float("nan"), 0.0, -1.0, float("inf")])
def test_compare_refuses_non_finite_or_non_positive_step_durations(tmp_path, bad):
    from experiments.analysis.compare import ComparisonError

    jobs = []
    for engine in ("sim", "executor"):
        rel = _fake_run(tmp_path, engine, {"output_throughput": 10.0, "ttft_p50_s": 0.1}, [0.1, 0.2])
        durations = [0.01, bad, 0.02] if engine == "executor" else [0.01, 0.01, 0.01]
        pd.DataFrame({"step_id": [0, 1, 2], "duration_s": durations}).to_parquet(tmp_path / rel / "steps.parquet")
        jobs.append({"engine": engine, "variant": "v", "seed": 0, "repeat": 0, "rate_scale": 1.0, "dir": rel})
    (tmp_path / "index.json").write_text(json.dumps({"jobs": jobs}))
    with pytest.raises(ComparisonError, match=r"runs/executor/steps\.parquet: step 1 \(row 1\) has duration_s="):
        compare(tmp_path)


def test_simulator_refuses_a_nan_step_duration():
    from policy import Request, SchedulerConfig
    from sim import simulate

    class NanCost:
        def step_time(self, plan):
            return float("nan")

        def time_for_shape(self, shape):
            return float("nan")

    reqs = [Request(request_id="r0", prompt_token_ids=[1, 2, 3], max_tokens=2, arrival_time=0.0)]
    cfg = SchedulerConfig(num_blocks=8, block_size=4, max_model_len=32, max_num_seqs=2, max_num_batched_tokens=16)
    with pytest.raises(ValueError, match="priced step .* at nan"):
        simulate(reqs, cfg, NanCost())
