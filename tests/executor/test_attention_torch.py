"""The torch attention backend against the kernels' obvious reference, on a mixed batch:
a fresh prompt, a chunk over a cached prefix, decodes of different lengths, a fully cached
prompt recomputing its last token."""

from __future__ import annotations

import pytest
import torch

from executor.attention import get_backend
from executor.kernels.reference import paged_attention_reference
from executor.model_runner import build_step_inputs


def _case(seed=0, heads=6, kv_heads=2, dim=16, block_size=4, num_blocks=64):
    gen = torch.Generator().manual_seed(seed)
    # (q_len, computed) per sequence
    shape = [(9, 0), (5, 11), (1, 20), (1, 3), (1, 0), (7, 0), (1, 33)]
    free = torch.randperm(num_blocks, generator=gen).tolist()
    rows = []
    for q_len, computed in shape:
        need = -(-(q_len + computed) // block_size)
        table = [free.pop() for _ in range(need)]
        rows.append(([1] * q_len, computed, table))
    inputs = build_step_inputs(rows, [True] * len(rows), block_size, torch.device("cpu"))
    k_cache = torch.randn(num_blocks, block_size, kv_heads, dim, generator=gen)
    v_cache = torch.randn(num_blocks, block_size, kv_heads, dim, generator=gen)
    n = inputs.meta.num_tokens
    q = torch.randn(n, heads, dim, generator=gen)
    k = torch.randn(n, kv_heads, dim, generator=gen)
    v = torch.randn(n, kv_heads, dim, generator=gen)
    return inputs, q, k, v, k_cache, v_cache


def test_torch_backend_matches_reference_on_a_mixed_batch():
    inputs, q, k, v, k_cache, v_cache = _case()
    meta = inputs.meta
    backend = get_backend("torch", "cpu")
    kc, vc = k_cache.clone(), v_cache.clone()
    out = backend.forward(q, k, v, kc, vc, meta, scale=0.25)
    # the step's K/V landed in their slots, nothing else changed
    flat = kc.view(-1, *kc.shape[2:])
    assert torch.equal(flat[meta.slot_mapping], k)
    untouched = torch.ones(flat.shape[0], dtype=torch.bool)
    untouched[meta.slot_mapping] = False
    assert torch.equal(flat[untouched], k_cache.view(-1, *k_cache.shape[2:])[untouched])
    ref = paged_attention_reference(q, kc, vc, meta.block_tables, meta.seq_lens, meta.query_start_loc, 0.25)
    torch.testing.assert_close(out, ref.to(out.dtype), rtol=1e-5, atol=1e-5)


def test_plan_is_shared_across_layers():
    inputs, q, k, v, k_cache, v_cache = _case(seed=1)
    backend = get_backend("torch", "cpu")
    backend.forward(q, k, v, k_cache, v_cache, inputs.meta, scale=0.25)
    plan = inputs.meta.scratch["torch"]
    backend.forward(q, k, v, k_cache, v_cache, inputs.meta, scale=0.25)
    assert inputs.meta.scratch["torch"] is plan


def test_backend_names_are_checked():
    with pytest.raises(ValueError, match="unknown attention backend"):
        get_backend("xformers", "cpu")
    with pytest.raises(ValueError, match="flash-attn"):
        get_backend("flash-attn", "cpu")


def test_block_table_too_short_is_an_error():
    with pytest.raises(ValueError, match="cannot hold"):
        build_step_inputs([([1] * 5, 0, [0])], [True], 4, torch.device("cpu"))


def _decode_case(seed: int, contexts: list[int], heads=6, kv_heads=2, dim=16, block_size=4, num_blocks=96):
    gen = torch.Generator().manual_seed(seed)
    free = torch.randperm(num_blocks, generator=gen).tolist()
    rows = [([1], c, [free.pop() for _ in range(-(-(c + 1) // block_size))]) for c in contexts]
    inputs = build_step_inputs(rows, [True] * len(rows), block_size, torch.device("cpu"))
    k_cache = torch.randn(num_blocks, block_size, kv_heads, dim, generator=gen)
    v_cache = torch.randn(num_blocks, block_size, kv_heads, dim, generator=gen)
    n = inputs.meta.num_tokens
    return (inputs, torch.randn(n, heads, dim, generator=gen), torch.randn(n, kv_heads, dim, generator=gen),
            torch.randn(n, kv_heads, dim, generator=gen), k_cache, v_cache)


def test_decode_gathers_reuse_one_workspace_across_steps_and_stay_exact():
    # The gathered K/V go into buffers the backend keeps (no per-step allocation, whose page
    # faults made identical steps take different times); reusing them must not change results.
    backend = get_backend("torch", "cpu")
    ptrs = []
    for seed, contexts in ((2, [30, 7, 19]), (3, [12, 3]), (4, [40, 25, 33, 2])):
        inputs, q, k, v, kc, vc = _decode_case(seed, contexts)
        meta = inputs.meta
        out = backend.forward(q, k, v, kc, vc, meta, scale=0.25)
        ref = paged_attention_reference(q, kc, vc, meta.block_tables, meta.seq_lens, meta.query_start_loc, 0.25)
        torch.testing.assert_close(out, ref.to(out.dtype), rtol=1e-5, atol=1e-5)
        ptrs.append(backend._workspace._bufs[("k", kc.dtype, kc.device)].data_ptr())
    # the second step needs less than the first: same buffer; the third needs more: it grows once
    assert ptrs[0] == ptrs[1]
