"""Property checks over random workloads and knobs: nothing lost, timelines consistent, the
pool never overflows, whatever the policy does."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.hypothesis_budget import examples

from policy import SchedulerConfig
from sim import simulate
from sim.cost import ConstantCostModel
from tests.sim.conftest import make_request

workloads = st.lists(
    st.tuples(st.integers(1, 80), st.integers(1, 30), st.floats(0, 0.05), st.integers(0, 3)),
    min_size=1, max_size=25,
)


@settings(max_examples=examples(30), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    workload=workloads,
    num_blocks=st.integers(3, 40),
    budget=st.sampled_from([8, 32, 128]),
    max_seqs=st.integers(1, 8),
    policy=st.sampled_from(["fcfs", "priority", "shortest-prompt-first", "longest-prefix-match"]),
    caching=st.booleans(),
)
def test_every_request_ends_once_and_timelines_are_consistent(workload, num_blocks, budget, max_seqs, policy, caching):
    cfg = SchedulerConfig(num_blocks=num_blocks, block_size=4, max_model_len=128, max_num_batched_tokens=budget,
                          max_num_seqs=max_seqs, policy=policy, enable_prefix_caching=caching)
    t = 0.0
    reqs = []
    for i, (prompt, out, gap, family) in enumerate(workload):
        t += gap
        reqs.append(make_request(f"r{i}", prompt, out, t, base=1000 * family, priority=i % 3))
    res = simulate(reqs, cfg, ConstantCostModel(0.001, per_token_s=1e-5))
    df = res.requests_df
    assert list(df.request_id) == [r.request_id for r in reqs]
    assert set(df.status) <= {"finished", "rejected"}
    assert df.finish_s.notna().all()
    done = df[df.status == "finished"]
    assert (done.output_len == done.max_tokens).all()
    assert (done.first_scheduled_s >= done.arrival_s).all()
    assert (done.first_token_s > done.first_scheduled_s).all()
    assert (done.finish_s >= done.first_token_s).all()
    for tl in res.recorder.timelines.values():
        assert tl.token_times == sorted(tl.token_times)
    steps = res.steps_df
    assert (steps.kv_used_blocks <= num_blocks).all()
    assert (steps.num_prefill_tokens + steps.num_decode_tokens <= budget).all()
    assert (steps.num_requests <= max_seqs).all()
    assert (steps.start_s.diff().dropna() > 0).all()
