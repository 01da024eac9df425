from __future__ import annotations

import pytest

from policy import Request


def make_request(rid: str, prompt_len: int, output_len: int, arrival: float = 0.0, *, base: int = 0, **kw) -> Request:
    """A request with distinct prompt tokens (no accidental prefix hits unless `base` repeats)."""
    kw.setdefault("ignore_eos", True)
    return Request(rid, [base + i + 1 for i in range(prompt_len)], output_len, arrival_time=arrival, **kw)


@pytest.fixture
def req():
    return make_request
