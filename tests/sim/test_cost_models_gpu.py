"""The cost-model registry, the one roofline formula, the fitted laws and the profile-driven model."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import sim.cost.base as base
from sim.cost.fit_laws import fit_sku
from sim.cost.fitted import FittedRooflineCostModel
from sim.cost.layer_ops import elementwise_bytes_per_token, gemm_dims
from sim.cost.op_laws import ElementwiseLaw, GemmLaw, SkuLaws, laws_for, padded_rows
from sim.cost.op_profile import write_own
from sim.cost.profiles import load_op_profile
from sim.cost.per_op import pool_adjacent_violators
from sim.cost.registry import build_cost_model, names
from sim.cost.roofline import RooflineCostModel
from sim.hardware import get_hardware
from sim.models import get_model_shape, shard

# ../shared beside the repository, as for the real traces (FOLOVLLM_SHARED overrides, e.g. in a worktree)
SHARED = Path(os.environ.get("FOLOVLLM_SHARED") or Path(__file__).resolve().parents[2].parent / "shared") / "profiles" / "vidur-gpu"
SHAPES = [(1, 64, 0, 0, 0, 2080, 1), (0, 0, 32, 0, 32 * 900, 0, 32), (2, 700, 60, 3000, 60 * 500, 900000, 62)]


def test_base_imports_no_model_and_registry_builds_each():
    source = inspect.getsource(base)
    assert "roofline" not in source and "profiled" not in source and "import sim.cost." not in source
    assert {"roofline", "roofline-ideal", "roofline-fitted", "profile", "constant", "calibrated"} <= set(names())
    fitted = build_cost_model("roofline", model="llama-2-7b", hardware="h100-sxm")
    assert isinstance(fitted, FittedRooflineCostModel)
    assert isinstance(build_cost_model("roofline-ideal", model="llama-2-7b", hardware="h100"), RooflineCostModel)
    # no fitted laws for the H200 (no profiles) or int4 weights: the default falls back, the explicit name refuses
    assert isinstance(build_cost_model("roofline", model="llama-2-7b", hardware="h200"), RooflineCostModel)
    assert isinstance(build_cost_model("roofline", model="llama-2-7b", hardware="h100", weight_bits=4), RooflineCostModel)
    with pytest.raises(ValueError, match="no fitted operator laws for 'h200'"):
        build_cost_model("roofline-fitted", model="llama-2-7b", hardware="h200")
    assert build_cost_model("constant:0.5:0.001").time_for_shape((0, 0, 10, 0, 0, 0, 10)) == pytest.approx(0.51)
    with pytest.raises(ValueError, match="expected one of"):
        build_cost_model("rooflin", model="llama-2-7b", hardware="h100")
    with pytest.raises(ValueError, match="needs the profile folder"):
        build_cost_model("profile", model="llama-2-7b", hardware="h100")


def test_roofline_parts_add_up_and_tp_shards_the_weights():
    m = RooflineCostModel.from_names("llama-3-8b", "h100-sxm")
    m2 = RooflineCostModel.from_names("llama-3-8b", "h100-sxm", tp=2)
    for shape in SHAPES:
        assert sum(m.breakdown(shape).values()) == pytest.approx(m.time_for_shape(shape))
    decode = (0, 0, 1, 0, 100, 0, 1)
    assert m2.breakdown(decode)["linear"] == pytest.approx(m.breakdown(decode)["linear"] / 2, rel=1e-3)
    with pytest.raises(ValueError, match="must divide"):
        shard(get_model_shape("qwen2.5-0.5b"), 4)


def _synthetic_profile(tmp, sku_laws: SkuLaws, shape_name: str, tp: int = 1):
    model = get_model_shape(shape_name)
    part = shard(model, tp)
    dims, nbytes = gemm_dims(part), elementwise_bytes_per_token(part)
    meas = []
    for t in (1, 4, 16, 64, 100, 128, 200, 256, 384, 512, 1024, 2048, 4096):
        times = {op: sku_laws.gemm[op].seconds(t, *dims[op]) for op in dims}
        times.update({op: sku_laws.elementwise[op].seconds(t * nbytes[op]) for op in sku_laws.elementwise})
        meas.append((t, times))
    folder = tmp / shape_name
    write_own(folder / "ops.csv", device="h100", dtype="bf16", model=model, tp=tp, measurements=meas)
    return load_op_profile(folder, tp)


def test_fit_recovers_laws_and_generalises_to_an_unseen_shape(tmp_path):
    truth = SkuLaws("h100-sxm", {op: GemmLaw(6e-6, 3.2e12, 7e14) for op in ("qkv_proj", "o_proj", "up_proj", "down_proj")},
                    {op: ElementwiseLaw(3e-6, 1.5e12) for op in ("input_norm", "rope", "post_attn_norm", "act", "add", "embed")})
    train = [_synthetic_profile(tmp_path, truth, name) for name in ("llama-2-7b", "qwen2.5-7b")]
    train.append(_synthetic_profile(tmp_path, truth, "llama-2-7b", tp=2))
    laws = fit_sku("h100-sxm", train)
    unseen = get_model_shape("qwen3-8b")
    hw = get_hardware("h100-sxm")
    want, got = FittedRooflineCostModel(unseen, hw, truth), FittedRooflineCostModel(unseen, hw, laws)
    for t in (1, 37, 64, 72, 129, 300, 1500, 4000):
        assert got.layer_seconds(t) == pytest.approx(want.layer_seconds(t), rel=0.01)


def test_gemm_tiles_are_narrower_up_to_64_rows():
    """The 64 -> 72 token step of the measured profiles: rows are padded to 64-row tiles up to 64,
    to 128-row tiles beyond, so 72 rows compute what 128 do."""
    assert [padded_rows(m) for m in (1, 64, 65, 72, 128, 129, 520)] == [64, 64, 128, 128, 128, 256, 640]
    compute_only = GemmLaw(0.0, 1e18, 7e14)  # memory made free: the compute side alone
    k, n = 4096, 22016  # Llama-2-7B's fused gate+up projection
    assert compute_only.seconds(72, k, n) == pytest.approx(compute_only.seconds(128, k, n), rel=1e-6)
    assert compute_only.seconds(72, k, n) == pytest.approx(2 * compute_only.seconds(64, k, n), rel=1e-6)
    law = GemmLaw(5e-6, 3e12, 7e14)  # near the ridge the step is softened by the memory side
    assert law.seconds(64, k, n) < law.seconds(72, k, n) < law.seconds(128, k, n)


def test_fitted_prices_more_than_ideal_near_the_ridge():
    """The point of fitting: the plain roofline is optimistic at chunked-prefill sizes."""
    ideal = build_cost_model("roofline-ideal", model="llama-2-7b", hardware="h100")
    fitted = build_cost_model("roofline", model="llama-2-7b", hardware="h100")
    assert fitted.layer_seconds(256) > 1.2 * ideal.layer_seconds(256)
    assert laws_for("h100-sxm") is not None and laws_for("a100-80g") is not None


def test_pool_adjacent_violators_is_monotone_and_keeps_sorted_input():
    y = np.array([1.0, 3.0, 2.0, 2.0, 5.0, 4.0])
    out = pool_adjacent_violators(y)
    assert np.all(np.diff(out) >= 0) and out.sum() == pytest.approx(y.sum())
    assert list(pool_adjacent_violators(np.array([1.0, 2.0, 3.0]))) == [1.0, 2.0, 3.0]


def test_sim_runs_with_profile_dir_and_checks_the_shape(tmp_path):
    from sim.cli import sim

    truth = laws_for("h100-sxm")
    _synthetic_profile(tmp_path, truth, "llama-2-7b")
    args = ["--preset", "poisson", "--limit", "20", "--model", "llama-2-7b", "--hardware", "h100-sxm", "--quiet"]
    ok = CliRunner().invoke(sim, [*args, "--cost-model", f"profile:{tmp_path / 'llama-2-7b'}"])
    assert ok.exit_code == 0, ok.output
    bad = CliRunner().invoke(sim, [*args[:-4], "llama-3-8b", "--hardware", "h100-sxm", "--quiet",
                                   "--cost-model", f"profile:{tmp_path / 'llama-2-7b'}"])
    assert bad.exit_code != 0 and "num_kv_heads" in bad.output
    wrong_gpu = CliRunner().invoke(sim, [*args[:-4], "llama-2-7b", "--hardware", "a100", "--quiet",
                                         "--cost-model", f"profile:{tmp_path / 'llama-2-7b'}"])
    assert wrong_gpu.exit_code != 0 and "measured on 'h100'" in wrong_gpu.output


def _real(rel: str) -> Path:
    path = SHARED / rel / "mlp.csv"
    if not path.is_file():
        pytest.skip(f"Vidur GPU profiles not present (expected {path}); the repo does not ship them")
    return path


@pytest.mark.parametrize("rel,hw,max_median,max_max", [
    ("h100/meta-llama/Llama-2-7b-hf", "h100-sxm", 0.045, 0.17),
    ("a100/meta-llama/Meta-Llama-3-8B", "a100-80g", 0.03, 0.14),
    ("a100/meta-llama/Llama-2-70b-hf", "a100-80g", 0.025, 0.09),
])
def test_real_profiles_leave_one_model_out(rel, hw, max_median, max_max):
    """Regression guard on the measured figures (README): the fitted model, never shown this model,
    stays far closer to the kernels than the plain roofline; interpolation is near exact."""
    from sim.cost.validate import validate

    path = _real(rel)
    loo = validate(path, hw, "roofline", 1, leave_one_out=True)
    ideal = validate(path, hw, "roofline-ideal", 1)
    points = validate(path, hw, "profile", 1, leave_one_out=True)
    assert loo.median_abs_error < max_median and loo.median_abs_error < ideal.median_abs_error / 4
    assert loo.max_abs_error < max_max < ideal.max_abs_error / 2
    assert points.median_abs_error < 0.015
    assert "fitted on" in loo.note and path.parent.name not in loo.note


def test_cost_validate_cli_ends_with_the_summary_line(tmp_path):
    from sim.cost_cli import cost

    _synthetic_profile(tmp_path, laws_for("h100-sxm"), "llama-2-7b")
    res = CliRunner().invoke(cost, ["validate", str(tmp_path / "llama-2-7b"), "--hardware", "h100", "--cost-model", "roofline"])
    assert res.exit_code == 0, res.output
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("median |error| ") and last.endswith("over 13 points")
    assert "median |error| 0.0%" in last  # the shipped laws generated this profile
    bad = CliRunner().invoke(cost, ["validate", str(tmp_path / "llama-2-7b"), "--hardware", "h100", "--tp", "2"])
    assert bad.exit_code != 0 and "no rows for tensor-parallel degree 2" in bad.output


def test_attention_profile_prices_attention_and_rejects_bad_rows(tmp_path):
    from sim.cost.attention_profile import Grid2D, write_own_attention
    from sim.cost.profiles import load_attention_profile
    from sim.cost.op_profile import ProfileError
    from sim.cost.per_op import ProfileDrivenCostModel

    grid = Grid2D([(1, 100, 1.0), (1, 300, 3.0), (3, 100, 3.0), (3, 300, 9.0)])
    assert grid(2, 200) == pytest.approx(4.0) and grid(6, 300) == pytest.approx(18.0) and grid(1, 600) == pytest.approx(6.0)

    _synthetic_profile(tmp_path, laws_for("h100-sxm"), "llama-2-7b")
    folder = tmp_path / "llama-2-7b"
    model = get_model_shape("llama-2-7b")
    write_own_attention(folder / "attention.csv", device="h100", dtype="bf16", model=model, tp=1,
                        decode=[(b, c, 1e-6 * b * c / 100) for b in (1, 8) for c in (100, 1000)],
                        prefill=[(q, c, 1e-6 * q * (c + q) / 100) for q in (10, 100) for c in (0, 1000)])
    costs = build_cost_model(f"profile:{folder}", model="llama-2-7b", hardware="h100")
    assert isinstance(costs, ProfileDrivenCostModel) and costs.attention is not None
    decode8 = (0, 0, 8, 0, 8 * 1000, 0, 8)
    no_attn = ProfileDrivenCostModel(costs.profile, model, costs.hardware, costs.fallback)
    extra = costs.time_for_shape(decode8) - (no_attn.time_for_shape(decode8) - no_attn.fallback.attention_seconds(decode8))
    assert extra == pytest.approx(32 * 1e-6 * 8 * 1000 / 100)  # 32 layers x the measured decode
    # A 100-token chunk after 1000 cached tokens: the shape's context (1100) includes the chunk,
    # the profile is keyed by the context cached before it (the measured point q=100, c=1000).
    chunk = (1, 100, 0, 1100, 0, 100 * 1000 + 100 * 101 // 2, 1)
    extra = costs.time_for_shape(chunk) - (no_attn.time_for_shape(chunk) - no_attn.fallback.attention_seconds(chunk))
    assert extra == pytest.approx(32 * 1e-6 * 100 * 1100 / 100)

    text = (folder / "attention.csv").read_text().replace(",decode,", ",decoding,", 1)
    (folder / "attention.csv").write_text(text)
    with pytest.raises(ProfileError, match=r"attention\.csv row 2 column 'kind': 'decoding'"):
        load_attention_profile(folder)


def test_monotone_error_floor_is_the_worst_inversion_and_is_attainable():
    from sim.cost.error_floor import monotone_error_floor

    assert monotone_error_floor(np.array([1, 2, 4]), np.array([1.0, 2.0, 2.0])).error == 0.0
    # 3.0 at 2 tokens, 2.0 at 3: the best monotone price for both is 2.4, 20 % off each
    floor = monotone_error_floor(np.array([1, 2, 3, 4, 5]), np.array([1.0, 3.0, 2.0, 2.9, 5.0]))
    assert floor.error == pytest.approx(0.2) and (floor.tokens_high, floor.tokens_low) == (2, 3)
    flat = np.minimum.accumulate(np.array([1.0, 3.0, 2.0, 2.9, 5.0])[::-1])[::-1]  # one monotone model
    assert np.max(np.abs(flat - [1.0, 3.0, 2.0, 2.9, 5.0]) / [1.0, 3.0, 2.0, 2.9, 5.0]) >= floor.error
    attained = np.array([1.0, 2.4, 2.4, 2.9, 5.0])  # the harmonic price on the pair
    assert np.all(np.diff(attained) >= 0)
    assert np.max(np.abs(attained - [1.0, 3.0, 2.0, 2.9, 5.0]) / [1.0, 3.0, 2.0, 2.9, 5.0]) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="tokens increasing"):
        monotone_error_floor(np.array([2, 1]), np.array([1.0, 1.0]))
