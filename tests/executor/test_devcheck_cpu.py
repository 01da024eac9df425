"""The Python stages `experiments/bench/gpu_check.sh` calls, run on CPU with a tiny shape, so the
device run cannot fail on a typo; and the decode roofline reproduces the reference bounds."""

from __future__ import annotations

import json

import pytest

from experiments.bench import devcheck
from executor.config import ModelConfig
from executor.models_registry import SHAPES


def test_nano_bench_workload_reproduces_its_totals():
    prompts, max_tokens = devcheck.nano_bench_workload()
    assert len(prompts) == 256
    assert sum(map(len, prompts)) == 142_827 and sum(max_tokens) == 133_966


@pytest.mark.parametrize("shape,bound0,bound1", [("qwen3-0.6b", 25_200, 21_100), ("qwen2.5-0.5b", 125_000, 64_000)])
def test_roofline_matches_the_reference_table(shape, bound0, bound1):
    prompts, max_tokens = devcheck.nano_bench_workload()
    config = ModelConfig.from_dict(SHAPES[shape])
    kwargs = dict(bandwidth=3.0e12, peak_flops=798e12, prefill_flops=600e12)
    r0 = devcheck.decode_roofline(config, [len(p) for p in prompts], max_tokens, **kwargs)
    r1 = devcheck.decode_roofline(config, [len(p) for p in prompts], max_tokens, step_overhead_s=1e-3, **kwargs)
    assert r0["bound_out_tok_per_s"] == pytest.approx(bound0, rel=0.02)
    assert r1["bound_out_tok_per_s"] == pytest.approx(bound1, rel=0.02)


def test_stages_run_on_cpu_with_a_tiny_shape(tmp_path, one_thread):
    model_dir = tmp_path / "tiny"
    out = tmp_path / "out"
    common = ["--device", "cpu", "--backend", "torch", "--out", str(out), "--max-model-len", "256",
              "--max-num-batched-tokens", "256", "--kv-cache-memory", str(4 * 2**20), "--tag", "t"]
    assert devcheck.main(["write", "--shape", "tiny-qwen3", "--model-dir", str(model_dir), "--write-dtype", "float32"]) == 0
    assert devcheck.main(["correctness", "--model-dir", str(model_dir), "--max-tokens", "3", *common]) == 0
    small = ["--num-requests", "3", "--max-input-len", "100", "--max-output-len", "100"]
    assert devcheck.main(["throughput", "--model-dir", str(model_dir), *small, *common]) == 0
    assert devcheck.main(["hf", "--model-dir", str(model_dir), *small, "--hf-batch-size", "2", *common]) == 0
    assert devcheck.main(["roofline", "--shape", "tiny-qwen3", "--bandwidth", "1e11", "--num-requests", "4",
                          "--out", str(out), "--tag", "t"]) == 0
    correctness = json.loads((out / "correctness-t.json").read_text())
    assert correctness["eager"]["identical_requests"] == correctness["eager"]["num_requests"] == 7
    throughput = json.loads((out / "throughput-t.json").read_text())
    assert throughput["output_tokens"] == throughput["expected_output_tokens"] == 300
    hf = json.loads((out / "hf-t.json").read_text())
    assert hf["output_tokens"] == 300 and hf["engine_output_tok_per_s"] > 0
    assert (out / "roofline-t.json").is_file()
