"""Capacity search: the highest request rate at which a configuration meets its SLO.

"How many requests per second can this configuration take within my SLO?" For each
configuration of a grid, the trace's arrivals are scaled (`traces.transforms.scale_rate`: the
same requests, closer together or further apart) and the simulator replays it; a bisection
on the scale finds the largest one whose run meets every SLO term, to a relative tolerance.
Configurations are ranked by that rate.

An SLO is a list of terms such as `ttft_p90=2s,tpot_p90=100ms`: metric (ttft, tpot, itl, e2el,
queue), statistic (p50, p90, p99 or mean), limit with unit (s, ms, us). A run meets it when
every term of its summary is at or under the limit and no request was rejected.

Overloaded runs are the slow ones (their queues grow) and the bisection needs only "fails",
so a run stops as soon as the SLO is certain to fail: when more requests have already
exceeded a percentile term's limit than that percentile allows, whatever the others do.
Runs that meet the SLO always run to the end.

Configurations run in local processes (one per configuration, `jobs` at a time) or, with
`use_ray`, as Ray tasks (Ray is an optional dependency).
"""

from __future__ import annotations

import math
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field

METRICS = ("ttft", "tpot", "itl", "e2el", "queue")
STATS = ("p50", "p90", "p99", "mean")
_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
_TERM = re.compile(r"^(?P<metric>[a-z][a-z0-9]*)_(?P<stat>p\d+|mean)\s*(?:<=|=)\s*(?P<value>[0-9.eE+-]+)\s*(?P<unit>s|ms|us)$")
# Grid keys: scheduler knobs, plus short names.
GRID_ALIASES = {"chunk": "max_num_batched_tokens", "seqs": "max_num_seqs", "blocks": "num_blocks"}


class SLOParseError(ValueError):
    """An SLO string that cannot be read; the message names the term and what is expected."""


@dataclass(frozen=True)
class SLOTerm:
    metric: str
    stat: str
    limit_s: float

    @property
    def key(self) -> str:
        return f"{self.metric}_{self.stat}_s"

    @property
    def quantile(self) -> float | None:
        return None if self.stat == "mean" else int(self.stat[1:]) / 100

    def __str__(self) -> str:
        return f"{self.metric}_{self.stat}<={self.limit_s * 1e3:g}ms"


def parse_slo(text: str) -> list[SLOTerm]:
    """`ttft_p90=2s,tpot_p90=100ms` -> terms; raises SLOParseError naming the bad term."""
    terms = []
    parts = [p.strip() for p in (text or "").split(",")]
    if not any(parts):
        raise SLOParseError(f"SLO {text!r} is empty; expected terms like ttft_p90=2s,tpot_p90=100ms")
    for part in parts:
        m = _TERM.match(part)
        if not m:
            raise SLOParseError(
                f"SLO term {part!r} in {text!r}: expected METRIC_STAT=VALUE UNIT, e.g. ttft_p90=2s or tpot_p99=100ms "
                f"(metrics {', '.join(METRICS)}; stats {', '.join(STATS)}; units s, ms, us)")
        metric, stat = m["metric"], m["stat"]
        if metric not in METRICS:
            raise SLOParseError(f"SLO term {part!r}: unknown metric {metric!r}; known: {', '.join(METRICS)}")
        if stat not in STATS:
            raise SLOParseError(f"SLO term {part!r}: unknown statistic {stat!r}; known: {', '.join(STATS)}")
        try:
            value = float(m["value"])
        except ValueError:
            raise SLOParseError(f"SLO term {part!r}: {m['value']!r} is not a number") from None
        if not value > 0 or not math.isfinite(value):
            raise SLOParseError(f"SLO term {part!r}: the limit must be a positive number")
        terms.append(SLOTerm(metric, stat, value * _UNITS[m["unit"]]))
    return terms


def parse_grid(items: tuple[str, ...] | list[str]) -> list[dict]:
    """`("max_num_seqs=64,128", "chunk=512")` (or one item with `;` between keys) -> the
    cross product of the values, one dict of scheduler knobs per configuration."""
    import itertools

    import yaml

    axes: dict[str, list] = {}
    for item in items:
        for part in [p for p in re.split(r"[;\s]+", item) if p]:
            key, sep, values = part.partition("=")
            if not sep or not key or not values:
                raise ValueError(f"--grid {part!r}: expected KEY=V1,V2,... (e.g. max_num_seqs=64,128)")
            key = GRID_ALIASES.get(key.replace("-", "_"), key.replace("-", "_"))
            if key in axes:
                raise ValueError(f"--grid: {key!r} is given twice")
            axes[key] = [yaml.safe_load(v) for v in values.split(",")]
    if not axes:
        return [{}]
    keys = list(axes)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k] for k in keys))]


@dataclass
class Probe:
    """One replay at one arrival-rate scale."""

    scale: float
    rate: float  # requests/s offered
    meets: bool
    complete: bool  # False when stopped early (the SLO could no longer be met)
    goodput: float | None
    values: dict  # the SLO terms' values (None where the run stopped early)
    reason: str = ""


@dataclass
class CapacityResult:
    name: str
    knobs: dict
    max_rate: float  # highest offered rate found to meet the SLO (0 if none)
    max_scale: float
    probes: list[Probe] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class _SLOBreached(Exception):
    pass


class _Watch:
    """Counts, as requests finish, how many already break each percentile term; raises
    _SLOBreached once a term can no longer be met (see the module docstring)."""

    def __init__(self, terms: list[SLOTerm], num_requests: int) -> None:
        self.terms = [t for t in terms if t.quantile is not None and t.metric in ("ttft", "tpot", "e2el", "queue")]
        self.counts = [0] * len(self.terms)
        # p-th percentile (linear) of n values exceeds L once the value at index
        # floor((n-1)q) does, i.e. once n - floor((n-1)q) values exceed L; with n unknown,
        # its upper bound (every request) keeps the test conservative.
        self.thresholds = [num_requests - math.floor((num_requests - 1) * t.quantile) for t in self.terms]

    def finished(self, timeline) -> None:
        times = timeline.token_times
        if not times:
            return
        first = times[0]
        values = {"ttft": first - timeline.arrival_s, "e2el": timeline.finish_s - timeline.arrival_s,
                  "queue": (timeline.first_scheduled_s or first) - timeline.arrival_s,
                  "tpot": (timeline.finish_s - first) / (len(times) - 1) if len(times) > 1 else None}
        for i, term in enumerate(self.terms):
            v = values[term.metric]
            if v is not None and v > term.limit_s:
                self.counts[i] += 1
                if self.counts[i] >= self.thresholds[i]:
                    raise _SLOBreached(f"{self.counts[i]} requests over {term}")


def _watching_recorder(watch: _Watch):
    from traces.timeline import TimelineRecorder

    class WatchingRecorder(TimelineRecorder):
        def on_request_finished(self, timeline) -> None:
            watch.finished(timeline)

    return WatchingRecorder()


def probe(table, config, cost, terms: list[SLOTerm], scale: float, vocab_size: int) -> Probe:
    """Replay `table` at `scale` times its arrival rate and judge the SLO."""
    import traces
    from sim import simulate

    scaled = traces.transforms.scale_rate(table, scale)
    span = float(scaled.df["arrival_s"].max()) if len(scaled) > 1 else 0.0
    rate = (len(scaled) - 1) / span if span > 0 else float("inf")
    watch = _Watch(terms, len(scaled))
    requests = scaled.iter_requests(block_size=config.block_size, vocab_size=vocab_size,
                                    synthesize_tokens=config.enable_prefix_caching, compact_tokens=True)
    try:
        result = simulate(requests, config, cost, recorder=_watching_recorder(watch))
    except _SLOBreached as exc:
        return Probe(scale, rate, False, False, None, {}, str(exc))
    slo = {}
    for term in terms:  # goodput's per-request SLO: the percentile terms' limits
        if term.metric in ("ttft", "tpot", "e2el"):
            slo[f"slo_{term.metric}_s"] = min(slo.get(f"slo_{term.metric}_s", math.inf), term.limit_s)
    summary = result.with_slo(**slo).summary
    values = {term.key: summary.get(term.key) for term in terms}
    broken = [str(t) for t in terms if values[t.key] is None or values[t.key] > t.limit_s]
    if summary["num_rejected"]:
        broken.append(f"{summary['num_rejected']} requests rejected")
    return Probe(scale, rate, not broken, True, summary.get("goodput"), values, "; ".join(broken))


def search(table, config, cost, terms: list[SLOTerm], *, vocab_size: int, tolerance: float = 0.02,
           max_probes: int = 24, name: str = "", knobs: dict | None = None, on_probe=None) -> CapacityResult:
    """Bisection on the arrival-rate scale: bracket (double or halve from 1) then halve the
    bracket until hi / lo <= 1 + tolerance. Returns the highest scale that met the SLO."""
    probes: list[Probe] = []

    def run(scale: float) -> bool:
        p = probe(table, config, cost, terms, scale, vocab_size)
        probes.append(p)
        if on_probe is not None:
            on_probe(name, p)
        return p.meets

    lo, hi = None, None
    scale = 1.0
    if run(scale):
        lo = scale
        while hi is None and len(probes) < max_probes:
            scale *= 2
            if run(scale):
                lo = scale
            else:
                hi = scale
    else:
        hi = scale
        while lo is None and len(probes) < max_probes:
            scale /= 2
            if run(scale):
                lo = scale
            else:
                hi = scale
    if lo is not None and hi is not None:
        while hi / lo > 1 + tolerance and len(probes) < max_probes:
            mid = math.sqrt(lo * hi)  # geometric: the bracket is a ratio
            if run(mid):
                lo = mid
            else:
                hi = mid
    best = max((p for p in probes if p.meets), key=lambda p: p.scale, default=None)
    return CapacityResult(name, dict(knobs or {}), best.rate if best else 0.0, best.scale if best else 0.0, probes)


# -- fanning out configurations -----------------------------------------------------------
@dataclass
class Job:
    """Everything one configuration's search needs, picklable for a process or a Ray task."""

    name: str
    knobs: dict
    trace_path: str | None
    preset: dict | None  # {"preset": ..., "seed": ..., **params} when no trace file
    limit: int | None
    config: dict  # SchedulerConfig fields
    model: str
    hardware: str
    dtype: str
    cost_model: str
    slo: str
    tolerance: float


def run_job(job: Job) -> CapacityResult:
    import traces
    from policy import SchedulerConfig
    from sim.cost.registry import build_cost_model as load_cost_model
    from sim.models import get_model_shape

    if job.trace_path is not None:
        table = traces.load(job.trace_path)
    else:
        params = dict(job.preset)
        table = traces.generate(params.pop("preset"), seed=params.pop("seed", 0), **params)
    if job.limit is not None and job.limit < len(table):
        table = traces.transforms.head(table, job.limit)
    config = SchedulerConfig(**job.config)
    cost = load_cost_model(job.cost_model, model=job.model, hardware=job.hardware, dtype=job.dtype)
    vocab = get_model_shape(job.model).vocab_size
    return search(table, config, cost, parse_slo(job.slo), vocab_size=vocab, tolerance=job.tolerance,
                  name=job.name, knobs=job.knobs)


def run_jobs(jobs: list[Job], *, processes: int = 1, use_ray: bool = False, progress=None) -> list[CapacityResult]:
    """Each job's search in its own local process (or Ray task); results in job order."""
    if use_ray:
        try:
            import ray
        except ImportError:
            raise RuntimeError("--ray: Ray is not installed (pip install ray); without --ray the search runs "
                               "in local processes") from None
        if not ray.is_initialized():
            ray.init(ignore_reinit_error=True, log_to_driver=False)
        remote = ray.remote(run_job)
        futures = [remote.remote(job) for job in jobs]
        results = []
        for job, fut in zip(jobs, futures):
            results.append(ray.get(fut))
            if progress is not None:
                progress(job.name)
        return results
    if processes <= 1 or len(jobs) == 1:
        results = []
        for job in jobs:
            results.append(run_job(job))
            if progress is not None:
                progress(job.name)
        return results
    with ProcessPoolExecutor(max_workers=min(processes, len(jobs))) as pool:
        futures = [pool.submit(run_job, job) for job in jobs]
        results = []
        for job, fut in zip(jobs, futures):
            results.append(fut.result())
            if progress is not None:
                progress(job.name)
        return results


def rank(results: list[CapacityResult]) -> list[CapacityResult]:
    return sorted(results, key=lambda r: -r.max_rate)


def plot_goodput(results: list[CapacityResult], path, slo_text: str) -> None:
    """Goodput (requests/s meeting the SLO) against offered rate, one line per configuration;
    probes stopped early (SLO certain to fail) are marked on the rate axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in results:
        done = sorted((p for p in r.probes if p.complete and p.goodput is not None), key=lambda p: p.rate)
        line, = ax.plot([p.rate for p in done], [p.goodput for p in done], marker="o", label=f"{r.name}: "
                        f"{r.max_rate:.2f} req/s")
        stopped = [p.rate for p in r.probes if not p.complete]
        if stopped:
            ax.plot(stopped, [0] * len(stopped), "x", color=line.get_color())
        if r.max_rate:
            ax.axvline(r.max_rate, color=line.get_color(), linestyle=":", linewidth=1)
    lim = max([p.rate for r in results for p in r.probes if p.complete] or [1])
    ax.plot([0, lim], [0, lim], color="0.7", linewidth=0.8, label="goodput = rate")
    ax.set_xlabel("offered rate (requests/s)")
    ax.set_ylabel("goodput (requests/s within SLO)")
    ax.set_title(f"capacity under {slo_text}\n(x: stopped early, SLO certain to fail)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
