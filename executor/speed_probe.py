"""A fixed piece of CPU work whose time tells how fast this host runs *right now*.

On a shared or virtualised CPU (this project's CI kind: two vCPUs of a KVM guest), the speed
of one thread drifts by 20-30 % over tens of seconds even with nothing else running in the
guest: other tenants share the core's caches and the socket's memory bandwidth. The engine
thread's CPU time (`EngineCpuClock`) leaves out descheduling but not this. Measured on this
VM, a 7 ms probe (two small GEMMs, a dozen GEMVs) taken beside each step tracked the step
times of an identical plan sequence with correlation 0.82; over 9-second windows the ratio
of probe time to its median followed the engine's own slowdown with correlation 0.96
(docs/DEVLOG.md, "A speed-referenced clock").

The work is model-independent on purpose: it measures the machine, not the model. Both
halves of a step's cost are represented: a 64-row GEMM (compute-bound, like prefill) and
1-row GEMVs over 21 MB of weights (memory-bound, like decode).
"""

from __future__ import annotations

import statistics
import time

import torch

_HIDDEN, _INNER = 576, 1536  # a small transformer's MLP; six of these matrices fill ~21 MB
_GEMM_ROWS = 64


class SpeedProbe:
    """`run()` does the fixed work once and returns its CPU seconds on the calling thread."""

    def __init__(self, clock=time.thread_time) -> None:
        gen = torch.Generator().manual_seed(0)
        self._weights = [torch.randn(_HIDDEN, _INNER, generator=gen) for _ in range(6)]
        self._rows = torch.randn(_GEMM_ROWS, _HIDDEN, generator=gen)
        self._row = torch.randn(1, _HIDDEN, generator=gen)
        self._clock = clock
        self.run()  # first-call overheads (allocator, kernel selection) stay out of every timing

    def run(self) -> float:
        clock = self._clock
        t0 = clock()
        with torch.inference_mode():
            for w in self._weights[:2]:
                torch.mm(self._rows, w)
            for _ in range(2):
                for w in self._weights:
                    torch.mm(self._row, w)
        return clock() - t0

    def reference(self, n: int = 31) -> float:
        """The median of `n` runs: the host's speed over the next fraction of a second."""
        return statistics.median(self.run() for _ in range(n))
