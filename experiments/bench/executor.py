"""Executor benchmark on CPU (or GPU): what continuous batching and paged KV buy.

Part 1 — throughput. One workload (64 requests, prompts U[8, 32] tokens, log-normal output lengths
(median 12, sigma 1, clipped to [2, 128]: the long tail of chat outputs), ignore_eos) through three systems with the same batch size:
  * continuous  — our engine, continuous batching (the policy layer's Scheduler);
  * static      — our engine, static batching (StaticBatchScheduler: a batch runs to its end);
  * hf-static   — transformers `generate()`, left-padded static batches.
Output tokens/s (useful tokens only), median over repeats, per wall-clock second and per
CPU second of this process (the second is robust to other processes sharing the cores).

Part 1b — decode step cost (`--step-cost`). CPU seconds of one decode step at batch
1..64 (SmolLM2, prompts of 16 tokens): a fixed part (reading ~0.5 GB of float32 weights and the
per-step work) plus a part per row. The fit explains the throughput ratios above: static
batching loses only the fixed part of the steps it runs with a half-empty batch, and with 64
requests both systems end on the same long-output tail.

Part 2 — KV capacity. Azure-conversation-like lengths (the real Azure 2023 conv trace when
present, else `traces.generate("azure-conv-like")`), max_model_len 4096, one KV budget of
8 max-length requests, all requests queued at t=0, replayed through the engine (a tiny model:
the allocation decisions do not depend on the weights). Reported per KV layout: concurrent
requests (mean over steps, max) and the share of reserved KV slots holding tokens.

    python -m experiments.bench.executor            # ~5 min on 2 CPU cores
    python -m experiments.bench.executor --quick    # smaller, for a smoke test
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from experiments.shared_data import azure_conv_trace
from traces.files import atomic_write_json

REAL_AZURE_CONV = azure_conv_trace()


# -- workloads ------------------------------------------------------------------------------
def throughput_workload(num_requests: int, vocab: int, seed: int, *, prompt_range=(8, 32), out_median=12.0,
                        out_sigma=1.0, out_range=(2, 128)) -> tuple[list[list[int]], list[int]]:
    """Prompts of random ordinary token ids; output lengths log-normal (chat-like long tail)."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(prompt_range[0], prompt_range[1] + 1, size=num_requests)
    prompts = [rng.integers(100, vocab - 100, size=int(n)).tolist() for n in lens]
    outs = np.clip(np.round(rng.lognormal(np.log(out_median), out_sigma, size=num_requests)), *out_range)
    return prompts, [int(x) for x in outs]


def azure_conv_lengths(num_requests: int, seed: int, max_model_len: int) -> tuple[list[tuple[int, int]], str, int]:
    """(prompt_len, output_len) pairs; the source used; how many were dropped as too long."""
    pairs: list[tuple[int, int]]
    source: str
    try:
        import traces

        if REAL_AZURE_CONV.is_file() and hasattr(traces, "load"):
            table = traces.load(REAL_AZURE_CONV)
            source = f"real trace {REAL_AZURE_CONV.name} (traces.load)"
        else:
            table = traces.generate("azure-conv-like", num_requests=num_requests * 4, seed=seed)
            source = 'traces.generate("azure-conv-like")'
        df = table.df if hasattr(table, "df") else table.to_pandas()
        pairs = list(zip(df["prompt_len"].astype(int), df["output_len"].astype(int)))
    except (ImportError, AttributeError, TypeError) as exc:
        if not REAL_AZURE_CONV.is_file():
            raise SystemExit(f"no Azure-like lengths: traces layer unavailable ({exc}) and {REAL_AZURE_CONV} absent")
        import pandas as pd

        df = pd.read_csv(REAL_AZURE_CONV)
        pairs = list(zip(df["ContextTokens"].astype(int), df["GeneratedTokens"].astype(int)))
        source = f"real trace {REAL_AZURE_CONV.name} (read directly: traces.load unavailable: {exc})"
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(pairs))
    chosen, dropped = [], 0
    for i in idx:
        p, o = pairs[i]
        if p < 1 or o < 1 or p >= max_model_len:
            dropped += 1
            continue
        chosen.append((p, o))
        if len(chosen) == num_requests:
            break
    return chosen, source, dropped


# -- part 1 ---------------------------------------------------------------------------------
def run_throughput(args) -> dict:
    from executor.engine import LLMEngine
    from executor.hf_baseline import HFStaticBatchRunner
    from executor.models_registry import resolve_model
    from executor.sampler import SamplingParams

    model_dir = resolve_model(args.model)
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    engine = LLMEngine(model_dir, device=args.device, dtype=dtype, kv_cache_memory=args.kv_cache_memory,
                       max_model_len=1024, max_num_seqs=args.batch_size, max_num_batched_tokens=2048,
                       attention_backend=args.attention_backend, load_tokenizer=False)
    prompts, max_tokens = throughput_workload(args.num_requests, engine.config.vocab_size, args.seed)
    useful = sum(max_tokens)
    print(f"[throughput] model={model_dir.name} device={args.device} threads={torch.get_num_threads()} "
          f"requests={len(prompts)} batch={args.batch_size} prompt_tokens={sum(map(len, prompts))} "
          f"output_tokens={useful} (median {int(np.median(max_tokens))}, max {max(max_tokens)})", flush=True)
    params = [SamplingParams(temperature=0.0, max_tokens=m, ignore_eos=True) for m in max_tokens]
    engine.warmup()
    results: dict[str, list[float]] = {"continuous": [], "static": [], "hf-static": []}
    per_cpu_s: dict[str, list[float]] = {"continuous": [], "static": [], "hf-static": []}
    hf = HFStaticBatchRunner(model_dir, device=args.device, dtype=dtype)
    hf.run(prompts[:2], [2, 2], batch_size=2)  # warm-up
    steps: dict[str, int] = {}
    reference = None
    for rep in range(args.repeats):
        for mode in ("continuous", "static"):
            engine.reset_scheduler(batching=mode)
            t0, c0 = time.perf_counter(), time.process_time()
            outs = engine.generate(prompts, params)
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            got = sum(len(o.token_ids) for o in outs)
            assert got == useful, (mode, got, useful)
            if reference is None:
                reference = [o.token_ids for o in outs]
            elif args.device == "cpu" and [o.token_ids for o in outs] != reference:
                print(f"  warning: {mode} outputs differ from the first run", flush=True)
            results[mode].append(got / dt)
            per_cpu_s[mode].append(got / cpu)
            steps[mode] = engine.stats.num_steps
            print(f"  rep {rep} {mode:>10}: {dt:7.1f} s wall {cpu:7.1f} s cpu  {got / dt:7.1f} out tok/s  "
                  f"{got / cpu:7.1f} per cpu-s  steps={engine.stats.num_steps}", flush=True)
        c0 = time.process_time()
        res = hf.run(prompts, max_tokens, batch_size=args.batch_size)
        cpu = time.process_time() - c0
        results["hf-static"].append(res.output_throughput)
        per_cpu_s["hf-static"].append(res.output_tokens / cpu)
        print(f"  rep {rep} {'hf-static':>10}: {res.wall_s:7.1f} s wall {cpu:7.1f} s cpu  {res.output_throughput:7.1f} "
              f"out tok/s  {res.output_tokens / cpu:7.1f} per cpu-s  (computed {res.computed_tokens} token rows for "
              f"{res.output_tokens} useful)", flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    med_cpu = {k: statistics.median(v) for k, v in per_cpu_s.items()}
    return {"workload": {"num_requests": len(prompts), "batch_size": args.batch_size,
                         "prompt_tokens": sum(map(len, prompts)), "output_tokens": useful},
            "tok_per_s": results, "median_tok_per_s": med, "engine_steps": steps,
            "tok_per_cpu_s": per_cpu_s, "median_tok_per_cpu_s": med_cpu,
            "speedup_vs_hf": med["continuous"] / med["hf-static"],
            "speedup_vs_static_policy": med["continuous"] / med["static"],
            "cpu_speedup_vs_hf": med_cpu["continuous"] / med_cpu["hf-static"],
            "cpu_speedup_vs_static_policy": med_cpu["continuous"] / med_cpu["static"]}


def predicted_cpu_ms(prompt_lens: list[int], out_lens: list[int], batch: int, fixed_ms: float,
                     row_ms: float) -> dict[str, float]:
    """Predicted CPU ms of each system with step cost = fixed + row_ms * rows (prefill tokens are rows).

    continuous: a free slot is refilled at the next step; static: a batch of `batch` requests runs
    until its longest one ends, finished requests leave the batch; hf-static: the same batches,
    prompts left-padded to the longest and every row computed until the longest output ends.
    """
    pending, running, cont = list(range(len(out_lens))), {}, 0.0
    while pending or running:
        decodes, prefill = len(running), 0    # a newly admitted request's prefill samples its first token
        while pending and len(running) < batch:
            i = pending.pop(0)
            running[i], prefill = out_lens[i], prefill + prompt_lens[i]
        cont += fixed_ms + row_ms * (decodes + prefill)
        for i in list(running):
            running[i] -= 1
            if running[i] == 0:
                del running[i]
    static = hf = 0.0
    for b in range(0, len(out_lens), batch):
        outs, prompts = out_lens[b:b + batch], prompt_lens[b:b + batch]
        static += fixed_ms + row_ms * sum(prompts)
        static += sum(fixed_ms + row_ms * sum(o > s for o in outs) for s in range(1, max(outs)))
        hf += fixed_ms + row_ms * max(prompts) * len(prompts) + (max(outs) - 1) * (fixed_ms + row_ms * len(outs))
    return {"continuous": cont, "static": static, "hf-static": hf}


def decode_step_ms(engine, batch: int, steps: int = 32) -> float:
    """CPU ms of one decode step at `batch`: (prefill + `steps` decodes) minus (prefill alone), over `steps`."""
    from executor.sampler import SamplingParams

    prompts = [[100 + i + j for j in range(16)] for i in range(batch)]
    cpu = []
    for out in (1, 1 + steps):
        c0 = time.process_time()
        engine.generate(prompts, [SamplingParams(temperature=0.0, max_tokens=out, ignore_eos=True)] * batch)
        cpu.append(time.process_time() - c0)
    return (cpu[1] - cpu[0]) / steps * 1e3


def run_step_cost(args) -> dict:
    from executor.engine import LLMEngine
    from executor.models_registry import resolve_model

    engine = LLMEngine(resolve_model(args.model), device=args.device, dtype=torch.float32, kv_cache_memory=2**30,
                       max_model_len=1024, max_num_seqs=64, max_num_batched_tokens=4096, load_tokenizer=False)
    engine.warmup()
    rows = []
    for batch in (1, 2, 4, 8, 16, 32, 64):
        step = statistics.median(decode_step_ms(engine, batch) for _ in range(args.repeats)) / 1e3
        rows.append({"batch": batch, "step_ms": 1e3 * step, "per_row_ms": 1e3 * step / batch})
        print(f"  [step-cost] batch {batch:3d}: decode step {1e3 * step:7.1f} ms CPU, {1e3 * step / batch:6.2f} ms per row",
              flush=True)
    b = np.array([r["batch"] for r in rows], dtype=float)
    t = np.array([r["step_ms"] for r in rows])
    per_row, fixed = np.polyfit(b, t, 1)
    print(f"  [step-cost] least-squares fit: {fixed:.1f} ms per step + {per_row:.2f} ms per row", flush=True)
    predictions = []
    for n in sorted({args.num_requests, 1024}):
        prompts, outs = throughput_workload(n, engine.config.vocab_size, args.seed)
        ms = predicted_cpu_ms([len(p) for p in prompts], outs, args.batch_size, fixed, per_row)
        pred = {"num_requests": n, "batch": args.batch_size, "vs_static": ms["static"] / ms["continuous"],
                "vs_hf": ms["hf-static"] / ms["continuous"]}
        predictions.append(pred)
        print(f"  [step-cost] predicted with that fit, {n} requests, cap {args.batch_size}: continuous is "
              f"{pred['vs_hf']:.2f}x transformers static, {pred['vs_static']:.2f}x our static", flush=True)
    return {"rows": rows, "fit_fixed_ms": float(fixed), "fit_per_row_ms": float(per_row), "predictions": predictions}


# -- part 2 ---------------------------------------------------------------------------------
def run_kv_capacity(args) -> dict:
    from executor.engine import LLMEngine
    from executor.models_registry import write_random_model
    from policy import Request

    max_model_len, block_size = 4096, 16
    pairs, source, dropped = azure_conv_lengths(args.kv_requests, args.seed, max_model_len)
    num_blocks = args.kv_max_len_requests * (max_model_len // block_size)
    print(f"[kv] lengths from {source}: {len(pairs)} requests (dropped {dropped} with prompt >= {max_model_len}); "
          f"mean prompt {np.mean([p for p, _ in pairs]):.0f}, mean output {np.mean([o for _, o in pairs]):.0f}; "
          f"KV pool {num_blocks} blocks x {block_size} = {args.kv_max_len_requests} max-length requests", flush=True)
    out: dict = {"source": source, "num_requests": len(pairs), "dropped_too_long": dropped,
                 "num_blocks": num_blocks, "block_size": block_size, "max_model_len": max_model_len}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_random_model("tiny-qwen2", Path(tmp) / "m")
        for layout in ("paged", "contiguous"):
            engine = LLMEngine(model_dir, device="cpu", num_blocks=num_blocks, block_size=block_size,
                               max_model_len=max_model_len, max_num_seqs=256, max_num_batched_tokens=4096,
                               kv_layout=layout, enable_prefix_caching=False)
            rng = np.random.default_rng(args.seed)
            reqs = [Request(f"r{i}", rng.integers(3, 500, size=p).tolist(), max_tokens=o, arrival_time=0.0,
                            ignore_eos=True) for i, (p, o) in enumerate(pairs)]
            t0 = time.perf_counter()
            result = engine.replay(reqs)
            steps = result.recorder.steps
            conc = np.array([s.num_requests for s in steps], dtype=float)
            held = np.array([s.sum_context_len for s in steps], dtype=float)
            reserved = np.array([s.kv_used_blocks * block_size for s in steps], dtype=float)
            # steady state: steps while requests were still waiting (the pool is the limit)
            busy = np.array([s.num_waiting > 0 for s in steps])
            sel = busy if busy.any() else np.ones(len(steps), dtype=bool)
            row = {
                "concurrent_mean": float(conc[sel].mean()), "concurrent_max": int(conc.max()),
                "slot_utilization": float(held[sel].sum() / reserved[sel].sum()),
                "kv_usage_mean": float((reserved[sel] / (num_blocks * block_size)).mean()),
                "num_steps": len(steps), "num_finished": result.num_finished, "num_rejected": result.num_rejected,
                "num_preemptions": result.num_preemptions, "wall_s": time.perf_counter() - t0,
            }
            out[layout] = row
            print(f"  {layout:>10}: concurrent mean {row['concurrent_mean']:.1f} (max {row['concurrent_max']}), "
                  f"slots holding tokens {100 * row['slot_utilization']:.1f}%, pool reserved "
                  f"{100 * row['kv_usage_mean']:.1f}%, steps {row['num_steps']}, preemptions {row['num_preemptions']}, "
                  f"{row['wall_s']:.1f} s", flush=True)
    out["concurrency_ratio"] = out["paged"]["concurrent_mean"] / out["contiguous"]["concurrent_mean"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--attention-backend", default="torch")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--num-requests", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kv-cache-memory", type=int, default=256 * 2**20)
    ap.add_argument("--kv-requests", type=int, default=64)
    ap.add_argument("--kv-max-len-requests", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-kv", action="store_true")
    ap.add_argument("--step-cost", action="store_true", help="also measure decode step cost vs batch size")
    ap.add_argument("--quick", action="store_true", help="16 requests, 1 repeat, 16 KV requests")
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.num_requests, args.repeats, args.kv_requests = 16, 1, 16
    if args.threads:
        torch.set_num_threads(args.threads)
    report: dict = {"argv": sys.argv[1:] if argv is None else list(argv)}
    if not args.skip_throughput:
        tp = run_throughput(args)
        report["throughput"] = tp
        med = tp["median_tok_per_s"]
        print(f"[throughput] medians (out tok/s): continuous {med['continuous']:.1f} | static {med['static']:.1f} | "
              f"hf-static {med['hf-static']:.1f}  => continuous/hf {tp['speedup_vs_hf']:.2f}x, "
              f"continuous/static {tp['speedup_vs_static_policy']:.2f}x", flush=True)
        mc = tp["median_tok_per_cpu_s"]
        print(f"[throughput] medians (out tok per cpu-s): continuous {mc['continuous']:.1f} | static {mc['static']:.1f} | "
              f"hf-static {mc['hf-static']:.1f}  => continuous/hf {tp['cpu_speedup_vs_hf']:.2f}x, "
              f"continuous/static {tp['cpu_speedup_vs_static_policy']:.2f}x", flush=True)
    if args.step_cost:
        report["step_cost"] = run_step_cost(args)
    if not args.skip_kv:
        kv = run_kv_capacity(args)
        report["kv_capacity"] = kv
        print(f"[kv] paged holds {kv['concurrency_ratio']:.2f}x the concurrent requests of contiguous in the same memory; "
              f"slots holding tokens: paged {100 * kv['paged']['slot_utilization']:.1f}% vs contiguous "
              f"{100 * kv['contiguous']['slot_utilization']:.1f}%", flush=True)
    if args.json_out:
        atomic_write_json(args.json_out, report, sort_keys=False, allow_nan=True, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
