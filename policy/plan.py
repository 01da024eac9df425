"""The plan one `schedule()` call hands to an engine, as plain data.

This is the whole sim/executor contract: the simulator prices a plan with a cost model, the
executor runs it on a model, and both hand the sampled tokens back to
`update_from_output`. Neither engine decides who runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class ScheduledRequest:
    """One request's share of a step.

    The step computes KV for token positions
    `[num_computed_tokens, num_computed_tokens + num_new_tokens)` of the request's
    `all_token_ids`, reading the prefix `[0, num_computed_tokens)` from the cache.

    `block_ids` is the request's *whole* block table when `new_table` is true (first
    admission, or readmission after a preemption: the worker drops any table it kept), and
    only the blocks appended this step otherwise (often empty during decode).
    """

    request_id: str
    num_new_tokens: int
    num_computed_tokens: int
    block_ids: list[int]
    new_table: bool
    samples: bool  # this step reaches the end of the known tokens, so it yields a token
    num_prompt_tokens: int

    @property
    def is_prefill(self) -> bool:
        """True when the step still feeds prompt tokens (a chunk, or the whole prompt)."""
        return self.num_computed_tokens < self.num_prompt_tokens

    @property
    def context_len(self) -> int:
        """Tokens whose KV the attention reads after this step writes its own."""
        return self.num_computed_tokens + self.num_new_tokens


@dataclass(slots=True)
class SchedulerOutput:
    """What to run this step. `scheduled` keeps the scheduler's order: running requests
    first (admission order), then newly admitted ones."""

    step_id: int
    scheduled: list[ScheduledRequest]
    preempted_ids: list[str] = field(default_factory=list)
    # Requests that ended outside update_from_output since the last plan (aborts): workers
    # drop their state for these.
    finished_ids: list[str] = field(default_factory=list)
    num_prefill_tokens: int = 0
    num_decode_tokens: int = 0
    # KV blocks in use after this plan's allocations, and the pool size (for usage over time).
    num_used_blocks: int = 0
    num_total_blocks: int = 0
    num_waiting: int = 0

    @property
    def total_num_scheduled_tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decode_tokens

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


@dataclass(slots=True)
class StepResult:
    """What `update_from_output` did: tokens appended (request id, token) in plan order and
    the requests that finished this step (their KV already freed)."""

    new_tokens: list[tuple[str, int]]
    finished: list  # list[Request]
