"""Waiting-queue policies: who is admitted next when there is room.

Every queue keeps preempted requests ahead of fresh ones of the same rank (they already
paid for admission once), except `priority`, where priority is the whole order.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from typing import Callable, Iterator

from policy.request import Request


class FCFSQueue:
    """Arrival order; a preempted request goes back to the head."""

    def __init__(self) -> None:
        self._q: deque[Request] = deque()

    def add(self, request: Request) -> None:
        self._q.append(request)

    def prepend(self, request: Request) -> None:
        self._q.appendleft(request)

    def peek(self) -> Request:
        return self._q[0]

    def pop(self) -> Request:
        return self._q.popleft()

    def remove(self, request: Request) -> None:
        self._q.remove(request)

    def reorder(self, kv) -> None:
        pass

    def __len__(self) -> int:
        return len(self._q)

    def __bool__(self) -> bool:
        return bool(self._q)

    def __iter__(self) -> Iterator[Request]:
        return iter(self._q)


class HeapQueue:
    """A heap ordered by `key(request, preempted)`; ties keep insertion order."""

    def __init__(self, key: Callable[[Request, bool], tuple]) -> None:
        self._key = key
        self._heap: list[tuple] = []
        self._seq = itertools.count()

    def add(self, request: Request) -> None:
        heapq.heappush(self._heap, (self._key(request, False), next(self._seq), request))

    def prepend(self, request: Request) -> None:
        heapq.heappush(self._heap, (self._key(request, True), next(self._seq), request))

    def peek(self) -> Request:
        return self._heap[0][2]

    def pop(self) -> Request:
        return heapq.heappop(self._heap)[2]

    def remove(self, request: Request) -> None:
        self._heap = [item for item in self._heap if item[2] is not request]
        heapq.heapify(self._heap)

    def reorder(self, kv) -> None:
        pass

    def __len__(self) -> int:
        return len(self._heap)

    def __bool__(self) -> bool:
        return bool(self._heap)

    def __iter__(self) -> Iterator[Request]:
        return (item[2] for item in sorted(self._heap))


class LongestPrefixMatchQueue(FCFSQueue):
    """SGLang's longest-prefix-match: before admitting, sort the queue by how many prompt
    tokens already sit in the prefix cache, longest first, so requests sharing a hot prefix
    run together while it is cached. Like SGLang, fall back to arrival order when the queue
    is long, where the per-step lookups would cost more than they save."""

    MAX_SORTED = 128

    def reorder(self, kv) -> None:
        q = self._q
        if len(q) < 2 or len(q) > self.MAX_SORTED:
            return
        order = sorted(
            enumerate(q),
            key=lambda item: (item[1].num_preemptions == 0, -kv.peek_prefix_hit_tokens(item[1]), item[0]),
        )
        self._q = deque(request for _, request in order)


def make_queue(policy: str):
    if policy == "fcfs":
        return FCFSQueue()
    if policy == "priority":
        return HeapQueue(lambda r, preempted: (r.priority, r.arrival_time))
    if policy == "shortest-prompt-first":
        return HeapQueue(lambda r, preempted: (not preempted, r.num_prompt_tokens, r.arrival_time))
    if policy == "longest-prefix-match":
        return LongestPrefixMatchQueue()
    raise ValueError(f"unknown queue policy {policy!r}")
