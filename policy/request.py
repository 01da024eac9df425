"""A request as the policy layer sees it: token ids, progress, and why it stopped.

The policy layer never reads a clock; `arrival_time` is whatever the driving engine says
(virtual seconds in the simulator, monotonic seconds in the executor). Sampling knobs that
only the model runner needs (temperature, top-p, seeds) live in the executor, not here;
only the fields that decide *when a request stops* are policy.
"""

from __future__ import annotations

import enum
from array import array
from dataclasses import dataclass, field


class RequestStatus(enum.IntEnum):
    """Life cycle. Every value after PREEMPTED is terminal."""

    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED_STOPPED = 3  # eos or a stop token
    FINISHED_LENGTH_CAPPED = 4  # max_tokens or max_model_len
    FINISHED_ABORTED = 5  # abort() by the caller

    @property
    def is_finished(self) -> bool:
        return self > RequestStatus.PREEMPTED


FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH_CAPPED: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
}


class RequestRejected(ValueError):
    """A request the scheduler refuses at the door; the message says which field and why."""


@dataclass(eq=False, slots=True)
class Request:
    """One generation request and its progress.

    `num_computed_tokens` counts tokens whose KV is in the cache (prefix hits included);
    it chases `num_tokens` (prompt + outputs so far). The gap is the work left: a prefill
    chunk when it is large, a decode when it is one.

    `block_hashes` is the prefix-cache chain for the full blocks of `all_token_ids`; the KV
    cache manager grows it incrementally (each full block is hashed exactly once).
    """

    request_id: str
    prompt_token_ids: list[int]
    max_tokens: int
    arrival_time: float = 0.0
    priority: int = 0  # lower runs first under the "priority" policy
    eos_token_id: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    min_tokens: int = 0
    cache_salt: str | None = None  # isolates prefix-cache entries (e.g. per tenant/adapter)
    # Opaque to the policy layer: handed to the worker in the plan row that starts the request
    # (the executor's SamplingParams; None in the simulator).
    sampling_params: object = None

    status: RequestStatus = RequestStatus.WAITING
    all_token_ids: list[int] = field(init=False)
    num_computed_tokens: int = 0
    num_cached_tokens: int = -1  # prefix-cache hit at first admission; -1 before that
    num_preemptions: int = 0
    # Token slots the KV manager holds for this request (blocks x block size). Kept here so
    # the scheduler can see that a decode fits its last block without a manager call.
    num_kv_slots: int = 0
    block_hashes: list[bytes] = field(default_factory=list)
    finish_reason: str | None = None
    stop_token: int | None = None

    def __post_init__(self) -> None:
        prompt = self.prompt_token_ids
        bind = getattr(prompt, "bind_request", None)
        if bind is not None:
            # Tokens made on first read (the simulator's long waiting queues): one stand-in
            # answers len() for both lists and installs real ones here when a value is read.
            bind(self)
            self.all_token_ids = prompt
        elif isinstance(prompt, array):
            # Compact storage (4 bytes a token instead of a list's 8 plus an int object each):
            # the simulator's traces hold long prompts for every waiting request. An array
            # behaves as the list of ints would everywhere the policy reads tokens.
            self.all_token_ids = array(prompt.typecode, prompt)
        else:
            self.prompt_token_ids = list(prompt)
            self.all_token_ids = list(self.prompt_token_ids)
        self.stop_token_ids = tuple(self.stop_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.all_token_ids) - len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.all_token_ids[len(self.prompt_token_ids) :]

    @property
    def is_finished(self) -> bool:
        return self.status > RequestStatus.PREEMPTED

    def append_output_token(self, token_id: int) -> None:
        self.all_token_ids.append(token_id)

    def check_stop(self, max_model_len: int) -> RequestStatus | None:
        """The stop rule after appending one token (vLLM order): min_tokens guards the
        eos and stop-token checks; length caps always apply."""
        # Hot path (every sampled token of every request): locals instead of properties.
        all_ids = self.all_token_ids
        n_tokens = len(all_ids)
        n_out = n_tokens - len(self.prompt_token_ids)
        if n_out >= self.min_tokens:
            last = all_ids[-1]
            if last == self.eos_token_id and not self.ignore_eos:
                return RequestStatus.FINISHED_STOPPED
            if self.stop_token_ids and last in self.stop_token_ids:
                self.stop_token = last
                return RequestStatus.FINISHED_STOPPED
        if n_out >= self.max_tokens or n_tokens >= max_model_len:
            return RequestStatus.FINISHED_LENGTH_CAPPED
        return None
