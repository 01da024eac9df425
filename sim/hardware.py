"""Hardware ceilings for the roofline cost model, and the KV pool a memory budget allows.

Ceilings are *measured-style* numbers (what a good kernel reaches), not datasheet peaks: the
H100 and H200 bandwidth / bf16 GEMM figures were measured on those cards (see
reference/gpu_executor.md §2.1); the A100 figures are the usual ~85% of datasheet. The generic
CPU has no trustworthy defaults at all, so it must be calibrated on the machine that runs it
(`python -m sim.calibrate_cpu cpu.json`, then `--hardware cpu.json`).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

from sim.models import ModelShape

GiB = 1024**3

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


@dataclass(frozen=True)
class HardwareSpec:
    name: str
    memory_bytes: int  # device memory the engine may use (before gpu_memory_utilization)
    mem_bw: float  # bytes/s a streaming kernel reaches
    flops_16: float  # FLOP/s of a large bf16/fp16 GEMM
    flops_32: float  # FLOP/s of a large fp32 GEMM (TF32 off)
    attn_efficiency: float = 0.6  # fraction of GEMM FLOP/s reached by prefill attention
    step_overhead_s: float = 5e-4  # per step: host scheduling, input prep, sampling, launch
    layer_overhead_s: float = 1e-5  # per layer per step: kernel launches / tails
    calibrated: bool = True

    def flops(self, dtype: str) -> float:
        return self.flops_32 if DTYPE_BYTES[dtype] == 4 else self.flops_16

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "hardware spec") -> "HardwareSpec":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown field(s) {unknown}; known: {sorted(known)}")
        missing = [f.name for f in fields(cls) if f.name not in data and f.default is MISSING]
        if missing:
            raise ValueError(f"{source}: missing field(s) {missing}")
        return cls(**data)


HARDWARE_PRESETS: dict[str, HardwareSpec] = {
    h.name: h
    for h in (
        # 80 GB HBM3: torch reports ~79.2 GiB total.
        HardwareSpec("h100-sxm", int(79.2 * GiB), 3.0e12, 798e12, 51e12),
        HardwareSpec("h200", int(139.8 * GiB), 4.3e12, 788e12, 51e12),
        HardwareSpec("a100-80g", int(79.2 * GiB), 1.7e12, 265e12, 17e12),
        # Placeholder that refuses to price anything until calibrated (see calibrate_cpu).
        HardwareSpec("cpu", 0, 0.0, 0.0, 0.0, step_overhead_s=0.0, layer_overhead_s=0.0, calibrated=False),
    )
}

_ALIASES = {"h100": "h100-sxm", "h100-80g": "h100-sxm", "h100-sxm5": "h100-sxm", "a100": "a100-80g", "a100-80gb": "a100-80g"}


def get_hardware(name_or_path: str | Path) -> HardwareSpec:
    """A preset by name, or a HardwareSpec JSON file (what `python -m sim.calibrate_cpu` writes)."""
    path = Path(name_or_path)
    if path.suffix == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"hardware file {path} does not exist")
        return HardwareSpec.from_dict(json.loads(path.read_text()), source=str(path))
    key = str(name_or_path).strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in HARDWARE_PRESETS:
        raise ValueError(
            f"unknown hardware {str(name_or_path)!r}; known presets: {', '.join(sorted(HARDWARE_PRESETS))} "
            "(or a hardware .json file)"
        )
    spec = HARDWARE_PRESETS[key]
    if not spec.calibrated:
        raise ValueError(
            f"hardware {key!r} has no ceilings until it is calibrated on the machine that runs it: "
            "`python -m sim.calibrate_cpu cpu.json`, then pass `--hardware cpu.json` "
            "(or use a profiled cost model)"
        )
    return spec


def calibrate_cpu(repeats: int = 5) -> HardwareSpec:
    """Measure this machine's copy bandwidth and fp32 GEMM rate with numpy (a few seconds).
    The result is a fixed spec to save and reuse, so simulations stay deterministic."""
    import numpy as np

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    src = np.ones(64 * 1024 * 1024 // 8)  # 64 MiB, beyond last-level cache
    dst = np.empty_like(src)
    copy_s = best(lambda: np.copyto(dst, src))
    mem_bw = 2 * src.nbytes / copy_s  # read + write
    n = 1024
    a = np.ones((n, n), dtype=np.float32)
    b = np.ones((n, n), dtype=np.float32)
    gemm_s = best(lambda: a @ b)
    flops_32 = 2 * n**3 / gemm_s
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = 16 * GiB
    # On a CPU, bf16 matmuls run no faster than fp32 ones in practice.
    return HardwareSpec("cpu", int(memory), mem_bw, flops_32, flops_32, attn_efficiency=0.5,
                        step_overhead_s=1e-3, layer_overhead_s=5e-5, calibrated=True)


def weight_bytes(model: ModelShape, dtype: str = "bf16", weight_bits: int = 16, group_size: int = 128) -> int:
    """Bytes of weights resident in memory (and read once per step).

    With `weight_bits=4` the decoder's linear layers are GPTQ: packed 4-bit weights plus, per
    group of `group_size` inputs and per output column, a 16-bit scale and a packed 4-bit zero,
    plus an int32 `g_idx` per input row. Embeddings, LM head and norms stay 16-bit."""
    elem = DTYPE_BYTES[_check_dtype(dtype)]
    if weight_bits == 16 or weight_bits == 32:
        linear = model.linear_params * elem
    elif weight_bits == 4:
        linear = model.linear_params // 2
        linear += model.linear_params * (2 + 0.5) // group_size
        h, i = model.hidden_size, model.intermediate_size
        rows_per_layer = 4 * h + model.q_dim + i  # inputs of q,k,v (h each), o (q_dim), gate/up (h), down (i)
        linear += model.num_layers * rows_per_layer * 4
    else:
        raise ValueError(f"weight_bits={weight_bits}: supported are 16 (dtype weights) and 4 (GPTQ)")
    other_elem = min(elem, 2) if weight_bits == 4 else elem
    lm_head = 0 if model.tie_word_embeddings else model.lm_head_params
    return int(linear + (model.small_params + model.embedding_params + lm_head) * other_elem)


def weight_bytes_per_step(model: ModelShape, dtype: str = "bf16", weight_bits: int = 16, group_size: int = 128) -> int:
    """Weight bytes one forward streams: every linear layer, the norms and the LM head. The
    embedding table is only gathered (a few rows), except when it *is* the LM head (tied)."""
    resident = weight_bytes(model, dtype, weight_bits, group_size)
    untouched = model.embedding_params if not model.tie_word_embeddings else 0
    elem = DTYPE_BYTES[dtype] if weight_bits != 4 else min(DTYPE_BYTES[dtype], 2)
    return resident - untouched * elem


def _check_dtype(dtype: str) -> str:
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype {dtype!r}: supported are {', '.join(DTYPE_BYTES)}")
    return dtype


def activation_reserve_bytes(model: ModelShape, dtype: str, max_num_batched_tokens: int, max_num_seqs: int) -> int:
    """Peak scratch memory of one forward at the full token budget (hidden states, QKV, the
    MLP's gate/up product, fp32 logits for the sampled rows) plus a fixed 1 GiB for the
    runtime (CUDA context, graphs, allocator slack) -- the part vLLM's memory profiling finds."""
    elem = DTYPE_BYTES[_check_dtype(dtype)]
    per_token = (4 * model.hidden_size + model.q_dim + 2 * model.kv_dim + 3 * model.intermediate_size) * elem
    logits = max_num_seqs * model.vocab_size * 4 * 2
    return int(max_num_batched_tokens * per_token + logits + 1 * GiB)


def kv_blocks_for(
    model: ModelShape,
    hardware: HardwareSpec,
    gpu_memory_utilization: float = 0.9,
    block_size: int = 16,
    dtype: str = "bf16",
    *,
    weight_bits: int = 16,
    max_num_batched_tokens: int = 2048,
    max_num_seqs: int = 128,
) -> int:
    """KV pool size in blocks: memory x utilization - weights - activation reserve, divided by
    the bytes of one block (K and V, all layers). Raises when the model does not fit."""
    if not 0.0 < gpu_memory_utilization <= 1.0:
        raise ValueError(f"gpu_memory_utilization={gpu_memory_utilization}: must be in (0, 1]")
    if not hardware.calibrated or hardware.memory_bytes <= 0:
        raise ValueError(f"hardware {hardware.name!r} has no memory size; calibrate it or give a hardware .json")
    budget = hardware.memory_bytes * gpu_memory_utilization
    weights = weight_bytes(model, dtype, weight_bits)
    reserve = activation_reserve_bytes(model, dtype, max_num_batched_tokens, max_num_seqs)
    free = budget - weights - reserve
    block_bytes = block_size * model.kv_bytes_per_token(DTYPE_BYTES[dtype])
    blocks = int(free // block_bytes) if free > 0 else 0
    if blocks < 1:
        raise ValueError(
            f"model {model.name!r} does not fit on {hardware.name!r}: {hardware.memory_bytes / GiB:.1f} GiB x "
            f"utilization {gpu_memory_utilization} = {budget / GiB:.2f} GiB, but weights take "
            f"{weights / GiB:.2f} GiB ({dtype}, {weight_bits}-bit linear) and activations reserve "
            f"{reserve / GiB:.2f} GiB, leaving no room for one KV block of {block_bytes / 1024:.0f} KiB"
        )
    return blocks
