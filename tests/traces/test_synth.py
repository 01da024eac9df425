"""Synthesised prompt tokens: exact lengths, equal hash ids -> equal tokens, distinct ids ->
distinct tokens, stable across runs, valid ids, and no accidental sharing between requests."""

from __future__ import annotations

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.hypothesis_budget import examples

from traces.synth import FIRST_TOKEN, private_tokens, tokens_from_hashes
from traces.table import TraceTable


@settings(max_examples=examples(60), deadline=None)
@given(
    hashes=st.lists(st.integers(0, 2**40), min_size=1, max_size=12),
    block=st.sampled_from([1, 16, 512, 37]),
    cut=st.integers(0, 511),
    vocab=st.sampled_from([100, 32000, 151936]),
)
def test_hash_tokens_are_exact_valid_and_equal_iff_hash_equal(hashes, block, cut, vocab):
    prompt_len = max(1, len(hashes) * block - cut % block)  # last block may be partial
    tokens = tokens_from_hashes(hashes, block, prompt_len, vocab)
    assert len(tokens) == prompt_len
    assert all(FIRST_TOKEN <= t < vocab for t in tokens)
    assert tokens == tokens_from_hashes(list(hashes), block, prompt_len, vocab)  # deterministic
    full = [tuple(tokens[k * block:(k + 1) * block]) for k in range(prompt_len // block)]
    for i in range(len(full)):
        for j in range(len(full)):
            if hashes[i] == hashes[j]:
                assert full[i] == full[j]
            elif block >= 16:  # a 16+-token collision is astronomically unlikely
                assert full[i] != full[j]


def test_blocks_depend_on_their_hash_id_only_so_any_engine_block_size_sees_the_sharing():
    a = tokens_from_hashes([0, 1, 2], 512, 1200, 32000)
    b = tokens_from_hashes([0, 1, 9], 512, 1500, 32000)
    assert a[:1024] == b[:1024] and a[1024:1200] != b[1024:1200]
    for kv_block in (16, 64):  # the policy layer's 16-token blocks see 64 shared blocks
        shared = sum(a[k:k + kv_block] == b[k:k + kv_block] for k in range(0, 1024, kv_block))
        assert shared == 1024 // kv_block


def test_private_tokens_never_share_a_prefix_and_are_stable():
    a, b = private_tokens("r1", 64, 32000), private_tokens("r2", 64, 32000)
    assert a == private_tokens("r1", 64, 32000)
    assert a[:16] != b[:16]
    assert a[:16] != tokens_from_hashes([1], 16, 16, 32000)  # never collides with small trace hash ids


def test_iter_requests_uses_given_then_hashed_then_private_tokens():
    df = pd.DataFrame({
        "request_id": ["given", "hashed", "private", "hashed2"],
        "arrival_s": [3.0, 1.0, 2.0, 4.0],
        "prompt_len": [3, 40, 20, 40],
        "output_len": [5, 6, 7, 8],
        "priority": [1, 0, 2, 0],
        "block_hashes": [None, [5, 6, 7], None, [5, 6, 8]],
        "hash_block_size": [16, 16, 16, 16],
        "prompt_token_ids": [[10, 11, 12], None, None, None],
    })
    table = TraceTable.from_dataframe(df)
    reqs = list(table.iter_requests(vocab_size=1000, eos_token_id=2))
    assert [r.request_id for r in reqs] == ["hashed", "private", "given", "hashed2"]  # arrival order
    by_id = {r.request_id: r for r in reqs}
    assert by_id["given"].prompt_token_ids == [10, 11, 12]
    assert by_id["hashed"].prompt_token_ids[:32] == by_id["hashed2"].prompt_token_ids[:32]
    assert by_id["hashed"].prompt_token_ids[32:] != by_id["hashed2"].prompt_token_ids[32:]
    assert len(by_id["private"].prompt_token_ids) == 20
    assert [(r.max_tokens, r.arrival_time, r.priority, r.eos_token_id, r.ignore_eos) for r in reqs] == [
        (6, 0.0, 0, 2, True), (7, 1.0, 2, 2, True), (5, 2.0, 1, 2, True), (8, 3.0, 0, 2, True)]  # rebased to 0
    assert [row.request_id for row in table.iter_rows()] == ["hashed", "private", "given", "hashed2"]
