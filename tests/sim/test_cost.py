"""Cost models: the roofline agrees with the reference bounds; the profile fit recovers
known coefficients, reports held-out error, round-trips through its file, and fits step
records exactly as the engines write them."""

from __future__ import annotations

import json
import random

import pytest

from policy import SchedulerConfig
from sim import simulate
from sim.cost import ConstantCostModel
from sim.cost.registry import build_cost_model
from sim.cost.profiled import FEATURES, LINEAR, ProfiledCostModel, fit_profile, sample_shape
from sim.cost.roofline import RooflineCostModel
from tests.sim.conftest import make_request


def decode_shape(batch: int, ctx: int) -> tuple:
    return (0, 0, batch, 0, batch * ctx, 0, batch)


def prefill_shape(tokens: int) -> tuple:
    return (1, tokens, 0, tokens, 0, tokens * (tokens + 1) // 2, 1)


def test_roofline_matches_reference_decode_bounds():
    # reference/gpu_executor.md 2.3: Qwen2.5-7B bf16 on H100, batch 1 at 1k context: 4.7 ms
    # (no overheads); batch 64: 6.0 ms; int4 batch 1: 1.5 ms. Qwen3-0.6B batch 256: 10.4 ms.
    def no_overhead(cm, shape):
        return cm.time_for_shape(shape) - cm.breakdown(shape)["overhead"]

    bf16 = RooflineCostModel.from_names("qwen2.5-7b", "h100-sxm")
    int4 = RooflineCostModel.from_names("qwen2.5-7b", "h100-sxm", weight_bits=4)
    assert no_overhead(bf16, decode_shape(1, 1024)) == pytest.approx(4.7e-3, rel=0.03)
    assert no_overhead(bf16, decode_shape(64, 1024)) == pytest.approx(6.0e-3, rel=0.06)
    assert no_overhead(int4, decode_shape(1, 1024)) == pytest.approx(1.5e-3, rel=0.03)
    small = RooflineCostModel.from_names("qwen3-0.6b", "h100-sxm")
    assert no_overhead(small, decode_shape(256, 1024)) == pytest.approx(10.4e-3, rel=0.05)


def test_roofline_breakdown_sums_and_grows_with_work():
    cm = RooflineCostModel.from_names("llama-3-8b", "h100-sxm")
    for shape in (decode_shape(8, 500), prefill_shape(2048), (2, 700, 30, 900, 30 * 800, 123_456, 32)):
        assert sum(cm.breakdown(shape).values()) == pytest.approx(cm.time_for_shape(shape))
    assert cm.time_for_shape(decode_shape(8, 2000)) > cm.time_for_shape(decode_shape(8, 500))
    assert cm.time_for_shape(prefill_shape(2048)) > 4 * cm.time_for_shape(prefill_shape(256))
    # prefill of 2048 tokens is compute-bound: ~2 * params * tokens / GEMM rate dominates
    assert cm.breakdown(prefill_shape(2048))["linear"] == pytest.approx(2 * 6.98e9 * 2048 / 798e12, rel=0.01)
    h200 = RooflineCostModel.from_names("llama-3-8b", "h200")
    assert h200.time_for_shape(decode_shape(8, 500)) < cm.time_for_shape(decode_shape(8, 500))
    fp32 = RooflineCostModel.from_names("llama-3-8b", "h100-sxm", dtype="fp32")
    assert fp32.time_for_shape(prefill_shape(512)) > cm.time_for_shape(prefill_shape(512))


def test_int4_helps_decode_not_large_prefill():
    bf16 = RooflineCostModel.from_names("qwen2.5-7b", "h100-sxm")
    int4 = RooflineCostModel.from_names("qwen2.5-7b", "h100-sxm", weight_bits=4)
    assert int4.time_for_shape(decode_shape(1, 100)) < 0.5 * bf16.time_for_shape(decode_shape(1, 100))
    assert int4.time_for_shape(prefill_shape(1024)) >= bf16.time_for_shape(prefill_shape(1024))


def test_roofline_bad_names_list_the_known_ones():
    with pytest.raises(ValueError, match="known presets: .*llama-3-8b"):
        RooflineCostModel.from_names("gpt-5", "h100-sxm")
    with pytest.raises(ValueError, match="known presets: .*h100-sxm"):
        RooflineCostModel.from_names("llama-3-8b", "tpu-v9")
    with pytest.raises(ValueError, match="calibrated"):
        RooflineCostModel.from_names("llama-3-8b", "cpu")
    with pytest.raises(ValueError, match="weight_bits"):
        RooflineCostModel.from_names("llama-3-8b", "h100-sxm", weight_bits=8)
    with pytest.raises(ValueError, match="dtype"):
        RooflineCostModel.from_names("llama-3-8b", "h100-sxm", dtype="fp8")


def test_plan_shape_counts_chunks_and_causal_pairs_exactly():
    seen = []

    class Spy(ConstantCostModel):
        def time_for_shape(self, shape):
            seen.append(shape)
            return super().time_for_shape(shape)

    res = simulate([make_request("a", 40, 3), make_request("b", 8, 2, base=99)],
                   SchedulerConfig(num_blocks=32, max_num_batched_tokens=32), Spy(0.001))
    # step 1: a's first 32-token chunk (no sample); b waits for budget
    assert seen[0] == (1, 32, 0, 32, 0, 32 * 33 // 2, 0)
    # step 2: a's last 8 tokens after 32 cached (8*32 + 36 pairs) + b's whole prompt (36 pairs)
    assert seen[1] == (2, 16, 0, 40 + 8, 0, 8 * 32 + 36 + 36, 2)
    # step 3: two decodes at contexts 41 and 9
    assert seen[2] == (0, 0, 2, 0, 41 + 9, 0, 2)
    assert len(seen) == len(res.recorder.steps)
    assert res.recorder.steps[1].prefill_attn_pairs == seen[1][5]


def test_step_time_of_a_plan_equals_time_of_its_shape():
    from policy.plan import ScheduledRequest, SchedulerOutput
    from traces.timeline import plan_shape

    rows = [ScheduledRequest("a", 1, 100, [], False, True, 50), ScheduledRequest("b", 64, 0, [1, 2, 3, 4], True, True, 64)]
    plan = SchedulerOutput(7, rows, num_prefill_tokens=64, num_decode_tokens=1)
    cm = RooflineCostModel.from_names("qwen3-0.6b", "h100-sxm")
    assert plan_shape(plan) == (1, 64, 1, 64, 101, 64 * 65 // 2, 2)
    assert cm.step_time(plan) == cm.time_for_shape(plan_shape(plan))


def _synthetic_samples(coef: dict, n: int = 120, noise: float = 0.0, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        n_dec = rng.choice([0, 1, 4, 16, 64])
        ctx = rng.choice([64, 512, 2048])
        p = rng.choice([0, 0, 64, 512, 2048])
        if n_dec == 0 and p == 0:
            n_dec = 1
        n_pre = 1 if p else 0
        pairs = p * (p + 1) // 2
        shape = (n_pre, p, n_dec, p, n_dec * ctx, pairs, n_dec + n_pre)
        feats = dict(zip(FEATURES, (1, p, n_pre, n_dec, p, n_dec * ctx, pairs, n_dec + n_pre)))
        secs = sum(coef.get(k, 0.0) * v for k, v in feats.items()) * (1 + noise * rng.gauss(0, 1))
        rows.append({"num_prefill_requests": n_pre, "num_prefill_tokens": p, "num_decode_requests": n_dec,
                     "sum_prefill_context_len": p, "sum_context_len": p + n_dec * ctx,
                     "prefill_attn_pairs": pairs, "num_sampled": shape[6], "measured_s": secs})
    return rows


TRUE = {"const": 2e-3, "prefill_tokens": 2e-5, "decode_requests": 5e-5, "decode_context": 4e-8,
        "prefill_attn_pairs": 1e-9}


def test_fit_recovers_known_coefficients_and_reports_holdout():
    model = fit_profile(_synthetic_samples(TRUE), model="qwen3-0.6b", hardware={"name": "h100-sxm"})
    for name in FEATURES:
        assert model.coefficients[name] == pytest.approx(TRUE.get(name, 0.0), rel=1e-6, abs=1e-12)
    fit = model.fit_report
    # 5 interleaved folds: every sample is held out once; exact linear data keeps the linear form
    assert fit["n_holdout"] == 120 and fit["holdout_mape"] < 1e-6 and fit["form"] == "linear"
    noisy = fit_profile(_synthetic_samples(TRUE, noise=0.05, seed=1))
    assert 0.01 < noisy.fit_report["holdout_mape"] < 0.1
    assert all(v >= 0 for v in noisy.coefficients.values())


def test_profile_file_round_trip_and_errors(tmp_path):
    model = fit_profile(_synthetic_samples(TRUE), model="qwen3-0.6b", hardware={"name": "h100", "device": "x"})
    path = model.save(tmp_path / "profile.json")
    back = ProfiledCostModel.load(path)
    assert back.coefficients == model.coefficients and back.fit_report == model.fit_report
    assert back.time_for_shape(decode_shape(3, 100)) == model.time_for_shape(decode_shape(3, 100))
    assert isinstance(build_cost_model(str(path)), ProfiledCostModel)
    data = json.loads(path.read_text())
    assert data["format"] == "folovllm-step-profile" and len(data["samples"]) == 120
    # samples without coefficients: fitted on load
    del data["coefficients"]
    (tmp_path / "raw.json").write_text(json.dumps(data))
    refit = ProfiledCostModel.load(tmp_path / "raw.json")
    assert refit.coefficients == pytest.approx(model.coefficients)
    (tmp_path / "bad.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="format"):
        ProfiledCostModel.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="sample 0: field .num_prefill_requests. is missing"):
        fit_profile([{"measured_s": 1.0}] * 20)
    with pytest.raises(ValueError, match="need at least"):
        fit_profile(_synthetic_samples(TRUE, n=3))
    with pytest.raises(FileNotFoundError):
        ProfiledCostModel.load(tmp_path / "missing.json")


def test_fit_on_engine_step_records_recovers_the_engine_cost_model():
    # The step records both engines write are profile samples as they are: fitting the
    # records of a run priced by a known linear model gives that model back.
    true = ConstantCostModel(0.003, per_token_s=2e-5, per_request_s=1e-4)
    reqs = [make_request(f"r{i}", 5 + 37 * i % 200, 1 + 13 * i % 30, 0.002 * i, base=1000 * i) for i in range(60)]
    res = simulate(reqs, SchedulerConfig(num_blocks=500, max_num_batched_tokens=256), true)
    fitted = fit_profile(res.recorder.steps)
    c = fitted.coefficients
    assert c["const"] == pytest.approx(0.003, rel=1e-6)
    assert c["prefill_tokens"] == pytest.approx(2e-5, rel=1e-6)
    assert c["decode_requests"] == pytest.approx(2e-5 + 1e-4, rel=1e-6)
    assert c["prefill_requests"] == pytest.approx(1e-4, rel=1e-5)
    again = simulate([make_request(f"r{i}", 5 + 37 * i % 200, 1 + 13 * i % 30, 0.002 * i, base=1000 * i)
                      for i in range(60)], SchedulerConfig(num_blocks=500, max_num_batched_tokens=256), fitted)
    assert again.summary["makespan_s"] == pytest.approx(res.summary["makespan_s"], rel=1e-9)


def _floored_seconds(shape: tuple) -> float:
    n_pre, pre_tok, n_dec, pre_ctx, dec_ctx, pairs, n_sampled = shape
    rows = pre_tok + n_dec
    return (0.040 + 0.004 * max(0, rows - 4) + 2e-4 * (n_pre + n_dec) + 4e-6 * dec_ctx
            + 3e-6 * (pre_ctx - pre_tok) + 2e-9 * pairs + 1e-3 * max(0, n_sampled - 8))


def _floor_samples(n_replays: int = 4, steps: int = 40, noise: float = 0.01, seed: int = 3) -> list[dict]:
    """Steps of a CPU-like executor: the linear layers cost the same for 1-4 rows (weights are
    streamed once), decodes read their context, chunks after a prefix hit gather theirs, and
    the LM head is one pass for up to 8 sampled rows. Grouped as replays."""
    rng = random.Random(seed)
    seconds = _floored_seconds
    out = []
    for g in range(n_replays):
        for _ in range(steps):
            n_dec = rng.choice([0, 1, 2, 3, 4, 6, 8, 16])
            pre = rng.choice([0, 0, 0, 16, 64, 200]) if n_dec else rng.choice([16, 64, 200])
            cached = rng.choice([0, 0, 128, 480]) if pre else 0
            ctx = rng.randint(32, 900)
            n_pre = 1 if pre else 0
            shape = (n_pre, pre, n_dec, cached + pre, n_dec * ctx, pre * cached + pre * (pre + 1) // 2, n_dec + n_pre)
            secs = seconds(shape) * (1 + noise * rng.gauss(0, 1))
            out.append({"num_prefill_requests": n_pre, "num_prefill_tokens": pre, "num_decode_requests": n_dec,
                        "sum_prefill_context_len": shape[3], "sum_context_len": shape[3] + shape[4],
                        "prefill_attn_pairs": shape[5], "num_sampled": shape[6], "measured_s": secs,
                        "group": f"replay{g}"})
    return out


def test_cross_validation_rejects_a_linear_in_rows_model_for_a_floored_executor():
    samples = _floor_samples()
    linear = fit_profile(samples, forms=(LINEAR,))
    chosen = fit_profile(samples)
    fit = chosen.fit_report
    assert fit["cv_scheme"].startswith("leave-one-replay-out (4")
    assert fit["form"] == chosen.form.name != "linear"
    assert chosen.form.gemm_floor in (2, 4, 8)
    # the linear form cannot follow the flat 1-4 row cost: its held-out error is several times larger
    assert fit["cv"]["linear"] > 3 * fit["holdout_mape"]
    assert linear.fit_report["holdout_mape"] > 0.03 and fit["holdout_mape"] < 0.015
    # the floor: 1-4 decode rows priced within 3 % of the truth, where the linear form is not
    for batch in (1, 2, 3, 4):
        true = _floored_seconds(decode_shape(batch, 300))
        assert chosen.time_for_shape(decode_shape(batch, 300)) == pytest.approx(true, rel=0.03)
    assert max(abs(linear.time_for_shape(decode_shape(b, 300)) / _floored_seconds(decode_shape(b, 300)) - 1)
               for b in (1, 2, 3, 4)) > 0.05


def test_floor_profile_round_trips_and_old_profiles_still_load(tmp_path):
    model = fit_profile(_floor_samples())
    back = ProfiledCostModel.load(model.save(tmp_path / "p.json"))
    assert back.form == model.form and back.coefficients == model.coefficients
    assert back.time_for_shape(decode_shape(5, 321)) == pytest.approx(model.time_for_shape(decode_shape(5, 321)))
    # the fast pricer is the form's feature vector dotted with the coefficients
    for sample in _floor_samples(n_replays=1, steps=30, seed=9):
        shape = sample_shape(sample)
        dot = sum(model.coefficients[f] * v for f, v in zip(model.form.features, model.form.vector(shape)))
        assert model.time_for_shape(shape) == pytest.approx(dot, rel=1e-12)
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["version"] == 2 and data["form"]["name"] == model.form.name and data["samples"][0]["group"] == "replay0"
    v1 = fit_profile(_synthetic_samples(TRUE), forms=(LINEAR,)).to_dict()
    v1["version"] = 1
    del v1["form"]
    (tmp_path / "v1.json").write_text(json.dumps(v1))
    assert ProfiledCostModel.load(tmp_path / "v1.json").form is LINEAR
    data["features"] = list(FEATURES)
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="features"):
        ProfiledCostModel.load(tmp_path / "bad.json")
