"""Routers side by side on the Mooncake conversation trace: prefix hit rate, TTFT p50/p90 and
load imbalance for each router, the same requests and replicas for all.

    python -m experiments.run.compare_routers [--trace PATH] [--replicas 4] [--limit 2000] [--out DIR]

Defaults: the Mooncake conversation 0-45 min window from ../shared/traces (its hash ids give
the prefix structure), Qwen3-8B on H100, prefix caching on, max_model_len 32768, 8192-token
step budget, 128 sequences per replica. Writes `routers.md` / `routers.json` with --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from experiments.shared_data import mooncake_conv_trace

MOONCAKE = mooncake_conv_trace()


def main(argv: list[str] | None = None) -> int:
    import traces
    from policy import SchedulerConfig
    from policy.router import ROUTERS, build_router
    from sim import get_hardware, get_model_shape, kv_blocks_for
    from sim.cluster import simulate_cluster
    from sim.cost.roofline import RooflineCostModel

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", default=str(MOONCAKE))
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--limit", type=int, default=2000, help="first N requests (0 = all)")
    parser.add_argument("--rate-scale", type=float, default=1.0, help="scale the arrival rate")
    parser.add_argument("--model", default="qwen3-8b")
    parser.add_argument("--hardware", default="h100-sxm")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if not Path(args.trace).is_file():
        print(f"trace {args.trace} is absent (the repository ships no traces; see README)", file=sys.stderr)
        return 2
    table = traces.transforms.clip_to_max_model_len(traces.load(args.trace), 32768)
    if args.limit:
        table = traces.transforms.head(table, args.limit)
    if args.rate_scale != 1.0:
        table = traces.transforms.scale_rate(table, args.rate_scale)
    shape, hw = get_model_shape(args.model), get_hardware(args.hardware)
    config = SchedulerConfig(num_blocks=kv_blocks_for(shape, hw, 0.9, 16, "bf16"), block_size=16, max_model_len=32768,
                             max_num_seqs=128, max_num_batched_tokens=8192, enable_prefix_caching=True)
    cost = RooflineCostModel.from_names(args.model, args.hardware)
    print(f"{len(table)} requests of {args.trace}, {args.replicas} x {args.model} on {args.hardware}, "
          f"{config.num_blocks} KV blocks each; load average {os.getloadavg()[0]:.2f}")
    rows = []
    for name in ROUTERS:
        t0 = time.process_time()
        cluster = simulate_cluster(table.iter_requests(block_size=16, vocab_size=shape.vocab_size, compact_tokens=True),
                                   config, cost, build_router(name, args.replicas))
        s = cluster.summary
        rows.append({"router": name, "prefix_hit_rate": s["prefix_hit_rate"], "ttft_p50_s": s["ttft_p50_s"],
                     "ttft_p90_s": s["ttft_p90_s"], "tpot_p50_s": s["tpot_p50_s"], "routed": s["routed"],
                     "load_imbalance_requests": s["load_imbalance_requests"],
                     "load_imbalance_busy": s["load_imbalance_busy"], "cpu_s": time.process_time() - t0})
    lines = ["| router | prefix hit rate | TTFT p50 | TTFT p90 | TPOT p50 | requests per replica | "
             "imbalance (requests / busy time, max/mean) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['router']} | {r['prefix_hit_rate']:.3f} | {r['ttft_p50_s'] * 1e3:.0f} ms | "
                     f"{r['ttft_p90_s'] * 1e3:.0f} ms | {r['tpot_p50_s'] * 1e3:.1f} ms | {r['routed']} | "
                     f"{r['load_imbalance_requests']:.2f} / {r['load_imbalance_busy']:.2f} |")
    print("\n".join(lines))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "routers.md").write_text("\n".join(lines) + "\n")
        (out / "routers.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
