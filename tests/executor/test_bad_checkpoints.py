"""Damaged or inconsistent model directories end in one clear error, never a traceback or a NaN result.

One test per row of issue 17's table (checkpoint rows): each runs the real CLI command on a tiny
model directory damaged in one way, and checks a non-zero exit, a one-line message naming the
file (and the tensor where one is at fault), and no traceback. Before the fix these gave a
`SafetensorError` / transformers `OSError` traceback, or a perplexity of nan with exit code 0.
"""

from __future__ import annotations

import json
import random
import shutil
import struct

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from executor.checkpoint_checks import CheckpointError
from executor.loader import verify_model_dir
from executor.cli import generate
from executor.gptq.checkpoint import write_model_dir
from executor.gptq.cli import eval_group
from executor.gptq.packing import pack_cols, pack_rows
from tests.executor.gptq_tiny_model import sample_text, write_tiny_model

GROUP = 32
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def rtn_gptq_dir(src, out):
    """A GPTQ checkpoint of `src` by round-to-nearest (symmetric 4-bit, group 32, v1 zeros): the
    real layout the loaders read, without the minutes a calibrated GPTQ run takes."""
    tensors = load_file(str(src / "model.safetensors"))
    cfg = json.loads((src / "config.json").read_text())
    out_tensors = {}
    for name, w in tensors.items():
        if not (name.endswith(".weight") and any(f".{lin}." in name for lin in LINEARS)):
            out_tensors[name] = w
            continue
        base = name.removesuffix(".weight")
        wt = w.t().contiguous()                       # [K = in, N = out]
        k, n = wt.shape
        g_idx = torch.arange(k, dtype=torch.int32) // GROUP
        groups = wt.reshape(k // GROUP, GROUP, n)
        scales = (groups.abs().amax(dim=1) / 7).clamp_min(1e-8)   # [G, N]
        qint = (torch.round(wt / scales[g_idx.long()]) + 8).clamp(0, 15).to(torch.int32)
        zeros_v1 = torch.full((k // GROUP, n), 7, dtype=torch.int32)  # true zero 8, stored minus one
        out_tensors.update({f"{base}.qweight": pack_rows(qint, 4), f"{base}.qzeros": pack_cols(zeros_v1, 4),
                            f"{base}.scales": scales.to(torch.float16), f"{base}.g_idx": g_idx})
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": GROUP, "desc_act": False,
                                  "sym": True, "checkpoint_format": "gptq"}
    return write_model_dir(out, cfg, out_tensors, copy_from=src)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_ckpt")
    plain = write_tiny_model(root / "plain", hidden=64, intermediate=128, layers=1)
    gptq = rtn_gptq_dir(plain, root / "gptq")
    text = root / "eval.txt"
    text.write_text(sample_text()[:3000])
    return root, plain, gptq, text


@pytest.fixture
def copy_of(dirs, tmp_path):
    def make(which: str):
        dst = tmp_path / which
        shutil.copytree(dirs[1] if which == "plain" else dirs[2], dst)
        return dst
    return make


def eval_ppl(model_dir, text, backend="auto"):
    return CliRunner().invoke(eval_group, ["ppl", str(model_dir), "--text", str(text), "--max-tokens", "96",
                                           "--window", "48", "--stride", "24", "--backend", backend, "--json"])


def run_generate(model_dir):
    return CliRunner().invoke(generate, ["--model", str(model_dir), "--prompt", "hello there", "--max-tokens", "3",
                                         "--kv-cache-memory", str(2**20), "--max-model-len", "64", "--ignore-eos"])


def assert_clean_failure(res, *needles):
    """Non-zero exit through click (a message, no traceback), naming every needle."""
    assert res.exit_code != 0, res.output
    assert isinstance(res.exception, SystemExit), f"uncaught {type(res.exception).__name__}: {res.exception}"
    assert "Traceback" not in res.output
    # (a progress bar without a newline may precede the message on the same line)
    message = [line[line.index("Error:"):] for line in res.output.splitlines() if "Error:" in line]
    assert len(message) == 1, res.output
    for needle in needles:
        assert needle in message[0], message[0]
    return message[0]


def edit_tensors(model_dir, edit):
    path = model_dir / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def data_start(path) -> int:
    (header_len,) = struct.unpack("<Q", path.read_bytes()[:8])
    return 8 + header_len


# -- the good directories work (so every failure below is the damage, not the fixture) ------------
@pytest.mark.parametrize("which", ["plain", "gptq"])
def test_undamaged_directories_evaluate_to_a_finite_perplexity(dirs, which):
    root, plain, gptq, text = dirs
    res = eval_ppl(plain if which == "plain" else gptq, text)
    assert res.exit_code == 0, res.output
    ppl = json.loads([line for line in res.output.splitlines() if line.startswith("{")][-1])["perplexity"]
    assert 1.0 < ppl < 1e4


# -- row: truncated safetensors / bad header / zero-byte file -> eval ppl, generate ---------------
def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _bad_header(path):
    data = bytearray(path.read_bytes())
    data[8:24] = b"\x00garbage\xff\xfe{{{{{{{"
    path.write_bytes(bytes(data))


def _zero_bytes(path):
    path.write_bytes(b"")


@pytest.mark.parametrize("damage", [_truncate, _bad_header, _zero_bytes], ids=["truncated", "bad-header", "zero-byte"])
@pytest.mark.parametrize("command", ["eval-ppl", "generate"])
def test_unreadable_safetensors_is_a_clear_error(dirs, copy_of, damage, command):
    model = copy_of("plain")
    damage(model / "model.safetensors")
    res = eval_ppl(model, dirs[3]) if command == "eval-ppl" else run_generate(model)
    assert_clean_failure(res, "model.safetensors")


# -- row: invalid config.json -> eval ppl ---------------------------------------------------------
@pytest.mark.parametrize("content", ['{"architectures": ["LlamaForCausalLM"], "hidden_size": ',
                                     None], ids=["not-json", "wrong-type"])
def test_invalid_config_json_is_a_clear_error_in_eval(dirs, copy_of, content):
    model = copy_of("plain")
    if content is None:
        cfg = json.loads((model / "config.json").read_text())
        cfg["hidden_size"] = "sixty-four"
        content = json.dumps(cfg)
    (model / "config.json").write_text(content)
    assert_clean_failure(eval_ppl(model, dirs[3]), "config.json")


# -- row: random bytes inside tensor data -> eval ppl (was nan, exit 0), generate (token 0 forever) -
def _random_bytes_in_data(model_dir):
    path = model_dir / "model.safetensors"
    data = bytearray(path.read_bytes())
    start = data_start(path) + 256
    data[start:start + 4096] = random.Random(0).randbytes(4096)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("command", ["eval-ppl", "generate"])
def test_random_bytes_in_tensor_data_are_caught_on_load(dirs, copy_of, command):
    model = copy_of("plain")
    _random_bytes_in_data(model)
    res = eval_ppl(model, dirs[3]) if command == "eval-ppl" else run_generate(model)
    msg = assert_clean_failure(res, "model.safetensors", "non-finite", "tensor '")
    assert "nan" not in msg.split("non-finite")[0].lower()


def test_quantize_refuses_a_corrupted_source(copy_of, tmp_path):
    from executor.gptq.cli import quantize

    model = copy_of("plain")
    _random_bytes_in_data(model)
    res = CliRunner().invoke(quantize, [str(model), "--out", str(tmp_path / "q"), "--group-size", "32"])
    assert_clean_failure(res, "model.safetensors", "non-finite")
    assert not (tmp_path / "q").exists()


# -- rows: GPTQ NaN scales, float32 qweight, g_idx out of range -----------------------------------
LAYER = "model.layers.0.self_attn.q_proj"


def _nan_scales(t):
    t[f"{LAYER}.scales"][0, 0] = float("nan")


def _float_qweight(t):
    t[f"{LAYER}.qweight"] = t[f"{LAYER}.qweight"].to(torch.float32)


def _g_idx_out_of_range(t):
    t[f"{LAYER}.g_idx"][3] = 999


@pytest.mark.parametrize("backend", ["executor", "transformers"])
@pytest.mark.parametrize("damage,tensor,why", [
    (_nan_scales, "scales", "non-finite"),
    (_float_qweight, "qweight", "int32"),
    (_g_idx_out_of_range, "g_idx", "g_idx"),
], ids=["nan-scales", "float32-qweight", "g_idx-out-of-range"])
def test_inconsistent_gptq_tensors_are_named(dirs, copy_of, backend, damage, tensor, why):
    model = copy_of("gptq")
    edit_tensors(model, damage)
    msg = assert_clean_failure(eval_ppl(model, dirs[3], backend), f"{LAYER}.{tensor}", why)
    assert str(model) in msg


def test_verify_model_dir_checks_shapes_against_the_config(copy_of):
    model = copy_of("plain")
    edit_tensors(model, lambda t: t.update({"model.norm.weight": torch.ones(3)}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor 'model\.norm\.weight' has shape \[3\]"):
        verify_model_dir(model)


def test_run_and_replay_report_a_corrupted_checkpoint_in_one_line(copy_of, tmp_path):
    """`folovllm run` (executor engine) and `folovllm replay` load through the same checks."""
    import yaml

    from executor.cli import replay
    from experiments.run.commands import run

    model = copy_of("plain")
    _random_bytes_in_data(model)
    spec = {"name": "bad-model", "trace": {"preset": "poisson", "params": {"num_requests": 2}},
            "model": str(model), "engines": ["executor"], "kv_cache_mib": 4,
            "base": {"max_model_len": 128, "max_num_batched_tokens": 64}, "variants": [{"name": "a"}]}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    res = CliRunner().invoke(run, [str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "out"), "--no-report"])
    assert_clean_failure(res, "model.safetensors", "non-finite")
    res = CliRunner().invoke(replay, ["--model", str(model), "--preset", "poisson", "--num-requests", "2",
                                      "--kv-cache-memory", str(2**20), "--max-model-len", "64"])
    assert_clean_failure(res, "model.safetensors", "non-finite")


def test_finite_but_absurd_weights_are_refused_too(copy_of):
    """The load check is one sum per tensor: NaN/Inf propagate into it, and so do values so large
    (3e38, near float32's limit) that only corruption explains them."""
    model = copy_of("plain")
    edit_tensors(model, lambda t: t.update({"model.norm.weight": torch.full_like(t["model.norm.weight"], 3e38)}))
    with pytest.raises(CheckpointError, match=r"tensor 'model\.norm\.weight' holds values so large"):
        verify_model_dir(model)
