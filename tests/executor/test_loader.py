"""Weight loading: sharded checkpoints work, and every kind of mismatch is a clear error."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from executor.config import ModelConfig, UnsupportedModelError
from executor.layers.linear import make_linear
from executor.loader import CheckpointError, load_model
from executor.models_registry import SHAPES, resolve_model, write_random_model


@pytest.fixture
def qwen2_copy(tiny_model_dirs, tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(tiny_model_dirs["tiny-qwen2"], dst)
    return dst


def _edit_tensors(model_dir, edit):
    path = model_dir / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))


def test_random_model_has_the_shape_it_names(tiny_model_dirs):
    for shape, d in tiny_model_dirs.items():
        cfg = ModelConfig.from_dir(d)
        assert cfg.hidden_size == SHAPES[shape]["hidden_size"]
        model = load_model(d)
        assert model.config.num_layers == 2
        n = sum(p.numel() for p in model.parameters())
        assert n == sum(torch.Size(s).numel() for s in cfg.expected_tensor_shapes().values())


def test_family_flags():
    qwen2 = ModelConfig.from_dict(SHAPES["qwen2.5-0.5b"])
    qwen3 = ModelConfig.from_dict(SHAPES["qwen3-0.6b"])
    llama = ModelConfig.from_dict(SHAPES["tiny-llama"])
    assert (qwen2.qkv_bias, qwen2.o_bias, qwen2.qk_norm) == (True, False, False)
    assert (qwen3.qkv_bias, qwen3.qk_norm, qwen3.head_dim) == (False, True, 128)
    assert (llama.qkv_bias, llama.qk_norm, llama.rope_type) == (False, False, "llama3")


def test_sharded_checkpoint_loads_like_the_single_file(qwen2_copy):
    whole = load_model(qwen2_copy)
    tensors = load_file(str(qwen2_copy / "model.safetensors"))
    names = sorted(tensors)
    half = len(names) // 2
    (qwen2_copy / "model.safetensors").unlink()
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:])):
        fname = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, str(qwen2_copy / fname))
        weight_map.update({n: fname for n in part})
    (qwen2_copy / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    sharded = load_model(qwen2_copy)
    for (n1, a), (n2, b) in zip(whole.state_dict().items(), sharded.state_dict().items()):
        assert n1 == n2 and torch.equal(a, b)


def test_unknown_architecture_is_refused(qwen2_copy):
    cfg = json.loads((qwen2_copy / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (qwen2_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel"):
        load_model(qwen2_copy)


def test_unsupported_rope_scaling_is_refused():
    cfg = dict(SHAPES["tiny-qwen2"], rope_scaling={"rope_type": "longrope", "factor": 2.0})
    with pytest.raises(UnsupportedModelError, match="longrope"):
        ModelConfig.from_dict(cfg)


def test_missing_tensor_is_named(qwen2_copy):
    _edit_tensors(qwen2_copy, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing.*model\.layers\.1\.mlp\.up_proj\.weight"):
        load_model(qwen2_copy)


def test_misshaped_tensor_is_named_with_its_file(qwen2_copy):
    def edit(t):
        t["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(3, 64)

    _edit_tensors(qwen2_copy, edit)
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*k_proj\.weight.*\[3, 64\].*\[32, 64\]"):
        load_model(qwen2_copy)


def test_unexpected_tensor_is_named_with_its_file(qwen2_copy):
    def edit(t):
        t["model.layers.0.self_attn.extra.weight"] = torch.zeros(2)

    _edit_tensors(qwen2_copy, edit)
    with pytest.raises(CheckpointError, match=r"unexpected.*model\.safetensors: model\.layers\.0\.self_attn\.extra"):
        load_model(qwen2_copy)


def test_no_config_or_unknown_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither a known name"):
        resolve_model("no-such-model-xyz")


def test_bad_shape_name_for_random_model(tmp_path):
    with pytest.raises(ValueError, match="unknown model shape"):
        write_random_model("qwen9-1t", tmp_path / "x")


def test_make_linear_builds_gptq_modules_for_gptq_configs():
    plain = make_linear(64, 32, True, None, "p")
    assert isinstance(plain, torch.nn.Linear) and plain.bias is not None
    gptq = pytest.importorskip("executor.gptq")
    q = make_linear(128, 64, False, {"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": False,
                                     "sym": True}, "model.layers.0.mlp.up_proj")
    assert isinstance(q, gptq.GPTQLinear)
    names = dict(q.named_buffers())
    assert {"qweight", "qzeros", "scales", "g_idx"} <= set(names)
    with pytest.raises(ValueError, match="awq"):
        make_linear(128, 64, False, {"quant_method": "awq"}, "x")


def test_prepared_smollm2_is_reused_from_the_cache(tmp_path, monkeypatch):
    from executor import models_registry as reg

    monkeypatch.setenv("FOLOVLLM_CACHE", str(tmp_path))
    target = tmp_path / "models" / "smollm2-135m"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    (target / "folovllm_prepared.json").write_text("{}")
    monkeypatch.setattr(reg, "smollm2_package_dir", lambda: pytest.fail("must not convert again"))
    assert resolve_model("smollm2-135m") == target


def test_failed_preparation_leaves_nothing_behind(tmp_path):
    from executor.models_registry import _atomic_dir

    def fill(tmp):
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("conversion died")

    with pytest.raises(RuntimeError, match="conversion died"):
        _atomic_dir(tmp_path / "m", fill)
    assert list(tmp_path.iterdir()) == []
