"""`folovllm sim`: replay a trace (file or generated preset) through the simulator."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import click

from policy import SchedulerConfig
from traces.knobs_cli import pop_scheduler_knobs, scheduler_options


def _parse_params(pairs: tuple[str, ...]) -> dict:
    import yaml

    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r}: expected KEY=VALUE", param_hint="--param")
        params[key.replace("-", "_")] = yaml.safe_load(value)
    return params


def _load_trace(trace: str | None, preset: str | None, trace_format: str | None, seed: int, params: dict,
                arrival_mode: str | None = None):
    import traces

    if (trace is None) == (preset is None):
        raise click.UsageError("give exactly one of --trace FILE or --preset NAME")
    if trace is not None:
        if params:
            raise click.UsageError("--param only applies to --preset")
        if arrival_mode is None:
            return traces.load(trace, format=trace_format)
        return traces.load(trace, format=trace_format, arrival_mode=arrival_mode,
                           **({"seed": seed} if arrival_mode == "spread" else {}))
    if arrival_mode is not None:
        raise click.UsageError("--arrival-mode only applies to --trace files with quantised timestamps")
    return traces.generate(preset, seed=seed, **params)


def summary_rows(summary: dict) -> list[tuple[str, str]]:
    """The headline numbers, formatted for humans (the JSON keeps full precision)."""

    def ms(key: str) -> str:
        value = summary.get(key)
        return "-" if value is None else f"{1e3 * value:.2f}"

    def num(key: str, fmt: str = "{:.2f}") -> str:
        value = summary.get(key)
        return "-" if value is None else fmt.format(value)

    rows = [
        ("requests finished/aborted/rejected",
         f"{summary['num_finished']}/{summary['num_aborted']}/{summary['num_rejected']} of {summary['num_requests']}"),
        ("makespan (s)", num("makespan_s", "{:.3f}")),
        ("request throughput (req/s)", num("request_throughput", "{:.3f}")),
        ("output throughput (tok/s)", num("output_throughput", "{:.1f}")),
        ("total token throughput (tok/s)", num("total_token_throughput", "{:.1f}")),
    ]
    if "goodput" in summary:
        slo = ", ".join(f"{k.removesuffix('_s').upper()}<={1e3 * v:g}ms" for k, v in summary.get("slo", {}).items())
        rows.append((f"goodput (req/s) {slo}", num("goodput", "{:.3f}")))
    for name, label in (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2EL"), ("queue", "queueing")):
        rows.append((f"{label} ms mean/p50/p90/p99",
                     "/".join(ms(f"{name}_{s}_s") for s in ("mean", "p50", "p90", "p99"))))
    rows += [
        ("KV usage time-weighted mean / max", f"{num('kv_usage_mean', '{:.3f}')} / {num('kv_usage_max', '{:.3f}')}"),
        ("prefix hit rate (tokens / full blocks)",
         f"{num('prefix_hit_rate', '{:.3f}')} / {num('prefix_block_hit_rate', '{:.3f}')}"),
        ("preemptions (events / requests)", f"{summary['num_preemptions']} / {summary['num_preempted_requests']}"),
        ("steps", str(summary["num_steps"])),
    ]
    return rows


def print_summary(summary: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for label, value in summary_rows(summary):
        table.add_row(label, value)
    Console().print(table)


@click.command(name="sim")
@click.option("--trace", "trace", type=click.Path(exists=True, dir_okay=True), help="Trace file (any format traces.load reads).")
@click.option("--trace-format", default=None, help="Force the trace format instead of detecting it.")
@click.option("--arrival-mode", type=click.Choice(["batch", "spread"]), default=None,
              help="Traces with quantised timestamps (Mooncake, ~3 s buckets): keep each bucket's arrivals "
                   "together (batch, the reader's default) or spread them inside the bucket (spread; seeded by --seed).")
@click.option("--preset", default=None, help="Generate a trace instead: nano-vllm, poisson, azure-conv-like, ...")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Generator parameter (repeatable).")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the generated trace (and of --arrival-mode spread).")
@click.option("--limit", default=None, type=click.IntRange(min=1), help="Replay only the first N requests.")
@click.option("--model", default="llama-3-8b", show_default=True, help="Model preset name or HF model directory.")
@click.option("--hardware", default="h100-sxm", show_default=True, help="Hardware preset or hardware .json.")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default="bf16", show_default=True)
@click.option("--weight-bits", type=click.Choice(["16", "4"]), default=None,
              help="Linear-layer weight bits (4 = GPTQ). Default: 4 if the model dir says GPTQ, else 16.")
@click.option("--cost-model", default="roofline", show_default=True,
              help="roofline (fitted for GPUs with fitted laws), roofline-ideal, profile:DIR, constant, or a CPU "
                   "profile .json (see sim.cost.registry).")
@click.option("--tp", default=1, show_default=True, type=click.IntRange(min=1),
              help="Tensor-parallel degree: cost models price one GPU's shard (collectives not priced).")
@scheduler_options
@click.option("--allow-long-max-model-len", is_flag=True,
              help="Accept a --max-model-len above the model's max_position_embeddings (refused otherwise).")
@click.option("--gpu-memory-utilization", default=0.9, show_default=True, type=float)
@click.option("--slo-ttft-ms", default=None, type=float, help="Goodput SLO on TTFT (ms).")
@click.option("--slo-tpot-ms", default=None, type=float, help="Goodput SLO on TPOT (ms).")
@click.option("--slo-e2el-ms", default=None, type=float, help="Goodput SLO on E2EL (ms).")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False), help="Write results here.")
@click.option("--format", "formats", default="parquet,csv", show_default=True, help="Table formats to write.")
@click.option("--token-times", is_flag=True, help="Also write every output token's time (tokens.*).")
@click.option("--replicas", default=1, show_default=True, type=click.IntRange(min=1),
              help="Identical replicas behind a router (cluster and per-replica metrics).")
@click.option("--router", "router_name", default="round-robin", show_default=True,
              help="round-robin, least-tokens or prefix-aware (used when --replicas > 1).")
@click.option("--stream", is_flag=True,
              help="Write finished requests and steps to --out as they end (parquet): memory bounded by the live "
                   "requests, for traces of millions of requests.")
@click.option("--quiet", is_flag=True, help="No progress bar, no summary table.")
def sim(trace, trace_format, arrival_mode, preset, params, seed, limit, model, hardware, dtype, weight_bits, cost_model, tp,
        gpu_memory_utilization, slo_ttft_ms, slo_tpot_ms, slo_e2el_ms, out_dir, formats, token_times, replicas,
        router_name, stream, quiet, allow_long_max_model_len, **knobs):
    """Replay a trace through the discrete-event simulator and print/write its metrics.

    Every scheduling knob of SchedulerConfig is an option here (same names and defaults as
    in experiment specs and the executor's CLIs)."""
    from sim.cost.registry import build_cost_model
    from sim.engine import SimulationStalled, simulate
    from sim.hardware import get_hardware, kv_blocks_for
    from sim.models import check_max_model_len, get_model_shape, gptq_bits_from_hf_config, shard

    try:
        shape = get_model_shape(model)
        gptq = gptq_bits_from_hf_config(model) if Path(model).exists() else None
        bits = int(weight_bits) if weight_bits else (gptq[0] if gptq else 16)
        knobs = pop_scheduler_knobs(knobs, quiet=quiet)
        config = SchedulerConfig(**knobs)
        if config.max_model_len is not None:
            check_max_model_len(shape, config.max_model_len, allow_longer=allow_long_max_model_len)
        if config.num_blocks is None:
            hw = get_hardware(hardware)
            blocks = kv_blocks_for(shard(shape, tp), hw, gpu_memory_utilization, config.block_size, dtype,
                                   weight_bits=bits, max_num_batched_tokens=config.max_num_batched_tokens,
                                   max_num_seqs=config.max_num_seqs)
        else:
            blocks = None
        beyond = allow_long_max_model_len and config.max_model_len is not None  # the explicit override
        config = config.resolved(num_blocks=blocks, model_max_len=None if beyond else shape.max_position_embeddings)
        num_blocks, block_size = config.num_blocks, config.block_size
        costs = build_cost_model(cost_model, model=model, hardware=hardware, dtype=dtype, weight_bits=bits, tp=tp)
        fmts = tuple(f.strip() for f in formats.split(",") if f.strip())
        bad = [f for f in fmts if f not in ("parquet", "csv")]
        if bad:
            raise ValueError(f"--format {formats!r}: unknown format(s) {bad}; supported are parquet, csv")
        from policy.router import build_router

        router = build_router(router_name, replicas)
        if replicas > 1 and (stream or token_times):
            raise ValueError("--replicas > 1 keeps each replica's tables in memory: drop --stream / --token-times")
        if stream and out_dir is None:
            raise ValueError("--stream writes the tables as the run goes: give --out DIR")
        if stream and token_times:
            raise ValueError("--stream keeps no per-token times (that is what bounds its memory); drop --token-times")
        table = _load_trace(trace, preset, trace_format, seed, _parse_params(params), arrival_mode)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        raise click.ClickException(str(exc)) from None

    # Token values only matter to the prefix cache; without it, prompts need not be synthesised.
    requests = table.iter_requests(block_size=block_size, vocab_size=shape.vocab_size,
                                   synthesize_tokens=config.enable_prefix_caching, compact_tokens=True)
    n_total = len(table)
    if limit is not None and limit < n_total:
        requests = itertools.islice(requests, limit)
        n_total = limit
    if not quiet:
        for note in getattr(table, "notes", None) or []:
            click.echo(f"trace note: {note}", err=True)
        from sim.cost.profiled import ProfiledCostModel, format_fit_report

        if isinstance(costs, ProfiledCostModel):
            click.echo(format_fit_report(costs), err=True)
        click.echo(f"simulating {n_total} requests: {shape.name} on {hardware} ({dtype}, {bits}-bit weights), "
                   f"{num_blocks} KV blocks of {block_size}, cost model {cost_model}", err=True)
    progress = not quiet and sys.stderr.isatty()
    if replicas > 1:
        _run_cluster(requests, n_total, config, costs, router, progress, out_dir, fmts, quiet, trace or preset,
                     dict(slo_ttft_s=None if slo_ttft_ms is None else slo_ttft_ms / 1e3,
                          slo_tpot_s=None if slo_tpot_ms is None else slo_tpot_ms / 1e3,
                          slo_e2el_s=None if slo_e2el_ms is None else slo_e2el_ms / 1e3))
        return
    try:
        recorder = None
        if stream:
            from traces.streaming import StreamingRecorder

            recorder = StreamingRecorder(out_dir)
        result = simulate(_Sized(requests, n_total), config, costs, progress=progress, recorder=recorder)
    except (ValueError, SimulationStalled) as exc:
        raise click.ClickException(str(exc)) from None
    result.with_slo(
        slo_ttft_s=None if slo_ttft_ms is None else slo_ttft_ms / 1e3,
        slo_tpot_s=None if slo_tpot_ms is None else slo_tpot_ms / 1e3,
        slo_e2el_s=None if slo_e2el_ms is None else slo_e2el_ms / 1e3,
    )
    summary = result.summary
    if summary["num_requests"] != n_total:
        raise click.ClickException(f"internal error: {n_total} requests in, {summary['num_requests']} recorded")
    if out_dir is not None:
        result.write(out_dir, formats=fmts, token_times=token_times)
    if not quiet:
        print_summary(summary, f"folovllm sim: {trace or preset}")
        steps = summary["num_steps"]
        click.echo(f"wall {result.wall_s:.2f}s: {n_total / max(result.wall_s, 1e-9):.0f} requests/s, "
                   f"{steps / max(result.wall_s, 1e-9):.0f} steps/s", err=True)
        if out_dir is not None:
            click.echo(f"wrote {out_dir}", err=True)


def _run_cluster(requests, n_total, config, costs, router, progress, out_dir, fmts, quiet, title, slo) -> None:
    from sim.cluster import simulate_cluster
    from sim.engine import SimulationStalled

    try:
        cluster = simulate_cluster(_Sized(requests, n_total), config, costs, router, progress=progress)
    except (ValueError, SimulationStalled) as exc:
        raise click.ClickException(str(exc)) from None
    for replica in cluster.replicas:
        replica.with_slo(**slo)
    summary = cluster.summary
    if out_dir is not None:
        cluster.write(out_dir, formats=fmts)
    if quiet:
        return
    print_summary(summary, f"folovllm sim: {title}, {len(cluster.replicas)} replicas, router {cluster.router}")
    from rich.console import Console
    from rich.table import Table

    table = Table(title="per replica")
    for col in ("replica", "routed", "finished", "TTFT p50 / p90 ms", "TPOT p50 ms", "prefix hit", "KV mean",
                "preemptions", "busy s"):
        table.add_column(col, justify="right")
    for i, rep in enumerate(summary["per_replica"]):
        def ms(v):
            return "-" if v is None else f"{1e3 * v:.1f}"
        table.add_row(str(i), str(summary["routed"][i]), str(rep["num_finished"]),
                      f"{ms(rep['ttft_p50_s'])} / {ms(rep['ttft_p90_s'])}", ms(rep["tpot_p50_s"]),
                      "-" if rep["prefix_hit_rate"] is None else f"{rep['prefix_hit_rate']:.3f}",
                      "-" if rep["kv_usage_mean"] is None else f"{rep['kv_usage_mean']:.3f}",
                      str(rep["num_preemptions"]), f"{summary['busy_s_per_replica'][i]:.1f}")
    Console().print(table)
    click.echo(f"load imbalance (max / mean): requests {summary['load_imbalance_requests']:.3f}, busy time "
               f"{summary['load_imbalance_busy'] or 0:.3f}; wall {cluster.wall_s:.2f}s", err=True)
    if out_dir is not None:
        click.echo(f"wrote {out_dir}", err=True)


class _Sized:
    """An iterable with a known length (for the progress bar), consumed once."""

    def __init__(self, iterable, n: int) -> None:
        self._it = iterable
        self._n = n

    def __iter__(self):
        return iter(self._it)

    def __len__(self) -> int:
        return self._n
