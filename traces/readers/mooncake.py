"""Mooncake / aiperf JSONL: `{"timestamp": ms, "input_length", "output_length", "hash_ids"}`.

`hash_ids` name 512-token blocks; equal ids are reusable KV. Timestamps are quantised to
~3 s buckets, so a replay must choose: "batch" keeps the recorded times (bursts of
simultaneous arrivals), "spread" places each bucket's requests at seeded random times inside
the bucket (order kept). The table's notes say which one ran.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from traces.errors import TraceFormatError
from traces.readers._checks import field, iter_json_lines
from traces.table import TraceTable
from policy.utils import cdiv

HASH_BLOCK_SIZE = 512
BUCKET_S = 3.0
ARRIVAL_MODES = ("batch", "spread")


def read(path, arrival_mode: str = "batch", seed: int = 0, hash_block_size: int = HASH_BLOCK_SIZE) -> TraceTable:
    if arrival_mode not in ARRIVAL_MODES:
        raise ValueError(f"mooncake arrival_mode={arrival_mode!r}: must be one of {ARRIVAL_MODES}")
    times, prompts, outputs, hashes, ids, sessions = [], [], [], [], [], []
    lines = []
    for lineno, obj in iter_json_lines(path):
        t = field(obj, "timestamp", path, lineno)
        n_in = field(obj, "input_length", path, lineno)
        n_out = field(obj, "output_length", path, lineno)
        h = obj.get("hash_ids") or []
        for name, value in (("timestamp", t), ("input_length", n_in), ("output_length", n_out)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value or value < 0:
                raise TraceFormatError(path, lineno, f"{name}={value!r} must be a non-negative number")
        if n_in < 1 or n_out < 1 or int(n_in) != n_in or int(n_out) != n_out:
            raise TraceFormatError(path, lineno, f"input_length={n_in!r}, output_length={n_out!r} must be integers >= 1")
        if h and len(h) < cdiv(n_in, hash_block_size):
            raise TraceFormatError(
                path, lineno, f"{len(h)} hash_ids cannot cover input_length={n_in} with {hash_block_size}-token blocks"
            )
        times.append(float(t) / 1000.0)
        prompts.append(int(n_in))
        outputs.append(int(n_out))
        hashes.append([int(x) for x in h] if h else None)
        ids.append(str(obj.get("request_id", len(ids))))
        sessions.append(obj.get("session_id"))
        lines.append(lineno)
    if not times:
        raise TraceFormatError(path, None, "no requests in file")
    arrivals = np.asarray(times)
    order_check = np.flatnonzero(np.diff(arrivals) < 0)
    if order_check.size:
        row = int(order_check[0]) + 1
        raise TraceFormatError(path, lines[row], f"timestamp goes backwards ({times[row] * 1000:.0f} ms after {times[row - 1] * 1000:.0f} ms)")
    if arrival_mode == "spread":
        arrivals = spread_within_buckets(arrivals, BUCKET_S, seed)
    data = {
        "request_id": ids,
        "arrival_s": arrivals,
        "prompt_len": prompts,
        "output_len": outputs,
    }
    if any(s is not None for s in sessions):
        data["session_id"] = [None if s is None else str(s) for s in sessions]
    if any(h is not None for h in hashes):
        data["block_hashes"] = hashes
        data["hash_block_size"] = [hash_block_size] * len(ids)
    note = (
        f"mooncake arrivals: {arrival_mode} replay of ~{BUCKET_S:.0f}-s quantised timestamps"
        + (f" (seed {seed})" if arrival_mode == "spread" else "")
    )
    return TraceTable.from_dataframe(pd.DataFrame(data), name="mooncake", source=str(path), notes=[note])


def spread_within_buckets(arrivals: np.ndarray, bucket_s: float, seed: int) -> np.ndarray:
    """Requests sharing a recorded timestamp get sorted seeded offsets inside their bucket
    (up to the next recorded timestamp, at most `bucket_s`), so arrival order is kept. The very
    first request stays at the first recorded time."""
    rng = np.random.default_rng(seed)
    out = arrivals.astype(np.float64).copy()
    starts = np.flatnonzero(np.r_[True, np.diff(arrivals) != 0])
    ends = np.r_[starts[1:], len(arrivals)]
    for a, b in zip(starts.tolist(), ends.tolist()):
        width = min(bucket_s, arrivals[b] - arrivals[a]) if b < len(arrivals) else bucket_s
        out[a:b] = arrivals[a] + np.sort(rng.uniform(0.0, width, b - a))
    out[0] = arrivals[0]  # the trace still starts at its first recorded time (rebasing would shift every bucket)
    return out
