"""Metrics from request timelines, identical for the simulator and the executor.

Definitions (DESIGN.md "Metrics", names as in vLLM's serving benchmarks), over *finished*
requests:

- TTFT = first output token time - arrival time
- TPOT = (finish - first token) / (output tokens - 1), per request; none for one-token outputs
- ITL  = every gap between consecutive output tokens of a request, pooled over requests
- E2EL = finish - arrival
- queueing delay = first scheduled - arrival
- makespan = last finish - first arrival (all requests of the trace)
- throughput = output tokens / makespan; total = (prompt + output tokens) / makespan;
  request throughput = finished requests / makespan
- goodput = finished requests meeting every given SLO (TTFT, TPOT, E2EL) / makespan; a
  one-token request meets any TPOT SLO
- prefix hit rate = prefix-cache hit tokens at first admission / prompt tokens, over requests
  that were admitted

Each latency is reported as mean, p50, p90, p99 (numpy's linear percentiles, as vLLM).
Every request of the trace is one row of the request table, whatever became of it.
"""

from __future__ import annotations

import gc
import math
from contextlib import contextmanager
from operator import attrgetter
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from traces.files import atomic_path, atomic_write_json
from traces.timeline import RequestTimeline, StepRecord

PERCENTILES = (50, 90, 99)
LATENCIES = ("ttft", "tpot", "itl", "e2el", "queue")

REQUEST_COLUMNS = (
    "request_id", "status", "finish_reason", "arrival_s", "first_scheduled_s", "first_token_s", "finish_s",
    "prompt_len", "max_tokens", "output_len", "ttft_s", "tpot_s", "e2el_s", "queue_s",
    "num_preemptions", "num_cached_tokens", "reject_reason",
)
STEP_COLUMNS = tuple(StepRecord.__dataclass_fields__)


@contextmanager
def _gc_paused():
    """Building a table allocates many small objects while millions of timeline floats are
    alive; a cyclic-GC pass over those is most of the cost and finds nothing to free."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _as_list(timelines) -> list[RequestTimeline]:
    return list(timelines.values()) if isinstance(timelines, dict) else list(timelines)


def requests_table(timelines: dict[str, RequestTimeline] | Iterable[RequestTimeline]) -> pd.DataFrame:
    """One row per request, in the order the engine first saw them (arrival order)."""
    with _gc_paused():
        return _requests_table(timelines)


def _requests_table(timelines) -> pd.DataFrame:
    rows = []
    nan = math.nan
    for t in _as_list(timelines):
        times = t.token_times
        n_out = len(times)
        first = times[0] if n_out else nan
        finish = t.finish_s if t.finish_s is not None else nan
        done = t.status == "finished"
        ttft = first - t.arrival_s if done and n_out else nan
        tpot = (finish - first) / (n_out - 1) if done and n_out > 1 else nan
        first_sched = t.first_scheduled_s if t.first_scheduled_s is not None else nan
        rows.append((
            t.request_id, t.status, t.finish_reason, t.arrival_s, first_sched, first, finish,
            t.prompt_len, t.max_tokens, n_out, ttft, tpot, finish - t.arrival_s if done else nan,
            first_sched - t.arrival_s, t.num_preemptions, t.num_cached_tokens, t.reject_reason,
        ))
    df = pd.DataFrame.from_records(rows, columns=list(REQUEST_COLUMNS))
    for col in ("prompt_len", "max_tokens", "output_len", "num_preemptions", "num_cached_tokens"):
        df[col] = df[col].astype("int64")
    for col in ("request_id", "status", "finish_reason", "reject_reason"):
        df[col] = df[col].astype("object")
    return df


def steps_table(steps: list[StepRecord]) -> pd.DataFrame:
    """One row per engine step, with KV usage (used / total blocks) after the step's plan."""
    with _gc_paused():
        return _steps_table(steps)


def _steps_table(steps: list[StepRecord]) -> pd.DataFrame:
    n = len(steps)
    # One typed pass per column: several times faster than records for ~1e6 steps.
    df = pd.DataFrame({
        c: np.fromiter(map(attrgetter(c), steps), dtype=np.float64 if c.endswith("_s") else np.int64, count=n)
        for c in STEP_COLUMNS
    })
    total = df["kv_total_blocks"].to_numpy()
    df["kv_usage"] = np.divide(df["kv_used_blocks"].to_numpy(), total, out=np.zeros(len(df)), where=total > 0)
    return df


def itl_gaps(timelines, *, finished_only: bool = True) -> np.ndarray:
    """Every gap between consecutive output tokens, pooled over requests."""
    with _gc_paused():
        return _itl_gaps(timelines, finished_only)


def _itl_gaps(timelines, finished_only: bool) -> np.ndarray:
    chunks = [t.token_times for t in _as_list(timelines)
              if len(t.token_times) > 1 and (t.status == "finished" or not finished_only)]
    if not chunks:
        return np.zeros(0)
    # Request by request into one preallocated array: the same subtractions as np.diff over
    # the concatenation with each request's first gap dropped, without the three
    # trace-sized temporaries (concatenation, diff, mask) whose page faults cost more than this.
    out = np.empty(sum(map(len, chunks)) - len(chunks))
    subtract = np.subtract
    pos = 0
    for times in chunks:
        a = np.array(times)
        k = len(times) - 1
        subtract(a[1:], a[:-1], out=out[pos:pos + k])
        pos += k
    return out


def token_times_table(timelines) -> pd.DataFrame:
    """Long format (request_id, token_index, time_s): every output token's time."""
    ids, idx, times = [], [], []
    for t in _as_list(timelines):
        n = len(t.token_times)
        ids.extend([t.request_id] * n)
        idx.extend(range(n))
        times.extend(t.token_times)
    return pd.DataFrame({"request_id": ids, "token_index": np.asarray(idx, dtype=np.int64),
                         "time_s": np.asarray(times, dtype=float)})


def _stats(prefix: str, values: np.ndarray) -> dict[str, float | None]:
    values = values[~np.isnan(values)] if len(values) else values
    out: dict[str, float | None] = {f"{prefix}_count": int(len(values))}
    if len(values) == 0:
        out[f"{prefix}_mean_s"] = None
        out.update({f"{prefix}_p{p}_s": None for p in PERCENTILES})
        return out
    out[f"{prefix}_mean_s"] = float(values.mean())
    for p, v in zip(PERCENTILES, np.percentile(values, PERCENTILES)):
        out[f"{prefix}_p{p}_s"] = float(v)
    return out


def rates(makespan: float, n_finished: int, in_tokens: int, out_tokens: int, finished_column, *,
          slo_ttft_s=None, slo_tpot_s=None, slo_e2el_s=None) -> dict:
    """Token counts, throughputs and (with SLOs) goodput; `finished_column(name)` gives a
    latency column over finished requests. Shared by the in-memory and the streamed summary."""
    out = {"total_input_tokens": in_tokens, "total_output_tokens": out_tokens}
    per_s = (lambda x: x / makespan) if makespan > 0 else (lambda x: None)
    out["request_throughput"] = per_s(n_finished)
    out["output_throughput"] = per_s(out_tokens)
    out["total_token_throughput"] = per_s(in_tokens + out_tokens)
    slos = {"ttft_s": slo_ttft_s, "tpot_s": slo_tpot_s, "e2el_s": slo_e2el_s}
    if any(v is not None for v in slos.values()):
        good = np.ones(n_finished, dtype=bool)
        for col, limit in slos.items():
            if limit is not None:
                values = finished_column(col)
                good &= np.isnan(values) | (values <= limit) if col == "tpot_s" else values <= limit
        out["slo"] = {k: v for k, v in slos.items() if v is not None}
        out["num_good"] = int(good.sum())
        out["goodput"] = per_s(int(good.sum()))
    return out


def step_fields(steps: pd.DataFrame) -> dict:
    """Step count, busy time, time-weighted KV usage and mean batch size from a steps table
    (the columns `duration_s`, `kv_usage`, `num_requests`, `num_prefill_tokens`, `num_decode_tokens`)."""
    out = {"num_steps": int(len(steps))}
    if len(steps):
        dur = steps["duration_s"].to_numpy()
        usage = steps["kv_usage"].to_numpy()
        busy = float(dur.sum())
        out["busy_s"] = busy
        out["kv_usage_mean"] = float((usage * dur).sum() / busy) if busy > 0 else float(usage.mean())
        out["kv_usage_max"] = float(usage.max())
        out["mean_batch_requests"] = float(steps["num_requests"].mean())
        out["mean_batch_tokens"] = float((steps["num_prefill_tokens"] + steps["num_decode_tokens"]).mean())
    return out


def block_hit_rate(requests: pd.DataFrame, block_size: int) -> dict:
    """Prefix-cache hits counted in KV blocks (see `block_hit_counts`)."""
    return block_hit_counts(requests["num_cached_tokens"].to_numpy(dtype=np.int64),
                            requests["prompt_len"].to_numpy(dtype=np.int64), block_size)


def block_hit_counts(cached: np.ndarray, prompt: np.ndarray, block_size: int) -> dict:
    """Of the full prompt blocks (the only ones a prefix cache can hold), how many were found
    cached. A fully cached prompt recomputes its last token, so its cached-token count is one
    short of a block multiple: rounding up counts that block."""
    hit = int((-(-cached // block_size)).sum())
    queried = int((prompt // block_size).sum())
    return {"prefix_hit_blocks": hit, "prefix_query_blocks": queried,
            "prefix_block_hit_rate": hit / queried if queried else None}


def summarize(
    requests: pd.DataFrame,
    steps: pd.DataFrame,
    itl: np.ndarray | None = None,
    *,
    slo_ttft_s: float | None = None,
    slo_tpot_s: float | None = None,
    slo_e2el_s: float | None = None,
    block_size: int | None = None,
) -> dict:
    """The run's headline numbers (JSON-ready: no NaN, None where a metric is undefined).

    With `block_size`, the prefix-cache block hit rate is reported beside the token hit rate."""
    status = requests["status"]
    done = requests[status == "finished"]
    n_finished = len(done)
    out: dict = {
        "num_requests": int(len(requests)),
        "num_finished": n_finished,
        "num_aborted": int((status == "aborted").sum()),
        "num_rejected": int((status == "rejected").sum()),
        "num_unfinished": int((~status.isin(["finished", "aborted", "rejected"])).sum()),
    }
    first_arrival = float(requests["arrival_s"].min()) if len(requests) else 0.0
    ended = requests[status.isin(["finished", "aborted"])]
    last_finish = float(ended["finish_s"].max()) if len(ended) else first_arrival
    makespan = last_finish - first_arrival
    out["first_arrival_s"] = first_arrival
    out["last_finish_s"] = last_finish
    out["makespan_s"] = makespan
    out.update(rates(makespan, n_finished, int(done["prompt_len"].sum()), int(done["output_len"].sum()),
                     lambda col: done[col].to_numpy(), slo_ttft_s=slo_ttft_s, slo_tpot_s=slo_tpot_s,
                     slo_e2el_s=slo_e2el_s))
    for name in ("ttft", "tpot", "e2el", "queue"):
        out.update(_stats(name, done[f"{name}_s"].to_numpy(dtype=float)))
    if itl is not None:
        out.update(_stats("itl", np.asarray(itl, dtype=float)))

    admitted = requests[requests["first_scheduled_s"].notna()]
    hit = int(admitted["num_cached_tokens"].sum())
    queried = int(admitted["prompt_len"].sum())
    out["prefix_hit_tokens"] = hit
    out["prefix_query_tokens"] = queried
    out["prefix_hit_rate"] = hit / queried if queried else None
    if block_size:
        out.update(block_hit_rate(admitted, block_size))
    out["num_preemptions"] = int(requests["num_preemptions"].sum())
    out["num_preempted_requests"] = int((requests["num_preemptions"] > 0).sum())

    out.update(step_fields(steps))
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


# -- writing, atomically ------------------------------------------------------------------
def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a DataFrame as .parquet or .csv, atomically."""
    path = Path(path)
    if path.suffix not in (".parquet", ".csv"):
        raise ValueError(f"{path}: table format must be .parquet or .csv")
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            _write_csv(df, tmp)
    return path


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    """`df.to_csv(path, index=False, lineterminator="\\n")`, byte for byte, in a fraction of
    the time (pandas formats every value through numpy string arrays). Floats are written with
    Python's `repr`, the same shortest round-trip digits numpy gives (a column with few distinct
    values formats each once); integers are formatted by Arrow when the table has no text, and
    text goes through the csv module, which quotes exactly as pandas has it do. Missing values
    are empty fields, as in pandas."""
    kinds = [df[name].dtype.kind if isinstance(df[name].dtype, np.dtype) and df[name].dtype != np.float32
             and df[name].dtype != np.float16 else "?" for name in df.columns]
    if not all(k in "iubfO" for k in kinds) or df.columns.has_duplicates:
        # dates, categories, extension types, float32 (numpy prints its shortest digits): pandas' own
        df.to_csv(path, index=False, lineterminator="\n")
        return
    header = ",".join(map(str, df.columns)) + "\n"
    if "O" in kinds:
        import csv

        columns = [_csv_fields(df[name]) for name in df.columns]
        with open(path, "w", newline="") as f:
            f.write(header)
            csv.writer(f, lineterminator="\n").writerows(zip(*columns))
        return
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    arrays = []
    for name in df.columns:
        column = df[name]
        if column.dtype.kind in "iu":
            arrays.append(pa.array(column.to_numpy()))
        else:
            arrays.append(pa.array(_csv_fields(column), type=pa.string()))
    with open(path, "wb") as f:
        f.write(header.encode())
        if len(df):
            table = pa.Table.from_arrays(arrays, names=[str(c) for c in df.columns])
            pa_csv.write_csv(table, f, write_options=pa_csv.WriteOptions(include_header=False, quoting_style="none"))


def _csv_fields(column: pd.Series) -> list:
    """One column's CSV fields as pandas writes them: numbers as text ("" where missing),
    text unchanged (None where missing; the csv module quotes it)."""
    kind = column.dtype.kind
    if kind == "O":
        return [None if v is None or (isinstance(v, float) and v != v) else v for v in column.tolist()]
    values = column.to_numpy()
    fmt = repr if kind == "f" else str
    if kind == "f":
        missing = np.isnan(values)
        if missing.any():
            return ["" if v != v else repr(v) for v in values.tolist()]
        if np.signbit(values[values == 0]).any():
            return list(map(repr, values.tolist()))  # -0.0 and 0.0 would share one text below
    if len(values) > 256:
        uniques, inverse = np.unique(values, return_inverse=True)
        if len(uniques) * 8 < len(values):
            text = np.array([fmt(v) for v in uniques.tolist()], dtype=object)
            return text[inverse.reshape(-1)].tolist()
    return list(map(fmt, values.tolist()))


def write_json(data, path: str | Path) -> Path:
    return atomic_write_json(path, data)
