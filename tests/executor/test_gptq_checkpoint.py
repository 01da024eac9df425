"""quantization_config parsing, tensor shape checks and atomic directory writes."""

from __future__ import annotations

import json

import pytest
import torch

from executor.gptq.checkpoint import (GPTQCheckpointError, GPTQConfig, check_layer_tensors, expected_shapes,
                                      read_gptq_config, write_model_dir)


def write_config(d, qc=None, legacy=None):
    d.mkdir(parents=True, exist_ok=True)
    cfg = {"model_type": "llama"}
    if qc is not None:
        cfg["quantization_config"] = qc
    (d / "config.json").write_text(json.dumps(cfg))
    if legacy is not None:
        (d / "quantize_config.json").write_text(json.dumps(legacy))
    return d


GOOD = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True}


def test_reads_hf_config_and_legacy_quantize_config(tmp_path):
    assert read_gptq_config(write_config(tmp_path / "plain")) is None
    cfg = read_gptq_config(write_config(tmp_path / "hf", GOOD))
    assert (cfg.bits, cfg.group_size, cfg.desc_act, cfg.sym, cfg.checkpoint_format) == (4, 128, False, True, "gptq")
    legacy = read_gptq_config(write_config(tmp_path / "old", None, {**GOOD, "group_size": 32,
                                                                    "checkpoint_format": "gptq_v2"}))
    assert legacy.group_size == 32 and legacy.checkpoint_format == "gptq_v2"
    merged = read_gptq_config(write_config(tmp_path / "both", GOOD, {"checkpoint_format": "gptq_v2"}))
    assert merged.checkpoint_format == "gptq_v2"


@pytest.mark.parametrize("field,value,message", [
    ("bits", 3, "bits=3"),
    ("group_size", 0, "group_size=0"),
    ("checkpoint_format", "marlin", "checkpoint_format='marlin'"),
    ("quant_method", "awq", "quant_method='awq'"),
    ("lm_head", True, "lm_head"),
    ("sym", "yes", "sym='yes'"),
])
def test_unsupported_settings_name_the_field_and_file(tmp_path, field, value, message):
    d = write_config(tmp_path / "m", {**GOOD, field: value})
    with pytest.raises(GPTQCheckpointError, match=message) as err:
        read_gptq_config(d)
    assert "config.json" in str(err.value)


def test_round_trip_of_config_dict():
    cfg = GPTQConfig(bits=4, group_size=64, desc_act=True, sym=False, checkpoint_format="gptq_v2")
    assert GPTQConfig.from_dict(cfg.to_quantization_config()) == cfg


def test_shape_checks_name_the_tensor():
    cfg = GPTQConfig(group_size=128)
    shapes = expected_shapes(576, 1536, cfg)
    assert shapes == {"qweight": (72, 1536), "qzeros": (5, 192), "scales": (5, 1536), "g_idx": (576,)}
    tensors = {f"l.{k}": torch.zeros(v, dtype=torch.float16 if k == "scales" else torch.int32)
               for k, v in shapes.items()}
    check_layer_tensors("l", tensors, 576, 1536, cfg)
    tensors["l.qzeros"] = torch.zeros(4, 192, dtype=torch.int32)
    with pytest.raises(GPTQCheckpointError, match=r"'l.qzeros' has shape \(4, 192\), expected \(5, 192\)"):
        check_layer_tensors("l", tensors, 576, 1536, cfg)
    del tensors["l.g_idx"]
    tensors["l.qzeros"] = torch.zeros(5, 192, dtype=torch.int32)
    with pytest.raises(GPTQCheckpointError, match="'l.g_idx' is missing"):
        check_layer_tensors("l", tensors, 576, 1536, cfg)


def test_writes_are_atomic(tmp_path):
    out = tmp_path / "out"
    write_model_dir(out, {"a": 1}, {"w": torch.zeros(2)})
    assert json.loads((out / "config.json").read_text()) == {"a": 1}
    with pytest.raises(GPTQCheckpointError, match="already exists"):
        write_model_dir(out, {"a": 2}, {"w": torch.zeros(2)})
    # A failure half-way (here: an unserialisable tensor) leaves neither a new dir nor temp files.
    with pytest.raises(Exception):
        write_model_dir(tmp_path / "bad", {"a": 3}, {"w": "not a tensor"})
    with pytest.raises(Exception):
        write_model_dir(out, {"a": 3}, {"w": "not a tensor"}, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert json.loads((out / "config.json").read_text()) == {"a": 1}
    write_model_dir(out, {"a": 4}, {"w": torch.zeros(2)}, overwrite=True)
    assert json.loads((out / "config.json").read_text()) == {"a": 4}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
