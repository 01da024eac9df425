"""A custom scheduling policy, plugged into both engines: shortest-output-first admission.

    python examples/custom_policy.py [--num-requests 24]

A policy is an object of `policy/`; neither engine decides who runs. Here a `Scheduler`
subclass orders its waiting queue by each request's output budget (`max_tokens`), so short
jobs are admitted first (shortest-job-first lowers mean latency when lengths vary). The same
class then runs:

- in the simulator: `policy.driver.StepDriver` with the simulator's priced step
  (`sim.engine.PricedStep`) on a virtual clock;
- in the executor: the engine's scheduler is replaced by it, and `LLMEngine.replay` runs the
  real model (a tiny random one here, for speed) with the same virtual clock and step prices.

Both engines then make the same decisions step for step, so their request timelines match.
"""

from __future__ import annotations

import argparse
import random
import tempfile


def make_scheduler(config, shortest_first: bool):
    """The stock scheduler, or one whose waiting queue admits the smallest output budget first."""
    from policy import Scheduler
    from policy.queues import HeapQueue

    sched = Scheduler(config)
    if shortest_first:
        # Preempted requests keep their place ahead of fresh ones (they already paid for admission).
        sched.waiting = HeapQueue(lambda r, preempted: (not preempted, r.max_tokens, r.arrival_time))
    return sched


def workload(n: int, vocab: int):
    from policy import Request

    rng = random.Random(3)
    return [Request(f"r{i}", [rng.randrange(3, vocab) for _ in range(rng.randrange(4, 24))],
                    max_tokens=rng.choice([2, 3, 4, 24, 40]), arrival_time=0.0, ignore_eos=True)
            for i in range(n)]


def run_sim(config, cost, requests, shortest_first: bool):
    from policy.driver import StepDriver, VirtualClock
    from sim.engine import PricedStep
    from traces.timeline import TimelineRecorder

    sched, clock, recorder = make_scheduler(config, shortest_first), VirtualClock(), TimelineRecorder()
    StepDriver(sched, PricedStep(cost, clock, sched), clock, recorder).run(requests)
    return recorder


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-requests", type=int, default=24)
    args = parser.parse_args(argv)

    import torch

    from executor.engine import LLMEngine
    from executor.models_registry import write_random_model
    from policy import SchedulerConfig
    from policy.driver import VirtualClock
    from sim.cost.base import ConstantCostModel
    from traces.metrics import requests_table
    from traces.timeline import TimelineRecorder

    torch.set_num_threads(1)
    knobs = dict(num_blocks=64, block_size=8, max_model_len=128, max_num_seqs=4, max_num_batched_tokens=64)
    config = SchedulerConfig(**knobs)
    cost = ConstantCostModel(0.010, per_token_s=1e-4)  # 10 ms a step + 0.1 ms a token: a GPU-like shape

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        engine = LLMEngine(write_random_model("tiny-qwen2", f"{tmp}/m", seed=0), device="cpu",
                           load_tokenizer=False, **knobs)
        vocab = engine.config.vocab_size
        for shortest_first in (False, True):
            name = "shortest-output-first" if shortest_first else "fcfs"
            sim = requests_table(run_sim(config, cost, workload(args.num_requests, vocab), shortest_first).timelines)
            engine.scheduler = make_scheduler(engine.scheduler_config, shortest_first)
            recorder = TimelineRecorder()
            engine.replay(workload(args.num_requests, vocab), clock=VirtualClock(),
                          step_duration=cost.time_for_shape, recorder=recorder)
            exe = requests_table(recorder.timelines)
            agree = sim[["request_id", "first_token_s", "finish_s"]].equals(exe[["request_id", "first_token_s", "finish_s"]])
            print(f"{name:>22}: mean E2E latency {sim['e2el_s'].mean() * 1000:6.1f} ms, "
                  f"p90 {sim['e2el_s'].quantile(0.9) * 1000:6.1f} ms (simulated); "
                  f"executor timelines identical: {agree}")
            out[name] = {"mean_e2el_s": float(sim["e2el_s"].mean()), "engines_agree": agree}
    return out


if __name__ == "__main__":
    main()
