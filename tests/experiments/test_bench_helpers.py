"""The pure helpers behind the benchmark scripts' printed figures: config parsing and the step-cost model."""

from __future__ import annotations

import pytest

from experiments.bench.executor import predicted_cpu_ms
from experiments.bench.gptq import parse_config


def test_gptq_bench_configs_parse_into_quantize_settings():
    name, kw = parse_config("g32-asym-act")
    assert name == "g32-asym-act"
    assert kw == dict(bits=4, group_size=32, sym=False, desc_act=True, static_groups=False,
                      checkpoint_format="gptq_v2")
    _, kw = parse_config("g128-sym-act-static")
    assert kw["sym"] and kw["desc_act"] and kw["static_groups"] and kw["checkpoint_format"] == "gptq"


@pytest.mark.parametrize("bad", ["32-asym", "g32", "gx-sym", "g32-sym-fast"])
def test_gptq_bench_rejects_a_malformed_config_naming_it(bad):
    with pytest.raises(SystemExit, match=bad):
        parse_config(bad)


def test_step_cost_model_counts_rows_and_steps():
    # one batch of two: outputs 1 and 3 tokens, prompts 2 and 4 tokens; step = 10 ms + 1 ms per row
    ms = predicted_cpu_ms([2, 4], [1, 3], batch=2, fixed_ms=10.0, row_ms=1.0)
    assert ms["continuous"] == (10 + 2 + 4) + (10 + 1) + (10 + 1)   # prefill step, then one decode row twice
    assert ms["static"] == ms["continuous"]                           # a single batch: nothing to refill
    assert ms["hf-static"] == (10 + 4 * 2) + 2 * (10 + 2)             # padded prompts and finished rows kept


def test_continuous_batching_wins_when_outputs_differ_and_requests_exceed_the_cap():
    outs = [1, 8, 1, 8, 1, 8, 1, 8]
    ms = predicted_cpu_ms([4] * 8, outs, batch=2, fixed_ms=50.0, row_ms=1.0)
    assert ms["continuous"] < ms["static"] < ms["hf-static"]
