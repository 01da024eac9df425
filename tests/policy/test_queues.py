"""Waiting-queue policies on their own: order, preempted requests, removal."""

import pytest

from policy import KVCacheManager, Request
from policy.queues import make_queue


def r(rid, n=4, priority=0, arrival=0.0, start=0):
    return Request(rid, list(range(start, start + n)), max_tokens=1, priority=priority, arrival_time=arrival)


def drain(q):
    out = []
    while q:
        assert q.peek() is q.peek()
        out.append(q.pop().request_id)
    return out


def test_fcfs_prepend_puts_a_preempted_request_at_the_head():
    q = make_queue("fcfs")
    for x in (r("a"), r("b")):
        q.add(x)
    q.prepend(r("victim"))
    assert [x.request_id for x in q] == ["victim", "a", "b"] and len(q) == 3
    assert drain(q) == ["victim", "a", "b"]


def test_priority_orders_by_priority_then_arrival_even_for_preempted():
    q = make_queue("priority")
    q.add(r("late-urgent", priority=0, arrival=5))
    q.add(r("early-low", priority=3, arrival=0))
    q.add(r("early-urgent", priority=0, arrival=1))
    q.prepend(r("preempted-low", priority=3, arrival=0.5))  # priority is the whole order
    assert [x.request_id for x in q] == ["early-urgent", "late-urgent", "early-low", "preempted-low"]
    assert drain(q) == ["early-urgent", "late-urgent", "early-low", "preempted-low"]


def test_shortest_prompt_first_but_preempted_requests_go_first():
    q = make_queue("shortest-prompt-first")
    q.add(r("long", n=30, arrival=0))
    q.add(r("short", n=3, arrival=1))
    q.add(r("short-later", n=3, arrival=2))
    q.prepend(r("preempted-long", n=50, arrival=3))
    assert drain(q) == ["preempted-long", "short", "short-later", "long"]


def test_longest_prefix_match_sorts_by_cached_prefix_with_preempted_first():
    kv = KVCacheManager(32, 4)
    warm = r("warm-source", n=12)
    hits, n_hit = kv.get_computed_blocks(warm)
    kv.allocate_slots(warm, 12, hits, n_hit)
    q = make_queue("longest-prefix-match")
    q.add(r("cold", n=12, start=100))
    q.add(r("hit4", n=6))
    q.add(r("hit8", n=10))
    q.add(r("cold2", n=5, start=200))
    victim = r("victim", n=5, start=300)
    victim.num_preemptions = 1
    q.prepend(victim)
    q.reorder(kv)
    assert [x.request_id for x in q] == ["victim", "hit8", "hit4", "cold", "cold2"]


def test_longest_prefix_match_keeps_arrival_order_when_the_queue_is_long():
    kv = KVCacheManager(8, 4)
    q = make_queue("longest-prefix-match")
    n = q.MAX_SORTED + 1
    for i in range(n):
        q.add(r(f"x{i}", start=10 * i))
    q.reorder(kv)
    assert [x.request_id for x in q] == [f"x{i}" for i in range(n)]


@pytest.mark.parametrize("policy", ["fcfs", "priority", "shortest-prompt-first", "longest-prefix-match"])
def test_remove_takes_out_exactly_that_request(policy):
    q = make_queue(policy)
    reqs = [r(f"x{i}", n=i + 1, priority=i % 2, arrival=i) for i in range(5)]
    for x in reqs:
        q.add(x)
    q.remove(reqs[2])
    assert len(q) == 4 and reqs[2] not in list(q)
    assert sorted(drain(q)) == ["x0", "x1", "x3", "x4"]


def test_unknown_policy_is_named():
    with pytest.raises(ValueError, match="unknown queue policy 'lifo'"):
        make_queue("lifo")
