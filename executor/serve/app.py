"""The HTTP routes (Starlette): OpenAI's `/v1/completions`, `/v1/chat/completions` (server-sent
events when `stream` is true) and `/v1/models`, plus `/health` and `/metrics`.

A handler checks the body (`protocol.parse`), submits one policy `Request` to the
`AsyncEngine` and waits for its admission: a full waiting queue answers 429, a request the
engine refuses 400, before any byte of a stream is sent. While it waits for tokens it also
watches the connection; a client that goes away gets its request aborted, which frees its KV
blocks at once (the engine thread applies the abort before its next step).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from executor.serve import prometheus, protocol
from executor.serve.async_engine import AsyncEngine
from executor.serve.protocol import ApiError, IncrementalText, ModelInfo


def _error(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


CLIENT_GONE = ("client_gone",)


async def _report_disconnect(request: HttpRequest, queue: asyncio.Queue) -> None:
    """Put CLIENT_GONE on the request's event queue when the client closes the connection (the
    body is already read, so the next ASGI message is the disconnect). A sentinel on the same
    queue, rather than waiting on two things per event, keeps the token path one wake-up long."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            queue.put_nowait(CLIENT_GONE)
            return


class Server:
    """The app's state: the engine thread and what request checking needs."""

    def __init__(self, async_engine: AsyncEngine, model: ModelInfo, *, on_shutdown=None) -> None:
        self.engine = async_engine
        self.model = model
        self.created = int(time.time())
        self._ids = itertools.count()
        self._on_shutdown = on_shutdown

    def app(self) -> Starlette:
        @asynccontextmanager
        async def lifespan(_app):
            self.engine.start(asyncio.get_running_loop())
            try:
                yield
            finally:
                self.engine.stop()
                if self._on_shutdown is not None:
                    self._on_shutdown(self.engine)

        routes = [
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
        ]
        return Starlette(routes=routes, lifespan=lifespan)

    # -- small routes ---------------------------------------------------------------------
    async def models(self, _request: HttpRequest) -> Response:
        card = {"id": self.model.name, "object": "model", "created": self.created, "owned_by": "folovllm",
                "root": self.model.name, "max_model_len": self.model.max_model_len,
                "vocab_size": self.model.vocab_size}
        return JSONResponse({"object": "list", "data": [card]})

    async def health(self, _request: HttpRequest) -> Response:
        if self.engine.alive:
            return PlainTextResponse("ok")
        return PlainTextResponse(f"engine down: {self.engine.error or 'not running'}", status_code=503)

    async def metrics(self, _request: HttpRequest) -> Response:
        return PlainTextResponse(prometheus.render(self.engine, self.model.name), media_type=prometheus.CONTENT_TYPE)

    # -- generation -----------------------------------------------------------------------
    async def completions(self, request: HttpRequest) -> Response:
        return await self._generate(request, "completion")

    async def chat_completions(self, request: HttpRequest) -> Response:
        return await self._generate(request, "chat")

    async def _generate(self, request: HttpRequest, kind: str) -> Response:
        try:
            try:
                body = json.loads(await request.body())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
            gen = protocol.parse(body, self.model, kind)
        except ApiError as exc:
            return _error(exc)
        if not self.engine.alive:
            return _error(ApiError(503, f"the engine is not running ({self.engine.error})", type="server_error"))
        prefix = "cmpl" if kind == "completion" else "chatcmpl"
        rid = request.headers.get("x-request-id") or f"{prefix}-{next(self._ids)}"
        req = self.engine.engine.make_request(gen.prompt_token_ids, gen.params, request_id=rid)
        req.sampling_params = gen.params
        queue = self.engine.submit(req)
        first = await queue.get()
        if first[0] == "rejected":
            _, status, message = first
            code = "queue_full" if status == 429 else None
            return _error(ApiError(status, message, code=code,
                                   type="rate_limit_error" if status == 429 else "invalid_request_error"))
        if first[0] == "error":
            return _error(ApiError(500, first[1], type="server_error"))
        if gen.stream:
            return StreamingResponse(self._stream(request, rid, kind, gen, queue), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Request-Id": rid})
        return await self._whole(request, rid, kind, gen, queue)

    async def _events(self, request: HttpRequest, rid: str, queue: asyncio.Queue):
        """The request's events until it ends; aborts it if the client disconnects first."""
        watcher = asyncio.ensure_future(_report_disconnect(request, queue))
        ended = False
        try:
            while True:
                event = await queue.get()
                if event is CLIENT_GONE:
                    return
                ended = event[0] != "tokens" or event[2] is not None
                yield event
                if ended:
                    return
        finally:
            watcher.cancel()
            if not ended:
                self.engine.abort(rid)

    async def _whole(self, request, rid, kind, gen, queue) -> Response:
        text = IncrementalText(self.model.tokenizer)
        finish_reason = None
        events = self._events(request, rid, queue)
        try:
            async for event in events:
                if event[0] == "tokens":
                    text.add(event[1], final=event[2] is not None)
                    finish_reason = event[2]
                elif event[0] == "aborted":
                    finish_reason = "abort"
                elif event[0] == "error":
                    return _error(ApiError(500, event[1], type="server_error"))
        finally:
            await events.aclose()
        if finish_reason is None:  # the client went away; nobody reads this
            return Response(status_code=499)
        out = text.tokenizer.decode(text.token_ids, skip_special_tokens=True) if text.tokenizer is not None else ""
        return JSONResponse(protocol.completion_response(rid, self.model.name, out, finish_reason,
                                                         len(gen.prompt_token_ids), len(text.token_ids), kind,
                                                         text.token_ids))

    async def _stream(self, request, rid, kind, gen, queue):
        text = IncrementalText(self.model.tokenizer)
        first = True
        name = self.model.name
        events = self._events(request, rid, queue)
        try:
            async for event in events:
                if event[0] == "tokens":
                    delta = text.add(event[1], final=event[2] is not None)
                    yield _sse(protocol.chunk(rid, name, kind, delta, event[2], event[1], first))
                    first = False
                elif event[0] == "aborted":
                    yield _sse(protocol.chunk(rid, name, kind, "", "abort", [], first))
                elif event[0] == "error":
                    yield _sse(ApiError(500, event[1], type="server_error").body())
        finally:
            await events.aclose()
        if gen.include_usage:
            yield _sse(protocol.usage_chunk(rid, name, kind, len(gen.prompt_token_ids), len(text.token_ids)))
        yield "data: [DONE]\n\n"


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"
