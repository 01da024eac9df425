"""Generators are seeded, produce sorted arrivals, and their sample statistics follow their
parameters; the Azure-like presets follow the real traces' length percentiles."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.hypothesis_budget import examples

import traces
from traces.generators import LengthDist
from traces.stats import describe, prefix_reuse

from tests.traces.helpers import AZURE_CODE, AZURE_CONV, real_trace


@settings(max_examples=examples(20), deadline=None)
@given(preset=st.sampled_from(["poisson", "gamma", "constant", "azure-conv-like", "azure-code-like"]),
       seed=st.integers(0, 2**31), n=st.integers(1, 300))
def test_generated_arrivals_are_sorted_start_at_zero_and_are_seeded(preset, seed, n):
    a = traces.generate(preset, seed=seed, num_requests=n)
    t = a.df["arrival_s"].to_numpy()
    assert len(a) == n and t[0] == 0.0 and (np.diff(t) >= 0).all()
    assert a.df.equals(traces.generate(preset, seed=seed, num_requests=n).df)


@pytest.mark.parametrize("rate, cv", [(4.0, 1.0), (10.0, 3.0), (2.0, 0.5)])
def test_gamma_arrivals_follow_rate_and_cv(rate, cv):
    s = describe(traces.generate("gamma", seed=1, num_requests=40_000, rate=rate, cv=cv))
    assert s["rate_rps"] == pytest.approx(rate, rel=0.05)
    assert s["interarrival_cv"] == pytest.approx(cv, rel=0.08)


def test_constant_and_poisson_presets():
    const = traces.generate("constant", num_requests=101, rate=5.0)
    assert np.allclose(np.diff(const.df["arrival_s"]), 0.2)
    s = describe(traces.generate("poisson", seed=3, num_requests=20_000, rate=7.0))
    assert s["rate_rps"] == pytest.approx(7.0, rel=0.05) and s["interarrival_cv"] == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("spec, mean, median", [
    ("fixed:77", 77, 77), ("uniform:100:1024", 562, 562), ("lognormal:500:0.5", 500 * np.exp(0.125), 500)])
def test_length_distributions_follow_their_parameters(spec, mean, median):
    x = LengthDist.parse(spec).sample(50_000, np.random.default_rng(0))
    assert x.mean() == pytest.approx(mean, rel=0.03) and np.median(x) == pytest.approx(median, rel=0.03)
    if spec.startswith("uniform"):
        assert x.min() >= 100 and x.max() <= 1024


def test_bad_length_spec_and_unknown_preset_or_parameter_are_errors():
    with pytest.raises(ValueError, match="expected fixed:N"):
        LengthDist.parse("zipf:3")
    with pytest.raises(ValueError, match="unknown workload preset 'nope'"):
        traces.generate("nope")
    with pytest.raises(ValueError, match="unknown parameter"):
        traces.generate("poisson", num_requets=5)


def test_nano_vllm_preset():
    t = traces.generate("nano-vllm")
    assert len(t) == 256 and (t.df["arrival_s"] == 0).all()
    for col in ("prompt_len", "output_len"):
        assert t.df[col].between(100, 1024).all()


def test_shared_prefix_groups_share_exactly_their_system_prompt():
    t = traces.generate("shared-prefix", num_groups=4, prompts_per_group=10, system_prompt_len=256, question_len=40)
    assert len(t) == 40 and (t.df["prompt_len"] == 296).all()
    reuse = prefix_reuse(t)
    # every prompt after its group's first reuses the 16 system-prompt blocks
    assert reuse["token_hit_share"] == pytest.approx((40 - 4) * 256 / (40 * 296))


def test_multi_turn_sessions_grow_their_history_and_reuse_it():
    t = traces.generate("multi-turn", num_sessions=3, turns=4, first_prompt_len=100, user_turn_len=20, output_len=30)
    for _, s in t.df.groupby("session_id"):
        s = s.sort_values("turn")
        assert list(s["prompt_len"]) == [100, 150, 200, 250]
        assert (np.diff(s["arrival_s"]) > 0).all()
        hashes = list(s["block_hashes"])
        for prev, cur in zip(hashes, hashes[1:]):
            keep = s["prompt_len"].iloc[0] // 16 if False else len(prev) - 1  # whole blocks of the previous prompt
            assert list(cur[:keep]) == list(prev[:keep])
    assert prefix_reuse(t)["token_hit_share"] > 0.3


def test_few_shot_preset_reuses_long_prefixes():
    t = traces.generate("few-shot", num_requests=50, num_prefixes=2, prefix_len=512, question_len=32)
    assert len(t) == 50 and prefix_reuse(t)["token_hit_share"] > 0.8


def test_replay_preset_keeps_the_arrival_shape_at_a_new_rate():
    src = traces.generate("gamma", seed=2, num_requests=2000, rate=3.0, cv=4.0)
    r = traces.generate("replay", trace=src, rate=30.0)
    s, s_src = describe(r), describe(src)
    assert s["rate_rps"] == pytest.approx(30.0, rel=1e-6)
    assert s["interarrival_cv"] == pytest.approx(s_src["interarrival_cv"], rel=1e-6)
    assert list(r.df["prompt_len"]) == list(src.df["prompt_len"])


@pytest.mark.parametrize("preset, relpath", [("azure-conv-like", AZURE_CONV), ("azure-code-like", AZURE_CODE)])
def test_azure_like_presets_follow_the_real_trace(preset, relpath):
    real = describe(traces.load(real_trace(relpath)))
    fake = describe(traces.generate(preset, seed=0, num_requests=20_000))
    # the realised rate of n gamma gaps has a relative spread of cv / sqrt(n): 1% (conv), 9% (code)
    assert fake["rate_rps"] == pytest.approx(real["rate_rps"], rel=max(0.05, 3 * real["interarrival_cv"] / 20_000**0.5))
    for key in ("prompt_len", "output_len"):
        for q in ("p50", "p90", "p99"):
            assert fake[key][q] == pytest.approx(real[key][q], rel=0.1), (key, q)
    fast = describe(traces.generate(preset, seed=0, num_requests=20_000, rate_scale=4.0))
    assert fast["rate_rps"] / fake["rate_rps"] == pytest.approx(4.0, rel=max(0.05, 4 * real["interarrival_cv"] / 20_000**0.5))


def test_empirical_lengths_resample_a_real_trace():
    path = real_trace(AZURE_CONV)
    t = traces.generate("poisson", seed=0, num_requests=20_000, rate=5.0, prompt=f"empirical:{path}:prompt")
    assert np.median(t.df["prompt_len"]) == pytest.approx(1020, rel=0.05)
