"""N simulated replicas behind a router.

Each replica is a whole single-replica simulator (its own scheduler, virtual clock, priced
step, step driver and recorder). One loop walks the arrivals in order: before routing a
request that arrives at time A, every busy replica runs its steps until its clock reaches A
(its step in progress at A ends first, exactly as the single-replica loop submits an arrival
at the first step boundary at or after it), so the router sees each replica's queues and KV
cache as they stand when the request arrives. A replica that is idle waits for the request.

With one replica this is step for step the single-replica `simulate` (a test checks it);
`StepDriver.run` is not reused because its loop owns the arrival stream, while here the
stream is shared; `_advance` follows that loop's edges one for one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pandas as pd

from policy import Request, SchedulerConfig, build_scheduler
from policy.driver import MAX_IDLE_PLANS, StepDriver, VirtualClock
from policy.router import Router
from sim.cost.base import CostModel
from sim.decode_runs import DecodeRuns
from sim.engine import PricedStep, FILLER_TOKEN
from traces import metrics
from traces.run_result import RunResult
from traces.timeline import TimelineRecorder

_INF = float("inf")


class _Replica:
    def __init__(self, index: int, config: SchedulerConfig, cost_model: CostModel, router: Router,
                 decode_runs: bool) -> None:
        self.index = index
        self.sched = build_scheduler(config)
        self.clock = VirtualClock()
        self.step = PricedStep(cost_model, self.clock, self.sched, FILLER_TOKEN)
        self.recorder = TimelineRecorder()
        self.driver = StepDriver(self.sched, self.step, self.clock, self.recorder)
        self.driver.on_finished = lambda request: router.on_finished(index, request)
        if decode_runs:
            self.driver.after_step = DecodeRuns(self.sched, self.step, self.recorder, self.driver.stats, self.driver)

    def advance(self, until: float, pending: Request | None) -> None:
        """Run steps while there is work and the clock is before `until` (the next arrival)."""
        sched, driver, clock = self.sched, self.driver, self.clock
        while clock.t < until and sched.has_unfinished_requests():
            plan, result = driver.step()
            if result is None:
                if plan.preempted_ids and driver._idle_plans <= MAX_IDLE_PLANS:
                    continue
                if until < _INF:
                    driver._idle_plans = 0
                    clock.wait_until(until)
                    continue
                driver._stalled()
            elif driver.after_step is not None:
                driver.after_step(plan, result, pending)


@dataclass
class ClusterResult:
    """Per-replica results plus the cluster's view (all requests and steps pooled)."""

    replicas: list[RunResult]
    router: str
    routed: list[int]
    wall_s: float

    @property
    def requests_df(self) -> pd.DataFrame:
        frames = [r.requests_df.assign(replica=i) for i, r in enumerate(self.replicas)]
        df = pd.concat(frames, ignore_index=True)
        return df.sort_values(["arrival_s", "replica"], kind="stable").reset_index(drop=True)

    @property
    def steps_df(self) -> pd.DataFrame:
        return pd.concat([r.steps_df.assign(replica=i) for i, r in enumerate(self.replicas)], ignore_index=True)

    @property
    def summary(self) -> dict:
        """Cluster metrics over every request, plus load imbalance (max / mean of requests
        routed and of busy time per replica) and per-replica headline numbers."""
        itl = np.concatenate([r.itl for r in self.replicas]) if self.replicas else np.zeros(0)
        steps = self.steps_df
        out = metrics.summarize(self.requests_df, steps, itl, **self.replicas[0].slo)
        out["router"] = self.router
        out["num_replicas"] = len(self.replicas)
        out["routed"] = list(self.routed)
        busy = [float(r.steps_df["duration_s"].sum()) for r in self.replicas]
        out["busy_s_per_replica"] = busy
        mean_routed = sum(self.routed) / len(self.routed)
        out["load_imbalance_requests"] = max(self.routed) / mean_routed if mean_routed else None
        out["load_imbalance_busy"] = max(busy) / (sum(busy) / len(busy)) if sum(busy) else None
        hits = sum(r.stats.prefix_hit_tokens for r in self.replicas)
        queried = sum(r.stats.prefix_queries_tokens for r in self.replicas)
        out["scheduler_prefix_hit_rate"] = hits / queried if queried else None
        out["per_replica"] = [
            {k: r.summary.get(k) for k in ("num_requests", "num_finished", "ttft_p50_s", "ttft_p90_s", "tpot_p50_s",
                                            "prefix_hit_rate", "kv_usage_mean", "num_preemptions", "num_steps")}
            for r in self.replicas
        ]
        return out

    def write(self, out_dir, formats=("parquet", "csv")):
        from pathlib import Path

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for fmt in formats:
            metrics.write_table(self.requests_df, out / f"requests.{fmt}")
            metrics.write_table(self.steps_df, out / f"steps.{fmt}")
        metrics.write_json(self.summary, out / "summary.json")
        for i, r in enumerate(self.replicas):
            r.write(out / f"replica-{i}", formats=formats)
        return out


def simulate_cluster(requests: Iterable[Request], scheduler_config: SchedulerConfig, cost_model: CostModel,
                     router: Router, *, decode_runs: bool = True, progress: bool = False) -> ClusterResult:
    """Replay `requests` (arrival order) across `router.num_replicas` identical replicas."""
    import gc

    replicas = [_Replica(i, scheduler_config, cost_model, router, decode_runs) for i in range(router.num_replicas)]
    schedulers = [rep.sched for rep in replicas]
    wall0 = time.perf_counter()
    total = len(requests) if hasattr(requests, "__len__") else None
    bar = None
    if progress:
        import sys

        from tqdm import tqdm

        bar = tqdm(total=total, unit="req", file=sys.stderr, mininterval=0.5, desc="routing", leave=False)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # see sim.engine.simulate
    try:
        it = iter(requests)
        pending = next(it, None)
        while pending is not None:
            arrival = pending.arrival_time
            for rep in replicas:
                rep.advance(arrival, pending)
            index = router.route(pending, schedulers)
            rep = replicas[index]
            rep.step.on_new_request(pending)
            if not rep.sched.has_unfinished_requests():
                rep.clock.wait_until(arrival)  # an idle replica waits for the request
            if not rep.driver.submit(pending):
                router.on_finished(index, pending)  # rejected: it holds no load
            if bar is not None:
                bar.update(1)
            pending = next(it, None)
        for rep in replicas:
            rep.advance(_INF, None)
    finally:
        if gc_was_enabled:
            gc.enable()
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - wall0
    results = [RunResult(recorder=rep.recorder, scheduler_config=rep.sched.config, stats=rep.driver.finish_stats(),
                         engine="sim", cost_model=cost_model.describe(), wall_s=wall) for rep in replicas]
    return ClusterResult(results, router.name, list(router.routed), wall)
