"""Simulator memory: peak RSS of streamed replays, each in a fresh process.

    python -m experiments.bench.sim_memory                 # every case, one child process each
    python -m experiments.bench.sim_memory 1m --requests 200000   # one case (runs in this process)

Requests stream in from the trace table (`TraceTable.iter_requests`, one `Request` at a time,
created as it arrives) and finished requests and steps stream out to parquet
(`traces.streaming.StreamingRecorder`), so peak RSS should follow the running + waiting
requests, not the trace length. Peak RSS is `resource.getrusage(RUSAGE_SELF).ru_maxrss` of the
process that ran the case (imports and the trace table included).

Cases and their bars (issue 14):
  1m          1,000,000 generated requests (Poisson at 100/s, prompts 64-512, outputs 16-128; Llama-3-8B on
              H100, prefix caching off)                                         <= 500 MB
  azure-10x   the Azure 2023 conversation trace at 10x its arrival rate (Llama-2-7B on A100,
              chunk 512, batch cap 128, 7,377 blocks, prefix caching off)       <= 300 MB
  mooncake    the Mooncake conversation 0-45 min window (8,940 requests, mean prompt 12k tokens),
              prefix caching on (Qwen3-8B on H100, max_model_len 32768)         <= 500 MB
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from experiments.shared_data import shared_path

SHARED = shared_path("traces")
AZURE_CONV = SHARED / "azure-2023-conv" / "AzureLLMInferenceTrace_conv.csv"
MOONCAKE = SHARED / "mooncake-conversation" / "conversation_trace_0-45min.jsonl"
BARS_MB = {"1m": 500, "azure-10x": 300, "mooncake": 500}


def _case(name: str, num_requests: int):
    """(trace table, scheduler config, cost model, synthesize tokens, vocab size, description)."""
    import traces
    from policy import SchedulerConfig
    from sim import get_hardware, get_model_shape, kv_blocks_for
    from sim.cost.roofline import RooflineCostModel

    if name == "1m":
        table = traces.generate("poisson", seed=0, num_requests=num_requests, rate=100.0,
                                prompt="uniform:64:512", output="uniform:16:128")
        shape, hw = get_model_shape("llama-3-8b"), get_hardware("h100-sxm")
        config = SchedulerConfig(num_blocks=kv_blocks_for(shape, hw, 0.9, 16, "bf16"), block_size=16,
                                 max_model_len=4096, max_num_seqs=256, max_num_batched_tokens=2048,
                                 enable_prefix_caching=False)
        return table, config, RooflineCostModel.from_names("llama-3-8b", "h100-sxm"), False, shape.vocab_size, \
            f"{num_requests:,} Poisson requests at 100/s, Llama-3-8B / H100, prefix caching off"
    if name == "azure-10x":
        if not AZURE_CONV.is_file():
            raise SystemExit(f"skip azure-10x: {AZURE_CONV} is absent")
        table = traces.load(AZURE_CONV)
        df = table.df
        table = traces.transforms.scale_rate(table.with_df(df[(df.prompt_len + df.output_len) <= 4096]), 10.0)
        config = SchedulerConfig(num_blocks=7377, block_size=16, max_model_len=4096, max_num_seqs=128,
                                 max_num_batched_tokens=512, enable_prefix_caching=False)
        return table, config, RooflineCostModel.from_names("llama-2-7b", "a100-80g"), False, 32000, \
            f"Azure conv ({len(table):,} requests <= 4096 tokens) at 10x rate, Llama-2-7B / A100, chunk 512, cap 128"
    if name == "mooncake":
        if not MOONCAKE.is_file():
            raise SystemExit(f"skip mooncake: {MOONCAKE} is absent")
        table = traces.transforms.clip_to_max_model_len(traces.load(MOONCAKE), 32768)
        shape, hw = get_model_shape("qwen3-8b"), get_hardware("h100-sxm")
        config = SchedulerConfig(num_blocks=kv_blocks_for(shape, hw, 0.9, 16, "bf16"), block_size=16,
                                 max_model_len=32768, max_num_seqs=128, max_num_batched_tokens=8192,
                                 enable_prefix_caching=True)
        return table, config, RooflineCostModel.from_names("qwen3-8b", "h100-sxm"), True, shape.vocab_size, \
            f"Mooncake conversation 0-45 min ({len(table):,} requests), Qwen3-8B / H100, prefix caching on"
    raise SystemExit(f"unknown case {name!r}; known: {', '.join(BARS_MB)}")


def run_case(name: str, num_requests: int) -> dict:
    from sim import simulate
    from traces.streaming import StreamingRecorder

    t0 = time.perf_counter()
    table, config, cost, synth, vocab, what = _case(name, num_requests)
    with tempfile.TemporaryDirectory(prefix=f"bench-mem-{name}-") as tmp:
        requests = table.iter_requests(block_size=config.block_size, vocab_size=vocab, synthesize_tokens=synth,
                                       compact_tokens=True)
        result = simulate(requests, config, cost, recorder=StreamingRecorder(tmp))
        del requests, table  # the trace table is not needed for the summary
        summary = result.summary
        steps = result.recorder.read_steps(["num_waiting", "num_requests"])
        live = int((steps["num_waiting"] + steps["num_requests"]).max()) if len(steps) else 0
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"case": name, "what": what, "requests": summary["num_requests"], "finished": summary["num_finished"],
            "rejected": summary["num_rejected"], "steps": summary["num_steps"], "wall_s": round(wall, 1),
            "peak_rss_mb": round(peak_mb, 1), "bar_mb": BARS_MB[name],
            "ttft_p90_s": summary["ttft_p90_s"], "makespan_s": summary["makespan_s"],
            "preemptions": summary["num_preemptions"], "prefix_hit_rate": summary["prefix_hit_rate"],
            "max_live_requests": live}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", nargs="?", help="run one case in this process (default: all, each in a child)")
    parser.add_argument("--requests", type=int, default=1_000_000, help="size of the generated '1m' case")
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case, args.requests)), flush=True)
        return 0
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for name in BARS_MB:
        proc = subprocess.run([sys.executable, "-m", "experiments.bench.sim_memory", name,
                               "--requests", str(args.requests)], capture_output=True, text=True)
        line = (proc.stdout.strip().splitlines() or [""])[-1]
        if proc.returncode or not line.startswith("{"):
            print(f"{name}: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
            continue
        r = json.loads(line)
        verdict = "PASS" if r["peak_rss_mb"] <= r["bar_mb"] else "FAIL"
        print(f"{name}: {r['what']}: {r['finished']:,} finished, {r['rejected']} rejected, {r['steps']:,} steps, "
              f"at most {r['max_live_requests']:,} live (running + waiting), wall {r['wall_s']} s, peak RSS {r['peak_rss_mb']} MB (bar {r['bar_mb']} MB: {verdict})")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
