"""The executor's replay clocks: wall time, and engine CPU time (host jitter left out)."""

from __future__ import annotations

import time

import pytest
import torch

from executor.engine import EngineCpuClock, WallClock, make_clock


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_cpu_clock_counts_work_and_skips_idle_waits(one_thread):
    clock = EngineCpuClock()
    t0 = clock.now()
    wall0 = time.perf_counter()
    clock.wait_until(t0 + 50.0)  # an idle gap: jumps, never sleeps
    assert time.perf_counter() - wall0 < 1.0
    assert clock.now() == pytest.approx(t0 + 50.0, abs=0.05)
    time.sleep(0.2)  # not working: the engine's clock does not move
    assert clock.now() - (t0 + 50.0) < 0.05
    x, end = 0, time.thread_time() + 0.1
    while time.thread_time() < end:  # working: it moves with the work
        x += 1
    assert clock.now() - (t0 + 50.0) >= 0.09
    before = clock.now()
    clock.wait_until(before - 10.0)  # a wait into the past changes nothing
    assert clock.now() >= before


def test_cpu_clock_needs_one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(ValueError, match="cpu clock needs one torch thread"):
            EngineCpuClock()
    finally:
        torch.set_num_threads(before)


def test_make_clock_by_name(one_thread):
    assert isinstance(make_clock("wall"), WallClock)
    assert isinstance(make_clock("cpu"), EngineCpuClock)
    with pytest.raises(ValueError, match="clock 'gpu': choose one of"):
        make_clock("gpu")


class _FakeProbe:
    """A probe whose time the test sets: `slowness` x the reference (and which costs CPU time
    on the fake clock, to check that the probe's own time never counts)."""

    def __init__(self, cpu: list[float], reference: float = 0.004) -> None:
        self.cpu = cpu
        self.reference = reference
        self.slowness = 1.0

    def run(self) -> float:
        self.cpu[0] += 0.5  # the probe's own work: must not show on the engine's clock
        return self.slowness * self.reference


def _ref_clock(slowness: float = 1.0, **kw):
    from executor.clocks import ReferenceSpeedClock

    cpu = [0.0]
    probe = _FakeProbe(cpu)
    probe.slowness = slowness
    clock = ReferenceSpeedClock(probe.reference, probe=probe, clock=lambda: cpu[0], **kw)
    return clock, probe, cpu


def test_reference_clock_divides_out_the_hosts_speed(one_thread):
    clock, probe, cpu = _ref_clock(slowness=2.0)  # the host runs at half its reference speed
    t0 = clock.now()
    cpu[0] += 0.2  # a step: 0.2 s of CPU time at half speed is 0.1 s at the reference speed
    assert clock.now() - t0 == pytest.approx(0.1)
    probe.slowness = 1.0  # the host speeds up; the next stretch is priced at the mean of its two ends
    t1 = clock.now()
    cpu[0] += 0.3
    assert clock.now() - t1 == pytest.approx(0.3 / 1.5)
    t2 = clock.now()
    cpu[0] += 0.3  # now steadily at the reference speed
    assert clock.now() - t2 == pytest.approx(0.3)
    stats = clock.speed_stats()
    assert stats["reference_s"] == probe.reference and not stats["self_referenced"]
    assert stats["probes"] >= 3 and stats["ratio_p90"] == pytest.approx(2.0)


def test_reference_clock_probes_at_most_once_per_interval_and_skips_idle_waits(one_thread):
    clock, probe, cpu = _ref_clock(min_interval_s=0.05)
    probes = clock.speed_stats()["probes"]
    t0 = clock.now()
    cpu[0] += 0.01  # short stretches: no probe, priced at the last ratio
    clock.now()
    assert clock.speed_stats()["probes"] == probes
    cpu[0] += 0.05
    assert clock.now() - t0 == pytest.approx(0.06)
    assert clock.speed_stats()["probes"] == probes + 1
    before = clock.now()
    clock.wait_until(before + 30.0)  # idle: jumps, costs nothing
    assert clock.now() == pytest.approx(before + 30.0)
    clock.wait_until(0.0)  # into the past: nothing
    assert clock.now() == pytest.approx(before + 30.0)


def test_reference_clock_on_the_real_probe(one_thread):
    from executor.clocks import ReferenceSpeedClock

    clock = ReferenceSpeedClock()  # measures its own reference
    assert clock.speed_stats()["self_referenced"] and clock.reference_s > 0
    t0 = clock.now()
    x, end = 0, time.thread_time() + 0.1
    while time.thread_time() < end:
        x += 1
    elapsed = clock.now() - t0
    assert 0.02 < elapsed < 0.5  # 0.1 s of work, at whatever speed the host ran it
    with pytest.raises(ValueError, match="reference_s must be > 0"):
        ReferenceSpeedClock(0.0)


def test_make_reference_clock_by_name(one_thread):
    from executor.clocks import ReferenceSpeedClock

    clock = make_clock("cpu-ref", reference_s=0.003)
    assert isinstance(clock, ReferenceSpeedClock) and clock.reference_s == 0.003


def test_reference_clock_needs_one_torch_thread():
    from executor.clocks import ReferenceSpeedClock

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(ValueError, match="cpu-ref clock needs one torch thread"):
            ReferenceSpeedClock(0.003)
    finally:
        torch.set_num_threads(before)


def test_calibration_rebases_samples_to_its_median_speed(one_thread):
    from experiments.run.calibrate import rebase_to_median_speed

    clock, probe, cpu = _ref_clock()
    for slowness in (1.0, 1.2, 1.2, 1.2):  # mostly 20 % slower than at the start
        probe.slowness = slowness
        cpu[0] += 0.1
        clock.now()
    samples = [{"measured_s": 0.1}, {"measured_s": 0.5}]
    speed = rebase_to_median_speed(samples, clock)
    assert [s["measured_s"] for s in samples] == pytest.approx([0.12, 0.6])
    assert speed["reference_s"] == pytest.approx(1.2 * probe.reference) and speed["ratio_p50"] == 1.0
