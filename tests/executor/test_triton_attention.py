"""Triton paged attention and KV scatter against the pure-torch reference.

On CPU the kernels run under TRITON_INTERPRET=1 (set below and in conftest.py before triton is
imported); on a CUDA machine the same tests exercise the compiled kernels. Shapes are tiny because the
interpreter executes every program in Python.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton", reason="triton is not installed")

from hypothesis import given, settings, strategies as st  # noqa: E402
from tests.hypothesis_budget import examples

from executor.kernels import _triton_common, triton_kernels_usable  # noqa: E402
from executor.kernels.reference import paged_attention_reference, store_kv_reference  # noqa: E402
from executor.kernels.triton_attention import choose_num_splits, paged_attention, store_kv  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

if DEVICE == "cpu" and not _triton_common.INTERPRETED:
    pytest.skip(
        "no CUDA and triton was imported before TRITON_INTERPRET=1 could be set; run this file alone",
        allow_module_level=True,
    )


def test_kernels_report_themselves_usable_here():
    """The executor picks the Triton backend from this answer; in this test process it must be yes."""
    assert triton_kernels_usable(torch.device(DEVICE))
    assert triton_kernels_usable(torch.device("cpu")) == _triton_common.INTERPRETED


class PagedBatch:
    """A random mixed batch laid out in a paged cache the way the executor would build it.

    Each sequence is (cached_tokens, new_tokens). Physical blocks are drawn at random from a shuffled
    pool; every cache slot that holds no token is NaN and unused block-table entries point at a NaN
    "poison" block, so any read outside a sequence's context shows up in the output.
    """

    def __init__(self, seqs, num_heads, num_kv_heads, head_dim, block_size, dtype=torch.float32, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.seqs = seqs
        self.block_size = block_size
        lens = [cached + new for cached, new in seqs]
        blocks_per_seq = [-(-n // block_size) for n in lens]
        max_blocks = max(max(blocks_per_seq), 1) + 1  # one spare column, always poisoned
        num_blocks = sum(blocks_per_seq) + 3
        poison = num_blocks - 1
        pool = torch.randperm(num_blocks - 1, generator=gen).tolist()
        shape = (num_blocks, block_size, num_kv_heads, head_dim)
        self.k_cache = torch.full(shape, float("nan"), dtype=dtype)
        self.v_cache = torch.full(shape, float("nan"), dtype=dtype)
        self.block_tables = torch.full((len(seqs), max_blocks), poison, dtype=torch.int32)
        q_rows, starts = [], [0]
        for s, (cached, new) in enumerate(seqs):
            table = [pool.pop() for _ in range(blocks_per_seq[s])]
            self.block_tables[s, : len(table)] = torch.tensor(table, dtype=torch.int32)
            for pos in range(cached + new):
                b, off = table[pos // block_size], pos % block_size
                self.k_cache[b, off] = torch.randn(num_kv_heads, head_dim, generator=gen).to(dtype)
                self.v_cache[b, off] = torch.randn(num_kv_heads, head_dim, generator=gen).to(dtype)
            q_rows.append(torch.randn(new, num_heads, head_dim, generator=gen).to(dtype))
            starts.append(starts[-1] + new)
        self.query = torch.cat(q_rows)
        self.seq_lens = torch.tensor(lens, dtype=torch.int32)
        self.query_start_loc = torch.tensor(starts, dtype=torch.int32)
        self.max_query_len = max(new for _, new in seqs)
        self.max_seq_len = max(lens)
        self.scale = head_dim ** -0.5

    def to(self, device):
        for name in ("k_cache", "v_cache", "block_tables", "query", "seq_lens", "query_start_loc"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def run(self, **kwargs):
        return paged_attention(self.query, self.k_cache, self.v_cache, self.block_tables, self.seq_lens,
                               self.query_start_loc, self.max_query_len, self.max_seq_len, self.scale, **kwargs)

    def reference(self):
        return paged_attention_reference(self.query, self.k_cache, self.v_cache, self.block_tables,
                                         self.seq_lens, self.query_start_loc, self.scale)


# (cached tokens, new tokens): three decodes, a prefill chunk continuing a cached prefix, a fresh prompt.
MIXED = [(0, 1), (16, 1), (39, 1), (20, 11), (0, 23)]


@pytest.mark.parametrize(
    "num_heads,num_kv_heads,head_dim,block_size",
    [
        (9, 3, 64, 16),    # SmolLM2-135M: GQA 3
        (28, 4, 128, 16),  # Qwen2.5-7B: GQA 7
        (16, 8, 128, 16),  # Qwen3-0.6B: GQA 2
        (4, 4, 64, 32),    # plain multi-head, bigger blocks
        (4, 2, 64, 8),     # blocks smaller than the kernel's key tile
        (4, 2, 80, 16),    # head_dim not a power of two (padded to 128 inside the kernel)
    ],
)
def test_mixed_batch_matches_reference(num_heads, num_kv_heads, head_dim, block_size):
    batch = PagedBatch(MIXED, num_heads, num_kv_heads, head_dim, block_size).to(DEVICE)
    out = batch.run()
    assert out.shape == batch.query.shape and out.dtype == batch.query.dtype
    assert torch.isfinite(out).all(), "a NaN slot outside some sequence's context leaked into the output"
    torch.testing.assert_close(out, batch.reference(), atol=2e-5, rtol=1e-4)


def test_split_kv_decode_matches_reference():
    # Short sequences leave some of the 4 splits without a single key tile; they must merge as no-ops.
    batch = PagedBatch([(70, 1), (2, 1), (33, 1)], 6, 2, 64, 16, seed=1).to(DEVICE)
    expected = batch.reference()
    torch.testing.assert_close(batch.run(num_splits=4), expected, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(batch.run(num_splits=1), expected, atol=2e-5, rtol=1e-4)


def test_length_hints_never_change_the_result():
    """max_query_len / max_seq_len only pick tiles and splits (a CUDA graph captures fixed hints)."""
    batch = PagedBatch(MIXED, 6, 2, 64, 16, seed=9).to(DEVICE)
    expected = batch.reference()
    for max_query_len, max_seq_len in ((1, 1), (1, 4096), (512, 8)):
        out = paged_attention(batch.query, batch.k_cache, batch.v_cache, batch.block_tables, batch.seq_lens,
                              batch.query_start_loc, max_query_len, max_seq_len, batch.scale)
        torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)


def test_split_count_only_for_small_long_decode_batches():
    assert choose_num_splits(4, 2, max_query_len=1, max_seq_len=4096) > 1
    assert choose_num_splits(4, 2, max_query_len=7, max_seq_len=4096) == 1  # prefill present
    assert choose_num_splits(256, 8, max_query_len=1, max_seq_len=4096) == 1  # grid already full
    assert choose_num_splits(4, 2, max_query_len=1, max_seq_len=64) == 1  # too short to pay off


@pytest.mark.parametrize("dtype,atol", [(torch.float16, 3e-3), (torch.bfloat16, 2e-2)])
def test_half_precision_caches(dtype, atol):
    batch = PagedBatch(MIXED, 9, 3, 64, 16, dtype=dtype, seed=2).to(DEVICE)
    out = batch.run()
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), batch.reference().float(), atol=atol, rtol=atol)


def test_out_argument_is_filled_in_place():
    batch = PagedBatch([(5, 1), (0, 9)], 4, 2, 64, 16, seed=3).to(DEVICE)
    out = torch.full_like(batch.query, 7.0)
    returned = batch.run(out=out)
    assert returned.data_ptr() == out.data_ptr()
    torch.testing.assert_close(out, batch.reference(), atol=2e-5, rtol=1e-4)


def test_graph_padding_rows_are_harmless():
    """CUDA-graph padding: sequences with seq_len 0 give zero rows, and q_len-0 sequences are skipped."""
    batch = PagedBatch([(12, 1), (30, 1)], 4, 2, 64, 16, seed=4).to(DEVICE)
    real = batch.run()
    padded_query = torch.cat([batch.query, torch.randn(2, 4, 64, device=DEVICE)])
    seq_lens = torch.tensor([13, 0, 31, 0, 0], dtype=torch.int32, device=DEVICE)
    query_start_loc = torch.tensor([0, 1, 1, 2, 3, 4], dtype=torch.int32, device=DEVICE)
    # Sequences: real, empty (q_len 0), real, then two padding decodes with seq_len 0 (rows 2 and 3).
    block_tables = batch.block_tables[[0, 0, 1, 0, 0]].contiguous()
    out = paged_attention(padded_query, batch.k_cache, batch.v_cache, block_tables, seq_lens,
                          query_start_loc, 1, 31, batch.scale)
    torch.testing.assert_close(out[[0, 1]], real, atol=1e-6, rtol=0)
    assert torch.equal(out[2:], torch.zeros_like(out[2:]))


def test_chunked_prefill_then_decode_equals_one_full_prefill():
    """Store K/V step by step (chunks of 7, then decodes) and attend: same rows as one big prefill."""
    gen = torch.Generator().manual_seed(5)
    num_heads, kv_heads, head_dim, block_size, total = 6, 2, 64, 16, 26
    q = torch.randn(total, num_heads, head_dim, generator=gen).to(DEVICE)
    k = torch.randn(total, kv_heads, head_dim, generator=gen).to(DEVICE)
    v = torch.randn(total, kv_heads, head_dim, generator=gen).to(DEVICE)
    k_cache = torch.zeros(6, block_size, kv_heads, head_dim, device=DEVICE)
    v_cache = torch.zeros_like(k_cache)
    table = torch.tensor([[4, 1]], dtype=torch.int32, device=DEVICE)
    slots = torch.tensor([4 * 16 + p if p < 16 else 16 + p - 16 for p in range(total)], device=DEVICE)

    steps = [(0, 7), (7, 7), (14, 7), (21, 1), (22, 1), (23, 1), (24, 2)]
    pieces = []
    for start, n in steps:
        store_kv(k[start:start + n], v[start:start + n], k_cache, v_cache, slots[start:start + n])
        pieces.append(paged_attention(
            q[start:start + n], k_cache, v_cache, table,
            torch.tensor([start + n], dtype=torch.int32, device=DEVICE),
            torch.tensor([0, n], dtype=torch.int32, device=DEVICE), n, start + n, head_dim ** -0.5))
    stepped = torch.cat(pieces)

    full = paged_attention(q, k_cache, v_cache, table, torch.tensor([total], dtype=torch.int32, device=DEVICE),
                           torch.tensor([0, total], dtype=torch.int32, device=DEVICE), total, total,
                           head_dim ** -0.5)
    torch.testing.assert_close(stepped, full, atol=2e-5, rtol=1e-4)
    dense = torch.softmax(
        torch.einsum("qhd,khd->hqk", q.double(), k.double().repeat_interleave(3, 1)) * head_dim ** -0.5
        + torch.full((total, total), float("-inf"), device=DEVICE).triu(1).double(), dim=-1)
    expected = torch.einsum("hqk,khd->qhd", dense, v.double().repeat_interleave(3, 1)).float()
    torch.testing.assert_close(full, expected, atol=2e-5, rtol=1e-4)


def test_store_kv_scatters_rows_and_skips_padding():
    gen = torch.Generator().manual_seed(6)
    num_blocks, block_size, kv_heads, head_dim, tokens = 5, 16, 3, 64, 12
    k_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=gen)
    v_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=gen)
    key = torch.randn(tokens, kv_heads, head_dim, generator=gen)
    value = torch.randn(tokens, kv_heads, head_dim, generator=gen)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:tokens]
    slots[[2, 7, 11]] = -1
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    store_kv_reference(key, value, expected_k, expected_v, slots)

    k_dev, v_dev = k_cache.to(DEVICE), v_cache.to(DEVICE)
    store_kv(key.to(DEVICE), value.to(DEVICE), k_dev, v_dev, slots.to(DEVICE))
    assert torch.equal(k_dev.cpu(), expected_k) and torch.equal(v_dev.cpu(), expected_v)
    kept = slots[slots >= 0]
    assert torch.equal(k_dev.cpu().view(-1, kv_heads, head_dim)[kept], key[slots >= 0])
    untouched = torch.ones(num_blocks * block_size, dtype=torch.bool)
    untouched[kept] = False
    assert torch.equal(k_dev.cpu().view(-1, kv_heads, head_dim)[untouched],
                       k_cache.view(-1, kv_heads, head_dim)[untouched])


def test_store_kv_writes_through_strided_views_and_casts():
    """Key/value often arrive as slices of a fused QKV projection; the cache may be fp16."""
    gen = torch.Generator().manual_seed(7)
    qkv = torch.randn(5, 4 + 2 + 2, 64, generator=gen).to(DEVICE)
    key, value = qkv[:, 4:6], qkv[:, 6:8]
    k_cache = torch.zeros(2, 8, 2, 64, dtype=torch.float16, device=DEVICE)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.tensor([3, 9, -1, 0, 15], device=DEVICE)
    store_kv(key, value, k_cache, v_cache, slots)
    flat_v = v_cache.view(16, 2, 64)
    assert torch.equal(flat_v[[3, 9, 0, 15]], value[[0, 1, 3, 4]].half())
    assert int(torch.count_nonzero(flat_v.abs().sum((1, 2)))) == 4


def test_bad_shapes_raise_clear_errors():
    batch = PagedBatch([(3, 1)], 4, 2, 64, 16)
    with pytest.raises(ValueError, match="num_heads=3 is not a multiple of num_kv_heads=2"):
        paged_attention(batch.query[:, :3], batch.k_cache, batch.v_cache, batch.block_tables, batch.seq_lens,
                        batch.query_start_loc, 1, 4, 0.1)
    with pytest.raises(ValueError, match="query_start_loc shape"):
        paged_attention(batch.query, batch.k_cache, batch.v_cache, batch.block_tables, batch.seq_lens,
                        batch.query_start_loc[:1], 1, 4, 0.1)
    with pytest.raises(TypeError, match="seq_lens must be int32"):
        paged_attention(batch.query, batch.k_cache, batch.v_cache, batch.block_tables, batch.seq_lens.long(),
                        batch.query_start_loc, 1, 4, 0.1)
    with pytest.raises(ValueError, match="slot_mapping shape"):
        store_kv(torch.zeros(2, 2, 64), torch.zeros(2, 2, 64), batch.k_cache, batch.v_cache,
                 torch.zeros(3, dtype=torch.int64))


@settings(max_examples=examples(6), deadline=None, derandomize=True)
@given(
    group=st.sampled_from([1, 2, 3, 7]),
    kv_heads=st.integers(1, 2),
    block_size=st.sampled_from([4, 16, 32]),
    seqs=st.lists(st.tuples(st.integers(0, 40), st.integers(1, 12)), min_size=1, max_size=4),
)
def test_random_batches_match_reference(group, kv_heads, block_size, seqs):
    batch = PagedBatch(seqs, group * kv_heads, kv_heads, 64, block_size, seed=len(seqs)).to(DEVICE)
    torch.testing.assert_close(batch.run(), batch.reference(), atol=2e-5, rtol=1e-4)
