"""The plan one `schedule()` call hands to an engine, as plain data.

This is the whole sim/executor contract: the simulator prices a plan with a cost model, the
executor runs it on a model, and both hand the sampled tokens back to
`update_from_output`. Neither engine decides who runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


@dataclass(slots=True)
class NewRequestData:
    """Everything a worker needs to start (or restart) a request, sent once in the row that
    carries its whole block table: the tokens known so far (prompt, plus outputs when a
    preempted request is readmitted) and the opaque sampling parameters the engine attached
    to the request. Afterwards the worker extends its own copy with the tokens it samples,
    so it never reads the scheduler's `Request` objects (vLLM v1's `NewRequestData`)."""

    token_ids: list[int]
    num_prompt_tokens: int
    sampling_params: object = None
    eos_token_id: int | None = None


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
    new_request: NewRequestData | None = None  # set exactly when new_table is true

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
    # Requests that ended since the last plan (finished in update_from_output, or aborted):
    # workers drop their state for these.
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


class StepShape(NamedTuple):
    """The features of a plan that step time depends on, computed once per step and shared by
    the cost models (sim), the step records (both engines) and the calibration fit.

    A row is a decode iff it feeds one token to a request whose prompt is fully computed;
    everything else is prefill work. Context = tokens in KV after the step."""

    num_prefill_requests: int
    num_prefill_tokens: int
    num_decode_requests: int
    sum_prefill_context_len: int
    sum_decode_context_len: int
    prefill_attn_pairs: int  # q*c + q*(q+1)/2 over prefill chunks of q new tokens after c cached
    num_sampled: int  # rows that yield a token (LM-head rows)


def plan_shape(plan: SchedulerOutput) -> StepShape:
    """`StepShape` of a plan, in one pass over its rows."""
    n_pre = pre_tok = n_dec = pre_ctx = dec_ctx = pairs = n_sampled = 0
    for row in plan.scheduled:
        q = row.num_new_tokens
        c = row.num_computed_tokens
        if q == 1 and c >= row.num_prompt_tokens:
            n_dec += 1  # a decode always samples: it computes the request's last token
            dec_ctx += c + 1
        else:
            n_pre += 1
            pre_tok += q
            pre_ctx += c + q
            pairs += q * c + (q * (q + 1) >> 1)
            if row.samples:
                n_sampled += 1
    return StepShape(n_pre, pre_tok, n_dec, pre_ctx, dec_ctx, pairs, n_sampled + n_dec)
