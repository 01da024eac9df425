"""`folovllm capacity`: the highest request rate each configuration takes within an SLO."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click


@click.command(name="capacity")
@click.option("--trace", "trace", type=click.Path(exists=True, dir_okay=False), help="Trace file (any format traces.load reads).")
@click.option("--preset", default=None, help="Generate the trace instead (e.g. azure-conv-like).")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Generator parameter (repeatable).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--limit", default=None, type=click.IntRange(min=2), help="Only the first N requests.")
@click.option("--slo", required=True, help="SLO terms, e.g. ttft_p90=2s,tpot_p90=100ms.")
@click.option("--grid", "grid", multiple=True, metavar="KNOB=V1,V2",
              help="Configurations: one knob per --grid (or several separated by ';'); chunk = max_num_batched_tokens.")
@click.option("--model", default="llama-3-8b", show_default=True)
@click.option("--hardware", default="h100-sxm", show_default=True)
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default="bf16", show_default=True)
@click.option("--cost-model", default="roofline", show_default=True, help="'roofline' or a profile .json.")
@click.option("--max-num-seqs", default=128, show_default=True, type=int)
@click.option("--max-num-batched-tokens", default=2048, show_default=True, type=int)
@click.option("--max-model-len", default=None, type=int, help="Default: the model's max positions, capped at 8192.")
@click.option("--block-size", default=16, show_default=True, type=int)
@click.option("--num-blocks", default=None, type=click.IntRange(min=1), help="KV pool size (default: sized from memory).")
@click.option("--gpu-memory-utilization", default=0.9, show_default=True, type=float)
@click.option("--no-prefix-caching", is_flag=True)
@click.option("--tolerance", default=0.02, show_default=True, type=click.FloatRange(min=0.001),
              help="Stop bisecting when the bracket's ratio is within 1 + this.")
@click.option("--jobs", default=None, type=click.IntRange(min=1), help="Local processes (default: CPU count).")
@click.option("--ray", "use_ray", is_flag=True, help="Run each configuration as a Ray task (Ray must be installed).")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Write capacity.json and goodput_vs_rate.png here.")
@click.option("--quiet", is_flag=True)
def capacity(trace, preset, params, seed, limit, slo, grid, model, hardware, dtype, cost_model, max_num_seqs,
             max_num_batched_tokens, max_model_len, block_size, num_blocks, gpu_memory_utilization,
             no_prefix_caching, tolerance, jobs, use_ray, out_dir, quiet):
    """Find, per configuration, the highest arrival rate (the trace's arrivals scaled, bisection)
    at which the simulated run meets the SLO; rank the configurations."""
    from dataclasses import fields

    from experiments.run.capacity import Job, SLOParseError, parse_grid, parse_slo, plot_goodput, rank, run_jobs
    from policy import SchedulerConfig
    from sim.cli import _parse_params
    from sim.hardware import get_hardware, kv_blocks_for
    from sim.models import get_model_shape

    if (trace is None) == (preset is None):
        raise click.UsageError("give exactly one of --trace FILE or --preset NAME")
    try:
        terms = parse_slo(slo)
    except SLOParseError as exc:
        raise click.BadParameter(str(exc), param_hint="--slo") from None
    try:
        configs = parse_grid(grid)
        shape = get_model_shape(model)
        known = {f.name for f in fields(SchedulerConfig)}
        job_list = []
        for knobs in configs:
            unknown = sorted(set(knobs) - known)
            if unknown:
                raise ValueError(f"--grid: unknown knob(s) {unknown}; scheduler knobs are {sorted(known)} "
                                 f"(aliases: chunk, seqs, blocks)")
            base = dict(block_size=block_size, max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                        max_model_len=max_model_len or min(shape.max_position_embeddings, 8192),
                        enable_prefix_caching=not no_prefix_caching)
            base.update(knobs)
            if num_blocks is not None and "num_blocks" not in knobs:
                base["num_blocks"] = num_blocks
            elif "num_blocks" not in knobs:
                base["num_blocks"] = kv_blocks_for(shape, get_hardware(hardware), gpu_memory_utilization,
                                                   base["block_size"], dtype,
                                                   max_num_batched_tokens=base["max_num_batched_tokens"],
                                                   max_num_seqs=base["max_num_seqs"])
            SchedulerConfig(**base)  # validate now, in this process, with a clear error
            name = ",".join(f"{k}={v}" for k, v in knobs.items()) or "base"
            job_list.append(Job(name, knobs, trace, None if trace else {"preset": preset, "seed": seed,
                                **_parse_params(params)}, limit, base, model, hardware, dtype, cost_model, slo,
                                tolerance))
    except (ValueError, KeyError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None

    processes = jobs or os.cpu_count() or 1
    if not quiet:
        click.echo(f"capacity search: {len(job_list)} configuration(s), SLO {', '.join(map(str, terms))}, "
                   f"{'Ray' if use_ray else f'{min(processes, len(job_list))} local process(es)'}", err=True)
    bar = None
    if not quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(job_list), unit="config", file=sys.stderr, desc="searching", leave=False)
    t0 = time.perf_counter()
    try:
        results = run_jobs(job_list, processes=processes, use_ray=use_ray,
                           progress=(lambda _name: bar.update(1)) if bar is not None else None)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0
    ranked = rank(results)
    if not quiet:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"capacity under {slo} ({wall:.1f} s)")
        table.add_column("rank", justify="right")
        table.add_column("configuration", overflow="fold")
        for col in ("max rate (req/s)", "scale", "probes", ", ".join(t.key.removesuffix("_s") for t in terms) + " at max"):
            table.add_column(col, justify="right")
        for i, r in enumerate(ranked, 1):
            best = max((p for p in r.probes if p.meets), key=lambda p: p.scale, default=None)
            at = ", ".join("-" if best is None or best.values.get(t.key) is None else f"{1e3 * best.values[t.key]:.1f} ms"
                           for t in terms)
            table.add_row(str(i), r.name, f"{r.max_rate:.3f}", f"{r.max_scale:.3f}", str(len(r.probes)), at)
        Console(stderr=False).print(table)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        from traces.metrics import write_json

        write_json({"slo": slo, "ranking": [r.to_dict() for r in ranked]}, out / "capacity.json")
        plot_goodput(ranked, out / "goodput_vs_rate.png", slo)
        if not quiet:
            click.echo(f"wrote {out / 'capacity.json'} and {out / 'goodput_vs_rate.png'}", err=True)
