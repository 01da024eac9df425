"""The discrete-event loop: a virtual clock, trace arrivals, and the policy objects deciding.

    arrivals due -> scheduler.add_request (a refusal is recorded as rejected)
    plan = scheduler.schedule()
    duration = cost_model(plan); tokens = synthetic filler (lengths come from max_tokens)
    scheduler.update_from_output(plan, tokens); record events at [now, now + duration]
    now += duration; when nothing is left to run, jump to the next arrival

The simulator never decides who runs: everything it knows about batching, KV blocks and
preemption is what the plan says. Requests that arrive while a step runs join at the next
step boundary (as they would in a real engine), with their true arrival time recorded.
Nothing here reads a wall clock or a random source, so the same inputs give the same output.
"""

from __future__ import annotations

import gc
import sys
import time
from typing import Iterable

from policy import Request, RequestRejected, SchedulerConfig, build_scheduler
from sim.cost.base import CostModel
from sim.result import SimResult
from traces.timeline import TimelineRecorder, plan_shape

FILLER_TOKEN = 1  # what every synthetic step "samples"; requests stop on max_tokens


class SimulationStalled(RuntimeError):
    """The scheduler has work but schedules nothing and no arrival is left to change that."""


def _filler_for(request: Request, default: int) -> int:
    """A token that cannot stop the request early (outputs must keep their trace length)."""
    banned = set(request.stop_token_ids)
    if request.eos_token_id is not None and not request.ignore_eos:
        banned.add(request.eos_token_id)
    token = default
    while token in banned:
        token += 1
    return token


def simulate(
    requests: Iterable[Request],
    scheduler_config: SchedulerConfig,
    cost_model: CostModel,
    *,
    progress: bool = False,
    filler_token: int = FILLER_TOKEN,
) -> SimResult:
    """Replay `requests` (in arrival order) through a fresh scheduler built from
    `scheduler_config`, pricing each step with `cost_model`."""
    total = len(requests) if hasattr(requests, "__len__") else None
    sched = build_scheduler(scheduler_config)
    recorder = TimelineRecorder()
    special: dict[str, int] = {}  # request id -> filler, for requests the default could stop
    wall_start = time.perf_counter()

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="req", file=sys.stderr, mininterval=0.5, desc="simulating", leave=False)

    # The loop allocates millions of small acyclic objects (plan rows, token-time floats);
    # Python's cyclic GC would rescan every live Request and block on each collection,
    # costing 10-25% of the replay for nothing. Reference counting still frees everything.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _run(requests, sched, recorder, cost_model, special, bar, filler_token, wall_start)
    finally:
        if gc_was_enabled:
            gc.enable()


def _run(requests, sched, recorder, cost_model, special, bar, filler_token, wall_start) -> SimResult:
    price = cost_model.time_for_shape
    ended = 0
    idle_plans = 0  # consecutive plans that scheduled nothing (bounded: no hangs)
    it = iter(requests)
    pending = next(it, None)
    now = pending.arrival_time if pending is not None else 0.0
    last_arrival = now
    while True:
        # Arrivals due by now join the queue (or are refused at the door).
        while pending is not None and pending.arrival_time <= now:
            req = pending
            if req.arrival_time < last_arrival:
                raise ValueError(
                    f"request {req.request_id!r}: arrival_time {req.arrival_time} is earlier than the previous "
                    f"request's {last_arrival}; requests must come in arrival order"
                )
            last_arrival = req.arrival_time
            recorder.on_arrival(req, req.arrival_time)
            try:
                sched.add_request(req)
            except RequestRejected as exc:
                recorder.on_rejected(req.request_id, req.arrival_time, req.num_prompt_tokens, req.max_tokens, str(exc))
                ended += 1
            else:
                if req.stop_token_ids or (req.eos_token_id is not None and not req.ignore_eos):
                    token = _filler_for(req, filler_token)
                    if token != filler_token:
                        special[req.request_id] = token
            pending = next(it, None)

        if not sched.has_unfinished_requests():
            if pending is None:
                break
            now = pending.arrival_time  # idle: jump straight to the next arrival
            continue

        plan = sched.schedule()
        rows = plan.scheduled
        if not rows:
            if plan.preempted_ids and idle_plans < 2:
                # Everything running was preempted and nothing admitted in the same step (the
                # policy's rule): the next plan will readmit, with no time passing.
                idle_plans += 1
                for rid in plan.preempted_ids:
                    recorder.timelines[rid].preemption_times.append(now)
                continue
            if pending is not None:
                idle_plans = 0
                now = pending.arrival_time
                continue
            stuck = sorted(sched.requests)[:5]
            raise SimulationStalled(
                f"scheduler has {len(sched.requests)} unfinished request(s) (e.g. {stuck}) but scheduled nothing "
                f"at t={now:.6f}s and no arrival is left; waiting={sched.num_waiting}, running={sched.num_running}, "
                f"kv usage={sched.kv_cache_usage:.3f}"
            )
        idle_plans = 0
        shape = plan_shape(plan)
        duration = price(shape)
        if not duration > 0.0:
            raise ValueError(f"cost model {type(cost_model).__name__} priced step {plan.step_id} at {duration!r} s")
        if special:
            sampled = [special.get(row.request_id, filler_token) for row in rows]
        else:
            sampled = [filler_token] * len(rows)
        result = sched.update_from_output(plan, sampled)
        end = now + duration
        recorder.on_step(plan, result, now, end, shape)
        now = end
        if result.finished:
            ended += len(result.finished)
            if special:
                for request in result.finished:
                    special.pop(request.request_id, None)
        if bar is not None and not plan.step_id & 255:
            bar.n = ended
            bar.refresh()
    if bar is not None:
        bar.n = ended
        bar.close()
    stats = sched.prefix_cache_stats
    return SimResult(
        recorder=recorder,
        scheduler_config=sched.config,
        cost_model=cost_model.describe(),
        scheduler_stats={
            "prefix_queries_tokens": int(stats.queries_tokens),
            "prefix_hit_tokens": int(stats.hit_tokens),
            "num_preemptions": int(getattr(sched, "num_preemptions", 0)),
        },
        wall_s=time.perf_counter() - wall_start,
    )
