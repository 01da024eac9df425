"""What a run returns, from either engine: the timelines the step driver recorded, its counts,
and the tables and summary `traces.metrics` computes from them. One type for the simulator and
the executor, so everything downstream (reports, comparison) reads both the same way."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from policy import SchedulerConfig
from policy.driver import RunStats
from traces import metrics
from traces.timeline import TimelineRecorder


@dataclass
class RunResult:
    recorder: TimelineRecorder
    scheduler_config: SchedulerConfig
    stats: RunStats
    engine: str  # "sim" or "executor"
    cost_model: dict | None = None  # the simulator's cost model, described
    wall_s: float = 0.0  # host time the loop took; printed, never written (outputs stay reproducible)
    slo: dict = field(default_factory=dict)  # e.g. {"slo_ttft_s": 1.0, "slo_tpot_s": 0.05}

    @property
    def scheduler_stats(self) -> dict:
        """The scheduler's own counters over the run (what the summary adds to the timelines)."""
        s = self.stats
        return {"prefix_queries_tokens": s.prefix_queries_tokens, "prefix_hit_tokens": s.prefix_hit_tokens,
                "num_preemptions": s.num_preemptions}

    # Counts, as attributes (the request table has the same numbers per request).
    @property
    def num_requests(self) -> int:
        return self.stats.num_requests

    @property
    def num_rejected(self) -> int:
        return self.stats.num_rejected

    @property
    def num_finished(self) -> int:
        return self.stats.num_finished

    @property
    def num_preemptions(self) -> int:
        return self.stats.num_preemptions

    @cached_property
    def requests_df(self) -> pd.DataFrame:
        return metrics.requests_table(self.recorder.timelines)

    @cached_property
    def steps_df(self) -> pd.DataFrame:
        return metrics.steps_table(self.recorder.steps)

    @cached_property
    def itl(self) -> np.ndarray:
        return metrics.itl_gaps(self.recorder.timelines)

    @cached_property
    def summary(self) -> dict:
        out = metrics.summarize(self.requests_df, self.steps_df, self.itl, block_size=self.scheduler_config.block_size,
                                **self.slo)
        queried = self.scheduler_stats.get("prefix_queries_tokens", 0)
        out["scheduler_prefix_hit_rate"] = (
            self.scheduler_stats.get("prefix_hit_tokens", 0) / queried if queried else None
        )
        out["scheduler_num_preemptions"] = self.scheduler_stats.get("num_preemptions")
        out["sim_time_s"] = self.recorder.steps[-1].start_s + self.recorder.steps[-1].duration_s if self.recorder.steps else 0.0
        return out

    def with_slo(self, **slo: float | None) -> "RunResult":
        """Set goodput SLOs (slo_ttft_s, slo_tpot_s, slo_e2el_s); drops a cached summary."""
        unknown = set(slo) - {"slo_ttft_s", "slo_tpot_s", "slo_e2el_s"}
        if unknown:
            raise ValueError(f"unknown SLO name(s) {sorted(unknown)}; known: slo_ttft_s, slo_tpot_s, slo_e2el_s")
        self.slo = {k: v for k, v in slo.items() if v is not None}
        self.__dict__.pop("summary", None)
        return self

    def write(self, out_dir: str | Path, *, formats: tuple[str, ...] = ("parquet", "csv"),
              token_times: bool = False) -> Path:
        """requests.*, steps.* (one file per format), summary.json and run.json (the inputs
        that produced them), each written atomically. Deterministic byte for byte."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for fmt in formats:
            if fmt not in ("parquet", "csv"):
                raise ValueError(f"format {fmt!r}: supported are parquet, csv")
            metrics.write_table(self.requests_df, out / f"requests.{fmt}")
            metrics.write_table(self.steps_df, out / f"steps.{fmt}")
            if token_times:
                metrics.write_table(metrics.token_times_table(self.recorder.timelines), out / f"tokens.{fmt}")
        metrics.write_json(self.summary, out / "summary.json")
        metrics.write_json(
            {"engine": self.engine, "scheduler_config": self.scheduler_config.to_dict(),
             "cost_model": self.cost_model, "slo": self.slo},
            out / "run.json",
        )
        return out
