"""Batch generation with continuous batching, against the static-batching baseline.

    python examples/batch_inference.py [--model DIR] [--num-prompts 12] [--max-num-seqs 4]

The same prompts run twice on one engine: with continuous batching a finished request's slot is
refilled at the next step; with static batching the next batch starts only when the whole
batch has finished. Outputs are identical (greedy); what differs is the number of steps, and on
a GPU, where a decode step costs about the same at any batch size, throughput follows steps.
"""

from __future__ import annotations

import argparse
import time


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--num-prompts", type=int, default=8)
    parser.add_argument("--max-num-seqs", type=int, default=4)
    args = parser.parse_args(argv)

    import torch

    from executor.engine import LLMEngine
    from executor.sampler import SamplingParams

    torch.set_num_threads(1)
    engine = LLMEngine(args.model, device="cpu", max_model_len=256, max_num_seqs=args.max_num_seqs,
                       enable_prefix_caching=False)
    vocab = engine.config.vocab_size
    # Token-id prompts of different lengths and output lengths that vary 2..12: the spread of
    # output lengths is what makes static batching wait on its longest member.
    prompts = [[(31 * i + 7 * j) % vocab for j in range(8 + 3 * i)] for i in range(args.num_prompts)]
    params = [SamplingParams(temperature=0.0, max_tokens=2 + (5 * i) % 11, ignore_eos=True)
              for i in range(args.num_prompts)]

    steps, outputs = {}, {}
    for batching in ("continuous", "static"):
        engine.reset_scheduler(batching=batching)
        t0 = time.perf_counter()
        outputs[batching] = engine.generate(prompts, params)
        steps[batching] = engine.stats.num_steps
        tokens = sum(len(o.token_ids) for o in outputs[batching])
        print(f"{batching:>10}: {tokens} tokens in {steps[batching]} steps, {time.perf_counter() - t0:.2f} s")
    same = [o.token_ids for o in outputs["continuous"]] == [o.token_ids for o in outputs["static"]]
    print(f"identical outputs: {same}; step ratio static/continuous = {steps['static'] / steps['continuous']:.2f}")
    return {"steps": steps, "same_outputs": same}


if __name__ == "__main__":
    main()
