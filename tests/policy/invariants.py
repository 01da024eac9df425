"""Invariant checks shared by the property tests (see DESIGN.md, "Invariants").

Each function raises AssertionError with a message saying which invariant broke."""

from __future__ import annotations

from collections import Counter

from policy import ContiguousKVCacheManager, KVCacheManager, RequestStatus, Scheduler
from policy.block_pool import BlockPool
from policy.hashing import extend_block_hashes


def free_list(pool: BlockPool) -> list[int]:
    """The free list walked forward, checked against a backward walk and its links."""
    q = pool.free_queue
    forward = [b.block_id for b in q]
    backward = []
    node = q._tail.prev_free
    while node is not q._head:
        backward.append(node.block_id)
        node = node.prev_free
    assert forward == backward[::-1], "free list forward and backward walks disagree"
    assert len(set(forward)) == len(forward) == q.num_free, "free list has duplicates or a wrong count"
    return forward


def check_pool(pool: BlockPool, owners: list[list] | None = None) -> None:
    """Conservation, free <=> unreferenced, links, ref_cnt == owners, hash map one to one."""
    free = free_list(pool)
    free_set = set(free)
    referenced = [b for b in pool.blocks if b.ref_cnt > 0]
    assert pool.num_free_blocks + len(referenced) == pool.num_blocks, "free + referenced != total"
    for b in pool.blocks:
        assert b.ref_cnt >= 0, f"{b} has a negative ref_cnt"
        in_queue = b.block_id in free_set
        assert in_queue == (b.ref_cnt == 0), f"{b}: in free list={in_queue} but ref_cnt={b.ref_cnt}"
        if not in_queue:
            assert b.prev_free is None and b.next_free is None, f"{b} is out of the free list but still linked"
    if owners is not None:
        counts = Counter(b.block_id for blocks in owners for b in blocks)
        for b in pool.blocks:
            assert b.ref_cnt == counts.get(b.block_id, 0), (
                f"{b}: ref_cnt {b.ref_cnt} but {counts.get(b.block_id, 0)} table entries hold it")
    for h, b in pool.cached.items():
        assert b.block_hash == h, f"hash map entry points at {b}, which carries another hash"
    hashed = [b for b in pool.blocks if b.block_hash is not None]
    assert len(hashed) == len(pool.cached), "a hashed block is missing from the hash map"
    assert all(pool.cached.get(b.block_hash) is b for b in hashed), "hash map and block hashes disagree"


def check_tables(kv: KVCacheManager, requests: dict) -> None:
    """Every table belongs to a known request, covers its computed tokens, and a published
    block holds exactly the request's block of tokens, already computed."""
    bs = kv.block_size
    check_pool(kv.pool, [t.blocks for t in kv.tables.values()])
    for rid, table in kv.tables.items():
        assert rid in requests, f"KV table for {rid!r}, which is not a live request"
        req = requests[rid]
        assert table.block_ids == [b.block_id for b in table.blocks], f"{rid}: block ids and blocks disagree"
        assert len(set(table.block_ids)) == len(table.block_ids), f"{rid}: a block appears twice in its table"
        assert len(table.blocks) * bs >= req.num_computed_tokens, f"{rid}: table shorter than its computed tokens"
        truth: list[bytes] = []  # recomputed from the tokens, not trusted from the request
        extend_block_hashes(truth, req.all_token_ids, bs, req.cache_salt)
        assert req.block_hashes == truth[: len(req.block_hashes)], f"{rid}: stale block_hashes"
        for i, b in enumerate(table.blocks):
            if b.block_hash is not None:
                assert (i + 1) * bs <= req.num_computed_tokens, (
                    f"{rid}: block {i} ({b}) is published but its tokens are not all computed")
                assert i < len(truth) and b.block_hash == truth[i], (
                    f"{rid}: block {i} is published under a hash that is not its content's")


def check_contiguous(kv: ContiguousKVCacheManager, running_ids: set[str]) -> None:
    regions = list(kv.region_of.values())
    assert len(set(regions)) == len(regions), "two requests share a contiguous region"
    assert not set(regions) & set(kv.free_regions), "a region is both free and reserved"
    assert sorted(regions + kv.free_regions) == list(range(kv.num_regions)), "a region was lost"
    used = sum(kv.blocks_for_tokens(n) for n in kv.used_tokens.values())
    unusable = kv.num_blocks - kv.num_regions * kv.region_blocks
    assert kv.num_free_blocks + used + kv.num_reserved_unused_blocks + unusable == kv.num_blocks, (
        "free + referenced + reserved != total")
    assert set(kv.region_of) == running_ids, "contiguous regions are not held by exactly the running requests"
    assert all(n <= kv.region_blocks * kv.block_size for n in kv.used_tokens.values()), "a region overflowed"


def check_scheduler(s: Scheduler) -> None:
    cfg = s.config
    running = s.running
    waiting = list(s.waiting)
    assert len(waiting) == len(s.waiting), "waiting queue length and contents disagree"
    assert len(running) <= cfg.max_num_seqs, f"{len(running)} running > max_num_seqs={cfg.max_num_seqs}"
    run_ids = [r.request_id for r in running]
    wait_ids = [r.request_id for r in waiting]
    assert len(set(run_ids)) == len(run_ids) and len(set(wait_ids)) == len(wait_ids), "a request is queued twice"
    assert not set(run_ids) & set(wait_ids), "a request is both running and waiting"
    assert set(run_ids) | set(wait_ids) == set(s.requests), "live requests and queues disagree"
    for r in running:
        assert s.requests[r.request_id] is r and r.status is RequestStatus.RUNNING, f"{r.request_id}: {r.status}"
        assert r.num_computed_tokens <= r.num_tokens
    for r in waiting:
        assert s.requests[r.request_id] is r
        assert r.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED), f"{r.request_id}: {r.status} in waiting"
        assert r.num_computed_tokens == 0, f"waiting {r.request_id} keeps {r.num_computed_tokens} computed tokens"
        assert s.get_block_ids(r.request_id) == [], f"waiting {r.request_id} still owns KV blocks"
    if isinstance(s.kv, ContiguousKVCacheManager):
        check_contiguous(s.kv, set(run_ids))
    else:
        check_tables(s.kv, s.requests)
        assert set(s.kv.tables) <= set(run_ids), "a request that is not running owns a KV table"


def check_plan(s: Scheduler, plan, waiting_before: set[str]) -> None:
    """Budget, per-row bounds, and no admissions in a step that preempted."""
    cfg = s.config
    total = sum(r.num_new_tokens for r in plan.scheduled)
    assert total <= cfg.max_num_batched_tokens, f"scheduled {total} tokens > budget {cfg.max_num_batched_tokens}"
    assert total == plan.total_num_scheduled_tokens, "plan token counts disagree with its rows"
    ids = [r.request_id for r in plan.scheduled]
    assert len(set(ids)) == len(ids), "a request appears twice in one plan"
    admitted = [rid for rid in ids if rid in waiting_before]
    if plan.preempted_ids:
        assert not admitted, f"admitted {admitted} in a step that preempted {plan.preempted_ids}"
    assert not set(plan.preempted_ids) & set(ids), "a preempted request is still in the plan"
    for r in plan.scheduled:
        req = s.requests[r.request_id]
        assert r.num_new_tokens > 0, f"{r.request_id}: empty row"
        assert r.num_computed_tokens + r.num_new_tokens <= req.num_tokens, f"{r.request_id}: schedules unknown tokens"
        assert r.context_len <= cfg.max_model_len
        assert r.samples == (r.context_len == req.num_tokens)
        if cfg.long_prefill_token_threshold and r.num_new_tokens > 1:
            assert r.num_new_tokens <= cfg.long_prefill_token_threshold
        if r.request_id in waiting_before:
            assert r.new_table, f"{r.request_id}: admitted without its whole block table"
