"""Device checks run by `experiments/bench/gpu_check.sh`, one stage per process (each under its own
timeout there). Every stage prints a short report and writes `<out>/<stage>[-<shape>].json`.

    python -m experiments.bench.devcheck env        --out DIR
    python -m experiments.bench.devcheck write      --shape qwen3-0.6b --model-dir DIR
    python -m experiments.bench.devcheck correctness --model-dir DIR --out DIR [--device cuda] [--backend triton]
    python -m experiments.bench.devcheck throughput --model-dir DIR --out DIR [--num-requests 256]
    python -m experiments.bench.devcheck hf         --model-dir DIR --out DIR [--num-requests 64]
    python -m experiments.bench.devcheck roofline   --shape qwen3-0.6b --out DIR [--bandwidth auto]

The stages also run on CPU with a tiny shape (tests do that), so only the numbers need a GPU.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

from traces.files import atomic_write_json


def _write_json(out: Path | None, name: str, data: dict) -> None:
    if out is None:
        return
    atomic_write_json(out / f"{name}.json", data, sort_keys=False, allow_nan=True, default=str)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def nano_bench_workload(num_requests: int = 256, max_input_len: int = 1024, max_output_len: int = 1024,
                        seed: int = 0) -> tuple[list[list[int]], list[int]]:
    """nano-vllm's bench.py workload, drawn in the same order from Python's `random` (so the
    totals reproduce: 142,827 prompt and 133,966 output tokens for 256 requests)."""
    rng = random.Random(seed)
    prompts = [[rng.randint(0, 10000) for _ in range(rng.randint(100, max_input_len))] for _ in range(num_requests)]
    max_tokens = [rng.randint(100, max_output_len) for _ in range(num_requests)]
    return prompts, max_tokens


def _fit_vocab(prompts: list[list[int]], model_dir) -> list[list[int]]:
    """Fold ids into the vocabulary of small test models (real shapes have >= 49k ids)."""
    from executor.config import ModelConfig

    vocab = ModelConfig.from_dir(model_dir).vocab_size
    return prompts if vocab > 10000 else [[t % vocab for t in p] for p in prompts]


# -- stages -----------------------------------------------------------------------------------
def stage_env(args) -> dict:
    import inspect

    info: dict = {"torch": torch.__version__, "cuda": torch.cuda.is_available(), "python": sys.version.split()[0]}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), sm_count=props.multi_processor_count)
    try:
        from torch.nn.attention.varlen import varlen_attn

        info["varlen_attn"] = str(inspect.signature(varlen_attn))
    except ImportError:
        info["varlen_attn"] = None
    info["has_weight_int4pack_mm"] = hasattr(torch.ops.aten, "_weight_int4pack_mm")
    if torch.cuda.is_available():
        from executor.attention.triton_backend import _probe_varlen

        info["varlen_prefill_ok"] = _probe_varlen(torch.device("cuda")) is not None
        info["copy_bandwidth_gbs"] = round(measure_copy_bandwidth() / 1e9, 1)
    for k, v in info.items():
        print(f"{k:>24}: {v}")
    return info


def measure_copy_bandwidth(nbytes: int = 2 * 2**30, repeats: int = 10) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write counted)."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    torch.cuda.synchronize()
    return 2 * nbytes * repeats / (time.perf_counter() - t0)


def stage_write(args) -> dict:
    from executor.models_registry import write_random_model

    t0 = time.perf_counter()
    path = Path(args.model_dir)
    if (path / "config.json").is_file() and not args.force:
        print(f"reusing {path}")
    else:
        write_random_model(args.shape, path, seed=args.seed, dtype=args.write_dtype)
    data = {"shape": args.shape, "model_dir": str(path), "seconds": time.perf_counter() - t0}
    print(f"wrote {args.shape} to {path} in {data['seconds']:.1f} s")
    return data


def _engine(args, **overrides):
    from executor.engine import LLMEngine

    kwargs = dict(device=args.device, dtype=args.dtype, attention_backend=args.backend, max_model_len=args.max_model_len,
                  max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                  load_tokenizer=False)
    if args.kv_cache_memory:
        kwargs["kv_cache_memory"] = args.kv_cache_memory
    if args.graph_batch_sizes:
        kwargs["cuda_graph_batch_sizes"] = [int(x) for x in args.graph_batch_sizes.split(",")]
    kwargs.update(overrides)
    return LLMEngine(args.model_dir, **kwargs)


def stage_correctness(args) -> dict:
    """Greedy tokens and prompt logits of `--backend` (with and without CUDA graphs) against the
    torch backend, in float32, on a schedule that mixes chunked prefill, prefix hits and decodes."""
    from executor.api import prompt_logits
    from executor.sampler import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    common = dict(dtype=torch.float32, max_num_batched_tokens=64, max_model_len=1024, kv_cache_memory=args.kv_cache_memory
                  or 256 * 2**20)
    results: dict = {}
    ref_engine = _engine(args, attention_backend="torch", cuda_graphs=False, **common)
    vocab = min(ref_engine.config.vocab_size, 5000)
    rng = random.Random(1)
    shared = [rng.randint(10, vocab - 1) for _ in range(40)]
    prompts = [shared + [rng.randint(10, vocab - 1) for _ in range(n)] for n in (3, 50, 130, 7)]
    prompts += [[rng.randint(10, vocab - 1) for _ in range(n)] for n in (1, 17, 300)]
    ref = [o.token_ids for o in ref_engine.generate(prompts, params)]
    ref_logits = prompt_logits(ref_engine.model, prompts[2], backend="torch")
    variants = [("eager", False)]
    if ref_engine.device.type == "cuda" and args.backend == "triton":
        variants.append(("cuda-graphs", True))
    model = ref_engine.model
    del ref_engine
    for name, graphs in variants:
        from executor.engine import LLMEngine

        eng = LLMEngine(model, device=args.device, dtype=torch.float32, attention_backend=args.backend,
                        cuda_graphs=graphs, max_num_seqs=args.max_num_seqs,
                        cuda_graph_batch_sizes=[1, 2, 4, 8] if graphs else None, **{k: v for k, v in common.items() if k != "dtype"})
        outs = [o.token_ids for o in eng.generate(prompts, params)]
        same = [a == b for a, b in zip(outs, ref)]
        first_diff = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None) for a, b in zip(outs, ref)]
        replays = eng.runner.graph_runner.num_replays if eng.runner.graph_runner is not None else 0
        results[name] = {"identical_requests": sum(same), "num_requests": len(same), "first_divergence": first_diff,
                         "graph_replays": replays}
        print(f"{args.backend}/{name:>11} vs torch: {sum(same)}/{len(same)} requests token-identical "
              f"(first divergence per request: {first_diff}); graph replays {replays}")
        del eng
    logits = prompt_logits(model, prompts[2], backend=args.backend)
    rel = ((logits - ref_logits).abs().max() / ref_logits.abs().max()).item()
    results["prompt_logits_rel_err_fp32"] = rel
    print(f"prompt logits ({len(prompts[2])} tokens) {args.backend} vs torch, fp32: max rel err {rel:.2e}")
    results["ok"] = all(r["identical_requests"] == r["num_requests"] for k, r in results.items() if isinstance(r, dict)) \
        and rel < 1e-3
    return results


def stage_throughput(args) -> dict:
    """nano-vllm's offline benchmark through our engine: one warm-up, then one timed generate()."""
    from executor.sampler import SamplingParams

    prompts, max_tokens = nano_bench_workload(args.num_requests, args.max_input_len, args.max_output_len, args.seed)
    prompts = _fit_vocab(prompts, args.model_dir)
    t0 = time.perf_counter()
    engine = _engine(args)
    setup_s = time.perf_counter() - t0
    print(f"engine ready in {setup_s:.1f} s: {engine.kv_cache.num_blocks} KV blocks "
          f"({engine.kv_cache.nbytes / 2**30:.1f} GiB), backend {engine.backend.name}, "
          f"graphs {engine.runner.graph_runner.batch_sizes if engine.runner.graph_runner else None}", flush=True)
    engine.warmup(num_requests=2, prompt_len=16, max_tokens=4)
    params = [SamplingParams(temperature=args.temperature, ignore_eos=True, max_tokens=m) for m in max_tokens]
    device = engine.device
    _sync(device)
    t0 = time.perf_counter()
    outs = engine.generate(prompts, params)
    _sync(device)
    wall = time.perf_counter() - t0
    total_out = sum(len(o.token_ids) for o in outs)
    expected = sum(max_tokens)
    data = {
        "model_dir": str(args.model_dir), "num_requests": len(prompts), "prompt_tokens": sum(map(len, prompts)),
        "output_tokens": total_out, "expected_output_tokens": expected, "wall_s": wall,
        "output_tok_per_s": total_out / wall, "total_tok_per_s": (total_out + sum(map(len, prompts))) / wall,
        "num_steps": engine.stats.num_steps, "mean_step_ms": 1000 * engine.stats.step_seconds / max(1, engine.stats.num_steps),
        "num_preemptions": engine.scheduler.num_preemptions, "setup_s": setup_s,
        "graph_replays": engine.runner.graph_runner.num_replays if engine.runner.graph_runner else 0,
        "device": str(device), "dtype": str(engine.dtype), "backend": engine.backend.name,
    }
    print(f"{Path(args.model_dir).name}: {total_out} output tokens in {wall:.1f} s = {data['output_tok_per_s']:.0f} "
          f"out tok/s ({data['num_steps']} steps, {data['mean_step_ms']:.1f} ms/step, "
          f"{data['graph_replays']} graph replays, {data['num_preemptions']} preemptions)")
    if total_out != expected:
        print(f"WARNING: expected {expected} output tokens")
    return data


def stage_hf(args) -> dict:
    """transformers generate() in static batches on the first N requests of the same workload,
    and our engine on exactly those requests, for a like-for-like ratio."""
    from executor.hf_baseline import HFStaticBatchRunner
    from executor.sampler import SamplingParams

    prompts, max_tokens = nano_bench_workload(256, args.max_input_len, args.max_output_len, args.seed)
    prompts, max_tokens = _fit_vocab(prompts[: args.num_requests], args.model_dir), max_tokens[: args.num_requests]
    device = torch.device(args.device)
    runner = HFStaticBatchRunner(args.model_dir, device=device, dtype=args.dtype)
    runner.run(prompts[:2], [4, 4], batch_size=2, temperature=args.temperature)  # warm-up
    res = runner.run(prompts, max_tokens, batch_size=args.hf_batch_size, temperature=args.temperature)
    del runner
    if device.type == "cuda":
        torch.cuda.empty_cache()
    data = {"hf_output_tok_per_s": res.output_throughput, "hf_wall_s": res.wall_s, "hf_batch_size": args.hf_batch_size,
            "num_requests": len(prompts), "output_tokens": res.output_tokens, "hf_computed_rows": res.computed_tokens}
    print(f"hf generate (batch {args.hf_batch_size}): {res.output_tokens} tokens in {res.wall_s:.1f} s = "
          f"{res.output_throughput:.0f} out tok/s")
    if not args.skip_engine:
        engine = _engine(args)
        engine.warmup()
        params = [SamplingParams(temperature=args.temperature, ignore_eos=True, max_tokens=m) for m in max_tokens]
        _sync(engine.device)
        t0 = time.perf_counter()
        outs = engine.generate(prompts, params)
        _sync(engine.device)
        wall = time.perf_counter() - t0
        n = sum(len(o.token_ids) for o in outs)
        data.update(engine_output_tok_per_s=n / wall, engine_wall_s=wall, speedup=(n / wall) / res.output_throughput)
        print(f"our engine on the same {len(prompts)} requests: {n / wall:.0f} out tok/s ({data['speedup']:.2f}x hf)")
    return data


def decode_roofline(config, prompts_len: list[int], max_tokens: list[int], *, bandwidth: float, peak_flops: float,
                    prefill_flops: float, bytes_per_param: float = 2.0, kv_bytes_per_elem: int = 2,
                    step_overhead_s: float = 0.0) -> dict:
    """Bound on output tok/s of the whole offline run: every request admitted at once, one
    prefill pass, then decode steps whose time is max(bytes / BW, flops / peak) + overhead."""
    h, inter, L, V = config.hidden_size, config.intermediate_size, config.num_layers, config.vocab_size
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    linear_params = L * (h * q + 2 * h * kv + q * h + 3 * h * inter)
    head_params = V * h
    weight_bytes = (linear_params + head_params) * bytes_per_param
    kv_tok = 2 * L * kv * kv_bytes_per_elem
    prefill_tokens = sum(prompts_len)
    t = 2 * (linear_params + head_params) * prefill_tokens / prefill_flops
    import numpy as np

    # the prefill step yields each request's first token
    ctx = np.asarray(prompts_len, dtype=np.float64) + 1
    left = np.asarray(max_tokens, dtype=np.int64) - 1
    steps = 0
    decode_time = 0.0
    while (left > 0).any():
        active = left > 0
        b = int(active.sum())
        sum_ctx = float(ctx[active].sum())
        nbytes = weight_bytes + sum_ctx * kv_tok
        flops = 2 * (linear_params + head_params) * b + 4 * sum_ctx * q * L
        decode_time += max(nbytes / bandwidth, flops / peak_flops) + step_overhead_s
        left[active] -= 1
        ctx[active] += 1
        steps += 1
    total = t + decode_time
    out_tokens = sum(max_tokens)
    return {"bound_out_tok_per_s": out_tokens / total, "prefill_s": t, "decode_s": decode_time, "decode_steps": steps,
            "weight_bytes": weight_bytes, "kv_bytes_per_token": kv_tok}


def stage_roofline(args) -> dict:
    from executor.config import ModelConfig
    from executor.models_registry import SHAPES

    config = ModelConfig.from_dict(SHAPES[args.shape], source=args.shape)
    if args.bandwidth == "auto":
        bw = measure_copy_bandwidth() if torch.cuda.is_available() else 3.0e12
        name = torch.cuda.get_device_properties(0).name if torch.cuda.is_available() else "assumed H100"
    else:
        bw, name = float(args.bandwidth), "given"
    prompts, max_tokens = nano_bench_workload(args.num_requests, args.max_input_len, args.max_output_len, args.seed)
    data = {"shape": args.shape, "bandwidth_bytes_per_s": bw, "bandwidth_source": name}
    for overhead_ms in (0.0, 1.0):
        r = decode_roofline(config, [len(p) for p in prompts], max_tokens, bandwidth=bw, peak_flops=args.peak_flops,
                            prefill_flops=args.prefill_flops, step_overhead_s=overhead_ms / 1000)
        data[f"overhead_{overhead_ms:g}ms"] = r
        print(f"{args.shape}: decode roofline bound {r['bound_out_tok_per_s']:.0f} out tok/s with {overhead_ms:g} ms/step "
              f"overhead (BW {bw / 1e12:.2f} TB/s {name}; {r['decode_steps']} decode steps, weights "
              f"{r['weight_bytes'] / 2**30:.2f} GiB, KV {r['kv_bytes_per_token'] / 1024:.0f} KiB/token)")
    return data


STAGES = {"env": stage_env, "write": stage_write, "correctness": stage_correctness, "throughput": stage_throughput,
          "hf": stage_hf, "roofline": stage_roofline}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=sorted(STAGES))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--tag", default="", help="suffix of the JSON file name")
    ap.add_argument("--shape", default="qwen3-0.6b")
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--write-dtype", default="bfloat16")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--backend", default="triton" if torch.cuda.is_available() else "torch")
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--max-num-batched-tokens", type=int, default=16384)
    ap.add_argument("--kv-cache-memory", type=int, default=None)
    ap.add_argument("--graph-batch-sizes", default="1,2,4,8,16,32,48,64,96,128,160,192,224,256")
    ap.add_argument("--num-requests", type=int, default=256)
    ap.add_argument("--max-input-len", type=int, default=1024)
    ap.add_argument("--max-output-len", type=int, default=1024)
    ap.add_argument("--max-tokens", type=int, default=24, help="correctness: tokens per request")
    ap.add_argument("--temperature", type=float, default=0.6)
    ap.add_argument("--hf-batch-size", type=int, default=64)
    ap.add_argument("--skip-engine", action="store_true")
    ap.add_argument("--bandwidth", default="auto")
    ap.add_argument("--peak-flops", type=float, default=798e12)
    ap.add_argument("--prefill-flops", type=float, default=600e12)
    args = ap.parse_args(argv)
    if args.dtype is None:
        args.dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    else:
        args.dtype = getattr(torch, args.dtype)
    if args.stage in ("write", "correctness", "throughput", "hf") and not args.model_dir:
        ap.error(f"stage {args.stage} needs --model-dir")
    data = STAGES[args.stage](args)
    name = args.stage + (f"-{args.tag}" if args.tag else "")
    _write_json(args.out, name, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
