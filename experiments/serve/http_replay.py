"""Replay a request list against any OpenAI-compatible endpoint, in real time, and write the
run in the executor's own format, so `folovllm report` reads it unchanged.

    requests (arrival_s, prompt token ids, output length)
      -> each sent at its arrival time (at most `max_in_flight` open at once: a later one
         waits, and its TTFT starts when it is sent), streamed, timed (experiments.serve.http_client)
      -> one RequestTimeline per request (send time as arrival, each token's chunk time,
         the end) -> requests.parquet / summary.json through experiments.run.results.write_run

The steps table is empty (a client sees no engine steps). The request table has the
executor's columns plus `http_status`, `num_attempts`, `send_delay_s` (how late the client
sent it against the trace) and `error`; statuses are finished, aborted, rejected,
timed_out and failed, and the summary counts each, so no request goes uncounted.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from experiments.run import results
from experiments.serve.http_client import Outcome, completion_payload, send_one
from policy import Request
from traces.timeline import RequestTimeline, TimelineRecorder

OUTCOMES = ("finished", "aborted", "rejected", "timed_out", "failed")


@dataclass
class ClientConfig:
    endpoint: str  # base URL, e.g. http://127.0.0.1:8000 (a trailing /v1 is accepted)
    model: str
    max_in_flight: int = 64
    timeout_s: float = 300.0
    retries: int = 0
    retry_backoff_s: float = 0.5
    time_scale: float = 1.0  # multiplies arrival times

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight={self.max_in_flight}: must be >= 1")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s={self.timeout_s}: must be > 0")
        if self.retries < 0:
            raise ValueError(f"retries={self.retries}: must be >= 0")
        if self.time_scale <= 0:
            raise ValueError(f"time_scale={self.time_scale}: must be > 0")

    @property
    def completions_url(self) -> str:
        base = self.endpoint.rstrip("/")
        if base.endswith("/v1"):
            base = base[:-3]
        return f"{base}/v1/completions"


@dataclass
class ClientRun:
    outcomes: list[Outcome]
    wall_s: float
    config: ClientConfig
    counts: dict = field(default_factory=dict)


def base_url(endpoint: str) -> str:
    base = endpoint.rstrip("/")
    return base[:-3] if base.endswith("/v1") else base


def served_models(endpoint: str, timeout_s: float = 10.0) -> list[dict]:
    """The endpoint's `/v1/models` cards (id, and max_model_len / vocab_size where the server says)."""
    import httpx

    resp = httpx.get(f"{base_url(endpoint)}/v1/models", timeout=timeout_s)
    resp.raise_for_status()
    return list(resp.json().get("data") or [])


async def _replay(requests: list[Request], cfg: ClientConfig) -> ClientRun:
    import httpx

    outcomes = [Outcome(r.request_id, r.num_prompt_tokens, int(r.max_tokens), float(r.arrival_time) * cfg.time_scale)
                for r in requests]
    slots = asyncio.Semaphore(cfg.max_in_flight)
    limits = httpx.Limits(max_connections=cfg.max_in_flight, max_keepalive_connections=cfg.max_in_flight)
    url = cfg.completions_url
    async with httpx.AsyncClient(timeout=httpx.Timeout(None), limits=limits) as client:
        await _open_connections(client, cfg, min(cfg.max_in_flight, len(requests)))
        t0 = time.perf_counter()

        async def one(req: Request, out: Outcome) -> None:
            try:
                await send_one(client, url, completion_payload(cfg.model, list(req.prompt_token_ids), out.max_tokens),
                               out, t0, timeout_s=cfg.timeout_s, retries=cfg.retries,
                               retry_backoff_s=cfg.retry_backoff_s)
            finally:
                slots.release()

        tasks = []
        for req, out in zip(requests, outcomes):
            delay = out.scheduled_s - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            await slots.acquire()
            tasks.append(asyncio.create_task(one(req, out)))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
    counts = {s: sum(o.status == s for o in outcomes) for s in OUTCOMES}
    counts["num_retries"] = sum(max(0, o.num_attempts - 1) for o in outcomes)
    return ClientRun(outcomes, wall, cfg, counts)


async def _open_connections(client, cfg: ClientConfig, n: int) -> None:
    """Open the connections the run will use before it starts (n concurrent `GET /v1/models`),
    as a long-running client would have them: otherwise each of the first requests pays for a
    TCP connect and an address lookup on a worker thread, which measured 1-50 ms on a loaded
    machine, inside its TTFT. Failures are ignored here; the requests themselves report them."""
    url = f"{base_url(cfg.endpoint)}/v1/models"
    await asyncio.gather(*(client.get(url, timeout=10.0) for _ in range(n)), return_exceptions=True)


def replay(requests: list[Request], cfg: ClientConfig) -> ClientRun:
    """Send every request at its arrival time; returns when each has an outcome."""
    requests = sorted(requests, key=lambda r: r.arrival_time)
    return asyncio.run(_replay(requests, cfg))


# -- the run's files ---------------------------------------------------------------------------
def to_recorder(run: ClientRun) -> TimelineRecorder:
    """Client-side timelines: arrival = when the request was sent."""
    rec = TimelineRecorder()
    for o in run.outcomes:
        arrival = o.send_s if o.send_s is not None else o.scheduled_s
        t = RequestTimeline(o.request_id, arrival, o.prompt_len, o.max_tokens)
        t.token_times = list(o.token_times)
        t.finish_s = o.finish_s
        t.status = o.status
        t.finish_reason = o.finish_reason
        t.reject_reason = o.error if o.status != "finished" else None
        rec.timelines[o.request_id] = t
    return rec


def extra_columns(run: ClientRun) -> pd.DataFrame:
    return pd.DataFrame({
        "http_status": pd.array([o.http_status for o in run.outcomes], dtype="Int64"),
        "num_attempts": [o.num_attempts for o in run.outcomes],
        "send_delay_s": [(o.send_s - o.scheduled_s) if o.send_s is not None else float("nan") for o in run.outcomes],
        "error": [o.error for o in run.outcomes],
    })


def write_results(out_dir: str | Path, run: ClientRun, *, variant: str, engine: str = "http", seed: int = 0,
                  rate_scale: float = 1.0, knobs: dict | None = None, spec: dict | None = None,
                  run_info: dict | None = None, slo: dict | None = None) -> Path:
    """Add this run to the results folder `out_dir` (created if needed: spec.json, index.json,
    environment.json, runs/<dir>/); a folder that already holds runs keeps them, and a rerun of
    the same variant becomes its next repeat. Returns the run's folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec_path, index_path = out / "spec.json", out / "index.json"
    spec_info = results.read_json(spec_path) if spec_path.is_file() else {
        "spec": spec or {"name": out.name, "description": f"trace replayed over HTTP against {run.config.endpoint}"},
        "source": None, "variants": []}
    if variant not in [v["name"] for v in spec_info["variants"]]:
        spec_info["variants"].append({"name": variant, "knobs": knobs or {}})
    jobs = results.read_json(index_path)["jobs"] if index_path.is_file() else []
    repeat = sum(1 for j in jobs if j["engine"] == engine and j["variant"] == variant and j["seed"] == seed)
    key = hashlib.sha256(json.dumps([run.config.endpoint, variant, engine, seed, repeat, time.time()]).encode()
                         ).hexdigest()
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in variant)[:40]
    run_dir = out / "runs" / f"{slug}-{engine}-r{repeat}-{key[:12]}"
    summary_extra = {f"num_{s}": n for s, n in run.counts.items() if not s.startswith("num_")}
    summary_extra["num_retries"] = run.counts.get("num_retries", 0)
    summary_extra["client_wall_s"] = run.wall_s
    info = {"engine": engine, "variant": variant, "seed": seed, "repeat": repeat, "key": key,
            "endpoint": run.config.endpoint, "model": run.config.model,
            "client": {"max_in_flight": run.config.max_in_flight, "timeout_s": run.config.timeout_s,
                       "retries": run.config.retries, "time_scale": run.config.time_scale},
            **(run_info or {})}
    results.write_run(run_dir, to_recorder(run), slo=slo or {}, scheduler_stats={}, run_info=results._jsonable(info),
                      extra_columns=extra_columns(run), extra_summary=summary_extra)
    jobs.append({"engine": engine, "variant": variant, "seed": seed, "repeat": repeat, "rate_scale": rate_scale,
                 "num_blocks": None, "key": key, "dir": f"runs/{run_dir.name}"})
    results.write_json_atomic(spec_info, spec_path)
    results.write_json_atomic({"jobs": jobs}, index_path)
    if not (out / "environment.json").is_file():
        from experiments.run.environment import environment

        results.write_json_atomic({**environment(), "endpoint": run.config.endpoint}, out / "environment.json")
    return run_dir
