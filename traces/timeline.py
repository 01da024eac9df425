"""Request timelines out: the per-request and per-step records both engines write.

The simulator (virtual clock) and the executor (monotonic clock) call the same recorder with
the same plan objects, so their tables have the same columns and the same meaning, and
`traces.metrics` computes TTFT / TPOT / ITL / E2EL from them identically.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from policy.plan import SchedulerOutput, StepResult
from policy.request import Request


@dataclass(slots=True)
class RequestTimeline:
    request_id: str
    arrival_s: float
    prompt_len: int
    max_tokens: int
    first_scheduled_s: float | None = None
    token_times: list[float] = field(default_factory=list)
    finish_s: float | None = None
    status: str = "pending"  # finished | aborted | rejected once it ends
    finish_reason: str | None = None
    reject_reason: str | None = None
    num_preemptions: int = 0
    num_cached_tokens: int = 0

    @property
    def output_len(self) -> int:
        return len(self.token_times)

    @property
    def first_token_s(self) -> float | None:
        return self.token_times[0] if self.token_times else None


@dataclass(slots=True)
class StepRecord:
    """One engine step: its start, its duration, and the plan's shape (what the cost model
    and the calibration fit need)."""

    step_id: int
    start_s: float
    duration_s: float
    num_requests: int
    num_prefill_requests: int
    num_decode_requests: int
    num_prefill_tokens: int
    num_decode_tokens: int
    sum_context_len: int  # attention reads: sum over scheduled requests of context after the step
    sum_prefill_context_len: int  # the same, over prefill rows only
    num_preempted: int
    num_waiting: int
    kv_used_blocks: int
    kv_total_blocks: int


class TimelineRecorder:
    """Turns (plan, step result, clock readings) into timelines and step records."""

    def __init__(self) -> None:
        self.timelines: dict[str, RequestTimeline] = {}
        self.steps: list[StepRecord] = []

    # -- request events -------------------------------------------------------------
    def on_arrival(self, request: Request, now: float) -> None:
        if request.request_id in self.timelines:
            raise ValueError(f"duplicate request id {request.request_id!r}")
        self.timelines[request.request_id] = RequestTimeline(
            request.request_id, now, request.num_prompt_tokens, request.max_tokens
        )

    def on_rejected(self, request_id: str, arrival_s: float, prompt_len: int, max_tokens: int, reason: str) -> None:
        timeline = self.timelines.get(request_id)
        if timeline is None:
            timeline = self.timelines[request_id] = RequestTimeline(request_id, arrival_s, prompt_len, max_tokens)
        timeline.status = "rejected"
        timeline.reject_reason = reason
        timeline.finish_s = arrival_s

    def on_aborted(self, request: Request, now: float) -> None:
        timeline = self.timelines[request.request_id]
        timeline.status = "aborted"
        timeline.finish_reason = "abort"
        timeline.finish_s = now
        timeline.num_preemptions = request.num_preemptions

    # -- step events ----------------------------------------------------------------
    def on_step(
        self,
        plan: SchedulerOutput,
        result: StepResult,
        start_s: float,
        end_s: float,
    ) -> None:
        """Record one executed step: a request is first scheduled at `start_s`, and the
        tokens the step sampled appear at `end_s`."""
        timelines = self.timelines
        n_prefill_req = sum_ctx = sum_prefill_ctx = 0
        for row in plan.scheduled:
            timeline = timelines[row.request_id]
            if timeline.first_scheduled_s is None:
                timeline.first_scheduled_s = start_s
            ctx = row.num_computed_tokens + row.num_new_tokens
            sum_ctx += ctx
            if row.num_new_tokens > 1 or row.num_computed_tokens < row.num_prompt_tokens:
                n_prefill_req += 1
                sum_prefill_ctx += ctx
        for request_id, _token in result.new_tokens:
            timelines[request_id].token_times.append(end_s)
        for request in result.finished:
            timeline = timelines[request.request_id]
            timeline.finish_s = end_s
            timeline.status = "finished"
            timeline.finish_reason = request.finish_reason
            timeline.num_preemptions = request.num_preemptions
            timeline.num_cached_tokens = max(request.num_cached_tokens, 0)
        n_req = len(plan.scheduled)
        self.steps.append(
            StepRecord(
                step_id=plan.step_id,
                start_s=start_s,
                duration_s=end_s - start_s,
                num_requests=n_req,
                num_prefill_requests=n_prefill_req,
                num_decode_requests=n_req - n_prefill_req,
                num_prefill_tokens=plan.num_prefill_tokens,
                num_decode_tokens=plan.num_decode_tokens,
                sum_context_len=sum_ctx,
                sum_prefill_context_len=sum_prefill_ctx,
                num_preempted=len(plan.preempted_ids),
                num_waiting=plan.num_waiting,
                kv_used_blocks=plan.num_used_blocks,
                kv_total_blocks=plan.num_total_blocks,
            )
        )
