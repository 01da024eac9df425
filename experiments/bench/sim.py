"""Simulator speed: replay the whole Azure 2023 conversation trace (19,366 requests) with a
Llama-3-8B / H100 roofline model and print wall time (median of a few runs), CPU time,
simulated requests/s and steps/s of wall time.

    python -m experiments.bench.sim [--repeats 3] [--limit N] [--profile] [--trace FILE] [--step-by-step]

Falls back to the generated "azure-conv-like" preset when ../shared/traces is absent (and
says so). `--profile` runs cProfile once and prints where the time goes, per layer and per
function, so a slow policy or engine shows up with numbers.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from pathlib import Path

import traces
from policy import SchedulerConfig
from sim import get_hardware, get_model_shape, kv_blocks_for, simulate
from experiments.shared_data import azure_conv_trace
from sim.cost.roofline import RooflineCostModel

AZURE_CONV = azure_conv_trace()
MODEL, HARDWARE = "llama-3-8b", "h100-sxm"


def load_trace(limit: int | None, path: str | None = None):
    if path is not None:
        table, source = traces.load(path), f"trace {path}"
    elif AZURE_CONV.is_file():
        table, source = traces.load(AZURE_CONV), f"Azure conv trace {AZURE_CONV}"
    else:
        table = traces.generate("azure-conv-like", seed=0, num_requests=19_366)  # the real trace's size
        source = f"generated 'azure-conv-like' preset ({AZURE_CONV} is absent)"
    n = len(table) if limit is None else min(limit, len(table))
    return table, n, source


def build_requests(table, n: int, block_size: int, vocab: int) -> list:
    out = []
    for request in table.iter_requests(block_size=block_size, vocab_size=vocab):
        if len(out) == n:
            break
        out.append(request)
    return out


LAYERS = {"policy": "policy (scheduler, KV manager, requests)", "sim": "sim (event loop, cost model)",
          "traces": "traces (timeline recorder, metrics)"}


def layer_of(filename: str) -> str:
    for layer, label in LAYERS.items():
        if f"/{layer}/" in filename:
            return label
    return "builtins / stdlib / numpy / pandas (called from all layers)"


def print_profile(profile: cProfile.Profile, top: int = 20) -> None:
    stats = pstats.Stats(profile)
    per_layer: dict[str, float] = {}
    rows = []
    for (filename, line, func), (cc, nc, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        per_layer[layer_of(filename)] = per_layer.get(layer_of(filename), 0.0) + tottime
        rows.append((tottime, nc, cumtime, f"{Path(filename).parent.name}/{Path(filename).name}:{line}({func})"))
    total = sum(per_layer.values())
    print(f"\nprofile (cProfile inflates per-call costs; shares are what matters): total {total:.2f}s")
    for layer, secs in sorted(per_layer.items(), key=lambda kv: -kv[1]):
        print(f"  {layer:<60s} {secs:7.2f}s  {100 * secs / total:5.1f}%")
    print(f"\n  top {top} functions by own time:")
    print(f"  {'own s':>7s} {'calls':>10s} {'cum s':>7s}  function")
    for tottime, nc, cumtime, name in sorted(rows, reverse=True)[:top]:
        print(f"  {tottime:7.2f} {nc:10d} {cumtime:7.2f}  {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="only the first N requests")
    parser.add_argument("--profile", action="store_true", help="one extra cProfile'd run, then the hotspots")
    parser.add_argument("--trace", default=None, help="trace file (default: ../shared's Azure conversation trace)")
    parser.add_argument("--step-by-step", action="store_true",
                        help="make every plan (no bulk stretches): the figure before sim/decode_runs.py and sim/bulk_steps.py")
    args = parser.parse_args(argv)
    decode_runs = not args.step_by_step

    table, n, source = load_trace(args.limit, args.trace)
    print(f"trace: {source}; {n} requests")
    shape, hw = get_model_shape(MODEL), get_hardware(HARDWARE)
    config = SchedulerConfig(num_blocks=kv_blocks_for(shape, hw, 0.9, 16, "bf16"), block_size=16,
                             max_model_len=shape.max_position_embeddings, max_num_seqs=256,
                             max_num_batched_tokens=2048)
    cost = RooflineCostModel.from_names(MODEL, HARDWARE)
    print(f"model {MODEL} on {HARDWARE} (roofline, bf16), {config.num_blocks} KV blocks, "
          f"max_num_seqs={config.max_num_seqs}, max_num_batched_tokens={config.max_num_batched_tokens}")

    walls, cpus, builds = [], [], []
    result = None
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        requests = build_requests(table, n, config.block_size, shape.vocab_size)
        t1, c1 = time.perf_counter(), time.process_time()
        result = simulate(requests, config, cost, decode_runs=decode_runs)
        summary = result.summary  # metrics are part of the replay
        t2, c2 = time.perf_counter(), time.process_time()
        builds.append(c1 - c0)
        walls.append(t2 - t1)
        cpus.append(c2 - c1)
        del requests
    assert result is not None
    s = result.summary
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    steps = s["num_steps"]
    print(f"simulated: {s['num_finished']} finished, {s['num_rejected']} rejected, {steps} steps, "
          f"makespan {s['makespan_s']:.1f}s simulated, TTFT mean {1e3 * s['ttft_mean_s']:.1f} ms, "
          f"TPOT mean {1e3 * s['tpot_mean_s']:.2f} ms")
    print(f"replay (simulate + metrics), median of {args.repeats}: wall {wall:.2f}s, CPU {cpu:.2f}s "
          f"(runs: wall {', '.join(f'{w:.2f}' for w in walls)}; CPU {', '.join(f'{c:.2f}' for c in cpus)})")
    print(f"  {n / wall:.0f} simulated requests/s and {steps / wall:.0f} steps/s of wall time "
          f"({n / cpu:.0f} req/s, {steps / cpu:.0f} steps/s of CPU time)")
    print(f"stretches advanced in bulk (sim/bulk_steps.py): {'on' if decode_runs else 'off (--step-by-step)'}; "
          f"load average {' '.join(f'{x:.2f}' for x in __import__('os').getloadavg())}")
    print(f"building the Request objects (traces layer): median CPU {statistics.median(builds):.2f}s, not included")
    print(f"bar: < 15 s on one core -> {'PASS' if cpu < 15 else 'FAIL'} on CPU time")
    if args.profile:
        requests = build_requests(table, n, config.block_size, shape.vocab_size)
        profile = cProfile.Profile()
        profile.enable()
        simulate(requests, config, cost, decode_runs=decode_runs).summary
        profile.disable()
        print_profile(profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
