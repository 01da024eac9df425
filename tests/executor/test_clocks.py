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
        with pytest.raises(ValueError, match="one torch thread"):
            EngineCpuClock()
    finally:
        torch.set_num_threads(before)


def test_make_clock_by_name(one_thread):
    assert isinstance(make_clock("wall"), WallClock)
    assert isinstance(make_clock("cpu"), EngineCpuClock)
    with pytest.raises(ValueError, match="clock 'gpu': choose one of"):
        make_clock("gpu")
