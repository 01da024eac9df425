"""The simulator's bulk decode stretches (sim/decode_runs.py) give exactly the results of
stepping one plan at a time: every request's timeline (each token's time), every step record,
the run's counts and the final KV pool, on workloads that reach every edge the fast path must
stop at (arrivals, finishes, block boundaries with and without prefix caching, chunked
prefills, preemptions, a waiting queue held back by KV or by max_num_seqs)."""

from __future__ import annotations

import pytest

import traces
from policy import SchedulerConfig
from sim import simulate
from sim.cost.base import ConstantCostModel
from sim.cost.roofline import RooflineCostModel
from sim.engine import PricedStep  # noqa: F401 (the step the fast path prices with)
from traces.timeline import TimelineRecorder

ROOFLINE = RooflineCostModel.from_names("llama-3-8b", "h100-sxm")
# Per-request and per-token terms make every step's duration depend on its shape, so a
# stretch priced with the wrong context or row count would show in the token times.
CONSTANT = ConstantCostModel(0.004, per_token_s=2e-4, per_request_s=5e-4)


def requests_of(table, block_size: int = 16):
    return list(table.iter_requests(block_size=block_size, vocab_size=32000))


def run(table, config: SchedulerConfig, cost, decode_runs: bool, block_size: int = 16):
    recorder = TimelineRecorder()
    result = simulate(requests_of(table, block_size), config, cost, recorder=recorder, decode_runs=decode_runs)
    return result, recorder


def assert_identical(table, cost=ROOFLINE, **config):
    config = SchedulerConfig(**config)
    slow, slow_log = run(table, config, cost, decode_runs=False, block_size=config.block_size)
    fast, fast_log = run(table, config, cost, decode_runs=True, block_size=config.block_size)
    assert list(fast_log.timelines) == list(slow_log.timelines)
    for rid, timeline in slow_log.timelines.items():
        assert fast_log.timelines[rid] == timeline, f"request {rid}: timelines differ"
    assert len(fast_log.steps) == len(slow_log.steps)
    for a, b in zip(fast_log.steps, slow_log.steps):
        assert a == b, f"step {b.step_id} differs"
    assert fast.stats == slow.stats
    assert fast.summary == slow.summary
    return slow, fast


AZURE = traces.generate("azure-conv-like", seed=3, num_requests=400)
AZURE_10X = traces.generate("azure-conv-like", seed=4, num_requests=400, rate_scale=10.0)


def test_azure_like_prefix_caching_chunked():
    slow, fast = assert_identical(AZURE, num_blocks=6000, block_size=16, max_model_len=8192, max_num_seqs=64,
                                  max_num_batched_tokens=512, enable_prefix_caching=True)
    assert slow.summary["num_steps"] > 1000


def test_azure_like_without_prefix_caching():
    assert_identical(AZURE, num_blocks=6000, block_size=16, max_model_len=8192, max_num_seqs=64,
                     max_num_batched_tokens=512, enable_prefix_caching=False)


@pytest.mark.parametrize("caching", [True, False])
def test_azure_like_10x_rate_small_pool_preempts(caching):
    slow, _ = assert_identical(AZURE_10X, num_blocks=900, block_size=16, max_model_len=8192, max_num_seqs=128,
                               max_num_batched_tokens=512, enable_prefix_caching=caching)
    assert slow.stats.num_preemptions > 0, "the pool must be small enough to force preemptions"


def test_batch_cap_holds_a_waiting_queue():
    slow, _ = assert_identical(AZURE_10X, num_blocks=20000, block_size=16, max_model_len=8192, max_num_seqs=8,
                               max_num_batched_tokens=256, enable_prefix_caching=True)
    assert slow.summary["queue_p90_s"] > 0


@pytest.mark.parametrize("block_size", [1, 4, 32])
def test_shared_prefixes_block_sizes_and_a_shape_dependent_cost(block_size):
    table = traces.generate("shared-prefix", seed=1, num_groups=4, prompts_per_group=12, system_prompt_len=96,
                            question_len=24, output_len=40, rate=30.0)
    slow, _ = assert_identical(table, CONSTANT, num_blocks=4096 // block_size, block_size=block_size,
                               max_model_len=1024, max_num_seqs=16, max_num_batched_tokens=64,
                               enable_prefix_caching=True)
    assert slow.stats.prefix_hit_tokens > 0


def test_demo_workload():
    table = traces.generate("azure-conv-like", seed=0, num_requests=32, rate_scale=0.5)
    df = table.df.copy()  # the demo spec's clipping: prompts <= 160, outputs <= 32 tokens
    df["prompt_len"] = df["prompt_len"].clip(upper=160)
    df["output_len"] = df["output_len"].clip(upper=32)
    table = table.with_df(df)
    assert_identical(table, CONSTANT, num_blocks=2048, block_size=16, max_model_len=8192, max_num_seqs=4,
                     max_num_batched_tokens=256, enable_prefix_caching=True)


def test_the_fast_path_is_taken():
    from policy import build_scheduler
    from policy.driver import StepDriver, VirtualClock
    from sim.decode_runs import DecodeRuns

    config = SchedulerConfig(num_blocks=6000, block_size=16, max_model_len=8192, max_num_seqs=64,
                             max_num_batched_tokens=512)
    sched = build_scheduler(config)
    recorder = TimelineRecorder()
    clock = VirtualClock()
    step = PricedStep(ROOFLINE, clock, sched)
    driver = StepDriver(sched, step, clock, recorder)
    runs = driver.after_step = DecodeRuns(sched, step, recorder, driver.stats)
    stats = driver.run(requests_of(AZURE))
    assert stats.num_finished > 0
    assert runs.num_bulk_steps > stats.num_steps // 2, (runs.num_bulk_steps, stats.num_steps)


def test_a_full_batch_runs_out_of_blocks_mid_stretch():
    # The batch is full (no admission is tried), so stretches cross block boundaries and
    # must stop exactly where the pool cannot give the next block.
    table = traces.generate("poisson", seed=2, num_requests=24, rate=2000.0, prompt="uniform:60:70",
                            output="uniform:380:420")
    slow, _ = assert_identical(table, num_blocks=300, block_size=16, max_model_len=6000, max_num_seqs=16,
                               max_num_batched_tokens=512, enable_prefix_caching=False)
    assert slow.stats.num_preemptions > 0


# -- the general stretches (sim/bulk_steps.py): prefill rows, admissions and arrivals inside --


@pytest.mark.parametrize("policy", ["fcfs", "priority", "shortest-prompt-first", "longest-prefix-match"])
def test_queue_policies_with_a_chunk_threshold_and_a_watermark(policy):
    # A per-request chunk cap lets a later prompt finish its prefill before an earlier one
    # (so a decode can sit behind a prefill row); reserve_full_prompt and the watermark shape
    # the admissions the stretch makes through the scheduler's own _admit.
    slow, _ = assert_identical(AZURE_10X, num_blocks=2500, block_size=16, max_model_len=8192, max_num_seqs=24,
                               max_num_batched_tokens=384, long_prefill_token_threshold=100, policy=policy,
                               reserve_full_prompt=True, watermark=0.02, enable_prefix_caching=True)
    assert slow.summary["queue_p90_s"] > 0


def test_more_sequences_than_the_token_budget():
    # max_num_seqs above the budget: some steps cannot give every decode its token, and a
    # stretch must hand those back to the scheduler.
    table = traces.generate("poisson", seed=5, num_requests=120, rate=400.0, prompt="uniform:2:6",
                            output="uniform:20:90")
    slow, _ = assert_identical(table, CONSTANT, num_blocks=4000, block_size=4, max_model_len=512, max_num_seqs=64,
                               max_num_batched_tokens=16, enable_prefix_caching=False)
    assert slow.steps_df["num_requests"].max() == 16  # the budget, not max_num_seqs, bounded the batch


def test_compact_tokens_as_the_cli_builds_them():
    # The CLI stores prompts as arrays (one repeated id without prefix caching): lazy decodes
    # are padded with array repetition there.
    def run_compact(decode_runs):
        recorder = TimelineRecorder()
        config = SchedulerConfig(num_blocks=6000, block_size=16, max_model_len=8192, max_num_seqs=64,
                                 max_num_batched_tokens=512, enable_prefix_caching=False)
        requests = AZURE.iter_requests(block_size=16, vocab_size=32000, synthesize_tokens=False, compact_tokens=True)
        return simulate(requests, config, ROOFLINE, recorder=recorder, decode_runs=decode_runs), recorder

    slow, slow_log = run_compact(False)
    fast, fast_log = run_compact(True)
    assert fast_log.timelines == slow_log.timelines
    assert fast_log.steps == slow_log.steps
    assert fast.summary == slow.summary


def test_stop_tokens_and_eos_get_their_own_filler():
    from policy import Request

    def requests():
        out = []
        for i in range(60):
            # Filler 1 would stop these: the step must sample another token for them, also
            # inside a stretch, and stop them on length exactly as the scheduler does.
            kw = dict(stop_token_ids=(1, 2)) if i % 3 == 0 else dict(eos_token_id=1) if i % 3 == 1 else {}
            out.append(Request(f"r{i}", [7 + i % 5] * (20 + 13 * (i % 7)), max_tokens=5 + (i * 7) % 40,
                               arrival_time=0.01 * i, **kw))
        return out

    config = SchedulerConfig(num_blocks=400, block_size=8, max_model_len=1024, max_num_seqs=12,
                             max_num_batched_tokens=96, enable_prefix_caching=True)
    slow_log, fast_log = TimelineRecorder(), TimelineRecorder()
    slow = simulate(requests(), config, CONSTANT, recorder=slow_log, decode_runs=False)
    fast = simulate(requests(), config, CONSTANT, recorder=fast_log, decode_runs=True)
    assert fast_log.timelines == slow_log.timelines
    assert fast_log.steps == slow_log.steps
    assert fast.stats == slow.stats
    assert all(t.finish_reason == "length" for t in slow_log.timelines.values())


def test_max_model_len_caps_outputs_inside_a_stretch():
    table = traces.generate("poisson", seed=6, num_requests=80, rate=50.0, prompt="uniform:100:200",
                            output="uniform:50:400")
    slow, _ = assert_identical(table, num_blocks=3000, block_size=16, max_model_len=300, max_num_seqs=32,
                               max_num_batched_tokens=256, enable_prefix_caching=False)
    assert (slow.requests_df["output_len"] < slow.requests_df["max_tokens"]).any()


def test_whole_run_in_few_stretches_takes_arrivals_and_prefills():
    # With the driver's arrival stream lent to it, a stretch survives arrivals, admissions,
    # prefill chunks and finishes: most steps of a busy replica never reach the scheduler.
    from policy import build_scheduler
    from policy.driver import StepDriver, VirtualClock
    from sim.decode_runs import DecodeRuns

    config = SchedulerConfig(num_blocks=6000, block_size=16, max_model_len=8192, max_num_seqs=64,
                             max_num_batched_tokens=512, enable_prefix_caching=False)
    sched = build_scheduler(config)
    recorder = TimelineRecorder()
    clock = VirtualClock()
    step = PricedStep(ROOFLINE, clock, sched)
    driver = StepDriver(sched, step, clock, recorder)
    runs = driver.after_step = DecodeRuns(sched, step, recorder, driver.stats, driver, submit_arrivals=True)
    seen = []
    stats = driver.run(requests_of(AZURE), on_progress=lambda st: seen.append(st.num_finished))
    assert stats.num_finished == len(AZURE)
    assert runs.num_bulk_steps > 0.9 * stats.num_steps, (runs.num_bulk_steps, stats.num_steps)
    # A progress bar still moves: the stretches report every 4096 steps.
    assert len(seen) >= stats.num_steps // 4096 >= 2 and seen == sorted(seen)


@pytest.mark.parametrize("router", ["round-robin", "least-tokens", "prefix-aware"])
def test_replicas_behind_a_router(router):
    # In a cluster the stretch may not take arrivals (the router places them): it stops at
    # each one; finishes inside it still reach the router's load accounting.
    from policy.router import build_router
    from sim.cluster import simulate_cluster

    config = SchedulerConfig(num_blocks=1500, block_size=16, max_model_len=8192, max_num_seqs=32,
                             max_num_batched_tokens=512, enable_prefix_caching=True)
    slow = simulate_cluster(requests_of(AZURE_10X), config, ROOFLINE, build_router(router, 3), decode_runs=False)
    fast = simulate_cluster(requests_of(AZURE_10X), config, ROOFLINE, build_router(router, 3), decode_runs=True)
    assert fast.routed == slow.routed
    for a, b in zip(fast.replicas, slow.replicas):
        assert a.recorder.timelines == b.recorder.timelines
        assert a.recorder.steps == b.recorder.steps
        assert a.stats == b.stats


def test_finish_hook_sees_every_finish_in_order_inside_stretches(tmp_path):
    # Recorders that watch finishes (the capacity search stops a run on an SLO breach) get
    # on_request_finished from the bulk steps exactly as from on_step, and keep the fast path.
    class Watching(TimelineRecorder):
        def __init__(self):
            super().__init__()
            self.seen = []

        def on_request_finished(self, timeline):
            self.seen.append((timeline.request_id, timeline.finish_s, len(timeline.token_times)))

    config = SchedulerConfig(num_blocks=6000, block_size=16, max_model_len=8192, max_num_seqs=64,
                             max_num_batched_tokens=512, enable_prefix_caching=True)
    slow, fast = Watching(), Watching()
    simulate(requests_of(AZURE), config, ROOFLINE, recorder=slow, decode_runs=False)
    result = simulate(requests_of(AZURE), config, ROOFLINE, recorder=fast, decode_runs=True)
    assert fast.seen == slow.seen and len(fast.seen) == result.stats.num_finished
    from policy import build_scheduler
    from policy.driver import RunStats, VirtualClock
    from sim.decode_runs import DecodeRuns
    from traces.streaming import StreamingRecorder

    sched = build_scheduler(config)
    step = PricedStep(ROOFLINE, VirtualClock(), sched)
    assert DecodeRuns(sched, step, Watching(), RunStats()).bulk is not None
    assert DecodeRuns(sched, step, StreamingRecorder(tmp_path), RunStats()).bulk is None  # writes per step
