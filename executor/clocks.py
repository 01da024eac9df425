"""The executor's replay clocks. A replay's TTFT / TPOT are read on one of them.

- `wall` (`WallClock`): monotonic seconds; idle waits really sleep. What a user of a
  dedicated machine sees.
- `cpu` (`EngineCpuClock`): the engine thread's own CPU time; idle waits jump. Leaves out
  the time the thread was descheduled on a shared host.
- `cpu-ref` (`ReferenceSpeedClock`): that CPU time rescaled to a *reference speed* of the
  host, measured by a fixed probe between steps. Leaves out the host's speed drift too, so
  a replay an hour after calibration is priced on the calibration's scale.
"""

from __future__ import annotations

import time

import torch

from executor.speed_probe import SpeedProbe


def _require_one_thread(name: str) -> None:
    if torch.get_num_threads() != 1:
        raise ValueError(f"the {name} clock needs one torch thread (torch.set_num_threads(1)); "
                         f"this process uses {torch.get_num_threads()}: other threads' work would be missed")


class WallClock:
    """Monotonic seconds since the clock was made; waiting really sleeps."""

    def __init__(self, clock=time.monotonic, sleep=time.sleep) -> None:
        self._clock = clock
        self._sleep = sleep
        self._t0 = clock()

    def now(self) -> float:
        return self._clock() - self._t0

    def wait_until(self, t: float) -> None:
        delay = t - self.now()
        if delay > 0:
            self._sleep(delay)


class EngineCpuClock:
    """Engine time: the engine thread's own CPU time while it works, idle waits skipped.

    On a shared or virtualised CPU host, wall time per step swings by 15-40 % with what else
    runs (descheduling, timer interrupts, a sibling vCPU), which no cost model of the *engine*
    can predict. With one torch thread every instruction of a step (schedule, forward, sample,
    record) runs on this thread, so its CPU time is the step's cost on a dedicated core.
    Waiting for the next arrival jumps there (as the simulator's clock does) instead of
    sleeping: a sleeping vCPU also comes back slower. Used by calibration and by replays that
    compare with the simulator (`folovllm fidelity`, spec `executor: {clock: cpu}`).
    """

    def __init__(self, clock=time.thread_time) -> None:
        _require_one_thread("cpu")
        self._clock = clock
        self._offset = -clock()

    def now(self) -> float:
        return self._clock() + self._offset

    def wait_until(self, t: float) -> None:
        delay = t - self.now()
        if delay > 0:
            self._offset += delay


class ReferenceSpeedClock:
    """Engine CPU time at a reference speed of the host: each stretch of engine work is
    divided by how slow the host runs at that moment (probe time / reference probe time),
    idle waits skipped as `EngineCpuClock` does.

    Why: on a shared VM one thread's speed drifts 20-30 % over tens of seconds with other
    tenants' use of the core's caches and memory bandwidth, so the same plan costs different
    CPU time in different minutes (executor.speed_probe). A cost model calibrated in one
    minute then misprices a replay run in another by that drift. This clock times a fixed
    probe between steps (at most once per `min_interval_s` of engine work) and converts each
    stretch of work with the mean of the speed ratios at its two ends.

    `reference_s` is the probe's time at the reference speed: a calibrated profile records its
    own (`hardware.speed_reference_s`), and replays compared with that profile pass it, so
    both are on one scale. Without it the clock measures its own reference at start.
    The probe's own time never counts. Stats of the ratios seen: `speed_stats()`.
    """

    def __init__(self, reference_s: float | None = None, *, probe: SpeedProbe | None = None,
                 min_interval_s: float = 0.01, clock=time.thread_time) -> None:
        _require_one_thread("cpu-ref")
        self.probe = probe if probe is not None else SpeedProbe(clock)
        self.self_referenced = reference_s is None
        self.reference_s = float(reference_s) if reference_s is not None else self.probe.reference()
        if not self.reference_s > 0:
            raise ValueError(f"reference_s must be > 0, got {reference_s!r}")
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._ratios: list[float] = []
        self._ratio = self._measure()
        self._mark = clock()
        self._unprobed = 0.0
        self._t = 0.0

    def _measure(self) -> float:
        ratio = self.probe.run() / self.reference_s
        self._ratios.append(ratio)
        return ratio

    def now(self) -> float:
        work = self._clock() - self._mark
        self._unprobed += work
        if self._unprobed >= self.min_interval_s:
            ratio = self._measure()
            self._t += work / (0.5 * (self._ratio + ratio))
            self._ratio = ratio
            self._unprobed = 0.0
            self._mark = self._clock()  # the probe's own time is not the engine's
        else:
            self._t += work / self._ratio
            self._mark += work
        return self._t

    def wait_until(self, t: float) -> None:
        now = self.now()
        if t > now:
            self._t = t

    def speed_stats(self) -> dict:
        """The speed ratios seen (probe time / reference; above 1 = the host ran slower)."""
        r = sorted(self._ratios)
        pick = lambda q: r[min(len(r) - 1, int(q * len(r)))]  # noqa: E731
        return {"reference_s": self.reference_s, "self_referenced": self.self_referenced, "probes": len(r),
                "ratio_p10": pick(0.1), "ratio_p50": pick(0.5), "ratio_p90": pick(0.9)}


CLOCKS = {"wall": WallClock, "cpu": EngineCpuClock, "cpu-ref": ReferenceSpeedClock}


def make_clock(name: str, *, reference_s: float | None = None):
    """A replay clock by name (`CLOCKS`); `reference_s` is for `cpu-ref` only."""
    if name not in CLOCKS:
        raise ValueError(f"clock {name!r}: choose one of {sorted(CLOCKS)}")
    if name == "cpu-ref":
        return ReferenceSpeedClock(reference_s)
    return CLOCKS[name]()
