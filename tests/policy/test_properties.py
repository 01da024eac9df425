"""Hypothesis state machines: random sequences of operations against BlockPool,
KVCacheManager and Scheduler, with every invariant checked after every step.

The invariants are the ones DESIGN.md lists (and reference/vllm_policy.md section 3):
conservation, free <=> unreferenced, ref_cnt == owners, hash map one to one, atomic
failed allocations, eviction safety, budgets, one queue per live request, no leaks, and
liveness. Every plan is also executed by the FakeEngine, which checks that each KV
position a request reads holds that request's own prefix.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from tests.hypothesis_budget import examples, steps

from policy import (
    ContiguousKVCacheManager,
    KVCacheManager,
    Request,
    RequestRejected,
    RequestStatus,
    SchedulerConfig,
    build_scheduler,
)
from policy.block_pool import BlockPool
from tests.policy.fake_engine import FakeEngine
from tests.policy.invariants import check_plan, check_pool, check_scheduler, check_tables, free_list

STATEFUL = settings(
    max_examples=examples(200),
    stateful_step_count=steps(40),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


# -- BlockPool ------------------------------------------------------------------------------------
class BlockPoolMachine(RuleBasedStateMachine):
    """Owners take new blocks, hit cached ones, publish hashes and free tail first; a plain
    list models the expected free-list (LRU) order."""

    @initialize(num_blocks=st.integers(1, 10))
    def init(self, num_blocks):
        self.pool = BlockPool(num_blocks)
        self.owners: list[list] = []
        self.model_free = list(range(num_blocks))

    def snapshot(self):
        return free_list(self.pool), [(b.ref_cnt, b.block_hash) for b in self.pool.blocks], dict(self.pool.cached)

    @rule(n=st.integers(0, 12))
    def allocate(self, n):
        before = self.snapshot()
        if n > len(self.model_free):
            with pytest.raises(ValueError, match="free"):
                self.pool.get_new_blocks(n)
            assert self.snapshot() == before, "a refused get_new_blocks changed the pool"
            return
        refs = [b.ref_cnt for b in self.pool.blocks]
        got = self.pool.get_new_blocks(n)
        ids = [b.block_id for b in got]
        assert ids == self.model_free[:n], "blocks not reused in LRU (free-list) order"
        assert all(refs[i] == 0 for i in ids), "eviction handed out a referenced block"
        assert all(b.block_hash is None and b.ref_cnt == 1 for b in got)
        del self.model_free[:n]
        if got:
            self.owners.append(got)

    @precondition(lambda self: self.owners)
    @rule(i=st.integers(0, 99), j=st.integers(0, 99), key=st.integers(0, 4))
    def publish(self, i, j, key):
        owner = self.owners[i % len(self.owners)]
        block = owner[j % len(owner)]
        h = bytes([key])
        expect = block.block_hash is None and h not in self.pool.cached
        old = block.block_hash
        self.pool.cache_block(block, h)
        assert block.block_hash == (h if expect else old)

    @precondition(lambda self: self.pool.cached)
    @rule(i=st.integers(0, 99), join=st.integers(-1, 99))
    def hit(self, i, join):
        blocks = list(self.pool.cached.values())
        block = blocks[i % len(blocks)]
        if block.ref_cnt == 0:
            self.model_free.remove(block.block_id)
        self.pool.touch([block])
        if join < 0 or not self.owners:
            self.owners.append([block])
        else:
            self.owners[join % len(self.owners)].append(block)

    @precondition(lambda self: self.owners)
    @rule(i=st.integers(0, 99))
    def free(self, i):
        blocks = self.owners.pop(i % len(self.owners))
        refs = {b.block_id: b.ref_cnt for b in blocks}
        for b in reversed(blocks):
            refs[b.block_id] -= 1
            if refs[b.block_id] == 0:
                self.model_free.append(b.block_id)
        self.pool.free_blocks(reversed(blocks))

    @rule()
    def reset(self):
        idle = not self.owners
        assert self.pool.reset_prefix_cache() is idle
        if idle:
            assert not self.pool.cached and all(b.block_hash is None for b in self.pool.blocks)

    @invariant()
    def holds(self):
        check_pool(self.pool, self.owners)
        assert free_list(self.pool) == self.model_free


# -- KVCacheManager -------------------------------------------------------------------------------
tokens_st = st.lists(st.integers(0, 2), min_size=1, max_size=18)


class KVCacheManagerMachine(RuleBasedStateMachine):
    """Admissions (with prefix hits, chunks, reserves), growth, frees, forks, taken-back
    steps and resets on one manager; a small alphabet makes prefix hits common."""

    @initialize(num_blocks=st.integers(2, 14), block_size=st.sampled_from([1, 2, 4]), caching=st.booleans())
    def init(self, num_blocks, block_size, caching):
        self.kv = KVCacheManager(num_blocks, block_size, caching)
        self.bs = block_size
        self.live: dict[str, Request] = {}
        self.counter = 0

    def snapshot(self):
        kv = self.kv
        return (free_list(kv.pool), [(b.ref_cnt, b.block_hash) for b in kv.pool.blocks], dict(kv.pool.cached),
                {rid: (list(t.block_ids), t.num_cached) for rid, t in kv.tables.items() if t.blocks})

    def oracle_hit(self, req: Request) -> int:
        """Longest cached prefix from the blocks' own hashes (not the map), in tokens."""
        if not self.kv.enable_caching:
            return 0
        hashed = {b.block_hash for b in self.kv.pool.blocks if b.block_hash is not None}
        k = 0
        while k < (req.num_tokens - 1) // self.bs and req.block_hashes[k] in hashed:
            k += 1
        return k * self.bs

    def allocate(self, req, n, hits=(), num_hit=0, reserve=0, keep=0):
        kv = self.kv
        before = self.snapshot()
        table = kv.tables.get(req.request_id)
        held = (len(table.blocks) if table else 0) + len(hits)
        computed = req.num_computed_tokens + num_hit
        revived = sum(1 for b in hits if b.ref_cnt == 0)
        need = max(0, cdiv(computed + n, self.bs) - held)
        if reserve:
            need = max(need, cdiv(computed + reserve, self.bs) - held)
        fits = need == 0 and not hits or need + revived + keep <= kv.num_free_blocks
        refs = [b.ref_cnt for b in kv.pool.blocks]
        ids = kv.allocate_slots(req, n, list(hits), num_hit, reserve, keep)
        if ids is None:
            assert not fits, "allocate_slots refused an allocation that fits"
            assert self.snapshot() == before, "a failed allocate_slots changed state"
            return None
        assert fits, "allocate_slots granted an allocation that does not fit"
        new_ids = ids[len(hits):]
        assert [b.block_id for b in hits] == ids[: len(hits)]
        assert all(refs[i] == 0 for i in new_ids), "a new block was taken from a referenced block"
        assert len(new_ids) == max(0, cdiv(computed + n, self.bs) - held)
        assert all(b.ref_cnt > 0 for b in hits)
        req.num_computed_tokens = computed + n
        return ids

    @rule(tokens=tokens_st, chunk=st.integers(0, 20), reserve=st.booleans(), keep=st.integers(0, 2))
    def admit(self, tokens, chunk, reserve, keep):
        kv = self.kv
        rid = f"r{self.counter}"
        self.counter += 1
        req = Request(rid, tokens, max_tokens=100)
        before = self.snapshot()
        hits, num_hit = kv.get_computed_blocks(req)
        assert self.snapshot() == before, "a prefix lookup changed state"
        assert num_hit == len(hits) * self.bs == self.oracle_hit(req)
        assert num_hit <= req.num_tokens - 1
        assert all(b.block_hash == h for b, h in zip(hits, req.block_hashes))
        remaining = req.num_tokens - num_hit
        n = 1 + chunk % remaining
        if self.allocate(req, n, hits, num_hit, reserve=remaining if reserve else 0, keep=keep) is not None:
            kv.record_admission(req, num_hit)
            self.live[rid] = req
        else:
            assert rid not in kv.tables

    def pick(self, i):
        ids = sorted(self.live)
        return self.live[ids[i % len(ids)]]

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 99), n=st.integers(1, 8), token=st.integers(0, 2))
    def grow(self, i, n, token):
        req = self.pick(i)
        if req.num_computed_tokens == req.num_tokens:
            req.append_output_token(token)
            n = 1
        self.allocate(req, min(n, req.num_tokens - req.num_computed_tokens))

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 99))
    def free(self, i):
        req = self.pick(i)
        self.kv.free(self.live.pop(req.request_id))
        assert self.kv.get_block_ids(req.request_id) == []

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 99), n=st.integers(1, 8), token=st.integers(0, 2))
    def take_back(self, i, n, token):
        """The scheduler's mid-step preemption: allocate a chunk, take it back, free."""
        req = self.pick(i)
        if req.num_computed_tokens == req.num_tokens:
            req.append_output_token(token)
        before = req.num_computed_tokens
        if self.allocate(req, min(n, req.num_tokens - before)) is not None:
            self.kv.unpublish_uncomputed(req, before)
            req.num_computed_tokens = before
            check_tables(self.kv, self.live)
        self.kv.free(self.live.pop(req.request_id))

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 99))
    def fork(self, i):
        parent = self.pick(i)
        child = Request(f"r{self.counter}", parent.all_token_ids, max_tokens=100)
        self.counter += 1
        shared = self.kv.fork(parent, child)
        assert shared == min(parent.num_computed_tokens, child.num_tokens - 1) // self.bs * self.bs
        assert self.kv.get_block_ids(child.request_id) == self.kv.get_block_ids(parent.request_id)[: shared // self.bs]
        child.num_computed_tokens = shared
        self.live[child.request_id] = child

    @rule(tokens=tokens_st)
    def probe(self, tokens):
        req = Request("probe", tokens, max_tokens=1)
        before = self.snapshot()
        assert self.kv.peek_prefix_hit_tokens(req) == self.oracle_hit(req)
        assert self.snapshot() == before

    @rule()
    def reset(self):
        idle = self.kv.num_free_blocks == self.kv.num_blocks
        assert self.kv.reset_prefix_cache() is idle
        if idle:
            assert not self.kv.pool.cached

    @invariant()
    def holds(self):
        check_tables(self.kv, self.live)
        if not self.live:
            assert self.kv.num_free_blocks == self.kv.num_blocks, "blocks leaked after every request ended"


# -- Scheduler ------------------------------------------------------------------------------------
MAX_LEN = 24
EOS = 5  # the fake model's vocabulary is 5..9, so eos and stop tokens do occur


@st.composite
def configs(draw):
    layout = draw(st.sampled_from(["paged", "paged", "paged", "contiguous"]))
    bs = draw(st.sampled_from([2, 4]))
    chunked = draw(st.booleans()) or layout == "contiguous"
    caching = layout == "paged" and draw(st.booleans())
    per_max = cdiv(MAX_LEN, bs)
    if layout == "contiguous":
        num_blocks = draw(st.integers(per_max, 3 * per_max + 1))
    else:  # often "one maximal request barely fits" (forces preemption), sometimes roomy
        num_blocks = draw(st.one_of(st.just(per_max), st.integers(per_max, per_max + 3),
                                    st.integers(per_max, 3 * per_max)))
    return SchedulerConfig(
        num_blocks=num_blocks,
        block_size=bs,
        max_model_len=MAX_LEN,
        max_num_seqs=draw(st.integers(1, 5)),
        max_num_batched_tokens=draw(st.integers(2, 12)) if chunked else draw(st.integers(MAX_LEN, MAX_LEN + 8)),
        enable_chunked_prefill=chunked,
        long_prefill_token_threshold=draw(st.sampled_from([0, 0, 3])),
        enable_prefix_caching=caching,
        policy=draw(st.sampled_from(["fcfs", "priority", "shortest-prompt-first", "longest-prefix-match"])),
        batching=draw(st.sampled_from(["continuous", "continuous", "static"])),
        kv_layout=layout,
        reserve_full_prompt=draw(st.booleans()),
        watermark=draw(st.sampled_from([0.0, 0.0, 0.2])),
    )


prompts_st = st.tuples(st.sampled_from([0, 3, 8, 12]), st.lists(st.integers(0, 3), min_size=1, max_size=10)).map(
    lambda t: [7] * t[0] + t[1])  # a shared run of 7s gives prefix hits
request_specs = st.tuples(prompts_st, st.sampled_from([1, 2, 5, 8, 12]), st.integers(0, 2),
                          st.sampled_from(["none", "eos", "ignore_eos", "stop_ids", "min_tokens"]))


class SchedulerMachine(RuleBasedStateMachine):
    @initialize(cfg=configs(), first=st.lists(request_specs, min_size=2, max_size=6))
    def init(self, cfg, first):
        self.s = build_scheduler(cfg)
        self.engine = FakeEngine(self.s, vocab=5, first_token=5)
        self.counter = 0
        self.ended: set[str] = set()
        self.forming = False
        self.preempted = False
        for spec in first:
            self.add(*spec)

    def new_id(self):
        self.counter += 1
        return f"r{self.counter}"

    @rule(spec=request_specs)
    def add_request(self, spec):
        self.add(*spec)

    def add(self, prompt, max_tokens, priority, stop):
        kw = dict(none={}, eos=dict(eos_token_id=EOS), ignore_eos=dict(eos_token_id=EOS, ignore_eos=True),
                  stop_ids=dict(stop_token_ids=(6, 8)), min_tokens=dict(eos_token_id=EOS, min_tokens=3))[stop]
        req = Request(self.new_id(), prompt, max_tokens=max_tokens, priority=priority,
                      arrival_time=float(self.counter), **kw)
        s = self.s
        longest = min(len(prompt) + max_tokens, MAX_LEN)
        capacity = s.kv.region_blocks if isinstance(s.kv, ContiguousKVCacheManager) else s.config.num_blocks
        if cdiv(longest, s.config.block_size) > capacity:
            with pytest.raises(RequestRejected, match="could never finish"):
                s.add_request(req)
        else:
            s.add_request(req)
            assert req.status is RequestStatus.WAITING

    def one_step(self):
        self.mid_step = True  # stays set if a check fails, so teardown does not drain a torn step
        s = self.s
        waiting_before = {r.request_id for r in s.waiting}
        batch_open = self.forming or not s.running
        plan = s.schedule()
        check_plan(s, plan, waiting_before)
        admitted = [r.request_id for r in plan.scheduled if r.request_id in waiting_before]
        if s.config.batching == "static":
            # Static batching: admissions only while a batch forms (nothing ran before it,
            # or the previous step's admissions were cut short by the token budget alone).
            assert not admitted or batch_open, f"static batch admitted {admitted} while a closed batch runs"
            if not plan.preempted_ids:
                self.forming = batch_open and (
                    plan.total_num_scheduled_tokens == s.config.max_num_batched_tokens
                    and bool(s.waiting) and len(s.running) < s.config.max_num_seqs)
        self.preempted |= bool(plan.preempted_ids)
        sampled = self.engine.run_plan(plan)
        result = s.update_from_output(plan, sampled)
        for req in result.finished:
            assert req.request_id not in s.requests and req.is_finished
            assert s.get_block_ids(req.request_id) == []
            assert req.num_output_tokens <= req.max_tokens and req.num_tokens <= MAX_LEN
            assert req.request_id not in self.ended
            self.ended.add(req.request_id)
        self.mid_step = False
        return plan

    @rule()
    def step(self):
        self.one_step()

    @rule(i=st.integers(0, 99))
    def abort(self, i):
        if not self.s.requests:
            with pytest.raises(KeyError, match="'r0'"):
                self.s.abort("r0")
            return
        ids = sorted(self.s.requests)
        rid = ids[i % len(ids)]
        req = self.s.abort(rid)
        assert req.status is RequestStatus.FINISHED_ABORTED and rid not in self.s.requests
        self.engine.forget(rid)
        self.ended.add(rid)
        with pytest.raises(KeyError):
            self.s.abort(rid)

    @rule(i=st.integers(0, 99), max_tokens=st.integers(1, 6))
    def fork(self, i, max_tokens):
        s = self.s
        if not s.running or s.config.kv_layout != "paged":
            return
        parent = s.running[i % len(s.running)]
        child = Request(self.new_id(), parent.prompt_token_ids, max_tokens=max_tokens)
        if len(s.running) >= s.config.max_num_seqs:
            with pytest.raises(RequestRejected, match="max_num_seqs"):
                s.fork(parent.request_id, child)
            return
        try:
            s.fork(parent.request_id, child)
        except RequestRejected as err:
            assert "could never finish" in str(err)

    @rule()
    def reset_prefix_cache(self):
        idle = self.s.kv.num_used_blocks == 0
        assert self.s.reset_prefix_cache() is idle or self.s.config.kv_layout == "contiguous"

    @invariant()
    def holds(self):
        check_scheduler(self.s)

    def teardown(self):
        """Liveness and no leaks: with no more arrivals everything finishes, then nothing
        is left: every block free, no queue, table or request state."""
        s = getattr(self, "s", None)
        if s is None or getattr(self, "mid_step", False):
            return
        limit = 50 + 40 * len(s.requests) * MAX_LEN
        steps = 0
        while s.has_unfinished_requests():
            self.one_step()
            check_scheduler(s)
            steps += 1
            assert steps < limit, f"no progress after {steps} steps: {s.num_running} running, {s.num_waiting} waiting"
        event(f"{s.config.kv_layout}/{s.config.batching}: preempted={self.preempted}")
        event(f"prefix hits={s.prefix_cache_stats.hit_tokens > 0}")
        event(f"requests finished={len(self.ended)}")
        s.schedule()  # flushes finished_ids
        assert not s.running and not s.waiting and not s.requests
        assert s.kv.num_used_blocks == 0 and s.kv.num_free_blocks == s.kv.num_regions * s.kv.region_blocks \
            if isinstance(s.kv, ContiguousKVCacheManager) else s.kv.num_free_blocks == s.config.num_blocks
        if isinstance(s.kv, KVCacheManager):
            assert not s.kv.tables and all(b.ref_cnt == 0 for b in s.kv.pool.blocks)
        else:
            assert not s.kv.region_of and not s.kv.used_tokens
        assert not s._needs_table


TestBlockPool = BlockPoolMachine.TestCase
TestBlockPool.settings = STATEFUL
TestKVCacheManager = KVCacheManagerMachine.TestCase
TestKVCacheManager.settings = STATEFUL
TestScheduler = SchedulerMachine.TestCase
TestScheduler.settings = settings(STATEFUL, stateful_step_count=steps(50))
