"""Scheduler behaviour users rely on: budgets, chunking, preemption, queue policies,
baselines, and clear errors for bad input."""

import pytest

from policy import (
    ContiguousKVCacheManager,
    Request,
    RequestRejected,
    RequestStatus,
    SchedulerConfig,
    StaticBatchScheduler,
    build_scheduler,
)
from tests.policy.fake_engine import FakeEngine


def make(**kw):
    """A scheduler with a FakeEngine attached (every plan is executed and its KV reads checked)."""
    base = dict(num_blocks=64, block_size=4, max_model_len=64, max_num_seqs=8, max_num_batched_tokens=32)
    base.update(kw)
    s = build_scheduler(SchedulerConfig(**base))
    s.test_engine = FakeEngine(s)
    return s


def req(rid, n_prompt=4, max_tokens=4, start=0, **kw):
    return Request(rid, list(range(start, start + n_prompt)), max_tokens=max_tokens, **kw)


def rows(plan):
    return [(r.request_id, r.num_computed_tokens, r.num_new_tokens) for r in plan.scheduled]


def step(s, token=1):
    return s.test_engine.step(token)


def run_to_end(s, max_steps=10_000):
    engine = s.test_engine
    start = engine.num_steps
    while s.has_unfinished_requests():
        engine.step()
        assert engine.num_steps - start < max_steps
    return engine


# -- bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "request_kw, match",
    [
        (dict(prompt_token_ids=list(range(64)), max_tokens=1), r"prompt of 64 tokens .*max_model_len=64"),
        (dict(prompt_token_ids=[1], max_tokens=0), r"max_tokens=0 must be an integer >= 1"),
        (dict(prompt_token_ids=[], max_tokens=3), r"prompt_token_ids is empty"),
        (dict(prompt_token_ids=[1], max_tokens=3, min_tokens=-1), r"min_tokens=-1"),
    ],
)
def test_bad_requests_are_rejected_naming_the_field(request_kw, match):
    s = make()
    with pytest.raises(RequestRejected, match=match) as err:
        s.add_request(Request("bad", **request_kw))
    assert "'bad'" in str(err.value) and isinstance(err.value, ValueError)
    assert not s.has_unfinished_requests() and s.num_waiting == 0


def test_duplicate_request_id_is_rejected():
    s = make()
    s.add_request(req("a"))
    with pytest.raises(RequestRejected, match=r"'a': duplicate request_id"):
        s.add_request(req("a"))
    assert s.num_waiting == 1


def test_a_request_that_could_never_fit_the_pool_is_rejected():
    s = make(num_blocks=4)  # 16 token slots
    with pytest.raises(RequestRejected, match=r"need 5 KV blocks but the pool has 4"):
        s.add_request(req("big", n_prompt=10, max_tokens=10))
    s.add_request(req("ok", n_prompt=10, max_tokens=6))  # 16 tokens fit exactly
    # A request's growth is capped by max_model_len, so that is what must fit.
    s = make(num_blocks=4, max_model_len=16)
    s.add_request(req("capped", n_prompt=10, max_tokens=1000))


def test_a_used_request_object_cannot_be_resubmitted():
    s = make()
    r = req("a", max_tokens=1)
    s.add_request(r)
    run_to_end(s)
    with pytest.raises(RequestRejected, match="already used"):
        s.add_request(r)


def test_abort_unknown_id_is_a_clear_key_error():
    s = make()
    with pytest.raises(KeyError, match="unknown or already finished request id 'nope'"):
        s.abort("nope")


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(num_blocks=0), "num_blocks"),
        (dict(block_size=0), "block_size"),
        (dict(max_model_len=-1), "max_model_len"),
        (dict(max_num_seqs=0), "max_num_seqs"),
        (dict(max_num_batched_tokens=2.5), "max_num_batched_tokens"),
        (dict(num_blocks=True), "num_blocks"),
        (dict(long_prefill_token_threshold=-1), "long_prefill_token_threshold"),
        (dict(watermark=1.0), "watermark"),
        (dict(policy="lifo"), "policy"),
        (dict(batching="dynamic"), "batching"),
        (dict(kv_layout="ring"), "kv_layout"),
        (dict(enable_chunked_prefill=False, max_num_batched_tokens=16, max_model_len=64), "max_num_batched_tokens"),
        (dict(kv_layout="contiguous", enable_prefix_caching=True), "enable_prefix_caching"),
    ],
)
def test_invalid_config_values_name_the_field(kw, field):
    base = dict(num_blocks=64)
    base.update(kw)
    with pytest.raises(ValueError, match=rf"SchedulerConfig\.{field}="):
        SchedulerConfig(**base)


def test_config_round_trips_and_rejects_unknown_fields():
    cfg = SchedulerConfig(num_blocks=10, policy="priority")
    assert SchedulerConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['max_seqs'\]"):
        SchedulerConfig.from_dict({"num_blocks": 10, "max_seqs": 3})


# -- chunked prefill and the knobs -------------------------------------------------------------
def test_long_prompt_is_chunked_by_the_token_budget_and_samples_only_at_the_end():
    s = make(max_num_batched_tokens=8)
    s.add_request(req("a", n_prompt=20, max_tokens=2))
    plans = [step(s, token=42) for _ in range(3)]
    assert [rows(p) for p, _ in plans] == [[("a", 0, 8)], [("a", 8, 8)], [("a", 16, 4)]]
    assert [p.scheduled[0].samples for p, _ in plans] == [False, False, True]
    assert [res.new_tokens for _, res in plans] == [[], [], [("a", 42)]]
    assert plans[0][0].num_prefill_tokens == 8 and plans[0][0].num_decode_tokens == 0
    plan, _ = step(s)
    assert rows(plan) == [("a", 20, 1)] and plan.num_decode_tokens == 1 and plan.num_prefill_tokens == 0


def test_running_requests_are_served_before_waiting_ones_within_the_budget():
    s = make(max_num_batched_tokens=10)
    s.add_request(req("a", n_prompt=6, max_tokens=5))
    step(s)
    s.add_request(req("b", n_prompt=20, max_tokens=5, start=100))
    plan, _ = step(s)
    assert rows(plan) == [("a", 6, 1), ("b", 0, 9)]
    assert plan.total_num_scheduled_tokens == 10


def test_long_prefill_token_threshold_caps_each_request_per_step():
    # vLLM's example, scaled down: threshold 8, budget 20, three long prompts -> 8 / 8 / 4.
    s = make(max_num_batched_tokens=20, long_prefill_token_threshold=8)
    for i in range(3):
        s.add_request(req(f"r{i}", n_prompt=20, max_tokens=2, start=100 * i))
    plan, _ = step(s)
    assert rows(plan) == [("r0", 0, 8), ("r1", 0, 8), ("r2", 0, 4)]


def test_max_num_seqs_caps_the_running_batch():
    s = make(max_num_seqs=2)
    for i in range(4):
        s.add_request(req(f"r{i}", start=10 * i))
    plan, _ = step(s)
    assert [r.request_id for r in plan.scheduled] == ["r0", "r1"]
    assert s.num_running == 2 and s.num_waiting == 2 and plan.num_waiting == 2


def test_with_chunking_off_a_prompt_waits_for_a_budget_that_holds_it_whole():
    s = make(enable_chunked_prefill=False, max_model_len=32, max_num_batched_tokens=32)
    s.add_request(req("a", n_prompt=20, max_tokens=3))
    s.add_request(req("b", n_prompt=20, max_tokens=3, start=50))
    s.add_request(req("c", n_prompt=4, max_tokens=3, start=90))
    plan, _ = step(s)
    # b does not fit the 12 tokens left and is not chunked; c may not jump ahead of it.
    assert rows(plan) == [("a", 0, 20)]
    plan, _ = step(s)
    assert rows(plan) == [("a", 20, 1), ("b", 0, 20), ("c", 0, 4)]


def test_reserve_full_prompt_admits_only_when_the_whole_prompt_fits():
    for reserve, admitted in ((True, False), (False, True)):
        s = make(num_blocks=5, max_num_batched_tokens=6, reserve_full_prompt=reserve)
        s.add_request(req("a", n_prompt=8, max_tokens=4))
        step(s)
        step(s)  # a holds 3 blocks now, 2 are free
        s.add_request(req("b", n_prompt=12, max_tokens=1, start=50))  # needs 3 blocks in all
        plan, _ = step(s)
        assert ("b" in [r.request_id for r in plan.scheduled]) is admitted, f"reserve_full_prompt={reserve}"


def test_watermark_keeps_a_share_of_the_pool_free_when_admitting_beside_running_requests():
    s = make(num_blocks=10, watermark=0.2)
    s.add_request(req("a", n_prompt=20, max_tokens=8))  # 5 blocks, admitted alone despite the mark
    step(s)
    s.add_request(req("b", n_prompt=12, max_tokens=2, start=50))  # 3 blocks would leave 1 < 2 free
    plan, _ = step(s)
    assert [r.request_id for r in plan.scheduled] == ["a"]
    s.add_request(req("c", n_prompt=8, max_tokens=2, start=90))
    plan, _ = step(s)
    assert [r.request_id for r in plan.scheduled] == ["a"]  # head-of-line: c does not pass b
    run_to_end(s)


# -- preemption -------------------------------------------------------------------------------
def test_preemption_by_recompute_frees_blocks_resets_progress_and_requeues_at_head():
    # 4 blocks of 4 tokens; each request needs 2 blocks for its prompt and grows.
    s = make(num_blocks=4, max_num_batched_tokens=16, reserve_full_prompt=False)
    s.add_request(req("a", n_prompt=8, max_tokens=6))
    s.add_request(req("b", n_prompt=8, max_tokens=6, start=50))
    s.add_request(req("c", n_prompt=3, max_tokens=2, start=80))
    plan, _ = step(s)
    assert [r.request_id for r in plan.scheduled] == ["a", "b"]  # pool full; c waits
    b = s.requests["b"]
    plan, _ = step(s)  # both now need a third block: the most recently admitted (b) goes
    assert plan.preempted_ids == ["b"] and rows(plan) == [("a", 8, 1)]
    assert b.status is RequestStatus.PREEMPTED and b.num_computed_tokens == 0 and b.num_preemptions == 1
    assert s.get_block_ids("b") == [] and s.num_preemptions == 1
    assert s.waiting.peek() is b  # back at the head, ahead of c
    # No admissions in a step that preempted, although blocks were just freed.
    assert "c" not in [r.request_id for r in plan.scheduled]
    engine = run_to_end(s)
    assert engine.finish_reasons == {"a": "length", "b": "length", "c": "length"}
    assert s.kv.num_free_blocks == 4


def test_a_readmitted_victim_gets_a_new_table_and_hits_its_own_kv():
    s = make(num_blocks=4, max_num_batched_tokens=16, reserve_full_prompt=False)
    s.add_request(req("a", n_prompt=7, max_tokens=6))
    s.add_request(req("b", n_prompt=8, max_tokens=6, start=50))
    engine = s.test_engine
    readmissions = []
    while s.has_unfinished_requests():
        plan, _ = engine.step()
        readmissions += [r for r in plan.scheduled if r.request_id == "b" and r.new_table and r.num_computed_tokens > 0]
    assert s.num_preemptions >= 1
    assert readmissions and readmissions[0].num_computed_tokens % 4 == 0


def test_priority_policy_preempts_the_lowest_priority_latest_arrival():
    s = make(num_blocks=6, max_num_batched_tokens=24, policy="priority", reserve_full_prompt=False)
    s.add_request(req("lo", n_prompt=7, max_tokens=9, priority=5, arrival_time=0.0))
    s.add_request(req("hi", n_prompt=7, max_tokens=9, start=30, priority=0, arrival_time=1.0))
    s.add_request(req("mid", n_prompt=7, max_tokens=9, start=60, priority=1, arrival_time=2.0))
    plan, _ = step(s)
    assert [r.request_id for r in plan.scheduled] == ["hi", "mid", "lo"]
    preempted = []
    while not preempted:
        plan, _ = step(s)
        preempted = plan.preempted_ids
    assert preempted == ["lo"]


# -- queue policies ---------------------------------------------------------------------------
def admission_order(policy, requests, **kw):
    s = make(max_num_seqs=1, policy=policy, **kw)
    for r in requests:
        s.add_request(r)
    order = []
    engine = s.test_engine
    while s.has_unfinished_requests():
        plan, _ = engine.step()
        order += [r.request_id for r in plan.scheduled if r.new_table]
    return order


def test_fcfs_admits_in_arrival_order():
    rs = [req("x", 9, 1, arrival_time=0), req("y", 2, 1, 20, arrival_time=1), req("z", 5, 1, 40, arrival_time=2)]
    assert admission_order("fcfs", rs) == ["x", "y", "z"]


def test_priority_admits_lowest_value_first_then_earliest_arrival():
    rs = [req("x", priority=2, arrival_time=0), req("y", start=20, priority=0, arrival_time=2),
          req("z", start=40, priority=0, arrival_time=1), req("w", start=60, priority=1, arrival_time=0)]
    assert admission_order("priority", rs) == ["z", "y", "w", "x"]


def test_shortest_prompt_first():
    rs = [req("x", 9, 1, arrival_time=0), req("y", 2, 1, 20, arrival_time=1), req("z", 5, 1, 40, arrival_time=2),
          req("y2", 2, 1, 60, arrival_time=3)]
    assert admission_order("shortest-prompt-first", rs) == ["y", "y2", "z", "x"]


def test_longest_prefix_match_admits_the_best_cached_prefix_first():
    s = make(max_num_seqs=1, policy="longest-prefix-match")
    s.add_request(req("seed", n_prompt=12, max_tokens=1))
    run_to_end(s)  # tokens 0..11 are now cached
    s.add_request(req("cold", n_prompt=12, max_tokens=1, start=500))
    s.add_request(req("warm4", n_prompt=6, max_tokens=1))
    s.add_request(req("warm8", n_prompt=10, max_tokens=1))
    plan, _ = step(s)
    assert rows(plan) == [("warm8", 8, 2)]
    assert s.prefix_cache_stats.hit_tokens == 8


# -- baselines --------------------------------------------------------------------------------
def test_static_batching_admits_nobody_until_the_whole_batch_is_done():
    s = make(batching="static", max_num_batched_tokens=8)
    assert isinstance(s, StaticBatchScheduler)
    s.add_request(req("a", n_prompt=8, max_tokens=4))  # uses the budget exactly
    s.add_request(req("b", n_prompt=3, max_tokens=1, start=20))
    step(s)  # the budget is used up exactly but b still waits: the batch keeps forming
    plan, _ = step(s)
    assert rows(plan) == [("a", 8, 1), ("b", 0, 3)]
    s.add_request(req("late", n_prompt=2, max_tokens=1, start=40))
    seen = []
    while s.has_unfinished_requests():
        plan, _ = step(s)
        seen.append([r.request_id for r in plan.scheduled])
    first_late = next(i for i, ids in enumerate(seen) if "late" in ids)
    assert all("a" not in ids and "b" not in ids for ids in seen[first_late:])
    assert seen[first_late - 1] == ["a"] and seen[first_late] == ["late"]


def test_static_batch_is_formed_over_several_steps_when_prompts_exceed_the_budget():
    s = make(batching="static", max_num_batched_tokens=8)
    s.add_request(req("a", n_prompt=6, max_tokens=3))
    s.add_request(req("b", n_prompt=6, max_tokens=3, start=20))
    s.add_request(req("c", n_prompt=6, max_tokens=3, start=40))
    plan, _ = step(s)
    assert rows(plan) == [("a", 0, 6), ("b", 0, 2)]
    plan, _ = step(s)
    assert rows(plan) == [("a", 6, 1), ("b", 2, 4), ("c", 0, 3)]


def test_continuous_batching_admits_while_others_run():
    s = make(max_num_batched_tokens=8)
    s.add_request(req("a", n_prompt=8, max_tokens=4))
    step(s)
    s.add_request(req("late", n_prompt=2, max_tokens=1, start=40))
    plan, _ = step(s)
    assert rows(plan) == [("a", 8, 1), ("late", 0, 2)]


def test_static_batch_closes_when_the_queue_runs_dry_on_an_exactly_used_budget():
    # Regression: a batch whose admissions used the step budget exactly stayed open, so a
    # request arriving a step later joined a batch that was already decoding.
    s = make(batching="static", max_num_batched_tokens=8)
    s.add_request(req("a", n_prompt=8, max_tokens=4))
    step(s)
    s.add_request(req("late", n_prompt=2, max_tokens=1, start=40))
    plan, _ = step(s)
    assert rows(plan) == [("a", 8, 1)]


def test_contiguous_kv_reserves_max_model_len_per_request_and_never_caches():
    s = make(kv_layout="contiguous", enable_prefix_caching=False, num_blocks=35, max_model_len=16,
             max_num_batched_tokens=64)
    assert isinstance(s.kv, ContiguousKVCacheManager)
    assert s.kv.region_blocks == 4 and s.kv.num_regions == 8  # 3 blocks can never be used
    for i in range(10):
        s.add_request(req(f"r{i}", n_prompt=5, max_tokens=3))  # identical prompts: no hits
    plan, _ = step(s)
    assert [r.block_ids for r in plan.scheduled[:2]] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert s.num_running == 8 and plan.num_used_blocks == 32
    assert s.kv.num_reserved_unused_blocks == 32 - 8 * 2
    run_to_end(s)
    assert s.prefix_cache_stats.hit_tokens == 0 and s.kv.num_free_blocks == 32
    with pytest.raises(ValueError, match="contiguous KV"):
        make(kv_layout="contiguous", enable_prefix_caching=False, num_blocks=3, max_model_len=16)


# -- abort, fork, stats -----------------------------------------------------------------------
def test_abort_frees_kv_and_is_reported_in_the_next_plan():
    s = make()
    s.add_request(req("a", n_prompt=9, max_tokens=5))
    s.add_request(req("w", max_tokens=5, start=30))
    plan, _ = step(s)
    s.add_request(req("q", max_tokens=5, start=60))
    aborted = s.abort("a")
    assert aborted.status is RequestStatus.FINISHED_ABORTED and aborted.finish_reason == "abort"
    assert s.abort("q").status is RequestStatus.FINISHED_ABORTED  # waiting requests too
    assert s.get_block_ids("a") == [] and s.num_waiting == 0
    # Tokens sampled for a row that was aborted after planning are dropped.
    res = s.update_from_output(plan, [7] * len(plan.scheduled))
    assert res.new_tokens == [("w", 7)]
    nxt = s.schedule()
    assert nxt.finished_ids == ["a", "q"] and [r.request_id for r in nxt.scheduled] == ["w"]
    assert s.schedule().finished_ids == []


def test_fork_child_shares_the_parent_prefix_and_joins_the_batch():
    s = make()
    s.add_request(req("p", n_prompt=10, max_tokens=4))
    step(s)
    child = s.fork("p", req("c", n_prompt=10, max_tokens=4))
    assert child.status is RequestStatus.RUNNING and child.num_computed_tokens == 8
    p_ids = s.get_block_ids("p")
    assert s.get_block_ids("c") == p_ids[:2]
    plan, _ = step(s)
    row = {r.request_id: r for r in plan.scheduled}["c"]
    assert row.new_table and row.block_ids == s.get_block_ids("c") and rows(plan)[1] == ("c", 8, 2)
    with pytest.raises(KeyError, match="not a running request"):
        s.fork("nope", req("d"))
    with pytest.raises(RequestRejected, match="does not extend the parent's tokens"):
        s.fork("p", req("d", n_prompt=10, start=1))
    run_to_end(s)
    assert s.kv.num_free_blocks == 64


def test_plan_reports_kv_usage_and_stats():
    s = make(num_blocks=10)
    s.add_request(req("a", n_prompt=9, max_tokens=2))
    plan, _ = step(s)
    assert (plan.num_used_blocks, plan.num_total_blocks) == (3, 10)
    assert s.kv_cache_usage == pytest.approx(0.3)
    s.add_request(req("b", n_prompt=9, max_tokens=2))
    step(s)
    stats = s.prefix_cache_stats
    assert (stats.queries_tokens, stats.hit_tokens) == (18, 8)
    assert s.reset_prefix_cache() is False
    run_to_end(s)
    assert s.reset_prefix_cache() is True and s.kv_cache_usage == 0.0


def test_a_victim_taken_back_mid_step_leaves_no_uncomputed_block_in_the_prefix_cache():
    # Regression: under the priority policy the victim may be a request already scheduled
    # earlier in the same step. Its chunk [6, 9) had filled block 1 and published it; the
    # chunk was then taken back, yet block 1 stayed findable, so the victim's readmission
    # "hit" KV that was never computed (the FakeEngine read check caught it).
    s = make(num_blocks=4, max_num_batched_tokens=6, long_prefill_token_threshold=3, policy="priority",
             reserve_full_prompt=False)
    s.add_request(Request("low", list(range(100, 109)), max_tokens=3, priority=5))
    step(s)
    s.add_request(Request("high", list(range(200, 205)), max_tokens=3, priority=0))
    step(s)
    plan, _ = step(s)
    assert plan.preempted_ids == ["low"] and rows(plan) == [("high", 3, 2)]
    readmit = None
    while s.has_unfinished_requests():
        plan, _ = step(s)  # the engine checks every KV position each row reads
        readmit = readmit or next((r for r in plan.scheduled if r.request_id == "low"), None)
    assert readmit.new_table and readmit.num_computed_tokens == 4  # block 0 only: it was computed


def test_priority_preemption_among_equals_takes_the_newest_so_two_big_requests_cannot_livelock():
    # Two requests that cannot fit together, equal in priority and arrival time, admitted in
    # chunks: the victim must be the one admitted last, or each preempts the other forever.
    s = make(num_blocks=12, block_size=2, max_model_len=24, max_num_seqs=5, max_num_batched_tokens=29,
             enable_chunked_prefill=False, long_prefill_token_threshold=3, enable_prefix_caching=False,
             policy="priority", reserve_full_prompt=False)
    s.add_request(req("old", n_prompt=18, max_tokens=4))
    s.add_request(req("new", n_prompt=18, max_tokens=4, start=100))
    preempted = []
    while s.has_unfinished_requests():
        plan, _ = step(s)
        preempted += plan.preempted_ids
        assert s.test_engine.num_steps < 200, f"no progress; preempted so far {preempted[:10]}"
    assert preempted and set(preempted) == {"new"}
