"""The bar: greedy outputs identical to transformers' generate, whatever the schedule.

Chunked prefill, prefix-cache hits and recompute after preemption change *how* the KV is
produced, never *what* is generated; each case below compares against the same reference.
"""

from __future__ import annotations

import pytest
import torch

from executor.api import prompt_logits
from executor.engine import LLMEngine
from executor.loader import load_model
from executor.sampler import SamplingParams

from ._hf_reference import hf_greedy, hf_logits

SHAPES = ("tiny-qwen2", "tiny-qwen3", "tiny-llama")
NEW_TOKENS = 12
GREEDY = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)


def _prompts(lengths, vocab=500, shared_prefix: list[int] | None = None) -> list[list[int]]:
    out = []
    for i, n in enumerate(lengths):
        body = [(i * 7 + j * 3) % vocab + 3 for j in range(n)]
        out.append((shared_prefix or []) + body)
    return out


@pytest.fixture(scope="module")
def references(tiny_model_dirs, one_thread):
    """HF greedy outputs per shape for the mixed-length batch and the shared-prefix batch."""
    prefix = [(5 * j) % 500 + 3 for j in range(40)]
    batches = {"mixed": _prompts([5, 17, 33, 40]), "shared": _prompts([3, 9, 20], shared_prefix=prefix)}
    return batches, {
        (shape, name): hf_greedy(tiny_model_dirs[shape], prompts, NEW_TOKENS)
        for shape in SHAPES for name, prompts in batches.items()
    }


@pytest.mark.parametrize("shape", SHAPES)
def test_logits_match_transformers(shape, tiny_model_dirs, one_thread):
    model = load_model(tiny_model_dirs[shape])
    ids = list(range(3, 60))
    ours = prompt_logits(model, ids)
    ref = hf_logits(tiny_model_dirs[shape], ids)
    assert ours.shape == ref.shape
    rel = ((ours - ref).abs().max() / ref.abs().max()).item()
    assert rel < 1e-4


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    "variant",
    [
        dict(),
        dict(max_num_batched_tokens=16),  # chunked prefill, chunk 16
        dict(max_num_batched_tokens=16, long_prefill_token_threshold=8, block_size=4),
        dict(batching="static", max_num_seqs=2),
        dict(kv_layout="contiguous", enable_prefix_caching=False, max_model_len=64),
    ],
    ids=["plain", "chunk16", "chunk8-block4", "static", "contiguous"],
)
def test_greedy_matches_transformers(shape, variant, tiny_model_dirs, references, one_thread):
    batches, ref = references
    kwargs = dict(device="cpu", kv_cache_memory=4 * 2**20, max_model_len=128)
    kwargs.update(variant)
    engine = LLMEngine(tiny_model_dirs[shape], **kwargs)
    outs = engine.generate(batches["mixed"], GREEDY)
    assert [o.token_ids for o in outs] == ref[(shape, "mixed")]
    assert all(o.finish_reason == "length" for o in outs)


@pytest.mark.parametrize("shape", SHAPES)
def test_prefix_cache_hits_keep_outputs(shape, tiny_model_dirs, references, one_thread):
    batches, ref = references
    engine = LLMEngine(tiny_model_dirs[shape], device="cpu", kv_cache_memory=4 * 2**20, max_model_len=128,
                       enable_prefix_caching=True, block_size=8, max_num_batched_tokens=32)
    first = engine.generate(batches["shared"], GREEDY)
    second = engine.generate(batches["shared"], GREEDY)  # now mostly served from the prefix cache
    assert [o.token_ids for o in first] == ref[(shape, "shared")]
    assert [o.token_ids for o in second] == ref[(shape, "shared")]
    assert engine.scheduler.prefix_cache_stats.hit_tokens >= 40 * 3
    assert all(o.num_cached_tokens >= 40 for o in second)


@pytest.mark.parametrize("shape", SHAPES)
def test_preemption_keeps_outputs(shape, tiny_model_dirs, references, one_thread):
    batches, ref = references
    # 16 blocks of 4 = one full 64-token request; four requests must take turns.
    engine = LLMEngine(tiny_model_dirs[shape], device="cpu", num_blocks=18, block_size=4, max_model_len=64,
                       enable_prefix_caching=False, reserve_full_prompt=False)
    outs = engine.generate(batches["mixed"], GREEDY)
    assert [o.token_ids for o in outs] == ref[(shape, "mixed")]
    assert engine.scheduler.num_preemptions > 0
    assert any(o.num_preemptions > 0 for o in outs)


@pytest.mark.slow
def test_smollm2_matches_transformers(smollm2_dir, one_thread):
    """The real model: plain chunked prefill (chunk 16), then shared prefixes served from the
    prefix cache in a pool small enough to force preemptions; always transformers' tokens."""
    engine = LLMEngine(smollm2_dir, device="cpu", num_blocks=64, max_model_len=512, max_num_batched_tokens=16)
    system = "You are a concise assistant. Answer in one short sentence.\n"
    texts = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]
    prompts = [engine.tokenize(t) for t in texts] + [engine.tokenize(system + q) for q in
                                                     ("Question: what is 2+2?", "Question: name a red fruit.",
                                                      "Question: who wrote Hamlet?")]
    eos = engine.config.eos_token_id
    ref = hf_greedy(smollm2_dir, prompts, 16, pad_id=eos, eos_token_id=eos)
    outs = engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=16))
    assert [o.token_ids for o in outs] == ref
    assert "Paris" in outs[0].text

    small = LLMEngine(engine.model, tokenizer=engine.tokenizer, device="cpu", num_blocks=8, block_size=8,
                      max_model_len=64, max_num_batched_tokens=16, reserve_full_prompt=False)
    long_ref = hf_greedy(smollm2_dir, prompts[3:], 24, pad_id=eos, eos_token_id=None)
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    first = small.generate(prompts[3:], params)
    again = small.generate(prompts[3:], params)
    assert [o.token_ids for o in first] == [o.token_ids for o in again] == long_ref
    assert small.scheduler.num_preemptions > 0
    assert small.scheduler.prefix_cache_stats.hit_tokens > 0

    ours = prompt_logits(engine.model, prompts[2])
    theirs = hf_logits(smollm2_dir, prompts[2])
    assert ((ours - theirs).abs().max() / theirs.abs().max()).item() < 1e-4


@pytest.mark.parametrize("shape", ["tiny-llama", "tiny-qwen2"])   # tied and untied heads
def test_logits_of_a_few_rows_match_the_plain_head_product(shape, tiny_model_dirs, one_thread):
    """compute_logits takes a transposed product for 1..8 rows on CPU (faster there); same logits."""
    model = load_model(tiny_model_dirs[shape])
    weight = model.model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight
    for rows in (1, 2, 3, 8, 9, 20):
        hidden = torch.randn(rows, weight.shape[1], generator=torch.Generator().manual_seed(rows))
        got = model.compute_logits(hidden)
        assert got.shape == (rows, weight.shape[0]) and got.is_contiguous()
        assert torch.allclose(got, torch.nn.functional.linear(hidden, weight), rtol=1e-5, atol=1e-5)
