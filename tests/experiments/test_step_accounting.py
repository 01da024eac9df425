"""Step-level accounting: pricing an executor run's own steps, per plan-shape class."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from experiments.analysis.compare import compare
from experiments.analysis.step_accounting import SHAPE_CLASSES, account, account_runs, price_steps, shape_class
from sim.cost.base import ConstantCostModel
from traces.metrics import steps_table
from traces.timeline import StepRecord


def _step(i, *, n_pre=0, pre_tok=0, n_dec=0, pre_ctx=0, dec_ctx=0, duration=0.1) -> StepRecord:
    pairs = pre_tok * (pre_ctx - pre_tok) + pre_tok * (pre_tok + 1) // 2
    return StepRecord(i, 0.1 * i, duration, n_pre + n_dec, n_pre, n_dec, pre_tok, n_dec, pre_ctx + dec_ctx, pre_ctx,
                      0, 0, 1, 10, pairs, n_pre + n_dec)


def _table() -> pd.DataFrame:
    # model: 10 ms per step + 1 ms per token; each step measured against a known price
    steps = [
        _step(0, n_pre=1, pre_tok=40, pre_ctx=40, duration=0.050),               # prefill-only, exact
        _step(1, n_dec=10, dec_ctx=500, duration=0.040),                         # decode-only, priced 0.020: 50 %
        _step(2, n_pre=1, pre_tok=10, pre_ctx=10, n_dec=10, dec_ctx=500, duration=0.030),  # mixed, exact
        _step(3, n_pre=1, pre_tok=30, pre_ctx=530, duration=0.032),               # after a hit, priced 0.040: 25 %
        _step(4, n_pre=1, pre_tok=10, pre_ctx=300, n_dec=4, dec_ctx=90, duration=0.024),  # after a hit: 0.024 exact
        _step(5, duration=0.005),                                                 # no work: not priced
    ]
    return steps_table(steps)


MODEL = ConstantCostModel(0.010, per_token_s=0.001)


def test_shape_classes_are_exclusive_and_follow_the_plan():
    assert shape_class((1, 40, 0, 40, 0, 820, 1)) == "prefill-only"
    assert shape_class((0, 0, 3, 0, 300, 0, 3)) == "decode-only"
    assert shape_class((1, 16, 3, 16, 300, 136, 4)) == "mixed"
    assert shape_class((1, 16, 0, 400, 0, 6000, 1)) == "after-prefix-hit"
    assert shape_class((1, 16, 3, 400, 300, 6000, 4)) == "after-prefix-hit"


def test_account_prices_each_step_and_reports_mape_per_class():
    acc = account(_table(), MODEL)
    by = acc["by_class"]
    assert list(by) == list(SHAPE_CLASSES)
    assert by["prefill-only"]["steps"] == 1 and by["prefill-only"]["mape"] == pytest.approx(0.0)
    assert by["decode-only"]["mape"] == pytest.approx(0.5)
    assert by["mixed"]["mape"] == pytest.approx(0.0)
    assert by["after-prefix-hit"]["steps"] == 2
    assert by["after-prefix-hit"]["mape"] == pytest.approx((0.25 + 0.0) / 2)
    assert acc["overall"]["steps"] == 5
    assert acc["overall"]["mape"] == pytest.approx((0.5 + 0.25) / 5)
    assert acc["overall"]["busy_ratio"] == pytest.approx((0.05 + 0.02 + 0.03 + 0.04 + 0.024) / 0.176)


def test_bad_steps_tables_are_named(tmp_path):
    table = _table()
    with pytest.raises(ValueError, match=r"run7/steps.parquet: column\(s\) \['prefill_attn_pairs'\] missing"):
        price_steps(table.drop(columns=["prefill_attn_pairs"]), MODEL, source="run7/steps.parquet")
    table.loc[2, "duration_s"] = 0.0
    with pytest.raises(ValueError, match="row 2: field 'duration_s' must be a positive number"):
        price_steps(table, MODEL)
    path = tmp_path / "steps.parquet"
    _table().to_parquet(path)
    assert account_runs([path, path], MODEL)["overall"]["steps"] == 10


def test_compare_reports_step_mape_per_class(tmp_path):
    profile = tmp_path / "p.json"
    from sim.cost.profiled import LINEAR, ProfiledCostModel

    ProfiledCostModel({"const": 0.010, "prefill_tokens": 0.001, "decode_requests": 0.001}, form=LINEAR).save(profile)
    jobs = []
    for engine in ("sim", "executor"):
        d = tmp_path / "runs" / engine
        d.mkdir(parents=True)
        info = {"cost_model": {"kind": "profiled", "path": str(profile)}} if engine == "sim" else {}
        (d / "run.json").write_text(json.dumps(info))
        (d / "summary.json").write_text(json.dumps({"ttft_p50_s": 1.0, "throughput_tok_s": 5.0}))
        pd.DataFrame({"request_id": ["r0"], "ttft_s": [1.0], "e2el_s": [2.0]}).to_parquet(d / "requests.parquet")
        _table().to_parquet(d / "steps.parquet")
        jobs.append({"engine": engine, "variant": "v", "seed": 0, "repeat": 0, "dir": f"runs/{engine}"})
    (tmp_path / "index.json").write_text(json.dumps({"jobs": jobs}))
    comp = compare(tmp_path)
    variant = comp["variants"][0]
    assert variant["step_mape_decode-only"] == pytest.approx(0.5)
    assert variant["steps_after-prefix-hit"] == 2
    assert comp["headline"]["step_time_mape_by_class"]["after-prefix-hit"] == pytest.approx(0.125)
