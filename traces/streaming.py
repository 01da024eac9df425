"""Timelines that stream out: memory bounded by the live requests, not by the trace length.

`TimelineRecorder` keeps every request's timeline and every step record until the run ends:
fine for thousands of requests, gigabytes for a million. `StreamingRecorder` keeps only the
live requests' timelines. When a request ends, its row of the request table (computed by
the very `metrics.requests_table` the in-memory path uses) is buffered and written to
`requests.parquet` in row groups (in the order requests end, with an `_arrival_index` column
that restores arrival order: `read_requests` does); step records go to `steps.parquet` the
same way. Nothing per token outlives its request.

Inter-token latency is the one metric that pools every token. It is kept exactly, in
O(steps) memory: in both engines a request that sampled at the end of the previous step and
samples again at the end of this one has a gap of `end - start` of this step, bit for bit
(the step starts when the previous one ended), so such gaps are counted per step and the
few others (after a preemption, across a chunked prefill) are kept as values.
`weighted_percentile` then gives numpy's linear percentiles of that multiset without
expanding it. The ITL mean is a correctly rounded sum (`math.fsum`), so it can differ from
numpy's pairwise mean in the last bits; every other summary figure is computed by
`traces.metrics.summarize` from the same columns in the same (arrival) order as in memory.
"""

from __future__ import annotations

import math
from array import array
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from traces import metrics
from traces.run_result import RunResult
from traces.timeline import RequestTimeline, TimelineRecorder

FLUSH_ROWS = 16384  # request rows / step records buffered before a row group is written
SEQ = "_arrival_index"  # order the engine saw the request in (restores arrival order on read)


class StreamingRecorder(TimelineRecorder):
    """A `TimelineRecorder` whose finished requests and steps go to parquet files in `out_dir`."""

    result_type = None  # set below: engines wrap this recorder's runs in StreamedRunResult

    def __init__(self, out_dir: str | Path) -> None:
        super().__init__()
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.requests_path = self.out_dir / "requests.parquet"
        self.steps_path = self.out_dir / "steps.parquet"
        self._seq: dict[str, int] = {}
        self._next_seq = 0
        self._done: list[RequestTimeline] = []
        self._done_seq: list[int] = []
        self._writers: dict[str, pq.ParquetWriter] = {}
        self.num_steps = 0
        self.num_requests = 0
        self.step_gap_counts = array("q")  # per step: gaps that equal this step's duration
        self.step_durations = array("d")
        self.other_gaps = array("d")  # gaps that span more than one step
        self.last_end_s = 0.0
        self.closed = False

    # -- request events ---------------------------------------------------------------
    def on_arrival(self, request, now: float) -> None:
        super().on_arrival(request, now)
        self._seq[request.request_id] = self._next_seq
        self._next_seq += 1

    def on_rejected(self, request_id, arrival_s, prompt_len, max_tokens, reason) -> None:
        if request_id not in self._seq:
            self._seq[request_id] = self._next_seq
            self._next_seq += 1
        super().on_rejected(request_id, arrival_s, prompt_len, max_tokens, reason)
        self._retire(request_id)

    def on_aborted(self, request, now: float) -> None:
        super().on_aborted(request, now)
        self._retire(request.request_id)

    def on_step(self, plan, result, start_s, end_s, shape=None) -> None:
        timelines = self.timelines
        counted = 0
        other = self.other_gaps
        for request_id, _token in result.new_tokens:
            times = timelines[request_id].token_times
            if times:
                last = times[-1]
                if last == start_s:
                    counted += 1
                else:
                    other.append(end_s - last)
        super().on_step(plan, result, start_s, end_s, shape)
        self.step_gap_counts.append(counted)
        self.step_durations.append(end_s - start_s)
        self.last_end_s = end_s
        for request in result.finished:
            self._retire(request.request_id)
        self._maybe_flush_steps()

    def on_decode_run(self, request_ids, steps, end_times) -> None:
        first_start = steps[0].start_s
        timelines = self.timelines
        extra = 0
        for request_id in request_ids:
            times = timelines[request_id].token_times
            if times and times[-1] != first_start:
                extra += 1  # cannot happen for a decode stretch, but count it right if it did
                self.other_gaps.append(end_times[0] - times[-1])
        super().on_decode_run(request_ids, steps, end_times)
        n = len(request_ids)
        counts = [n] * len(steps)
        counts[0] = n - extra
        self.step_gap_counts.extend(counts)
        self.step_durations.extend(s.duration_s for s in steps)
        self.last_end_s = end_times[-1]
        self._maybe_flush_steps()

    # -- out to disk --------------------------------------------------------------------
    def _retire(self, request_id: str) -> None:
        self._done.append(self.timelines.pop(request_id))
        self._done_seq.append(self._seq.pop(request_id))
        if len(self._done) >= FLUSH_ROWS:
            self._flush_requests()

    def _append(self, name: str, path: Path, df: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(df, preserve_index=False)
        writer = self._writers.get(name)
        if writer is None:
            writer = self._writers[name] = pq.ParquetWriter(path, table.schema)
        writer.write_table(table.cast(writer.schema))

    def _flush_requests(self) -> None:
        if not self._done:
            return
        df = metrics.requests_table(self._done)
        for col in ("finish_reason", "reject_reason"):
            df[col] = df[col].astype("string")
        df[SEQ] = np.asarray(self._done_seq, dtype=np.int64)
        self.num_requests += len(df)
        self._append("requests", self.requests_path, df)
        self._done, self._done_seq = [], []

    def _maybe_flush_steps(self) -> None:
        if len(self.steps) >= FLUSH_ROWS:
            self._flush_steps()

    def _flush_steps(self) -> None:
        if not self.steps:
            return
        self.num_steps += len(self.steps)
        self._append("steps", self.steps_path, metrics.steps_table(self.steps))
        self.steps = []

    def close(self) -> None:
        """Write what is buffered (requests still live are written as they stand) and close
        the files."""
        if self.closed:
            return
        for request_id in list(self.timelines):
            self._retire(request_id)
        self._flush_requests()
        self._flush_steps()
        if "requests" not in self._writers:
            self._append("requests", self.requests_path, _empty_requests())
        if "steps" not in self._writers:
            self._append("steps", self.steps_path, metrics.steps_table([]))
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
        self.closed = True

    # -- reading back -------------------------------------------------------------------
    def read_requests(self, columns: list[str] | None = None, *, plain: bool = False) -> pd.DataFrame:
        """The request table in arrival order (the order the in-memory table has).
        `plain=True` leaves `status` categorical and the text columns as read (the summary's
        way: a million rows of Python strings would be most of its memory)."""
        import pyarrow.compute as pc

        cols = None if columns is None else list(dict.fromkeys([*columns, SEQ]))
        table = pq.read_table(self.requests_path, columns=cols, read_dictionary=["status"] if plain else None)
        table = table.take(pc.sort_indices(table[SEQ])).drop_columns([SEQ])
        df = table.to_pandas(self_destruct=True, split_blocks=True)
        del table
        if plain:
            return df
        for col in ("request_id", "status", "finish_reason", "reject_reason"):  # the in-memory table's dtypes
            if col in df.columns:
                values = df[col].astype(object)
                df[col] = pd.Series([None if v is None or v is pd.NA or (isinstance(v, float) and v != v) else v
                                     for v in values.tolist()], dtype=object)
        return df

    def read_steps(self, columns: list[str] | None = None) -> pd.DataFrame:
        return pq.read_table(self.steps_path, columns=columns).to_pandas()

    def itl_summary(self) -> dict:
        """ITL count, mean, p50/p90/p99 from the per-step counts and the other gaps."""
        counts = np.frombuffer(self.step_gap_counts, dtype=np.int64) if len(self.step_gap_counts) else np.zeros(0, np.int64)
        durations = np.frombuffer(self.step_durations, dtype=np.float64) if len(self.step_durations) else np.zeros(0)
        keep = counts > 0
        values = np.concatenate([durations[keep], np.frombuffer(self.other_gaps, dtype=np.float64)
                                 if len(self.other_gaps) else np.zeros(0)])
        weights = np.concatenate([counts[keep], np.ones(len(self.other_gaps), dtype=np.int64)])
        total = int(weights.sum())
        out: dict = {"itl_count": total}
        if total == 0:
            out["itl_mean_s"] = None
            out.update({f"itl_p{p}_s": None for p in metrics.PERCENTILES})
            return out
        out["itl_mean_s"] = math.fsum((values * weights).tolist()) / total if total else None
        for p, v in zip(metrics.PERCENTILES, weighted_percentile(values, weights, metrics.PERCENTILES)):
            out[f"itl_p{p}_s"] = float(v)
        return out


def summarize_streamed(recorder: StreamingRecorder, *, slo_ttft_s: float | None = None,
                       slo_tpot_s: float | None = None, slo_e2el_s: float | None = None,
                       block_size: int | None = None) -> dict:
    """`metrics.summarize`, computed one column at a time from the files on disk (a million
    rows as a DataFrame, plus the filtered copies `summarize` makes, would be most of a
    streamed run's memory). The same numpy operations on the same arrays in the same
    (arrival) order, so the same numbers; `tests/traces/test_streaming.py` compares the two
    on every key. Keep the two in step when `metrics.summarize` changes."""
    import pyarrow.compute as pc

    recorder.close()
    path = recorder.requests_path
    order = np.argsort(pq.read_table(path, columns=[SEQ])[SEQ].to_numpy(), kind="stable")

    def col(name: str) -> np.ndarray:
        return pq.read_table(path, columns=[name])[name].to_numpy()[order]

    status = pq.read_table(path, columns=["status"])["status"]
    finished, aborted, rejected = (pc.equal(status, v).to_numpy(zero_copy_only=False)[order]
                                   for v in ("finished", "aborted", "rejected"))
    del status
    n = len(order)
    done = finished
    n_finished = int(done.sum())
    out: dict = {
        "num_requests": n, "num_finished": n_finished, "num_aborted": int(aborted.sum()),
        "num_rejected": int(rejected.sum()), "num_unfinished": int((~(finished | aborted | rejected)).sum()),
    }
    arrival = col("arrival_s")
    first_arrival = float(np.nanmin(arrival)) if n else 0.0
    del arrival
    ended = finished | aborted
    finish = col("finish_s")[ended]
    last_finish = float(np.nanmax(finish)) if len(finish) else first_arrival
    del finish
    makespan = last_finish - first_arrival
    out["first_arrival_s"] = first_arrival
    out["last_finish_s"] = last_finish
    out["makespan_s"] = makespan
    prompt = col("prompt_len")
    out.update(metrics.rates(makespan, n_finished, int(prompt[done].sum()), int(col("output_len")[done].sum()),
                             lambda name: col(name)[done], slo_ttft_s=slo_ttft_s, slo_tpot_s=slo_tpot_s,
                             slo_e2el_s=slo_e2el_s))
    for name in ("ttft", "tpot", "e2el", "queue"):
        out.update(metrics._stats(name, col(f"{name}_s")[done].astype(float)))
    out.update({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in recorder.itl_summary().items()})
    admitted = ~np.isnan(col("first_scheduled_s"))
    hit = int(col("num_cached_tokens")[admitted].sum())
    queried = int(prompt[admitted].sum())
    out["prefix_hit_tokens"] = hit
    out["prefix_query_tokens"] = queried
    out["prefix_hit_rate"] = hit / queried if queried else None
    if block_size:
        out.update(metrics.block_hit_counts(col("num_cached_tokens")[admitted].astype(np.int64),
                                            prompt[admitted].astype(np.int64), block_size))
    preemptions = col("num_preemptions")
    out["num_preemptions"] = int(preemptions.sum())
    out["num_preempted_requests"] = int((preemptions > 0).sum())
    steps = recorder.read_steps(["duration_s", "kv_usage", "num_requests", "num_prefill_tokens", "num_decode_tokens"])
    out.update(metrics.step_fields(steps))
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


def weighted_percentile(values: np.ndarray, weights: np.ndarray, percentiles) -> list[float]:
    """`np.percentile(np.repeat(values, weights), percentiles)` (numpy's default linear
    method, bit for bit) without building the repeated array."""
    order = np.argsort(values, kind="stable")
    v = np.asarray(values, dtype=np.float64)[order]
    cum = np.cumsum(np.asarray(weights, dtype=np.int64)[order])
    n = int(cum[-1])
    out = []
    for p in percentiles:
        # numpy: virtual index (n - 1) * q with q = p / 100, then lerp between neighbours.
        q = np.true_divide(p, 100)
        h = (n - 1) * q
        lo = math.floor(h)
        gamma = h - lo
        a = v[np.searchsorted(cum, lo, side="right")]
        b = v[np.searchsorted(cum, min(lo + 1, n - 1), side="right")]
        out.append(float(_np_lerp(a, b, gamma)))
    return out


def _np_lerp(a, b, t):
    """numpy's `_lerp` (lib/_function_base_impl.py): the formula that keeps monotonicity."""
    diff = np.subtract(b, a)
    if t >= 0.5:
        return np.subtract(b, diff * (1 - t))
    return np.add(a, diff * t)


def _empty_requests() -> pd.DataFrame:
    df = metrics.requests_table([])
    for col in ("finish_reason", "reject_reason"):
        df[col] = df[col].astype("string")
    df[SEQ] = np.zeros(0, dtype=np.int64)
    return df


class StreamedRunResult(RunResult):
    """A `RunResult` whose tables live on disk (written by a `StreamingRecorder`)."""

    @cached_property
    def requests_df(self) -> pd.DataFrame:
        self.recorder.close()
        return self.recorder.read_requests()

    @cached_property
    def steps_df(self) -> pd.DataFrame:
        self.recorder.close()
        return self.recorder.read_steps()

    @cached_property
    def itl(self) -> np.ndarray:
        raise NotImplementedError("a streamed run keeps ITL as per-step counts; read summary['itl_*']")

    @cached_property
    def summary(self) -> dict:
        out = summarize_streamed(self.recorder, block_size=self.scheduler_config.block_size, **self.slo)
        queried = self.stats.prefix_queries_tokens
        out["scheduler_prefix_hit_rate"] = self.stats.prefix_hit_tokens / queried if queried else None
        out["scheduler_num_preemptions"] = self.stats.num_preemptions
        out["sim_time_s"] = self.recorder.last_end_s if self.recorder.num_steps else 0.0
        return out

    def write(self, out_dir: str | Path, *, formats: tuple[str, ...] = ("parquet", "csv"),
              token_times: bool = False) -> Path:
        """requests.* and steps.* (the parquet files are the recorder's own when `out_dir` is
        its folder; CSV means reading the whole table back), summary.json, run.json."""
        if token_times:
            raise ValueError("token times are not kept by a streamed run (memory is bounded by live requests)")
        self.recorder.close()
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for fmt in formats:
            if fmt not in ("parquet", "csv"):
                raise ValueError(f"format {fmt!r}: supported are parquet, csv")
        for name, src in (("requests", self.recorder.requests_path), ("steps", self.recorder.steps_path)):
            for fmt in formats:
                dst = out / f"{name}.{fmt}"
                if fmt == "parquet" and dst.resolve() != src.resolve():
                    metrics.write_table(self.requests_df if name == "requests" else self.steps_df, dst)
                elif fmt == "csv":
                    metrics.write_table(self.requests_df if name == "requests" else self.steps_df, dst)
        metrics.write_json(self.summary, out / "summary.json")
        metrics.write_json(
            {"engine": self.engine, "scheduler_config": self.scheduler_config.to_dict(),
             "cost_model": self.cost_model, "slo": self.slo, "streamed": True},
            out / "run.json",
        )
        return out


StreamingRecorder.result_type = StreamedRunResult
