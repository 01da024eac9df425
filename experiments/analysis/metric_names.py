"""Human names and units for the metric keys of summaries and comparisons.

`ttft_p50_s` is a good column name and a poor table header. Reports and CLI tables show
"TTFT p50 (ms)" instead, with the value scaled to the unit; the keys stay what the result
files store.
"""

from __future__ import annotations

from dataclasses import dataclass

LATENCY_NAMES = {"ttft": "TTFT", "tpot": "TPOT", "itl": "ITL", "e2el": "E2EL", "queue": "queueing"}
STATS = {"mean": "mean", "p50": "p50", "p90": "p90", "p99": "p99"}


@dataclass(frozen=True)
class MetricName:
    label: str   # "TTFT p50"
    unit: str    # "ms"; "" for counts and ratios shown as they are
    scale: float = 1.0  # stored value x scale = shown value

    @property
    def header(self) -> str:
        return f"{self.label} ({self.unit})" if self.unit else self.label


FIXED = {
    "output_throughput": MetricName("output throughput", "tok/s"),
    "request_throughput": MetricName("request throughput", "req/s"),
    "total_token_throughput": MetricName("total throughput", "tok/s"),
    "goodput": MetricName("goodput", "req/s"),
    "prefix_hit_rate": MetricName("prefix hit, tokens", "%", 100.0),
    "prefix_block_hit_rate": MetricName("prefix hit, blocks", "%", 100.0),
    "num_preemptions": MetricName("preemptions", ""),
    "num_blocks": MetricName("KV blocks", ""),
    "kv_usage_max": MetricName("KV usage max", "%", 100.0),
    "kv_usage_mean": MetricName("KV usage mean", "%", 100.0),
    "mean_batch_requests": MetricName("mean batch", "req"),
    "makespan_s": MetricName("makespan", "s"),
    "num_finished": MetricName("finished", ""),
    "num_rejected": MetricName("rejected", ""),
}


def metric_name(key: str) -> MetricName:
    """The display name of a summary key; unknown keys are shown as they are."""
    if key in FIXED:
        return FIXED[key]
    parts = key.split("_")
    if len(parts) == 3 and parts[0] in LATENCY_NAMES and parts[1] in STATS and parts[2] == "s":
        return MetricName(f"{LATENCY_NAMES[parts[0]]} {STATS[parts[1]]}", "ms", 1e3)
    return MetricName(key, "")


def header(key: str) -> str:
    return metric_name(key).header


def scaled(key: str, value):
    """`value` in the unit `header(key)` names (None and non-numbers pass through)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    scale = metric_name(key).scale
    return value * scale if scale != 1.0 else value
