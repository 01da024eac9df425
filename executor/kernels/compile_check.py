"""Compile the exact kernel variants the wrappers launch, for a GPU architecture, on a machine without one.

Why: the CPU tests run the kernels in Triton's interpreter, which executes Python and accepts programs
the real compiler rejects (types of loop-carried values, unsupported shapes, shared-memory budgets).
This module builds each launch with the wrappers' own planning code on meta tensors, specialises the
arguments the way a real launch would (Triton's own binder), and runs the full compile through ptxas.
Only running on a GPU proves speed and numerics; this proves the compiled path builds.

Usage: ``python -m executor.kernels.compile_check [--arch 90] [--quick]`` (TRITON_INTERPRET must be unset).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

import torch

# (name, num_heads, num_kv_heads, head_dim) of the models the executor serves.
ATTENTION_SHAPES = [
    ("SmolLM2-135M", 9, 3, 64),
    ("Qwen2.5-0.5B", 14, 2, 64),
    ("Qwen3-0.6B", 16, 8, 128),
    ("Qwen2.5-7B", 28, 4, 128),
]
# (name, K, N, group_size) of GPTQ layers; K=576 with group 32/64 covers SmolLM2.
W4_SHAPES = [
    ("SmolLM2 qkv g64", 576, 960, 64),
    ("Qwen2.5-0.5B down g128", 4864, 896, 128),
    ("Qwen2.5-7B gate_up g128", 3584, 37888, 128),
]
SHARED_MEMORY_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}


@dataclass
class CompileResult:
    name: str
    seconds: float
    shared_bytes: int | None
    error: str | None = None


def _meta(*shape, dtype):
    return torch.empty(*shape, dtype=dtype, device="meta")


def attention_launches(dtype: torch.dtype, quick: bool):
    """(name, Launch) for store_kv and paged_attention: decode, split decode and prefill per model."""
    from .triton_attention import plan_paged_attention, plan_store_kv

    block_sizes = (16,) if quick else (16, 32)
    shapes = ATTENTION_SHAPES[::3] if quick else ATTENTION_SHAPES
    for model, heads, kv_heads, dim in shapes:
        for block_size in block_sizes:
            k_cache = _meta(8, block_size, kv_heads, dim, dtype=dtype)
            key = _meta(4, kv_heads, dim, dtype=dtype)
            slots = _meta(4, dtype=torch.int64)
            for launch in plan_store_kv(key, key, k_cache, k_cache, slots):
                yield f"store_kv {model} bs{block_size}", launch
            for mode, tokens, max_q, splits in (("decode", 4, 1, 1), ("split-decode", 4, 1, 4), ("prefill", 64, 64, 1)):
                query = _meta(tokens, heads, dim, dtype=dtype)
                tables = _meta(4, 8, dtype=torch.int32)
                seq_lens = _meta(4, dtype=torch.int32)
                qsl = _meta(5, dtype=torch.int32)
                launches = plan_paged_attention(query, k_cache, k_cache, tables, seq_lens, qsl, max_q, 4096,
                                                dim ** -0.5, torch.empty_like(query), splits)
                for launch in launches:
                    yield f"{launch.kernel.__name__} {model} {mode} bs{block_size}", launch


def w4a16_launches(dtype: torch.dtype, quick: bool):
    """(name, Launch) for w4a16 at decode-ish M, sequential and act-order groups, both unpack modes."""
    from .triton_w4a16 import plan_w4a16

    shapes = W4_SHAPES[1:2] if quick else W4_SHAPES
    for layer, k, n, group in shapes:
        for m in ((1,) if quick else (1, 16, 64)):
            for sequential in (True, False):
                for unpack in ("reshape", "rows"):
                    x = _meta(m, k, dtype=dtype)
                    _, launches = plan_w4a16(x, _meta(k // 8, n, dtype=torch.int32), _meta(k // group, n, dtype=dtype),
                                             _meta(k // group, n // 8, dtype=torch.int32), _meta(k, dtype=torch.int32),
                                             group, sequential, None, 264, unpack)
                    order = "seq" if sequential else "act"
                    for launch in launches:
                        yield f"w4a16 {layer} M{m} {order} {unpack}", launch


def compile_launch(launch, arch: int):
    """Specialise and compile one launch for sm_<arch> the way JITFunction.run would, without launching."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    kernel = launch.kernel
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound_args, specialization, options = binder(*launch.args, **launch.kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, launch.kwargs, bound_args,
                                                              specialization, options)
    return triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target, options=options.__dict__)


def run_checks(arch: int = 90, quick: bool = False, dtypes=(torch.bfloat16, torch.float16)) -> list[CompileResult]:
    from . import _triton_common

    if _triton_common.INTERPRETED:
        raise RuntimeError("TRITON_INTERPRET=1 is set: unset it so triton compiles instead of interpreting")
    results = []
    for dtype in dtypes:
        for name, launch in [*attention_launches(dtype, quick), *w4a16_launches(dtype, quick)]:
            label = f"{name} {str(dtype).removeprefix('torch.')}"
            start = time.perf_counter()
            try:
                compiled = compile_launch(launch, arch)
            except Exception as exc:  # noqa: BLE001 - every failure is reported with its variant
                results.append(CompileResult(label, time.perf_counter() - start, None, f"{type(exc).__name__}: {exc}"))
                continue
            shared = compiled.metadata.shared
            limit = SHARED_MEMORY_LIMIT.get(arch)
            error = None
            if limit is not None and shared > limit:
                error = f"needs {shared} bytes of shared memory, sm_{arch} allows {limit}"
            results.append(CompileResult(label, time.perf_counter() - start, shared, error))
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x10 (80 = A100, 90 = H100/H200)")
    parser.add_argument("--quick", action="store_true", help="a few representative variants only")
    parser.add_argument("--dtype", choices=["bfloat16", "float16"], action="append",
                        help="activation/cache dtypes to compile (repeatable; default both)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "") not in ("", "0"):
        print("compile_check: unset TRITON_INTERPRET (the interpreter does not compile)", file=sys.stderr)
        return 2
    dtypes = tuple(getattr(torch, name) for name in (args.dtype or ["bfloat16", "float16"]))
    results = run_checks(args.arch, args.quick, dtypes)
    for r in results:
        status = "OK  " if r.error is None else "FAIL"
        shared = "-" if r.shared_bytes is None else f"{r.shared_bytes // 1024} KiB smem"
        print(f"{status} {r.name:60s} {r.seconds:5.1f}s {shared}" + (f"  {r.error}" if r.error else ""))
    failed = sum(r.error is not None for r in results)
    print(f"{len(results) - failed}/{len(results)} variants compiled for sm_{args.arch}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
