"""BlockPool: the free list is the LRU order, eviction is lazy, frees go tail first."""

import pytest

from policy.block_pool import BlockPool


def free_ids(pool):
    return [b.block_id for b in pool.free_queue]


def test_fresh_pool_hands_out_blocks_in_id_order():
    pool = BlockPool(5)
    assert free_ids(pool) == [0, 1, 2, 3, 4]
    got = pool.get_new_blocks(3)
    assert [b.block_id for b in got] == [0, 1, 2]
    assert all(b.ref_cnt == 1 for b in got)
    assert pool.num_free_blocks == 2 and pool.usage == pytest.approx(0.6)


def test_freed_blocks_join_the_tail_in_the_order_given():
    pool = BlockPool(6)
    a = pool.get_new_blocks(3)
    pool.free_blocks(reversed(a))  # a request frees tail first
    assert free_ids(pool) == [3, 4, 5, 2, 1, 0]
    # The next allocations reuse never-used blocks first, then the freed tail before the head.
    assert [b.block_id for b in pool.get_new_blocks(5)] == [3, 4, 5, 2, 1]


def test_lru_order_follows_free_time():
    pool = BlockPool(4)
    a, b, c, d = pool.get_new_blocks(4)
    pool.free_blocks([c])
    pool.free_blocks([a])
    pool.free_blocks([d, b])
    assert free_ids(pool) == [2, 0, 3, 1]


def test_shared_block_returns_to_free_list_only_at_zero_refs():
    pool = BlockPool(3)
    (blk,) = pool.get_new_blocks(1)
    pool.cache_block(blk, b"h")
    pool.touch([blk])
    assert blk.ref_cnt == 2
    pool.free_blocks([blk])
    assert blk.ref_cnt == 1 and 0 not in free_ids(pool)
    pool.free_blocks([blk])
    assert blk.ref_cnt == 0 and free_ids(pool)[-1] == 0


def test_eviction_is_lazy_a_freed_block_keeps_its_hash_until_reused():
    pool = BlockPool(2)
    x, y = pool.get_new_blocks(2)
    pool.cache_block(x, b"hx")
    pool.free_blocks([x])
    assert pool.lookup(b"hx") is x and x.block_hash == b"hx"
    # Reviving a freed cached block takes it out of the free list without a search.
    pool.touch([x])
    assert x.ref_cnt == 1 and pool.num_free_blocks == 0
    pool.free_blocks([x, y])
    (reused,) = pool.get_new_blocks(1)
    assert reused is x and x.block_hash is None and pool.lookup(b"hx") is None
    assert pool.num_free_blocks == 1


def test_touching_a_free_block_in_the_middle_keeps_the_rest_in_order():
    pool = BlockPool(5)
    blocks = pool.get_new_blocks(5)
    for i, blk in enumerate(blocks):
        pool.cache_block(blk, bytes([i]))
    pool.free_blocks(blocks)
    pool.touch([blocks[2]])
    assert free_ids(pool) == [0, 1, 3, 4]
    assert list(reversed([b.block_id for b in pool.free_queue])) == [4, 3, 1, 0]


def test_get_new_blocks_refuses_more_than_free_and_changes_nothing():
    pool = BlockPool(3)
    pool.get_new_blocks(2)
    with pytest.raises(ValueError, match="asked for 2 KV blocks with only 1 free"):
        pool.get_new_blocks(2)
    assert pool.num_free_blocks == 1 and free_ids(pool) == [2]


def test_cache_block_keeps_the_first_block_for_a_hash_canonical():
    pool = BlockPool(3)
    a, b = pool.get_new_blocks(2)
    pool.cache_block(a, b"same")
    pool.cache_block(b, b"same")  # computed the same content concurrently
    assert pool.lookup(b"same") is a and b.block_hash is None
    pool.cache_block(a, b"other")  # a block keeps its first hash
    assert a.block_hash == b"same" and pool.lookup(b"other") is None


def test_reset_prefix_cache_only_when_nothing_is_in_use():
    pool = BlockPool(2)
    (a,) = pool.get_new_blocks(1)
    pool.cache_block(a, b"h")
    assert pool.reset_prefix_cache() is False and pool.lookup(b"h") is a
    pool.free_blocks([a])
    assert pool.reset_prefix_cache() is True
    assert pool.cached == {} and a.block_hash is None


def test_pool_needs_a_block():
    with pytest.raises(ValueError, match="num_blocks=0"):
        BlockPool(0)


def test_get_new_block_is_get_new_blocks_of_one():
    from tests.policy.invariants import check_pool

    pools = [BlockPool(4), BlockPool(4)]
    for pool in pools:
        a, b, c = pool.get_new_blocks(3)
        pool.cache_block(a, b"ha")
        pool.free_blocks([c, a])  # free list: 3, 2, 0 (0 keeps its hash until reused)
    for _ in range(3):
        one = pools[0].get_new_block()
        (other,) = pools[1].get_new_blocks(1)
        assert one.block_id == other.block_id and one.ref_cnt == other.ref_cnt == 1
        assert free_ids(pools[0]) == free_ids(pools[1])
        assert pools[0].lookup(b"ha") is None or pools[0].lookup(b"ha").block_id == 0
        check_pool(pools[0])
    assert pools[0].lookup(b"ha") is None and pools[0].num_free_blocks == 0
    with pytest.raises(ValueError, match="0 free"):
        pools[0].get_new_block()
