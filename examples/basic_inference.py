"""Offline generation with sampling parameters: the smallest complete use of the engine.

    python examples/basic_inference.py                    # the embedded SmolLM2-135M
    python examples/basic_inference.py --model DIR        # any prepared HF directory

`LLMEngine.generate` is this project's `vllm.LLM.generate`: it queues every prompt, runs the
shared step driver until all are finished, and returns one `Output` per prompt, in order.
Greedy decoding (temperature 0) is deterministic; a seeded sample is reproducible too.
"""

from __future__ import annotations

import argparse
import time


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="model name or HF directory")
    parser.add_argument("--max-tokens", type=int, default=24)
    args = parser.parse_args(argv)

    import torch

    from executor.engine import LLMEngine
    from executor.sampler import SamplingParams

    torch.set_num_threads(1)  # small batches: one thread is as fast and does not fight neighbours
    engine = LLMEngine(args.model, device="cpu", max_model_len=512)
    tok = engine.tokenizer

    def chat(question: str) -> str:  # SmolLM2-Instruct answers best inside its chat template
        if tok is None or not getattr(tok, "chat_template", None):
            return question
        return tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                       add_generation_prompt=True)

    prompts = [chat("What is the capital of France?"), chat("Name three colours.")]
    settings = {
        "greedy": SamplingParams(temperature=0.0, max_tokens=args.max_tokens),
        "sampled (T=0.8, top-p 0.95, seed 1)": SamplingParams(temperature=0.8, top_p=0.95, seed=1,
                                                            max_tokens=args.max_tokens),
    }
    outputs = []
    for label, params in settings.items():
        t0 = time.perf_counter()
        outs = engine.generate(prompts, params)
        print(f"--- {label}: {time.perf_counter() - t0:.2f} s")
        for out in outs:
            text = out.text if out.text is not None else out.token_ids
            print(f"  [{out.request_id}] {len(out.token_ids)} tokens, finish={out.finish_reason}: {text!r}")
        outputs.append(outs)
    return outputs


if __name__ == "__main__":
    main()
