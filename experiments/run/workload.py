"""A spec's trace section -> the exact list of policy Requests both engines replay.

Built the same way, from the same inputs, in every process (simulation workers, the
executor), so the simulator and the executor see identical arrival times, prompt token ids
and output lengths. Lengths clipped to fit a small machine are counted, never silent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from policy import Request



@dataclass
class Workload:
    requests: list[Request]
    stats: dict = field(default_factory=dict)


def load_table(trace: dict, seed: int):
    """The TraceTable a spec's trace section describes, before length clipping."""
    import traces
    from traces import transforms as tf

    if "path" in trace:
        mode = trace.get("arrival_mode")
        options = {} if mode is None else {"arrival_mode": mode, **({"seed": seed} if mode == "spread" else {})}
        table = traces.load(trace["path"], format=trace.get("format"), **options)
    else:
        table = traces.generate(trace["preset"], seed=seed, **trace.get("params", {}))
    for step in trace.get("transforms", []):
        args = {k: v for k, v in step.items() if k != "op"}
        table = getattr(tf, step["op"])(table, **args)
    return table


def build_workload(trace: dict, seed: int, *, rate_scale: float = 1.0, block_size: int = 16,
                   vocab_size: int, max_model_len: int | None = None) -> Workload:
    """Requests in arrival order, with prompts and outputs clipped to the spec's limits (and
    to `max_model_len`, so no request is refused for length alone)."""
    table = load_table(trace, seed)
    requests = list(table.iter_requests(block_size=block_size, vocab_size=vocab_size, eos_token_id=None,
                                        ignore_eos=True))
    return clip_requests(requests, max_prompt_len=trace.get("max_prompt_len"),
                         max_output_len=trace.get("max_output_len"), max_model_len=max_model_len,
                         rate_scale=rate_scale)


def clip_requests(requests: list[Request], *, max_prompt_len: int | None = None, max_output_len: int | None = None,
                  max_model_len: int | None = None, rate_scale: float = 1.0) -> Workload:
    """Cut prompts (keeping their beginning, so shared prefixes stay shared) and outputs.
    With `max_model_len`, prompt + output is kept below it. `rate_scale` multiplies the
    request rate (arrival times are divided by it)."""
    if rate_scale <= 0:
        raise ValueError(f"rate_scale={rate_scale}: must be > 0")
    out: list[Request] = []
    clipped_prompts = clipped_outputs = 0
    for r in requests:
        prompt = list(r.prompt_token_ids)
        max_tokens = int(r.max_tokens)
        if max_prompt_len is not None and len(prompt) > max_prompt_len:
            prompt = prompt[:max_prompt_len]
            clipped_prompts += 1
        if max_output_len is not None and max_tokens > max_output_len:
            max_tokens = max_output_len
            clipped_outputs += 1
        if max_model_len is not None:
            if len(prompt) >= max_model_len:
                prompt = prompt[: max_model_len - 2]
                clipped_prompts += 1
            if len(prompt) + max_tokens > max_model_len:
                max_tokens = max(1, max_model_len - len(prompt))
                clipped_outputs += 1
        out.append(Request(
            request_id=r.request_id, prompt_token_ids=prompt, max_tokens=max_tokens, arrival_time=float(r.arrival_time) / rate_scale,
            priority=r.priority, eos_token_id=r.eos_token_id, stop_token_ids=r.stop_token_ids,
            ignore_eos=r.ignore_eos, min_tokens=min(r.min_tokens, max_tokens), cache_salt=r.cache_salt,
        ))
    out.sort(key=lambda r: r.arrival_time)  # stable: trace order kept among equal times
    stats = {
        "num_requests": len(out),
        "num_prompts_clipped": clipped_prompts,
        "num_outputs_clipped": clipped_outputs,
        "total_prompt_tokens": sum(r.num_prompt_tokens for r in out),
        "total_output_tokens": sum(r.max_tokens for r in out),
        "duration_s": (out[-1].arrival_time - out[0].arrival_time) if out else 0.0,
    }
    return Workload(out, stats)
