"""Prompt tokens made when the scheduler first reads them, not when the request arrives.

A simulated queue can hold thousands of waiting requests with prompts of tens of thousands of
tokens; synthesising them on arrival costs gigabytes for tokens nobody has read yet. A waiting
request's tokens are only counted (`len`) until it reaches the head of the queue (the prefix
cache hashes them) or is admitted (the plan carries them to the worker). `LazyTokens` stands
in for both `prompt_token_ids` and `all_token_ids` of one `Request`: `len()` and truth answer
from the length alone; the first read of a value (index, slice, iteration) or an append
synthesises the prompt as `array('i')` and installs real arrays on the request, so from then on
the policy layer works on plain arrays at full speed. The values are exactly those eager
synthesis would give (same function), so results do not change (tests/sim/test_compact_tokens.py).
"""

from __future__ import annotations

from array import array
from typing import Callable


class LazyTokens:
    __slots__ = ("n", "make", "request")

    def __init__(self, n: int, make: Callable[[], array]) -> None:
        self.n = n
        self.make = make  # () -> array('i') of n tokens
        self.request = None

    def bind_request(self, request) -> None:
        self.request = request

    def materialize(self) -> None:
        request = self.request
        if request is None or request.prompt_token_ids is not self:
            return  # already installed (or never bound)
        tokens = self.make()
        if len(tokens) != self.n:
            raise ValueError(f"lazy prompt of request {request.request_id!r}: made {len(tokens)} tokens, expected {self.n}")
        request.prompt_token_ids = tokens
        request.all_token_ids = array(tokens.typecode, tokens)
        self.make = None

    def _real(self):
        self.materialize()
        return self.request.prompt_token_ids if self.request is not None else self.make()

    def __len__(self) -> int:
        return self.n

    def __bool__(self) -> bool:
        return self.n > 0

    def __getitem__(self, key):
        return self._real()[key]

    def __iter__(self):
        return iter(self._real())

    def __eq__(self, other) -> bool:
        return self._real() == other

    __hash__ = None

    def append(self, token: int) -> None:
        self.materialize()
        self.request.all_token_ids.append(token)

    def extend(self, tokens) -> None:
        self.materialize()
        self.request.all_token_ids.extend(tokens)

    def __repr__(self) -> str:
        return f"LazyTokens(n={self.n})"
