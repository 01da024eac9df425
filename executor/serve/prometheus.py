"""`/metrics` in the Prometheus text exposition format (version 0.0.4), written by hand: a
dozen gauges and counters do not need a client library.

Names follow vLLM's where one exists (`num_requests_running`, `kv_cache_usage_perc`, ...),
under the `folovllm:` prefix, so dashboards built for one read the other with a rename.
"""

from __future__ import annotations

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(engine, model_name: str) -> str:
    """The scrape: read between steps without locking (each value is one attribute read)."""
    sched = engine.scheduler
    c = engine.counters
    prefix = sched.prefix_cache_stats
    hit_rate = prefix.hit_tokens / prefix.queries_tokens if prefix.queries_tokens else 0.0
    lbl = f'{{model_name="{_label(model_name)}"}}'
    metrics = [
        ("num_requests_running", "gauge", "Requests in the running batch.", sched.num_running),
        ("num_requests_waiting", "gauge", "Requests waiting to be scheduled.", sched.num_waiting),
        ("kv_cache_usage_perc", "gauge", "Fraction of KV blocks in use (1 = full).", sched.kv_cache_usage),
        ("prefix_cache_hit_rate", "gauge", "Prompt tokens found in the prefix cache / prompt tokens looked up.",
         hit_rate),
        ("prefix_cache_queries_total", "counter", "Prompt tokens looked up in the prefix cache.",
         prefix.queries_tokens),
        ("prefix_cache_hits_total", "counter", "Prompt tokens found in the prefix cache.", prefix.hit_tokens),
        ("num_preemptions_total", "counter", "Requests preempted (recomputed later).", sched.num_preemptions),
        ("requests_received_total", "counter", "Requests handed to the engine.", c.requests_received),
        ("request_success_total", "counter", "Requests that finished (stop or length).", c.requests_finished),
        ("requests_aborted_total", "counter", "Requests aborted (client went away).", c.requests_aborted),
        ("requests_rejected_queue_full_total", "counter", "Requests answered 429: waiting queue full.",
         c.requests_rejected_queue_full),
        ("requests_rejected_invalid_total", "counter", "Requests the engine refused (HTTP 400).",
         c.requests_rejected_invalid),
        ("prompt_tokens_total", "counter", "Prompt tokens of admitted requests.", c.prompt_tokens),
        ("generation_tokens_total", "counter", "Tokens generated.", c.generation_tokens),
        ("engine_steps_total", "counter", "Engine steps run.", c.engine_steps),
        ("engine_up", "gauge", "1 while the engine thread runs.", 1 if engine.alive else 0),
    ]
    lines = []
    for name, kind, help_text, value in metrics:
        full = f"folovllm:{name}"
        lines.append(f"# HELP {full} {help_text}")
        lines.append(f"# TYPE {full} {kind}")
        lines.append(f"{full}{lbl} {float(value)!r}" if isinstance(value, float) else f"{full}{lbl} {value}")
    return "\n".join(lines) + "\n"
