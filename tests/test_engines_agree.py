"""The simulator and the executor make the same decisions, given the same step durations.

Both engines run `policy.driver.StepDriver`; here the executor runs a real (tiny, random)
model but its clock advances by the simulator's cost model instead of the wall clock. Every
plan (rows, token counts, block ids, preemptions, finished ids) and every request timeline
must then be identical: any fidelity error left is cost-model error. The workload is built to
reach the edges: shared prefixes (prefix-cache hits), prompts longer than the step budget
(chunked prefill), a pool too small for the batch (preemptions), requests the scheduler
refuses, a duplicate id, and idle gaps between arrivals.
"""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")

from executor.engine import LLMEngine  # noqa: E402
from executor.models_registry import write_random_model  # noqa: E402
from policy import Request, SchedulerConfig  # noqa: E402
from policy.driver import VirtualClock  # noqa: E402
from sim import simulate  # noqa: E402
from sim.cost.base import ConstantCostModel  # noqa: E402
from traces.timeline import TimelineRecorder  # noqa: E402

CONFIG = dict(num_blocks=40, block_size=4, max_model_len=96, max_num_seqs=6, max_num_batched_tokens=24,
              enable_chunked_prefill=True, enable_prefix_caching=True, reserve_full_prompt=False)
COST = ConstantCostModel(0.004, per_token_s=2e-4, per_request_s=5e-4)


class PlanLog(TimelineRecorder):
    """A timeline recorder that also keeps every plan, as plain comparable data."""

    def __init__(self) -> None:
        super().__init__()
        self.plans: list[tuple] = []

    def on_step(self, plan, result, start_s, end_s, shape=None) -> None:
        super().on_step(plan, result, start_s, end_s, shape)
        rows = tuple((r.request_id, r.num_new_tokens, r.num_computed_tokens, tuple(r.block_ids), r.new_table, r.samples)
                     for r in plan.scheduled)
        self.plans.append((plan.step_id, rows, tuple(plan.preempted_ids), tuple(plan.finished_ids), start_s, end_s))

    def on_preempted(self, request_ids, now) -> None:
        super().on_preempted(request_ids, now)
        self.plans.append(("empty", tuple(request_ids), now))


def workload(vocab: int) -> list[Request]:
    rng = random.Random(7)
    system = [rng.randrange(3, vocab) for _ in range(20)]  # a shared prefix: 5 full blocks
    reqs = []
    t = 0.0
    for i in range(14):
        t += rng.choice([0.0, 0.003, 0.02, 0.2])  # bursts, and gaps long enough to go idle
        own = [rng.randrange(3, vocab) for _ in range(rng.randrange(2, 40))]
        prompt = (system + own) if i % 3 else own
        reqs.append(Request(f"r{i}", prompt, max_tokens=rng.randrange(1, 24), arrival_time=t, ignore_eos=True))
    reqs.append(Request("too-long", [5] * 100, max_tokens=20, arrival_time=t))  # refused: > max_model_len
    reqs.append(Request("r3", [9, 9, 9], max_tokens=2, arrival_time=t))  # a duplicate id
    return reqs


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    torch.set_num_threads(1)
    model_dir = write_random_model("tiny-qwen2", tmp_path_factory.mktemp("agree") / "m", seed=0)
    return LLMEngine(model_dir, device="cpu", load_tokenizer=False, **CONFIG)


def run_both(engine, decode_runs: bool = False):
    """`decode_runs=False`: the simulator makes every plan (so plans can be compared); with
    True it advances decode-only stretches in bulk and only timelines and steps exist."""
    sim_log, exe_log = PlanLog(), PlanLog()
    sim = simulate(workload(engine.config.vocab_size), SchedulerConfig(**CONFIG), COST, recorder=sim_log,
                   decode_runs=decode_runs)
    engine.reset_scheduler()
    exe = engine.replay(workload(engine.config.vocab_size), clock=VirtualClock(), step_duration=COST.time_for_shape,
                        recorder=exe_log)
    return sim, sim_log, exe, exe_log


def test_the_workload_reaches_every_edge(engine):
    sim, log, _, _ = run_both(engine)
    s = sim.summary
    assert sim.stats.num_preemptions > 0, "the pool must be small enough to preempt"
    assert sim.stats.prefix_hit_tokens > 0, "shared prefixes must hit the cache"
    assert any(not row[5] for p in log.plans if p[0] != "empty" for row in p[1]), \
        "some prompt must be split into chunks (a row that computes tokens but does not sample)"
    assert s["num_rejected"] == 2 and s["num_finished"] == s["num_requests"] - 2


def test_same_plans_and_timelines_with_the_same_step_durations(engine):
    sim, sim_log, exe, exe_log = run_both(engine)
    assert len(sim_log.plans) == len(exe_log.plans)
    for a, b in zip(sim_log.plans, exe_log.plans):
        assert a == b
    assert sim.stats == exe.stats
    assert sim_log.timelines == exe_log.timelines
    assert sim_log.steps == exe_log.steps


def test_bulk_decode_stretches_give_the_executors_timelines(engine):
    sim, sim_log, exe, exe_log = run_both(engine, decode_runs=True)
    assert len(sim_log.plans) < len(exe_log.plans), "some decode stretch should have been advanced in bulk"
    assert sim.stats == exe.stats
    assert sim_log.timelines == exe_log.timelines
    assert sim_log.steps == exe_log.steps
