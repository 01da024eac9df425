"""The Triton backend wrapper (store_kv + paged_attention) gives the torch backend's greedy
outputs on a mixed schedule. On CPU the kernels run in Triton's interpreter (slow, so the
model and schedule are tiny); on a GPU machine this runs the compiled kernels."""

from __future__ import annotations

import pytest
import torch

from executor.engine import LLMEngine
from executor.sampler import SamplingParams

pytest.importorskip("triton")


def test_triton_backend_matches_torch_backend(tiny_model_dirs, one_thread):
    import os

    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no GPU and the Triton interpreter is off")
    prompts = [[3, 4, 5, 6, 7, 8, 9], [10, 11, 12], [3, 4, 5, 6, 7, 8, 9, 20, 21]]
    params = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)
    outs = {}
    for backend in ("torch", "triton"):
        eng = LLMEngine(tiny_model_dirs["tiny-qwen3"], device="cpu", dtype=torch.float32, num_blocks=32, block_size=4,
                        max_model_len=32, max_num_batched_tokens=8, attention_backend=backend, cuda_graphs=False)
        outs[backend] = [o.token_ids for o in eng.generate(prompts, params)]
    assert outs["triton"] == outs["torch"]


def test_decode_graph_runner_padding_keeps_outputs(tiny_model_dirs, one_thread):
    """The CUDA-graph runner's static buffers and padding rows (slot -1, empty sequences), run
    as "padded eager" off CUDA: greedy outputs equal the torch backend's, and decodes went
    through the padded path (batch sizes 1, 2, 4 only, so 3 live rows pad to 4)."""
    import os

    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no GPU and the Triton interpreter is off")
    from executor.cuda_graphs import DecodeGraphRunner

    prompts = [[3, 4, 5, 6, 7], [10, 11, 12], [30, 31, 32, 33, 34, 35, 36, 37, 38, 39]]
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    kwargs = dict(device="cpu", dtype=torch.float32, num_blocks=32, block_size=4, max_model_len=32)
    ref = LLMEngine(tiny_model_dirs["tiny-qwen2"], attention_backend="torch", **kwargs)
    want = [o.token_ids for o in ref.generate(prompts, params)]
    eng = LLMEngine(ref.model, attention_backend="triton", cuda_graphs=False, **kwargs)
    graphs = DecodeGraphRunner(eng.model, max_batch=4, max_model_len=32, block_size=4, device="cpu",
                               batch_sizes=[1, 2, 4])
    graphs.capture()
    eng.runner.graph_runner = graphs
    got = [o.token_ids for o in eng.generate(prompts, params)]
    assert got == want
    assert graphs.num_replays == 3  # the three decode steps; prefill steps ran eagerly
