"""Paged KV and the block table: where each request's KV lives, step by step.

    python examples/paged_kv.py [--model DIR]

The scheduler's KV manager hands out fixed-size blocks from one pool; a request's block
table maps its token positions to blocks (token i lives in block table[i // block_size],
slot i % block_size). Blocks are allocated as tokens arrive, not reserved for
`max_model_len`, and go back to the pool when the request finishes. The executor's KV tensor
is indexed by the same block ids: the plan carries the table to the worker.
"""

from __future__ import annotations

import argparse


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args(argv)

    import torch

    from executor.engine import LLMEngine
    from executor.sampler import SamplingParams

    torch.set_num_threads(1)
    engine = LLMEngine(args.model, device="cpu", max_model_len=64, block_size=4, num_blocks=24,
                       enable_prefix_caching=False, max_num_batched_tokens=64)
    kv = engine.scheduler.kv
    print(f"pool: {kv.num_blocks} blocks x {engine.scheduler_config.block_size} tokens, "
          f"{engine.kv_bytes_per_block / 1024:.0f} KiB per block on this model")
    for i, n in enumerate((5, 9, 3)):
        req = engine.make_request(list(range(10 + i, 10 + i + n)), SamplingParams(temperature=0.0, max_tokens=6,
                                                                                  ignore_eos=True),
                                  request_id=f"r{i}")
        engine.add_request(req)
    log = []
    while engine.has_unfinished_requests():
        plan, _ = engine.step()
        tables = {rid: list(engine.scheduler.get_block_ids(rid)) for rid in sorted(engine.scheduler.requests)
                  if rid in {r.request_id for r in engine.scheduler.running}}
        lengths = {r.request_id: r.num_tokens for r in engine.scheduler.running}
        log.append({"step": plan.step_id, "tables": tables, "used_blocks": kv.num_used_blocks, "usage": kv.usage})
        shown = ", ".join(f"{rid} ({lengths[rid]} tok) -> {t}" for rid, t in tables.items()) or "(all finished)"
        print(f"step {plan.step_id:2d}: used {kv.num_used_blocks:2d}/{kv.num_blocks} blocks  {shown}")
    print(f"after the run: {kv.num_free_blocks} of {kv.num_blocks} blocks free again")
    return log


if __name__ == "__main__":
    main()
