"""Request timelines out: the per-request and per-step records both engines write.

The simulator (virtual clock) and the executor (monotonic clock) call the same recorder with
the same plan objects, so their tables have the same columns and the same meaning, and
`traces.metrics` computes TTFT / TPOT / ITL / E2EL from them identically.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from policy.plan import SchedulerOutput, StepResult, StepShape, plan_shape  # noqa: F401 (re-exported)
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
    preemption_times: list[float] = field(default_factory=list)  # start of each step that preempted it

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
    # Query-key pairs the prefill rows' causal attention computes: sum of q*c + q*(q+1)/2 over
    # chunks of q new tokens after c cached ones (decode rows' pairs are their context).
    prefill_attn_pairs: int = 0
    num_sampled: int = 0  # rows that yield a token (LM-head rows)


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

    def on_preempted(self, request_ids: list[str], now: float) -> None:
        """Preemptions of a plan that scheduled nothing (no step record is written for it)."""
        for request_id in request_ids:
            timeline = self.timelines.get(request_id)
            if timeline is not None:
                timeline.preemption_times.append(now)

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
        shape: tuple | None = None,
    ) -> None:
        """Record one executed step: a request is first scheduled at `start_s`, and the
        tokens the step sampled appear at `end_s`. `shape` is `plan_shape(plan)` when the
        caller already computed it (the simulator does, for its cost model)."""
        timelines = self.timelines
        if shape is None:
            shape = plan_shape(plan)
        n_pre, pre_tok, n_dec, pre_ctx, dec_ctx, pairs, n_sampled = shape
        if n_pre:
            # A request's first row is always a prefill row (a fresh request computes at least
            # its last prompt token) carrying its whole block table, so decode-only steps,
            # most of them, skip this loop.
            for row in plan.scheduled:
                if row.new_table:
                    timeline = timelines[row.request_id]
                    if timeline.first_scheduled_s is None:
                        timeline.first_scheduled_s = start_s
        for request_id in plan.preempted_ids:
            timeline = timelines.get(request_id)
            if timeline is not None:
                timeline.preemption_times.append(start_s)
        for request_id, _token in result.new_tokens:
            timelines[request_id].token_times.append(end_s)
        for request in result.finished:
            timeline = timelines[request.request_id]
            timeline.finish_s = end_s
            timeline.status = "finished"
            timeline.finish_reason = request.finish_reason
            timeline.num_preemptions = request.num_preemptions
            timeline.num_cached_tokens = max(request.num_cached_tokens, 0)
        for request in result.finished:
            self.on_request_finished(timelines[request.request_id])
        self.steps.append(
            StepRecord(
                plan.step_id,
                start_s,
                end_s - start_s,
                n_pre + n_dec,
                n_pre,
                n_dec,
                plan.num_prefill_tokens,
                plan.num_decode_tokens,
                pre_ctx + dec_ctx,
                pre_ctx,
                len(plan.preempted_ids),
                plan.num_waiting,
                plan.num_used_blocks,
                plan.num_total_blocks,
                pairs,
                n_sampled,
            )
        )

    def on_request_finished(self, timeline: RequestTimeline) -> None:
        """Called once per finished request, its timeline complete, in finish order (also by
        the simulator's bulk steps, which write timelines without `on_step`): a hook for
        subclasses that watch a run as it goes, e.g. to stop it early."""

    def on_decode_run(self, request_ids: list[str], steps: list[StepRecord], end_times: list[float]) -> None:
        """Record a stretch of decode-only steps the simulator advanced in bulk: every
        request in `request_ids` sampled one token at each step's end."""
        timelines = self.timelines
        for request_id in request_ids:
            timelines[request_id].token_times.extend(end_times)
        self.steps.extend(steps)
