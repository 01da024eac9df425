"""The event loop: exact timings on a hand-computed case, determinism, nothing lost."""

from __future__ import annotations

import math
import random

import pytest

from policy import Request, SchedulerConfig
from sim import SimulationStalled, simulate
from sim.cost import ConstantCostModel
from sim.cost.base import CostModel
from tests.sim.conftest import make_request

STEP = 0.01


def test_hand_computed_timings():
    # r1: prompt 8, 3 tokens, arrives at 0. r2: prompt 16, 2 tokens, arrives mid-step 2 (t=0.015).
    # Steps (10 ms each): [0, .01] prefill r1 -> tok; [.01, .02] decode r1;
    # [.02, .03] decode r1 (finish) + prefill r2 -> tok; [.03, .04] decode r2 (finish).
    reqs = [make_request("r1", 8, 3, 0.0), make_request("r2", 16, 2, 0.015, base=100)]
    res = simulate(reqs, SchedulerConfig(num_blocks=64), ConstantCostModel(STEP))
    df = res.requests_df.set_index("request_id")
    r1, r2 = df.loc["r1"], df.loc["r2"]
    assert r1.first_scheduled_s == 0.0 and r1.first_token_s == pytest.approx(0.01)
    assert r1.finish_s == pytest.approx(0.03)
    assert r1.ttft_s == pytest.approx(0.01) and r1.tpot_s == pytest.approx(0.01) and r1.e2el_s == pytest.approx(0.03)
    assert r2.queue_s == pytest.approx(0.005)  # waits for the step boundary at 0.02
    assert r2.ttft_s == pytest.approx(0.015) and r2.e2el_s == pytest.approx(0.025)
    assert r2.tpot_s == pytest.approx(0.01)
    assert list(df.output_len) == [3, 2]
    s = res.summary
    assert s["num_steps"] == 4 and s["makespan_s"] == pytest.approx(0.04)
    assert s["output_throughput"] == pytest.approx(5 / 0.04)
    assert s["ttft_mean_s"] == pytest.approx(0.0125)
    assert list(res.steps_df.start_s) == pytest.approx([0.0, 0.01, 0.02, 0.03])
    assert list(res.steps_df.num_prefill_tokens) == [8, 0, 16, 0]
    assert list(res.steps_df.num_decode_tokens) == [0, 1, 1, 1]


def test_idle_gap_jumps_to_next_arrival():
    reqs = [make_request("a", 4, 2, 0.0), make_request("b", 4, 2, 100.0, base=50)]
    res = simulate(reqs, SchedulerConfig(num_blocks=16), ConstantCostModel(STEP))
    df = res.requests_df.set_index("request_id")
    assert res.summary["num_steps"] == 4  # no steps spent idling
    assert df.loc["b", "first_scheduled_s"] == 100.0
    assert df.loc["b", "finish_s"] == pytest.approx(100.02)


def test_step_time_follows_cost_model_terms():
    # per-token term: a 10-token prefill step costs step + 10 * tok
    cm = ConstantCostModel(0.001, per_token_s=0.0001)
    res = simulate([make_request("a", 10, 2)], SchedulerConfig(num_blocks=16), cm)
    assert list(res.steps_df.duration_s) == pytest.approx([0.002, 0.0011])


def _workload(n: int, seed: int) -> list[Request]:
    rng = random.Random(seed)
    t = 0.0
    out = []
    for i in range(n):
        t += rng.expovariate(50.0)
        # a few shared prefixes so the prefix cache has something to do
        base = 1000 * rng.randrange(3) if rng.random() < 0.5 else 10_000 + 1000 * i
        out.append(make_request(f"q{i}", rng.randint(5, 60), rng.randint(1, 40), t, base=base))
    return out


def test_deterministic_outputs_byte_identical(tmp_path):
    cfg = SchedulerConfig(num_blocks=40, block_size=8, max_num_batched_tokens=64, max_num_seqs=8)
    cm = ConstantCostModel(0.002, per_token_s=1e-5)
    paths = []
    for run in range(2):
        out = simulate(_workload(120, seed=3), cfg, cm).write(tmp_path / f"run{run}")
        paths.append(out)
    names = sorted(p.name for p in paths[0].iterdir())
    assert {"requests.parquet", "requests.csv", "steps.parquet", "steps.csv", "summary.json", "run.json"} <= set(names)
    for name in names:
        assert (paths[0] / name).read_bytes() == (paths[1] / name).read_bytes(), name
    assert not [p for p in paths[0].iterdir() if p.name.endswith(".tmp")]


def test_forced_preemption_loses_nothing_and_kv_stays_in_pool():
    # 10 blocks of 4 tokens: a request needs up to 8 blocks, several run at once -> preemptions.
    cfg = SchedulerConfig(num_blocks=10, block_size=4, max_model_len=64, max_num_batched_tokens=32, max_num_seqs=6,
                          reserve_full_prompt=False)
    reqs = [make_request(f"p{i}", 10, 20, 0.001 * i, base=100 * i) for i in range(12)]
    res = simulate(reqs, cfg, ConstantCostModel(0.001))
    df = res.requests_df
    assert list(df.request_id) == [f"p{i}" for i in range(12)]  # each exactly once, in arrival order
    assert (df.status == "finished").all() and df.finish_s.notna().all()
    assert (df.output_len == 20).all()
    assert res.summary["num_preemptions"] > 0
    steps = res.steps_df
    assert (steps.kv_used_blocks <= steps.kv_total_blocks).all() and (steps.kv_total_blocks == 10).all()
    assert steps.kv_usage.max() <= 1.0
    assert res.summary["num_preemptions"] == res.summary["scheduler_num_preemptions"]
    for tl in res.recorder.timelines.values():
        assert len(tl.preemption_times) == tl.num_preemptions
        assert all(tl.first_scheduled_s <= t < tl.finish_s for t in tl.preemption_times)


def test_request_that_never_fits_is_rejected_not_hung():
    cfg = SchedulerConfig(num_blocks=4, block_size=4, max_model_len=128)
    reqs = [make_request("ok", 4, 4), make_request("huge", 40, 10, 0.001, base=500),
            make_request("toolong", 130, 1, 0.002, base=900)]
    res = simulate(reqs, cfg, ConstantCostModel(STEP))
    df = res.requests_df.set_index("request_id")
    assert df.loc["ok", "status"] == "finished"
    assert df.loc["huge", "status"] == "rejected" and "KV blocks" in df.loc["huge", "reject_reason"]
    assert df.loc["toolong", "status"] == "rejected" and "max_model_len" in df.loc["toolong", "reject_reason"]
    assert df.loc["huge", "finish_s"] == df.loc["huge", "arrival_s"]
    s = res.summary
    assert (s["num_requests"], s["num_finished"], s["num_rejected"], s["num_aborted"]) == (3, 1, 2, 0)


def test_requests_out_of_arrival_order_are_an_error():
    reqs = [make_request("a", 4, 2, 1.0), make_request("b", 4, 2, 0.5, base=10)]
    with pytest.raises(ValueError, match="arrival order"):
        simulate(reqs, SchedulerConfig(num_blocks=16), ConstantCostModel(STEP))


def test_a_duplicate_request_id_is_rejected_and_counted_without_touching_the_first():
    reqs = [make_request("a", 4, 2, 0.0), make_request("a", 4, 2, 0.5, base=10)]
    res = simulate(reqs, SchedulerConfig(num_blocks=16), ConstantCostModel(STEP))
    tl = res.recorder.timelines
    assert tl["a"].status == "finished" and tl["a"].output_len == 2
    assert tl["a#dup1"].status == "rejected" and "duplicate" in tl["a#dup1"].reject_reason
    s = res.summary
    assert (s["num_requests"], s["num_finished"], s["num_rejected"]) == (2, 1, 1)


def test_eos_requests_still_get_their_trace_length():
    # eos 1 would stop the default filler token; the engine picks another one.
    reqs = [make_request("a", 4, 5, ignore_eos=False, eos_token_id=1, stop_token_ids=(2,))]
    res = simulate(reqs, SchedulerConfig(num_blocks=16), ConstantCostModel(STEP))
    assert res.requests_df.output_len.tolist() == [5]


def test_bad_cost_model_is_an_error():
    class Zero(CostModel):
        def time_for_shape(self, shape):
            return 0.0

    with pytest.raises(ValueError, match="priced step"):
        simulate([make_request("a", 4, 2)], SchedulerConfig(num_blocks=16), Zero())


def test_stalled_scheduler_raises_instead_of_hanging(monkeypatch):
    import sim.engine as engine
    from policy import build_scheduler

    def never_schedules(cfg):
        sched = build_scheduler(cfg)
        real = sched.schedule

        def empty():
            plan = real()
            for row in plan.scheduled:  # undo: pretend nothing fit
                sched.requests[row.request_id].num_computed_tokens = row.num_computed_tokens
            plan.scheduled = []
            return plan

        sched.schedule = empty
        return sched

    monkeypatch.setattr(engine, "build_scheduler", never_schedules)
    with pytest.raises(SimulationStalled, match="scheduled nothing"):
        simulate([make_request("a", 4, 2)], SchedulerConfig(num_blocks=16), ConstantCostModel(STEP))


def test_empty_trace():
    res = simulate([], SchedulerConfig(num_blocks=16), ConstantCostModel(STEP))
    assert res.summary["num_requests"] == 0 and res.summary["num_steps"] == 0
    assert len(res.requests_df) == 0 and len(res.steps_df) == 0
    assert not math.isnan(res.summary["makespan_s"])


def test_plan_that_only_preempts_is_retried_without_time_passing(monkeypatch):
    # A plan that preempts everything and admits nothing (no admissions in a preempting step)
    # changes the scheduler's state: the engine must ask again, not stall or skip time.
    import sim.engine as engine
    from policy import build_scheduler
    from policy.plan import SchedulerOutput

    calls = {"n": 0}

    def flaky(cfg):
        sched = build_scheduler(cfg)
        real = sched.schedule

        def schedule():
            calls["n"] += 1
            if calls["n"] == 3 and sched.running:
                victim = sched.running[-1]
                sched._preempt(victim)
                return SchedulerOutput(999, [], [victim.request_id], num_total_blocks=cfg.num_blocks,
                                       num_waiting=sched.num_waiting)
            return real()

        sched.schedule = schedule
        return sched

    monkeypatch.setattr(engine, "build_scheduler", flaky)
    res = simulate([make_request("a", 4, 4)], SchedulerConfig(num_blocks=16), ConstantCostModel(STEP),
                   decode_runs=False)  # counts schedule() calls: every step must make a plan
    df = res.requests_df
    assert df.status.tolist() == ["finished"] and df.output_len.tolist() == [4]
    assert df.num_preemptions.tolist() == [1]
    assert res.recorder.timelines["a"].preemption_times == [pytest.approx(0.02)]
