"""Model shapes (presets and HF configs), hardware presets, and KV pool sizing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sim.hardware import GiB, HardwareSpec, get_hardware, kv_blocks_for, weight_bytes, weight_bytes_per_step
from sim.models import MODEL_PRESETS, get_model_shape


@pytest.mark.parametrize(
    "name, linear_b, kv_kib",  # reference/gpu_executor.md 2.2
    [("qwen2.5-0.5b", 0.358, 12), ("qwen3-0.6b", 0.440, 112), ("qwen2.5-7b", 6.525, 56), ("qwen3-8b", 6.946, 144)],
)
def test_preset_shapes_match_reference(name, linear_b, kv_kib):
    shape = get_model_shape(name)
    assert shape.linear_params / 1e9 == pytest.approx(linear_b, abs=0.001)
    assert shape.kv_bytes_per_token(2) / 1024 == kv_kib


@pytest.mark.parametrize("name, bf16_gb, int4_gb", [("qwen2.5-0.5b", 0.99, 0.46), ("qwen2.5-7b", 14.1, 4.48),
                                                     ("qwen3-8b", 15.1, 4.85)])
def test_weight_bytes_per_step_match_reference(name, bf16_gb, int4_gb):
    shape = get_model_shape(name)
    assert weight_bytes_per_step(shape) / 1e9 == pytest.approx(bf16_gb, abs=0.05)
    assert weight_bytes_per_step(shape, weight_bits=4) / 1e9 == pytest.approx(int4_gb, abs=0.05)
    assert weight_bytes(shape, "fp32") == pytest.approx(2 * weight_bytes(shape, "bf16"), rel=1e-9)


def test_all_presets_and_hf_style_names():
    assert {"qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-7b", "qwen3-0.6b", "qwen3-8b", "llama-2-7b", "llama-3-8b",
            "smollm2-135m"} <= set(MODEL_PRESETS)
    assert get_model_shape("Qwen/Qwen3-0.6B").name == "qwen3-0.6b"
    assert get_model_shape("meta-llama/Meta-Llama-3-8B-Instruct").name == "llama-3-8b"
    assert get_model_shape("HuggingFaceTB/SmolLM2-135M-Instruct").num_layers == 30
    assert 0.13e9 < get_model_shape("smollm2-135m").num_params < 0.14e9


def test_shape_from_hf_config_dir(tmp_path):
    cfg = {"model_type": "qwen2", "hidden_size": 896, "num_attention_heads": 14, "num_key_value_heads": 2,
           "num_hidden_layers": 24, "intermediate_size": 4864, "vocab_size": 151936, "tie_word_embeddings": True,
           "max_position_embeddings": 32768}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    shape = get_model_shape(tmp_path)
    preset = get_model_shape("qwen2.5-0.5b")
    assert (shape.num_layers, shape.head_dim, shape.num_kv_heads, shape.linear_params, shape.attention_bias) == (
        preset.num_layers, preset.head_dim, preset.num_kv_heads, preset.linear_params, True)
    del cfg["hidden_size"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="hidden_size"):
        get_model_shape(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        get_model_shape(tmp_path / "nothing.json")


def test_unknown_names_list_known_ones():
    with pytest.raises(ValueError, match="known presets: .*qwen3-8b"):
        get_model_shape("mistral-7b")
    with pytest.raises(ValueError, match="known presets: .*a100-80g.*h100-sxm.*h200"):
        get_hardware("mi300x")
    with pytest.raises(ValueError, match="calibrat"):
        get_hardware("cpu")


def test_hardware_json_file(tmp_path):
    spec = HardwareSpec("mybox", 16 * GiB, 50e9, 1e12, 5e11)
    path = tmp_path / "hw.json"
    path.write_text(json.dumps(spec.to_dict()))
    assert get_hardware(path) == spec
    path.write_text(json.dumps({"name": "x", "mem_bw": 1.0}))
    with pytest.raises(ValueError, match="missing field"):
        get_hardware(path)


def test_kv_blocks_for_memory_budget():
    shape = get_model_shape("llama-3-8b")
    h100 = get_hardware("h100-sxm")
    blocks = kv_blocks_for(shape, h100, 0.9, 16, "bf16")
    block_bytes = 16 * 128 * 1024
    free = 79.2 * GiB * 0.9 - weight_bytes(shape)
    assert 0.9 * free / block_bytes < blocks < free / block_bytes  # minus a few GiB of activation reserve
    assert kv_blocks_for(shape, h100, 0.5, 16, "bf16") < blocks
    assert kv_blocks_for(shape, get_hardware("h200"), 0.9, 16, "bf16") > 1.9 * blocks
    assert kv_blocks_for(shape, h100, 0.9, 16, "bf16", weight_bits=4) > blocks
    assert kv_blocks_for(shape, h100, 0.9, 32, "bf16") == pytest.approx(blocks / 2, abs=1)


def test_model_that_does_not_fit_is_a_clear_error():
    small = HardwareSpec("small-gpu", 16 * GiB, 1e12, 1e14, 1e13)
    with pytest.raises(ValueError, match="does not fit on 'small-gpu'.*weights take"):
        kv_blocks_for(get_model_shape("llama-3-8b"), small, 0.9, 16, "fp32")
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        kv_blocks_for(get_model_shape("llama-3-8b"), small, 1.5, 16, "bf16")


def test_sim_never_imports_torch_or_executor():
    code = ("import sys, sim, sim.cli, sim.cost.roofline, sim.cost.profiled, traces.metrics; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('executor')]; "
            "assert not bad, bad")
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_calibrated_cpu_file_prices_steps(tmp_path):
    from sim.calibrate_cpu import main
    from sim.cost.roofline import RooflineCostModel

    path = tmp_path / "cpu.json"
    assert main([str(path)]) == 0
    spec = get_hardware(path)
    assert spec.calibrated and spec.mem_bw > 1e8 and spec.flops_32 > 1e8 and spec.memory_bytes > 2**30
    cm = RooflineCostModel.from_names("smollm2-135m", str(path), dtype="fp32")
    assert 0 < cm.time_for_shape((0, 0, 1, 0, 100, 0, 1)) < cm.time_for_shape((1, 128, 0, 128, 0, 8256, 1))
