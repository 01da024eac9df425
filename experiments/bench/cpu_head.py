"""A/B of the CPU logits path: decode step CPU time with the plain LM-head product (`x W^T`)
against the transposed one (`W x^T`) that `compute_logits` uses for 1..8 rows, interleaved
in one process (5 repeats each, medians), SmolLM2-135M, one torch thread.

    python -m experiments.bench.cpu_head
"""

from __future__ import annotations

import statistics

import torch

import executor.models.llama_like as ll
from executor.engine import LLMEngine
from executor.models_registry import resolve_model
from experiments.bench.executor import decode_step_ms


def main() -> None:
    torch.set_num_threads(1)
    eng = LLMEngine(resolve_model("smollm2-135m"), device="cpu", dtype=torch.float32, kv_cache_memory=2**30,
                    max_model_len=1024, max_num_seqs=64, max_num_batched_tokens=4096, load_tokenizer=False)
    eng.warmup()
    for batch in (1, 2, 4, 8):
        res: dict[str, list[float]] = {"plain": [], "transposed": []}
        for _ in range(5):
            for name, threshold in (("plain", 0), ("transposed", ll.CPU_FEW_ROWS_LOGITS)):
                saved, ll.CPU_FEW_ROWS_LOGITS = ll.CPU_FEW_ROWS_LOGITS, threshold
                try:
                    res[name].append(decode_step_ms(eng, batch))
                finally:
                    ll.CPU_FEW_ROWS_LOGITS = saved
        p, t = statistics.median(res["plain"]), statistics.median(res["transposed"])
        print(f"batch {batch}: plain head {p:6.1f} ms, transposed {t:6.1f} ms per decode step ({p / t:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
