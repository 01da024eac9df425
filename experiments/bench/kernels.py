"""GPU micro-benchmark of the executor's Triton kernels against torch baselines.

Why: speed claims about the kernels are settled here (medians over repeats on a real GPU), never in
unit tests. Every case first checks the compiled kernel against the torch reference, so one device run
also validates the compiled path (the unit tests only ran the interpreter on CPU).

Cases
* decode attention (one query per sequence, context ``--ctx``) at several batch sizes and model head
  shapes: Triton ``paged_attention`` (auto split, and forced single split) vs
  ``F.scaled_dot_product_attention`` on already-dense K/V (a lower bound that skips the paging);
  reported as time and effective KV bandwidth.
* prefill attention (fresh prompts, causal) vs dense causal SDPA; reported as time and TFLOP/s.
* a CUDA-graph capture + replay of a decode ``paged_attention`` call (checks it is capturable).
* w4a16: fused kernel (default "reshape" unpacking, and the "rows" alternative) vs ``torch.mm`` on a
  dense 16-bit weight and vs dequantize + mm, for Qwen2.5-0.5B and Qwen2.5-7B layer shapes at
  decode-ish M; reported as time and packed-weight bandwidth.

Usage: ``python -m experiments.bench.kernels [--quick] [--repeats 50] [--out results.json]``
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys

import torch

from traces.files import atomic_write_json

DEVICE = "cuda"  # a module constant so the script's logic can be dry-run elsewhere

# (name, num_heads, num_kv_heads, head_dim)
ATTENTION_MODELS = [
    ("SmolLM2-135M", 9, 3, 64),
    ("Qwen2.5-0.5B", 14, 2, 64),
    ("Qwen3-0.6B", 16, 8, 128),
    ("Qwen2.5-7B", 28, 4, 128),
]
# (model, layer, K, N): fused projections as an engine would run them.
W4_SHAPES = [
    ("Qwen2.5-0.5B", "qkv", 896, 1152),
    ("Qwen2.5-0.5B", "o", 896, 896),
    ("Qwen2.5-0.5B", "gate_up", 896, 9728),
    ("Qwen2.5-0.5B", "down", 4864, 896),
    ("Qwen2.5-7B", "qkv", 3584, 4608),
    ("Qwen2.5-7B", "gate_up", 3584, 37888),
    ("Qwen2.5-7B", "down", 18944, 3584),
]


class Timer:
    """Median of CUDA-event times over repeats, with the L2 cache flushed before each repeat."""

    def __init__(self, repeats: int, warmup: int = 5):
        self.repeats, self.warmup = repeats, warmup
        self._flush = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device=DEVICE)

    def median_ms(self, fn) -> float:
        for _ in range(self.warmup):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(self.repeats):
            self._flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)


def make_decode_batch(batch, ctx, num_heads, kv_heads, head_dim, block_size, dtype, gen):
    blocks_per_seq = math.ceil(ctx / block_size)
    num_blocks = batch * blocks_per_seq
    k_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, dtype=dtype, device=DEVICE, generator=gen)
    v_cache = torch.randn_like(k_cache)
    block_tables = torch.randperm(num_blocks, device=DEVICE, generator=gen).view(batch, blocks_per_seq).int()
    seq_lens = torch.full((batch,), ctx, dtype=torch.int32, device=DEVICE)
    query_start_loc = torch.arange(batch + 1, dtype=torch.int32, device=DEVICE)
    query = torch.randn(batch, num_heads, head_dim, dtype=dtype, device=DEVICE, generator=gen)
    return query, k_cache, v_cache, block_tables, seq_lens, query_start_loc


def dense_kv(cache, block_tables, ctx):
    """[B, kv_heads, ctx, D] gathered once, outside the timed region (SDPA's best case)."""
    gathered = cache[block_tables.long()]  # [B, blocks, block_size, kv, D]
    b, nb, bs, kv, d = gathered.shape
    return gathered.reshape(b, nb * bs, kv, d)[:, :ctx].transpose(1, 2).contiguous()


def check_close(name, got, expected, tol):
    err = (got.float() - expected.float()).abs().max().item()
    scale = expected.float().abs().max().item() or 1.0
    ok = err <= tol * scale
    print(f"  check {name}: max abs err {err:.3e} (ref max {scale:.3e}) {'OK' if ok else 'MISMATCH'}")
    return ok


def bench_decode(timer, args, results, gen):
    from executor.kernels.reference import paged_attention_reference
    from executor.kernels.triton_attention import paged_attention

    import torch.nn.functional as F

    print(f"\n== decode attention, ctx {args.ctx}, block {args.block_size}, {args.dtype} ==")
    print(f"{'model':14s} {'B':>4s} {'triton ms':>10s} {'1-split ms':>10s} {'sdpa ms':>9s} {'triton GB/s':>12s} {'sdpa GB/s':>10s}")
    dtype = getattr(torch, args.dtype)
    for name, heads, kv_heads, dim in ATTENTION_MODELS:
        for batch in args.batches:
            q, kc, vc, bt, sl, qsl = make_decode_batch(batch, args.ctx, heads, kv_heads, dim, args.block_size, dtype, gen)
            scale = dim ** -0.5
            run = lambda splits=None: paged_attention(q, kc, vc, bt, sl, qsl, 1, args.ctx, scale, num_splits=splits)  # noqa: E731
            if batch <= 4:
                ok = check_close(f"{name} B={batch}", run(), paged_attention_reference(q, kc, vc, bt, sl, qsl, scale, torch.float32), 2e-2)
                results["checks"].append({"case": f"decode {name} B={batch}", "ok": ok})
            k_dense, v_dense = dense_kv(kc, bt, args.ctx), dense_kv(vc, bt, args.ctx)
            q_dense = q.unsqueeze(2)  # [B, H, 1, D]
            sdpa = lambda: F.scaled_dot_product_attention(q_dense, k_dense, v_dense, scale=scale, enable_gqa=True)  # noqa: E731
            t_auto = timer.median_ms(run)
            t_one = timer.median_ms(lambda: run(1))
            t_sdpa = timer.median_ms(sdpa)
            kv_bytes = 2 * batch * args.ctx * kv_heads * dim * kc.element_size()
            row = dict(model=name, batch=batch, ctx=args.ctx, triton_ms=t_auto, triton_one_split_ms=t_one,
                       sdpa_dense_ms=t_sdpa, triton_gbps=kv_bytes / t_auto / 1e6, sdpa_gbps=kv_bytes / t_sdpa / 1e6)
            results["decode"].append(row)
            print(f"{name:14s} {batch:4d} {t_auto:10.4f} {t_one:10.4f} {t_sdpa:9.4f} {row['triton_gbps']:12.0f} {row['sdpa_gbps']:10.0f}")
            del kc, vc, k_dense, v_dense


def bench_prefill(timer, args, results, gen):
    from executor.kernels.reference import paged_attention_reference
    from executor.kernels.triton_attention import paged_attention

    import torch.nn.functional as F

    print(f"\n== prefill attention (fresh causal prompts), {args.dtype} ==")
    print(f"{'model':14s} {'BxL':>9s} {'triton ms':>10s} {'sdpa ms':>9s} {'triton TF/s':>12s} {'sdpa TF/s':>10s}")
    dtype = getattr(torch, args.dtype)
    for name, heads, kv_heads, dim in ATTENTION_MODELS:
        for batch, length in args.prefills:
            _, kc, vc, bt, _, _ = make_decode_batch(batch, length, heads, kv_heads, dim, args.block_size, dtype, gen)
            q = torch.randn(batch * length, heads, dim, dtype=dtype, device=DEVICE, generator=gen)
            sl = torch.full((batch,), length, dtype=torch.int32, device=DEVICE)
            qsl = torch.arange(0, batch * length + 1, length, dtype=torch.int32, device=DEVICE)
            scale = dim ** -0.5
            run = lambda: paged_attention(q, kc, vc, bt, sl, qsl, length, length, scale)  # noqa: E731
            if batch * length <= 1024:
                ok = check_close(f"{name} {batch}x{length}", run(), paged_attention_reference(q, kc, vc, bt, sl, qsl, scale, torch.float32), 2e-2)
                results["checks"].append({"case": f"prefill {name} {batch}x{length}", "ok": ok})
            k_dense, v_dense = dense_kv(kc, bt, length), dense_kv(vc, bt, length)
            q_dense = q.view(batch, length, heads, dim).transpose(1, 2).contiguous()
            sdpa = lambda: F.scaled_dot_product_attention(q_dense, k_dense, v_dense, is_causal=True, scale=scale, enable_gqa=True)  # noqa: E731
            t_tri, t_sdpa = timer.median_ms(run), timer.median_ms(sdpa)
            flops = 4 * batch * heads * dim * length * length / 2  # causal half of QK^T and PV
            row = dict(model=name, batch=batch, length=length, triton_ms=t_tri, sdpa_dense_ms=t_sdpa,
                       triton_tflops=flops / t_tri / 1e9, sdpa_tflops=flops / t_sdpa / 1e9)
            results["prefill"].append(row)
            print(f"{name:14s} {f'{batch}x{length}':>9s} {t_tri:10.4f} {t_sdpa:9.4f} {row['triton_tflops']:12.1f} {row['sdpa_tflops']:10.1f}")


def bench_graph(timer, args, results, gen):
    """Capture one decode attention call in a CUDA graph; replay must match eager and be cheaper."""
    from executor.kernels.triton_attention import paged_attention

    print("\n== CUDA graph: decode paged_attention (Qwen2.5-0.5B heads, B=64) ==")
    dtype = getattr(torch, args.dtype)
    q, kc, vc, bt, sl, qsl = make_decode_batch(64, args.ctx, 14, 2, 64, args.block_size, dtype, gen)
    out = torch.empty_like(q)
    call = lambda: paged_attention(q, kc, vc, bt, sl, qsl, 1, args.ctx, 0.125, out=out)  # noqa: E731
    call()  # compile before capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    sl.fill_(args.ctx // 2)  # new lengths, same buffers: the graph must read them on the device
    graph.replay()
    replayed = out.clone()
    ok = check_close("graph replay vs eager", replayed, call(), 1e-3)
    t_eager, t_graph = timer.median_ms(call), timer.median_ms(graph.replay)
    print(f"  eager {t_eager:.4f} ms, graph replay {t_graph:.4f} ms")
    results["graph"] = dict(ok=ok, eager_ms=t_eager, replay_ms=t_graph)
    results["checks"].append({"case": "cuda graph replay", "ok": ok})


def bench_w4a16(timer, args, results, gen):
    from executor.kernels.reference import dequantize_w4, pack_int4_cols, pack_int4_rows, w4a16_matmul_reference
    from executor.kernels.triton_w4a16 import w4a16_matmul

    print(f"\n== w4a16 GPTQ matmul, group {args.group_size}, {args.dtype} activations ==")
    print(f"{'layer':22s} {'M':>4s} {'fused ms':>9s} {'rows ms':>8s} {'dense mm ms':>11s} {'deq+mm ms':>10s} {'fused GB/s':>11s}")
    dtype = getattr(torch, args.dtype)
    for model, layer, k, n in W4_SHAPES:
        groups = k // args.group_size
        qweight = pack_int4_rows(torch.randint(0, 16, (k, n), device=DEVICE, generator=gen))
        qzeros = pack_int4_cols(torch.randint(0, 16, (groups, n), device=DEVICE, generator=gen))
        scales = (torch.rand(groups, n, device=DEVICE, generator=gen) * 0.01).to(dtype)
        g_idx = (torch.arange(k, device=DEVICE) // args.group_size).int()
        dense = dequantize_w4(qweight, scales, qzeros, g_idx).to(dtype)
        packed_bytes = qweight.numel() * 4 + qzeros.numel() * 4 + scales.numel() * scales.element_size()
        for m in args.ms:
            x = torch.randn(m, k, dtype=dtype, device=DEVICE, generator=gen)
            fused = lambda: w4a16_matmul(x, qweight, scales, qzeros, g_idx, args.group_size)  # noqa: E731
            if m == args.ms[0]:
                ok = check_close(f"{model} {layer}", fused(), w4a16_matmul_reference(x, qweight, scales, qzeros, g_idx), 2e-2)
                results["checks"].append({"case": f"w4a16 {model} {layer}", "ok": ok})
            t_fused = timer.median_ms(fused)
            t_rows = timer.median_ms(lambda: w4a16_matmul(x, qweight, scales, qzeros, g_idx, args.group_size, unpack="rows"))
            t_mm = timer.median_ms(lambda: x @ dense)
            t_deq = timer.median_ms(lambda: x @ dequantize_w4(qweight, scales, qzeros, g_idx).to(dtype))
            row = dict(model=model, layer=layer, m=m, k=k, n=n, fused_ms=t_fused, fused_rows_unpack_ms=t_rows, dense_mm_ms=t_mm,
                       dequant_mm_ms=t_deq, fused_gbps=packed_bytes / t_fused / 1e6)
            results["w4a16"].append(row)
            print(f"{model + ' ' + layer:22s} {m:4d} {t_fused:9.4f} {t_rows:8.4f} {t_mm:11.4f} {t_deq:10.4f} {row['fused_gbps']:11.0f}")
        del dense


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes and repeats (a ~1 minute run)")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--ctx", type=int, default=1024, help="decode context length")
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16")
    parser.add_argument("--only", choices=["decode", "prefill", "graph", "w4a16"], action="append",
                        help="run only these sections (repeatable)")
    parser.add_argument("--out", help="write all numbers as JSON here")
    args = parser.parse_args(argv)
    args.batches = [1, 16, 64, 256]
    args.prefills = [(1, 512), (4, 2048)]
    args.ms = [1, 16, 64]
    if args.quick:
        args.repeats = min(args.repeats, 20)
        args.batches = [1, 64]
        args.prefills = [(2, 512)]
        args.ms = [1, 16]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_kernels: no CUDA device here, nothing measured (this benchmark needs a GPU; "
              "CPU correctness is covered by tests/executor/test_triton_*.py under TRITON_INTERPRET=1).",
              file=sys.stderr)
        return 2
    if os.environ.get("TRITON_INTERPRET", "") not in ("", "0"):
        print("bench_kernels: unset TRITON_INTERPRET to time the compiled kernels", file=sys.stderr)
        return 2
    import triton

    print(f"torch {torch.__version__}, triton {triton.__version__}, {torch.cuda.get_device_name()}")
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    timer = Timer(args.repeats)
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
               "decode": [], "prefill": [], "w4a16": [], "graph": None, "checks": []}
    sections = {"decode": bench_decode, "prefill": bench_prefill, "graph": bench_graph, "w4a16": bench_w4a16}
    for name, fn in sections.items():
        if args.only and name not in args.only:
            continue
        fn(timer, args, results, gen)
    failed = [c["case"] for c in results["checks"] if not c["ok"]]
    print(f"\ncorrectness checks: {len(results['checks']) - len(failed)}/{len(results['checks'])} OK"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    if args.out:
        atomic_write_json(args.out, results, sort_keys=False, allow_nan=True)
        print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
