"""The serving loop, written once: both engines run it, with the clock and the step injected.

    arrivals due by now -> admit (checked, queued, or recorded as rejected)
    plan = scheduler.schedule()
    tokens = execute(plan, shape)      # simulator: price it, advance the virtual clock,
                                       # return filler tokens; executor: run the model
    result = scheduler.update_from_output(plan, tokens)
    observer.on_step(plan, result, start, end, shape)

Because this is the only loop, the simulator and the executor make the same decisions given
the same step durations (tests/test_engines_agree.py checks it), and simulator error is
cost-model error only. The edges are decided here, once:

- **Arrival order**: requests must come in non-decreasing `arrival_time`; an out-of-order
  request raises ValueError naming it (sort the trace first; nothing is reordered silently).
- **Admission**: the engine's own check (e.g. the executor's vocabulary check), then the
  scheduler's; a refusal is recorded as a rejected request and counted, never raised.
- **Duplicate ids**: the second request with a live or past id is rejected and recorded under
  `<id>#dup<k>`, so it is counted and the first request's timeline is untouched.
- **Empty plans**: a plan that only preempted (nothing scheduled) is recorded and retried at
  once, at most twice in a row; an empty plan with arrivals pending waits for the next one;
  an empty plan with nothing pending raises EngineStalled instead of hanging.

Nothing here reads a clock: `clock.now()` is virtual seconds in the simulator and monotonic
seconds in the executor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Protocol

from policy.plan import SchedulerOutput, StepResult, StepShape, plan_shape
from policy.request import Request, RequestRejected
from policy.scheduler import Scheduler

MAX_IDLE_PLANS = 2  # consecutive plans that only preempt before the loop gives up


class EngineStalled(RuntimeError):
    """The scheduler has work but schedules nothing, and no arrival is left to change that."""


class Clock(Protocol):
    def now(self) -> float: ...

    def wait_until(self, t: float) -> None: ...


class RunObserver(Protocol):
    """What the loop reports; `traces.timeline.TimelineRecorder` is the one implementation."""

    def on_arrival(self, request: Request, now: float) -> None: ...

    def on_rejected(self, request_id: str, arrival_s: float, prompt_len: int, max_tokens: int, reason: str) -> None: ...

    def on_preempted(self, request_ids: list[str], now: float) -> None: ...

    def on_aborted(self, request: Request, now: float) -> None: ...

    def on_step(self, plan: SchedulerOutput, result: StepResult, start_s: float, end_s: float,
                shape: StepShape | None = None) -> None: ...


# execute(plan, shape) -> one entry per plan row: the sampled token, or None for rows that do
# not sample. Called for empty plans too (a worker drops state of finished/preempted ids).
ExecuteFn = Callable[[SchedulerOutput, StepShape], list]
AdmitCheck = Callable[[Request], None]  # raises RequestRejected


class VirtualClock:
    """Simulated time: moves only when told to."""

    __slots__ = ("t",)

    def __init__(self, start: float = 0.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds

    def wait_until(self, t: float) -> None:
        if t > self.t:
            self.t = t


@dataclass
class RunStats:
    """Counts of one run; every submitted request ends in exactly one of the three outcomes."""

    num_requests: int = 0
    num_rejected: int = 0
    num_finished: int = 0
    num_aborted: int = 0
    num_steps: int = 0
    num_preemptions: int = 0
    prefix_queries_tokens: int = 0
    prefix_hit_tokens: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class StepDriver:
    """Owns the loop around one scheduler. `submit` and `step` serve online callers (one
    request, one step at a time); `run` replays a whole arrival stream."""

    def __init__(self, scheduler: Scheduler, execute: ExecuteFn, clock: Clock, observer: RunObserver, *,
                 admit_check: AdmitCheck | None = None) -> None:
        self.scheduler = scheduler
        self.execute = execute
        self.clock = clock
        self.observer = observer
        self.admit_check = admit_check
        self.stats = RunStats()
        self._seen: set[str] = set()
        self._num_duplicates = 0
        self._idle_plans = 0
        self._last_arrival = float("-inf")
        stats = scheduler.prefix_cache_stats
        self._prefix0 = (stats.queries_tokens, stats.hit_tokens)
        self._preemptions0 = scheduler.num_preemptions
        self.on_finished: Callable[[Request], None] | None = None
        # Called by `run` after every executed step with the plan, its result and the next
        # arrival not yet submitted (None when the stream is exhausted); returns the next
        # arrival not yet submitted after it ran (it may have run steps and submitted
        # arrivals itself, through `submit` and the `arrivals` iterator). The simulator uses
        # it to advance stretches of steps in bulk (sim/bulk_steps.py); the executor leaves
        # it unset.
        self.after_step: Callable[[SchedulerOutput, StepResult, Request | None], Request | None] | None = None
        self.arrivals: Iterator[Request] | None = None  # the arrival stream `run` is replaying
        self.progress: Callable[[RunStats], None] | None = None  # `run`'s on_progress, for after_step too

    # -- requests in ----------------------------------------------------------------------
    def submit(self, request: Request) -> bool:
        """Admit one request that arrived at `request.arrival_time`; False if it was rejected
        (recorded and counted)."""
        if request.arrival_time < self._last_arrival:
            raise ValueError(
                f"request {request.request_id!r}: arrival_time {request.arrival_time} is earlier than the "
                f"previous request's {self._last_arrival}; requests must come in arrival order"
            )
        self._last_arrival = request.arrival_time
        self.stats.num_requests += 1
        observer = self.observer
        rid = request.request_id
        if rid in self._seen:
            self._num_duplicates += 1
            self.stats.num_rejected += 1
            observer.on_rejected(f"{rid}#dup{self._num_duplicates}", request.arrival_time, request.num_prompt_tokens,
                                 request.max_tokens, f"request {rid!r}: duplicate request_id")
            return False
        self._seen.add(rid)
        observer.on_arrival(request, request.arrival_time)
        try:
            if self.admit_check is not None:
                self.admit_check(request)
            self.scheduler.add_request(request)
        except RequestRejected as exc:
            self.stats.num_rejected += 1
            observer.on_rejected(rid, request.arrival_time, request.num_prompt_tokens, request.max_tokens, str(exc))
            return False
        return True

    def abort(self, request_id: str) -> Request:
        """End a live request now (a client went away); its KV is freed at once and the worker
        drops its state with the next plan."""
        request = self.scheduler.abort(request_id)
        self.stats.num_aborted += 1
        self.observer.on_aborted(request, self.clock.now())
        return request

    # -- one step -------------------------------------------------------------------------
    def step(self) -> tuple[SchedulerOutput, StepResult | None]:
        """Plan and run one step. The result is None for an empty plan (nothing ran)."""
        sched = self.scheduler
        plan = sched.schedule()
        shape = plan_shape(plan)
        if not plan.scheduled:
            self.execute(plan, shape)
            if plan.preempted_ids:
                self.observer.on_preempted(plan.preempted_ids, self.clock.now())
            self._idle_plans += 1
            return plan, None
        self._idle_plans = 0
        start = self.clock.now()
        sampled = self.execute(plan, shape)
        end = self.clock.now()
        result = sched.update_from_output(plan, sampled)
        self.observer.on_step(plan, result, start, end, shape)
        stats = self.stats
        stats.num_steps += 1
        if result.finished:
            stats.num_finished += len(result.finished)
            if self.on_finished is not None:
                for request in result.finished:
                    self.on_finished(request)
        return plan, result

    # -- the whole run --------------------------------------------------------------------
    def run(self, requests: Iterable[Request], *, on_progress: Callable[[RunStats], None] | None = None) -> RunStats:
        """Replay `requests` (in arrival order) until every one has ended."""
        it = self.arrivals = iter(requests)
        self.progress = on_progress
        try:
            return self._run(it, on_progress)
        finally:
            self.arrivals = self.progress = None

    def _run(self, it: Iterator[Request], on_progress: Callable[[RunStats], None] | None) -> RunStats:
        sched = self.scheduler
        clock = self.clock
        pending = next(it, None)
        reported = 0
        while True:
            now = clock.now()
            while pending is not None and pending.arrival_time <= now:
                self.submit(pending)
                pending = next(it, None)
            if not sched.has_unfinished_requests():
                if pending is None:
                    break
                clock.wait_until(pending.arrival_time)  # idle: straight to the next arrival
                continue
            plan, result = self.step()
            if result is None:
                if plan.preempted_ids and self._idle_plans <= MAX_IDLE_PLANS:
                    continue  # everything running was preempted; the next plan readmits
                if pending is not None:
                    self._idle_plans = 0
                    clock.wait_until(pending.arrival_time)
                    continue
                self._stalled()
            elif self.after_step is not None:
                pending = self.after_step(plan, result, pending)
            if on_progress is not None and self.stats.num_steps - reported >= 256:
                reported = self.stats.num_steps
                on_progress(self.stats)
        return self.finish_stats()

    def finish_stats(self) -> RunStats:
        """The run's counts, with the scheduler's prefix and preemption counters folded in."""
        sched = self.scheduler
        stats = self.stats
        pstats = sched.prefix_cache_stats
        stats.prefix_queries_tokens = int(pstats.queries_tokens - self._prefix0[0])
        stats.prefix_hit_tokens = int(pstats.hit_tokens - self._prefix0[1])
        stats.num_preemptions = sched.num_preemptions - self._preemptions0
        return stats

    def _stalled(self) -> None:
        sched = self.scheduler
        stuck = sorted(sched.requests)[:5]
        raise EngineStalled(
            f"scheduler has {len(sched.requests)} unfinished request(s) (e.g. {stuck}) but scheduled nothing "
            f"at t={self.clock.now():.6f}s and no arrival is left; waiting={sched.num_waiting}, "
            f"running={sched.num_running}, kv usage={sched.kv_cache_usage:.3f}"
        )
