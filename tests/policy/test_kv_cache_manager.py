"""KVCacheManager: prefix hits, all-or-nothing allocation, freeing, stats, fork."""

import pytest

from policy import KVCacheManager, Request

BS = 4


def admit(kv: KVCacheManager, req: Request, chunk: int | None = None):
    """Admit `req` as the scheduler does: take its prefix hit, then allocate the rest (or a chunk)."""
    hits, num_hit = kv.get_computed_blocks(req)
    n = req.num_tokens - num_hit if chunk is None else chunk
    ids = kv.allocate_slots(req, n, hits, num_hit)
    if ids is not None:
        req.num_computed_tokens = num_hit + n
    return ids, num_hit


def decode(kv: KVCacheManager, req: Request, token: int):
    req.append_output_token(token)
    ids = kv.allocate_slots(req, 1)
    if ids is not None:
        req.num_computed_tokens += 1
    return ids


def snapshot(kv: KVCacheManager):
    pool = kv.pool
    return (
        [b.block_id for b in pool.free_queue],
        [(b.ref_cnt, b.block_hash) for b in pool.blocks],
        dict(pool.cached),
        {rid: (list(t.block_ids), t.num_cached) for rid, t in kv.tables.items()},
    )


def test_hits_cover_full_blocks_only():
    kv = KVCacheManager(16, BS)
    a = Request("a", list(range(10)), max_tokens=4)
    ids, hit = admit(kv, a)
    assert hit == 0 and ids == [0, 1, 2]
    b = Request("b", list(range(9)) + [99], max_tokens=4)
    hits, num_hit = kv.get_computed_blocks(b)
    assert num_hit == 8 and [blk.block_id for blk in hits] == [0, 1]
    ids, _ = admit(kv, b)
    assert ids == [0, 1, 3]  # shared prefix blocks, then its own partial block
    assert [kv.pool.blocks[i].ref_cnt for i in (0, 1, 2, 3)] == [2, 2, 1, 1]


def test_a_fully_cached_prompt_still_recomputes_its_last_token():
    kv = KVCacheManager(16, BS)
    a = Request("a", list(range(8)), max_tokens=4)
    admit(kv, a)
    b = Request("b", list(range(8)), max_tokens=4)
    hits, num_hit = kv.get_computed_blocks(b)
    assert num_hit == 4 and len(hits) == 1  # 8 cached tokens, but token 7 must be recomputed
    ids, _ = admit(kv, b)
    assert ids == [0, 2] and b.num_computed_tokens == 8


def test_decode_takes_a_new_block_only_when_the_last_is_full_and_publishes_full_blocks():
    kv = KVCacheManager(8, BS)
    a = Request("a", [1, 2, 3], max_tokens=10)
    assert admit(kv, a)[0] == [0]
    assert decode(kv, a, 4) == []  # position 3 still fits block 0
    assert kv.pool.blocks[0].block_hash == a.block_hashes[0]  # block 0 is now full: published
    assert decode(kv, a, 5) == [1]
    assert kv.pool.blocks[1].block_hash is None


def test_allocate_slots_is_all_or_nothing():
    kv = KVCacheManager(4, BS)
    a = Request("a", list(range(8)), max_tokens=4)
    admit(kv, a)
    kv.free(a)  # blocks 0, 1 stay cached in the free list
    big = Request("big", list(range(8)) + [50] * 12, max_tokens=1)
    before = snapshot(kv)
    hits, num_hit = kv.get_computed_blocks(big)
    assert num_hit == 8
    assert kv.allocate_slots(big, big.num_tokens - num_hit, hits, num_hit) is None
    assert snapshot(kv) == before and "big" not in kv.tables
    # A running request's failed growth changes nothing either.
    c = Request("c", [7] * 8, max_tokens=20)
    admit(kv, c)
    before = snapshot(kv)
    assert kv.allocate_slots(c, 100) is None
    assert snapshot(kv) == before


def test_reserve_tokens_and_keep_free_blocks_guard_admission_without_allocating_them():
    kv = KVCacheManager(4, BS)
    r = Request("r", list(range(16)), max_tokens=1)
    assert kv.allocate_slots(r, 4, reserve_tokens=16, keep_free_blocks=1) is None
    assert kv.num_free_blocks == 4 and not kv.tables
    assert kv.allocate_slots(r, 4, reserve_tokens=16) == [0]
    assert kv.num_free_blocks == 3


def test_hit_blocks_are_claimed_before_new_blocks_are_popped():
    kv = KVCacheManager(3, BS)
    a = Request("a", list(range(8)), max_tokens=1)
    admit(kv, a)  # blocks 0, 1
    x = Request("x", [50, 51], max_tokens=1)
    admit(kv, x)  # block 2
    kv.free(a)
    kv.free(x)
    assert [b.block_id for b in kv.pool.free_queue] == [1, 0, 2]  # a hit block at the head
    b = Request("b", list(range(8)) + [60, 61, 62, 63], max_tokens=1)
    ids, hit = admit(kv, b)
    # Popping a new block first would have evicted hit block 1; the hits are revived first.
    assert hit == 8 and ids == [0, 1, 2]
    assert kv.num_free_blocks == 0 and kv.pool.blocks[1].block_hash == b.block_hashes[1]


def test_free_releases_tail_first_so_the_prefix_outlives_the_tail():
    kv = KVCacheManager(8, BS)
    a = Request("a", list(range(12)), max_tokens=1)
    admit(kv, a)
    kv.free(a)
    assert [b.block_id for b in kv.pool.free_queue] == [3, 4, 5, 6, 7, 2, 1, 0]
    assert kv.get_block_ids("a") == [] and "a" not in kv.tables
    kv.free(a)  # freeing twice is harmless
    assert kv.num_free_blocks == 8


def test_prefix_cache_stats_count_admissions_in_tokens():
    kv = KVCacheManager(16, BS)
    for rid, prompt in (("a", list(range(10))), ("b", list(range(10))), ("c", [9] * 6)):
        req = Request(rid, prompt, max_tokens=1)
        _, hit = admit(kv, req)
        kv.record_admission(req, hit)
    assert (kv.stats.num_queries, kv.stats.queries_tokens, kv.stats.hit_tokens) == (3, 26, 8)
    assert kv.stats.hit_rate == pytest.approx(8 / 26)


def test_caching_disabled_never_hits_or_publishes():
    kv = KVCacheManager(8, BS, enable_caching=False)
    a = Request("a", list(range(9)), max_tokens=1)
    admit(kv, a)
    b = Request("b", list(range(9)), max_tokens=1)
    assert kv.get_computed_blocks(b) == ([], 0)
    assert kv.pool.cached == {}
    kv.record_admission(b, 0)
    assert kv.stats.queries_tokens == 0


def test_cache_salt_isolates_tenants():
    kv = KVCacheManager(8, BS)
    admit(kv, Request("a", list(range(9)), max_tokens=1, cache_salt="t1"))
    assert kv.get_computed_blocks(Request("b", list(range(9)), max_tokens=1, cache_salt="t2"))[1] == 0
    assert kv.get_computed_blocks(Request("c", list(range(9)), max_tokens=1, cache_salt="t1"))[1] == 8


def test_reset_prefix_cache_refused_while_in_use_then_forgets_everything():
    kv = KVCacheManager(8, BS)
    a = Request("a", list(range(9)), max_tokens=1)
    _, hit = admit(kv, a)
    kv.record_admission(a, hit)
    assert kv.reset_prefix_cache() is False and kv.pool.cached
    kv.free(a)
    assert kv.reset_prefix_cache() is True
    assert kv.pool.cached == {} and kv.stats.queries_tokens == 0
    assert kv.get_computed_blocks(Request("b", list(range(9)), max_tokens=1))[1] == 0


def test_fork_shares_full_blocks_and_recomputes_the_partial_tail():
    kv = KVCacheManager(8, BS)
    parent = Request("p", list(range(10)), max_tokens=5)
    admit(kv, parent)
    child = Request("c", list(range(10)), max_tokens=5)
    assert kv.fork(parent, child) == 8
    assert kv.get_block_ids("c") == [0, 1]
    assert [kv.pool.blocks[i].ref_cnt for i in range(3)] == [2, 2, 1]
    child.num_computed_tokens = 8
    assert kv.allocate_slots(child, 2) == [3]  # its own tail block, no copy needed
    with pytest.raises(ValueError, match="already holds KV blocks"):
        kv.fork(parent, child)
    kv.free(parent)
    kv.free(child)
    assert kv.num_free_blocks == 8 and all(b.ref_cnt == 0 for b in kv.pool.blocks)


def test_unpublish_uncomputed_withdraws_blocks_filled_only_by_a_taken_back_step():
    kv = KVCacheManager(8, BS)
    a = Request("a", list(range(12)), max_tokens=1)
    admit(kv, a, chunk=3)
    assert kv.allocate_slots(a, 6) == [1, 2]  # tokens 3..8 fill blocks 0 and 1
    a.num_computed_tokens = 9
    assert kv.pool.blocks[1].block_hash is not None
    kv.unpublish_uncomputed(a, 3)  # the step is taken back: only tokens 0..2 exist
    assert kv.pool.blocks[0].block_hash is None and kv.pool.blocks[1].block_hash is None
    assert kv.pool.cached == {}
    kv.free(a)
    assert kv.get_computed_blocks(Request("b", list(range(12)), max_tokens=1))[1] == 0


def test_grow_by_one_block_is_allocate_slots_at_a_boundary_without_caching():
    kvs = [KVCacheManager(6, BS, enable_caching=False) for _ in range(2)]
    reqs = [[Request(f"r{i}", [1] * 8, max_tokens=20) for i in range(2)] for _ in kvs]
    for kv, pair in zip(kvs, reqs):
        for req in pair:
            admit(kv, req)  # two full blocks each: 4 of 6 blocks used
    for step in range(2):  # each request crosses into a third block: the pool runs dry
        for i in range(2):
            a, b = reqs[0][i], reqs[1][i]
            for req in (a, b):
                req.append_output_token(5)
            ids = kvs[0].allocate_slots(a, 1)
            grew = kvs[1].grow_by_one_block(b)
            assert grew == (ids is not None)
            if grew:
                a.num_computed_tokens += 1
                b.num_computed_tokens += 1
            assert snapshot(kvs[0]) == snapshot(kvs[1]) and a.num_kv_slots == b.num_kv_slots
        if step == 0:
            for pair in reqs:  # fill the third block's remaining slots so the next token needs a fourth
                for req in pair:
                    req.num_computed_tokens = req.num_kv_slots
                    req.all_token_ids.extend([5] * (req.num_kv_slots + 1 - len(req.all_token_ids)))
    assert not kvs[1].grow_by_one_block(reqs[1][0])  # nothing left: refused, nothing changed
    with pytest.raises(ValueError, match="with prefix caching"):
        KVCacheManager(6, BS).grow_by_one_block(reqs[1][0])
