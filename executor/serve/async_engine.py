"""The executor as an online server's engine: one thread runs `driver.step()` while there is
work; the HTTP side submits and aborts requests and reads their tokens from asyncio queues.

Why a thread and a command queue: the scheduler, the KV manager and the model runner are not
thread-safe, and they need not be. Only the engine thread touches them; HTTP handlers (on the
event loop) append commands (`submit`, `abort`) that the engine thread applies between steps,
in the order they were made. Each request is stamped with the driver's clock when it is
submitted, so arrivals reach `StepDriver.submit` in non-decreasing order and the server's own
timelines (a `TimelineRecorder`, the same one replays use) start when the request arrived.

Events the HTTP side receives on a request's queue:

    ("admitted",)                       queued by the scheduler
    ("rejected", status, message)       429 (waiting queue full) or 400 (refused by the engine)
    ("tokens", [ids], finish_reason)    one per step that sampled for the request
    ("aborted",)                        ended by abort()
    ("error", message)                  the engine thread failed; the request is lost
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from dataclasses import dataclass

from policy import Request, RequestRejected
from policy.driver import StepDriver
from traces.timeline import TimelineRecorder

log = logging.getLogger("folovllm.serve")

IDLE_WAIT_S = 0.5  # how long an idle engine sleeps before re-checking for shutdown
EMPTY_PLAN_WAIT_S = 0.005  # a plan that scheduled nothing: wait this long for a command
DELIVERY_WAIT_S = 0.005  # at most this long per step for the event loop to take the step's tokens


class QueueFull(RequestRejected):
    """The waiting queue is at its bound: the client should retry later (HTTP 429)."""


class ServeRecorder(TimelineRecorder):
    """A TimelineRecorder that remembers why the last request was rejected and, unless told
    to keep everything (`keep=True`, for measurement), forgets each request once it ended, so
    a long-running server does not grow."""

    def __init__(self, keep: bool) -> None:
        super().__init__()
        self.keep = keep
        self.last_rejection = ""

    def on_rejected(self, request_id, arrival_s, prompt_len, max_tokens, reason) -> None:
        self.last_rejection = reason
        super().on_rejected(request_id, arrival_s, prompt_len, max_tokens, reason)

    def forget(self, request_id: str) -> None:
        if not self.keep:
            self.timelines.pop(request_id, None)

    def trim_steps(self) -> None:
        if not self.keep and len(self.steps) > 1024:
            del self.steps[:-1]


@dataclass
class ServeCounters:
    """Counts since the server started (Prometheus counters)."""

    requests_received: int = 0
    requests_finished: int = 0
    requests_aborted: int = 0
    requests_rejected_queue_full: int = 0
    requests_rejected_invalid: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    engine_steps: int = 0


class _Stream:
    __slots__ = ("queue", "num_tokens")

    def __init__(self, queue: asyncio.Queue) -> None:
        self.queue = queue
        self.num_tokens = 0


class AsyncEngine:
    """Owns a `StepDriver` over an `LLMEngine`'s scheduler and runs it on its own thread."""

    def __init__(self, engine, *, max_waiting: int = 256, keep_timelines: bool = False) -> None:
        from executor.engine import WallClock

        if max_waiting < 1:
            raise ValueError(f"max_waiting={max_waiting}: must be >= 1")
        self.engine = engine
        self.max_waiting = max_waiting
        self.clock = WallClock()
        self.recorder = ServeRecorder(keep_timelines)
        self.driver: StepDriver = engine.make_driver(self.clock, self.recorder)
        self._engine_check = self.driver.admit_check
        self.driver.admit_check = self._admit_check
        self.scheduler = self.driver.scheduler
        self.counters = ServeCounters()
        self.error: str | None = None
        self._commands: collections.deque = collections.deque()
        self._wake = threading.Condition()
        self._submit_lock = threading.Lock()
        self._streams: dict[str, _Stream] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._queue_full_id: str | None = None  # set by _admit_check when it refuses for a full queue

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the engine thread; events are delivered on `loop`."""
        if self._thread is not None:
            raise RuntimeError("AsyncEngine already started")
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="folovllm-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Abort whatever is live and stop the thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"engine thread did not stop within {timeout} s")

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.error is None

    # -- called from the event loop -------------------------------------------------------
    def submit(self, request: Request) -> asyncio.Queue:
        """Queue `request` (arriving now) for the engine; returns the queue its events come on."""
        queue: asyncio.Queue = asyncio.Queue()
        with self._submit_lock:  # the stamp and the append together keep arrivals in order
            request.arrival_time = self.clock.now()
            self._commands.append(("submit", request, queue))
        self._notify()
        return queue

    def abort(self, request_id: str) -> None:
        """End `request_id` if it is still live (a client went away); its KV is freed."""
        self._commands.append(("abort", request_id, None))
        self._notify()

    def _notify(self) -> None:
        with self._wake:
            self._wake.notify()

    # -- the engine thread ----------------------------------------------------------------
    def _admit_check(self, request: Request) -> None:
        if self.scheduler.num_waiting >= self.max_waiting:
            self._queue_full_id = request.request_id
            raise QueueFull(f"request {request.request_id!r}: the waiting queue is full "
                            f"({self.scheduler.num_waiting} >= max_waiting={self.max_waiting}); retry later")
        if self._engine_check is not None:
            self._engine_check(request)

    def _run(self) -> None:
        sched = self.scheduler
        try:
            while True:
                with self._wake:
                    while not self._commands and not self._stopping and not sched.has_unfinished_requests():
                        self._wake.wait(IDLE_WAIT_S)
                if self._stopping:
                    break
                self._apply_commands()
                if not sched.has_unfinished_requests():
                    continue
                plan, result = self.driver.step()
                if result is None:
                    if not plan.preempted_ids:  # nothing could run: wait for a command, do not spin
                        with self._wake:
                            if not self._commands and not self._stopping:
                                self._wake.wait(EMPTY_PLAN_WAIT_S)
                    continue
                self.counters.engine_steps += 1
                self._publish(result)
                self.recorder.trim_steps()
            self._abort_all()
        except BaseException as exc:  # report to every waiting client rather than hang them
            log.exception("engine thread failed")
            self.error = f"{type(exc).__name__}: {exc}"
            self._fail_all(self.error)

    def _apply_commands(self) -> None:
        out = []
        while self._commands:
            kind, arg, queue = self._commands.popleft()
            if kind == "submit":
                out.append((queue, self._submit(arg, queue)))
            else:
                event = self._abort(arg)
                if event is not None:
                    out.append(event)
        self._deliver(out)

    def _submit(self, request: Request, queue: asyncio.Queue) -> tuple:
        self.counters.requests_received += 1
        rid = request.request_id
        try:
            ok = self.driver.submit(request)
        except ValueError as exc:  # out-of-order arrival: cannot happen through submit(), kept as a 400
            self.counters.requests_rejected_invalid += 1
            return ("rejected", 400, str(exc))
        if ok:
            self._streams[rid] = _Stream(queue)
            self.counters.prompt_tokens += request.num_prompt_tokens
            return ("admitted",)
        reason = self.recorder.last_rejection
        full = self._queue_full_id == rid
        self._queue_full_id = None
        if full:
            self.counters.requests_rejected_queue_full += 1
        else:
            self.counters.requests_rejected_invalid += 1
        self.recorder.forget(rid)
        return ("rejected", 429 if full else 400, reason)

    def _abort(self, request_id: str) -> tuple | None:
        stream = self._streams.pop(request_id, None)
        if stream is None or request_id not in self.scheduler.requests:
            return None  # finished (or never admitted) before the abort arrived
        self.driver.abort(request_id)
        self.counters.requests_aborted += 1
        self.recorder.forget(request_id)
        return (stream.queue, ("aborted",))

    def _publish(self, result) -> None:
        per_request: dict[str, list[int]] = {}
        for rid, token in result.new_tokens:
            per_request.setdefault(rid, []).append(token)
        finished = {r.request_id: r.finish_reason for r in result.finished}
        out = []
        streams = self._streams
        for rid, tokens in per_request.items():
            stream = streams.get(rid)
            if stream is None:
                continue
            stream.num_tokens += len(tokens)
            out.append((stream.queue, ("tokens", tokens, finished.get(rid))))
        self.counters.generation_tokens += len(result.new_tokens)
        for rid, reason in finished.items():
            stream = streams.pop(rid, None)
            if stream is not None and rid not in per_request:  # finished without a token this step
                out.append((stream.queue, ("tokens", [], reason)))
            self.counters.requests_finished += 1
            self.recorder.forget(rid)
        self._deliver(out)

    def _abort_all(self) -> None:
        """Shutdown: abort live requests and answer the submissions nobody applied."""
        out = [event for rid in list(self._streams) if (event := self._abort(rid)) is not None]
        while self._commands:
            kind, _arg, queue = self._commands.popleft()
            if kind == "submit":
                out.append((queue, ("error", "the server is shutting down")))
        self._deliver(out)

    def _fail_all(self, message: str) -> None:
        out = [(s.queue, ("error", message)) for s in self._streams.values()]
        while self._commands:
            kind, _arg, queue = self._commands.popleft()
            if kind == "submit":
                out.append((queue, ("error", message)))
        self._streams.clear()
        self._deliver(out)

    def _deliver(self, events: list) -> None:
        """Hand events to the event loop and wait (at most DELIVERY_WAIT_S) until it has passed
        them to their handlers. Waiting releases the GIL at once: otherwise the loop waits for
        the next step's Python to give it up (a 5 ms switch interval), and every token reaches
        its client late by that much."""
        if events and self._loop is not None and not self._loop.is_closed():
            flushed = threading.Event()
            self._loop.call_soon_threadsafe(_put_all, events, flushed)
            flushed.wait(DELIVERY_WAIT_S)


def _put_all(events: list, flushed: threading.Event) -> None:
    for queue, event in events:
        queue.put_nowait(event)
    # Runs after the handlers these events woke (they were scheduled first): by then each has
    # written its chunk to its socket.
    asyncio.get_running_loop().call_soon(flushed.set)
