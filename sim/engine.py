"""The simulator: the shared step driver with a virtual clock and a cost model as its step.

    driver = StepDriver(scheduler, execute=price_and_fill, clock=VirtualClock(), observer=recorder)

`price_and_fill(plan, shape)` advances the virtual clock by `cost_model.time_for_shape(shape)`
and returns synthetic tokens (lengths come from `max_tokens`); everything else (arrivals,
admission, empty plans, stalls, recording) is `policy.driver`'s loop, the very one the
executor runs. The simulator never decides who runs, and nothing here reads a wall clock or a
random source, so the same inputs give the same output.
"""

from __future__ import annotations

import gc
import sys
import time
from typing import Iterable

from policy import Request, SchedulerConfig, build_scheduler
from policy.driver import EngineStalled, StepDriver, VirtualClock
from sim.cost.base import CostModel
from sim.decode_runs import DecodeRuns
from traces.run_result import RunResult
from traces.timeline import TimelineRecorder

FILLER_TOKEN = 1  # what every synthetic step "samples"; requests stop on max_tokens

SimulationStalled = EngineStalled  # the name this module used before the driver was shared


def _filler_for(request: Request, default: int) -> int:
    """A token that cannot stop the request early (outputs must keep their trace length)."""
    banned = set(request.stop_token_ids)
    if request.eos_token_id is not None and not request.ignore_eos:
        banned.add(request.eos_token_id)
    token = default
    while token in banned:
        token += 1
    return token


class PricedStep:
    """The simulator's "run this plan": price it, advance the virtual clock, sample filler."""

    def __init__(self, cost_model: CostModel, clock: VirtualClock, scheduler, filler_token: int = FILLER_TOKEN) -> None:
        self.price = cost_model.time_for_shape
        self.cost_name = type(cost_model).__name__
        self.clock = clock
        self.scheduler = scheduler
        self.filler = filler_token
        self._special: dict[str, int] = {}  # request id -> filler, for requests the default could stop

    def on_new_request(self, req: Request) -> None:
        if req.stop_token_ids or (req.eos_token_id is not None and not req.ignore_eos):
            token = _filler_for(req, self.filler)
            if token != self.filler:
                self._special[req.request_id] = token

    def __call__(self, plan, shape) -> list:
        rows = plan.scheduled
        if not rows:
            for rid in plan.finished_ids:
                self._special.pop(rid, None)
            return []
        duration = self.price(shape)
        if not duration > 0.0:  # also refuses NaN
            raise ValueError(f"cost model {self.cost_name} priced step {plan.step_id} at {duration!r} s")
        self.clock.t += duration
        special = self._special
        if special:
            for rid in plan.finished_ids:
                special.pop(rid, None)
            return [special.get(row.request_id, self.filler) for row in rows]
        return [self.filler] * len(rows)


def simulate(
    requests: Iterable[Request],
    scheduler_config: SchedulerConfig,
    cost_model: CostModel,
    *,
    progress: bool = False,
    filler_token: int = FILLER_TOKEN,
    recorder: TimelineRecorder | None = None,
    decode_runs: bool = True,
) -> RunResult:
    """Replay `requests` (in arrival order) through a fresh scheduler built from
    `scheduler_config`, pricing each step with `cost_model`. `decode_runs` advances
    decode-only stretches in bulk (sim/decode_runs.py; identical results, faster); False
    steps one plan at a time."""
    total = len(requests) if hasattr(requests, "__len__") else None
    sched = build_scheduler(scheduler_config)
    recorder = recorder if recorder is not None else TimelineRecorder()
    clock = VirtualClock()
    step = PricedStep(cost_model, clock, sched, filler_token)
    driver = StepDriver(sched, step, clock, recorder)
    if decode_runs:
        driver.after_step = DecodeRuns(sched, step, recorder, driver.stats, driver, submit_arrivals=True)
    wall_start = time.perf_counter()

    bar = on_progress = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="req", file=sys.stderr, mininterval=0.5, desc="simulating", leave=False)

        def on_progress(stats) -> None:
            bar.n = stats.num_finished + stats.num_rejected + stats.num_aborted
            bar.refresh()

    # The loop allocates millions of small acyclic objects (plan rows, token-time floats);
    # Python's cyclic GC would rescan every live Request and block on each collection,
    # costing 10-25% of the replay for nothing. Reference counting still frees everything.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        stats = driver.run(_noting_specials(requests, step), on_progress=on_progress)
    finally:
        if gc_was_enabled:
            gc.enable()
        if bar is not None:
            bar.close()
    result_type = getattr(recorder, "result_type", None) or RunResult  # streamed runs keep tables on disk
    return result_type(recorder=recorder, scheduler_config=sched.config, stats=stats, engine="sim",
                     cost_model=cost_model.describe(), wall_s=time.perf_counter() - wall_start)


def _noting_specials(requests: Iterable[Request], step: PricedStep):
    """Pass requests through, letting the step pick a filler token none of them can stop on."""
    note = step.on_new_request
    for req in requests:
        note(req)
        yield req
