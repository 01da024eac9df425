"""Baseline: static batching (the M1 engine, and `transformers.generate`).

A batch is formed when nothing is running: requests are admitted (as many as
`max_num_seqs`, the KV pool and the arrivals allow; prompts longer than the step budget are
admitted over several steps) until the queue runs dry or the batch is full. Then the batch
runs to completion, and only when the last member finishes is the next batch formed.
Finished members leave early, but nobody takes their place: that idle capacity is exactly
what continuous batching recovers.
"""

from __future__ import annotations

from policy.plan import ScheduledRequest
from policy.scheduler import Scheduler


class StaticBatchScheduler(Scheduler):
    def __init__(self, config) -> None:
        super().__init__(config)
        self._batch_open = True

    def _admit(self, rows: list[ScheduledRequest], budget: int) -> int:
        if not self.running:
            self._batch_open = True
        if not self._batch_open:
            return budget
        left = super()._admit(rows, budget)
        if left > 0 or not self.waiting or len(self.running) >= self.config.max_num_seqs:
            # Admission stopped for a reason other than this step's token budget: the queue
            # is empty, the batch is full, or the KV pool is. The batch is now closed.
            # (A budget used up exactly does not keep it open when the queue ran dry.)
            self._batch_open = False
        return left
