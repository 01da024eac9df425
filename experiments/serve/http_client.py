"""One request against an OpenAI-compatible `/v1/completions` endpoint, streamed, timed on
the client's monotonic clock.

What counts as a token arriving: every stream chunk whose choice carries text or token ids,
one token per chunk (vLLM's `bench serve` counts chunks the same way). A terminal chunk with
no text and a finish reason (OpenAI's style) is not a token. When the final `usage` says more
tokens were generated than chunks arrived (a server that coalesces tokens), the extra tokens
are given the last chunk's time, so the output length is right and no ITL is invented.

Outcomes: finished (a finish reason arrived), aborted (the server ended the stream without
one, or said "abort"), rejected (an HTTP error status; the status and the server's message are
kept), timed_out (no end within the timeout: the connection is closed, which a server should
treat as a disconnect), failed (could not connect, after the allowed retries).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

RETRY_STATUSES = (429, 502, 503, 504)


@dataclass
class Outcome:
    request_id: str
    prompt_len: int
    max_tokens: int
    scheduled_s: float  # when the trace says it arrives (client clock, from the run start)
    send_s: float | None = None  # when its last attempt was sent
    token_times: list[float] = field(default_factory=list)
    finish_s: float | None = None
    status: str = "pending"
    finish_reason: str | None = None
    http_status: int | None = None
    error: str | None = None
    num_attempts: int = 0


def completion_payload(model: str, prompt_token_ids: list[int], max_tokens: int) -> dict:
    """What a load generator sends: greedy, exact output length (vLLM's `ignore_eos`), usage
    reported at the end of the stream."""
    return {"model": model, "prompt": prompt_token_ids, "max_tokens": max_tokens, "temperature": 0.0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}


def _is_token_chunk(choice: dict) -> bool:
    text = choice.get("text")
    if text is None:  # chat-style chunk
        text = (choice.get("delta") or {}).get("content")
    if text:
        return True
    if choice.get("token_ids"):
        return True
    return not choice.get("finish_reason") and text is not None


async def send_one(client, url: str, payload: dict, out: Outcome, t0: float, *, timeout_s: float,
                   retries: int, retry_backoff_s: float) -> Outcome:
    """Run one request to its end (every exit path sets `out.status`)."""
    import httpx

    headers = {"X-Request-Id": out.request_id}
    attempt = 0
    while True:
        attempt += 1
        out.num_attempts = attempt
        out.token_times.clear()
        out.send_s = time.perf_counter() - t0
        try:
            retry = await asyncio.wait_for(_stream(client, url, payload, headers, out, t0), timeout_s)
        except asyncio.TimeoutError:
            out.status = "timed_out"
            out.error = f"no end within {timeout_s} s"
            out.finish_s = time.perf_counter() - t0
            return out
        except (httpx.TransportError, OSError) as exc:
            out.error = f"{type(exc).__name__}: {exc}"
            out.finish_s = time.perf_counter() - t0
            if out.token_times:  # the stream broke after tokens came: the server had it, then lost it
                out.status = "aborted"
                return out
            retry = True
            out.status = "failed"
        if not retry or attempt > retries:
            return out
        await asyncio.sleep(retry_backoff_s * 2 ** (attempt - 1))


async def _stream(client, url: str, payload: dict, headers: dict, out: Outcome, t0: float) -> bool:
    """One attempt; True if it may be retried (a retryable status)."""
    now = time.perf_counter
    async with client.stream("POST", url, json=payload, headers=headers) as resp:
        out.http_status = resp.status_code
        if resp.status_code != 200:
            body = (await resp.aread()).decode("utf-8", "replace")
            try:
                message = json.loads(body)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = body[:300]
            out.status = "rejected"
            out.error = f"HTTP {resp.status_code}: {message}"
            out.finish_s = now() - t0
            return resp.status_code in RETRY_STATUSES
        usage_tokens = None
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            t = now() - t0
            try:
                obj = json.loads(data)
            except ValueError:
                out.error = f"unreadable stream chunk: {data[:100]!r}"
                continue
            if "error" in obj:
                out.error = str(obj["error"].get("message", obj["error"]) if isinstance(obj["error"], dict)
                                else obj["error"])
                continue
            for choice in obj.get("choices") or []:
                if _is_token_chunk(choice):
                    out.token_times.append(t)
                if choice.get("finish_reason"):
                    out.finish_reason = choice["finish_reason"]
            if obj.get("usage"):
                usage_tokens = obj["usage"].get("completion_tokens")
        out.finish_s = now() - t0
    if usage_tokens is not None and usage_tokens > len(out.token_times) and out.token_times:
        out.token_times.extend([out.token_times[-1]] * (usage_tokens - len(out.token_times)))
    if out.finish_reason in ("stop", "length"):
        out.status = "finished"
    else:
        out.status = "aborted"
        out.error = out.error or ("the server aborted the request" if out.finish_reason == "abort"
                                  else "the stream ended without a finish reason")
    return False
