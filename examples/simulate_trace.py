"""Simulate a trace and read its metrics with pandas.

    python examples/simulate_trace.py [--num-requests 400] [--model llama-3-8b] [--hardware h100-sxm]

A synthetic workload shaped like the Azure conversation trace is replayed through the
discrete-event simulator: the real scheduler and KV manager, with each step priced by the
roofline cost model instead of run on a GPU. The result holds one row per request
(`requests_df`) and one per step (`steps_df`) as pandas DataFrames, and a summary dict.
"""

from __future__ import annotations

import argparse


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-requests", type=int, default=400)
    parser.add_argument("--model", default="llama-3-8b")
    parser.add_argument("--hardware", default="h100-sxm")
    args = parser.parse_args(argv)

    from policy import SchedulerConfig
    from sim import simulate
    from sim.cost.registry import build_cost_model
    from sim.hardware import get_hardware
    from sim.models import get_model_shape
    from traces.generators import generate

    trace = generate("azure-conv-like", num_requests=args.num_requests, seed=0)
    print(f"trace: {len(trace.df)} requests over {trace.df['arrival_s'].max():.0f} s; "
          f"prompt p50 {trace.df['prompt_len'].median():.0f}, output p50 {trace.df['output_len'].median():.0f} tokens")
    cost = build_cost_model("roofline", model=get_model_shape(args.model), hardware=get_hardware(args.hardware))
    config = SchedulerConfig(num_blocks=8192, max_model_len=8192, max_num_seqs=128, max_num_batched_tokens=2048)
    result = simulate(trace.to_requests(), config, cost)

    df = result.requests_df  # one row per request: arrival, first token, finish, lengths, TTFT, TPOT, ...
    print(f"\nrequests_df: {len(df)} rows; columns: {', '.join(df.columns[:12])}, ...")
    print(df[["ttft_s", "tpot_s", "e2el_s"]].describe(percentiles=[0.5, 0.9, 0.99]).round(4).to_string())
    long = df["prompt_len"] > df["prompt_len"].median()
    print("\nTTFT p50 by prompt length (s):")
    print(df.groupby(long.map({True: "long prompts", False: "short prompts"}))["ttft_s"].median().round(4).to_string())
    steps = result.steps_df
    tokens = steps["num_prefill_tokens"] + steps["num_decode_tokens"]
    print(f"\nsteps_df: {len(steps)} steps, mean {steps['num_requests'].mean():.1f} requests and "
          f"{tokens.mean():.0f} tokens per step, mean step {steps['duration_s'].mean() * 1000:.2f} ms, "
          f"KV usage max {steps['kv_usage'].max():.0%}")
    s = result.summary
    print(f"summary: {s['output_throughput']:.0f} output tok/s, TTFT p50 {s['ttft_p50_s'] * 1000:.1f} ms, "
          f"TPOT p50 {s['tpot_p50_s'] * 1000:.2f} ms, simulated {s['sim_time_s']:.0f} s in {result.wall_s:.2f} s of CPU")
    return s


if __name__ == "__main__":
    main()
