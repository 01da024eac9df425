"""Describe a trace: rates, burstiness, length percentiles, and the prefix-reuse ceiling."""

from __future__ import annotations

import numpy as np

from traces.table import TraceTable


def _peak_window(t: np.ndarray, width: float) -> int:
    """Most arrivals in one window of `width` seconds, windows laid end to end from the
    trace's first arrival (how the trace sources publish their peaks)."""
    if len(t) == 0:
        return 0
    return int(np.bincount(np.floor((t - t[0]) / width).astype(np.int64)).max())


def _pct(values: np.ndarray) -> dict:
    if len(values) == 0:
        return {}
    return {
        "mean": float(values.mean()),
        "p50": float(np.percentile(values, 50)),
        "p90": float(np.percentile(values, 90)),
        "p99": float(np.percentile(values, 99)),
        "min": int(values.min()),
        "max": int(values.max()),
    }


def prefix_reuse(table: TraceTable, warm_with: TraceTable | None = None) -> dict | None:
    """The best any prefix cache could do (unbounded, never evicting): the share of referenced
    blocks, and of prompt tokens, that continue a leading prefix already seen.

    `warm_with` (an earlier window of the same trace) fills the cache first: a window cut from
    the middle of a trace otherwise counts every prefix it inherits as a miss."""
    if not table.has_prefix_structure:
        return None
    seen: set = set()
    if warm_with is not None:
        if not warm_with.has_prefix_structure:
            raise ValueError(f"{warm_with.source or warm_with.name}: no block hashes, so it cannot warm the prefix cache")
        sizes = set(table.df["hash_block_size"].dropna().astype(int)) | set(
            warm_with.df["hash_block_size"].dropna().astype(int))
        if len(sizes) > 1:
            raise ValueError(f"{warm_with.source or warm_with.name}: hash blocks of {sorted(sizes)} tokens differ from "
                             "the trace's; the two cannot share a prefix cache")
        for hashes in warm_with.df["block_hashes"]:
            if hashes is not None:
                seen.update(hashes)
    hit_blocks = total_blocks = hit_tokens = total_tokens = 0
    for hashes, bs, plen in zip(table.df["block_hashes"], table.df["hash_block_size"], table.df["prompt_len"]):
        total_tokens += int(plen)
        if hashes is None:
            continue
        hashes = list(hashes)
        total_blocks += len(hashes)
        k = 0
        while k < len(hashes) and hashes[k] in seen:
            k += 1
        hit_blocks += k
        hit_tokens += min(k * int(bs), int(plen))
        seen.update(hashes)
    return {
        "block_hit_share": hit_blocks / total_blocks if total_blocks else 0.0,
        "token_hit_share": hit_tokens / total_tokens if total_tokens else 0.0,
        "blocks_referenced": total_blocks,
        "distinct_blocks": len(seen),
        "warmed_with": None if warm_with is None else (warm_with.source or warm_with.name),
    }


def describe(table: TraceTable, warm_with: TraceTable | None = None) -> dict:
    df = table.df
    t = np.sort(df["arrival_s"].to_numpy(dtype=np.float64))
    duration = float(t[-1] - t[0]) if len(t) else 0.0
    gaps = np.diff(t)
    cv = float(gaps.std() / gaps.mean()) if len(gaps) and gaps.mean() > 0 else float("nan")
    prompt = df["prompt_len"].to_numpy()
    output = df["output_len"].to_numpy()
    return {
        "name": table.name,
        "source": table.source,
        "num_requests": len(df),
        "duration_s": duration,
        "rate_rps": (len(df) - 1) / duration if duration > 0 else float("inf"),
        "interarrival_cv": cv,
        "peak_1s": _peak_window(t, 1.0),
        "peak_10s_rps": _peak_window(t, 10.0) / 10.0,
        "peak_60s_rps": _peak_window(t, 60.0) / 60.0,
        "prompt_len": _pct(prompt),
        "output_len": _pct(output),
        "total_prompt_tokens": int(prompt.sum()),
        "total_output_tokens": int(output.sum()),
        "prefix_reuse": prefix_reuse(table, warm_with),
        "notes": list(table.notes),
    }


def format_stats(stats: dict) -> str:
    lines = [
        f"trace         {stats['name']}  ({stats['source']})",
        f"requests      {stats['num_requests']:,}",
        f"duration      {stats['duration_s']:.1f} s",
        f"rate          {stats['rate_rps']:.3f} req/s   inter-arrival CV {stats['interarrival_cv']:.2f}",
        f"peak          {stats['peak_1s']} req in 1 s   {stats['peak_10s_rps']:.2f} req/s over 10 s   "
        f"{stats['peak_60s_rps']:.2f} req/s over 60 s",
    ]
    for key in ("prompt_len", "output_len"):
        s = stats[key]
        if s:
            lines.append(
                f"{key:<13} mean {s['mean']:.1f}  p50 {s['p50']:.0f}  p90 {s['p90']:.0f}  p99 {s['p99']:.0f}  "
                f"min {s['min']}  max {s['max']}"
            )
    lines.append(f"total tokens  prompt {stats['total_prompt_tokens']:,}  output {stats['total_output_tokens']:,}")
    reuse = stats["prefix_reuse"]
    if reuse:
        lines.append(
            f"prefix reuse  {reuse['block_hit_share']:.1%} of blocks, {reuse['token_hit_share']:.1%} of prompt tokens "
            f"(unbounded cache; {reuse['distinct_blocks']:,} distinct of {reuse['blocks_referenced']:,} blocks"
            + (f"; warmed with {reuse['warmed_with']}" if reuse.get("warmed_with") else "") + ")"
        )
    else:
        lines.append("prefix reuse  n/a (no block hashes in this trace)")
    for note in stats["notes"]:
        lines.append(f"note          {note}")
    return "\n".join(lines)
