"""Is the executor steady? Replay one plan sequence twice and compare step times per shape.

`python -m experiments.bench.step_spread [--requests 16] [--prefix 512] [--suffix 64] [--output 48]`

The workload is a batch of requests that share a long prompt prefix (a conversation trace's
system prompt and history), all added at once with greedy sampling and `ignore_eos`: scheduling
then depends on nothing but the requests, so every pass produces the same plan sequence —
prefill chunks after a prefix hit, then decodes of up to `max_num_seqs` rows over hundreds of
cached tokens. Only the model runner's work is timed (the scheduler and bookkeeping are not
what varies).

Reported per plan-shape class (decode rows x context bucket, prefill, mixed):
- `pass_spread`: median over steps of |t_pass2 - t_pass1| / min(t1, t2) for the same step of
  the two passes (identical plans);
- `within_spread`: (p90 - p10) / median of one pass's steps of that class, a sign of slow
  steps that come and go.
The target is identical plans within 5 %. Timings are noisy while other processes run;
the script prints the load average before and after so a reader can judge.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from collections import defaultdict

from traces.timeline import plan_shape


def shape_class(shape: tuple, ctx_bucket: int = 256) -> str:
    """A coarse class for grouping: plans in one class cost nearly the same."""
    n_pre, pre_tok, n_dec, pre_ctx, dec_ctx, pairs, n_sampled = shape
    if n_pre and n_dec:
        return f"mixed  D{n_dec:<3d} P{pre_tok}"
    if n_pre:
        hit = "after-hit" if pre_ctx > pre_tok else "fresh"
        return f"prefill {hit} P{pre_tok}"
    mean_ctx = dec_ctx // max(1, n_dec)
    lo = mean_ctx // ctx_bucket * ctx_bucket
    return f"decode D{n_dec:<3d} ctx{lo}-{lo + ctx_bucket}"


def _workload(n: int, prefix: int, suffix: int, vocab: int) -> list[list[int]]:
    shared = [3 + (i * 7919) % (vocab - 3) for i in range(prefix)]
    return [shared + [3 + ((r + 1) * 104729 + j * 31) % (vocab - 3) for j in range(suffix)] for r in range(n)]


def run_pass(engine, prompts: list[list[int]], output: int, ref_clock=None) -> list[tuple[tuple, tuple]]:
    """One pass: (plan shape, (runner wall seconds, runner CPU seconds, minor page faults, whole
    step wall seconds, whole step CPU seconds[, whole step on `ref_clock`])) per non-empty step.
    CPU time is what the step cost this process; wall time minus it is time the step waited
    for a core (other processes), so the two separate our noise from theirs. `ref_clock` (an
    executor.clocks.ReferenceSpeedClock) also divides out the host's speed drift."""
    from executor.sampler import SamplingParams

    runner = engine.runner
    timings: list[tuple[float, float, int]] = []
    execute = runner.execute

    def timed(*args, **kwargs):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        c0, t0 = time.process_time(), time.perf_counter()
        out = execute(*args, **kwargs)
        t1, c1 = time.perf_counter(), time.process_time()
        timings.append((t1 - t0, c1 - c0, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0))
        return out

    runner.execute = timed
    try:
        params = SamplingParams(temperature=0.0, max_tokens=output, ignore_eos=True)
        for prompt in prompts:
            engine.add_request(engine.make_request(prompt, params), params)
        steps = []
        while engine.has_unfinished_requests():
            n_before = len(timings)
            r0 = ref_clock.now() if ref_clock is not None else 0.0
            c0, t0 = time.process_time(), time.perf_counter()
            plan, result = engine.step()
            whole = (time.perf_counter() - t0, time.process_time() - c0)
            if ref_clock is not None:
                whole += (ref_clock.now() - r0,)
            if plan.scheduled:
                steps.append((plan_shape(plan), timings[n_before] + whole))
    finally:
        del runner.execute
    engine.reset_scheduler()
    return steps


def write_steps(steps: list[tuple[tuple, tuple]], path: str, which: int) -> None:
    """A steps table with the StepRecord columns the step accounting reads."""
    import pandas as pd

    rows = []
    for i, (shape, t) in enumerate(steps):
        n_pre, pre_tok, n_dec, pre_ctx, dec_ctx, pairs, n_sampled = shape
        rows.append({"step_id": i, "duration_s": t[which], "num_prefill_requests": n_pre,
                     "num_prefill_tokens": pre_tok, "num_decode_requests": n_dec,
                     "sum_context_len": pre_ctx + dec_ctx, "sum_prefill_context_len": pre_ctx,
                     "prefill_attn_pairs": pairs, "num_sampled": n_sampled})
    pd.DataFrame(rows).to_parquet(path)


def spread_table(pass_a: list[tuple[tuple, tuple]], pass_b: list[tuple[tuple, tuple]], which: int = 0) -> list[dict]:
    """Per shape class: the spread of timing `which` (0 wall, 1 CPU) between the passes' identical
    steps and within a pass; page faults per step (mean of both passes)."""
    if [s for s, _ in pass_a] != [s for s, _ in pass_b]:
        raise ValueError("the two passes produced different plan sequences; the workload is not deterministic")
    groups: dict[str, list[tuple[float, float]]] = defaultdict(list)
    faults: dict[str, list[int]] = defaultdict(list)
    for (shape, ta), (_, tb) in zip(pass_a, pass_b):
        groups[shape_class(shape)].append((ta[which], tb[which]))
        faults[shape_class(shape)] += [ta[2], tb[2]]
    rows = []
    for cls, pairs in sorted(groups.items()):
        diffs = [abs(b - a) / min(a, b) for a, b in pairs]
        times = sorted(t for pair in pairs for t in pair)
        q = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
        med = statistics.median(times)
        rows.append({"class": cls, "steps": len(pairs), "median_ms": 1e3 * med,
                     "pass_spread": statistics.median(diffs), "pass_spread_max": max(diffs),
                     "within_spread": (q[8] - q[0]) / med,
                     "faults_per_step": statistics.mean(faults[cls])})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--prefix", type=int, default=512)
    ap.add_argument("--suffix", type=int, default=64)
    ap.add_argument("--output", type=int, default=48)
    ap.add_argument("--max-num-seqs", type=int, default=16)
    ap.add_argument("--budget", type=int, default=256, help="max_num_batched_tokens")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (1, as the demo spec runs the executor; 0 = torch's default)")
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--steps-out", default=None,
                    help="also write the first pass's steps (StepRecord columns) to this parquet file, as held-out "
                         "steps for experiments.analysis.cost_model_heldout")
    ap.add_argument("--steps-clock", choices=("wall", "cpu", "cpu-ref"), default="wall",
                    help="duration_s of --steps-out: whole engine.step wall, process CPU, or cpu-ref seconds")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from executor.engine import LLMEngine
    from experiments.run import model_ref

    max_len = args.prefix + args.suffix + args.output + 16
    engine = LLMEngine(model_ref.executor_model_dir(args.model), num_blocks=(args.requests + 2) * (-(-max_len // 16)) + 8,
                       block_size=16, max_model_len=max_len, max_num_seqs=args.max_num_seqs,
                       max_num_batched_tokens=args.budget, enable_prefix_caching=True, dtype="float32",
                       device="cpu", load_tokenizer=False)
    engine.warmup()
    prompts = _workload(args.requests, args.prefix, args.suffix, engine.config.vocab_size)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, interop {torch.get_num_interop_threads()}, "
          f"loadavg before {os.getloadavg()[0]:.2f}")
    ref_clock = None
    if torch.get_num_threads() == 1:
        from executor.clocks import ReferenceSpeedClock

        ref_clock = ReferenceSpeedClock()
    run_pass(engine, prompts, args.output, ref_clock)  # warm-up pass: first-touch of the KV pages, caches
    passes = [run_pass(engine, prompts, args.output, ref_clock) for _ in range(args.passes)]
    # Runner-only wall / CPU time (0, 1), and the whole step on the speed-referenced clock (5).
    columns = [(0, "wall time"), (1, "process CPU time")] + ([(5, "CPU time at reference speed (cpu-ref clock)")]
                                                             if ref_clock is not None else [])
    for which, label in columns:
        print(f"\n{label} (identical plans, pass 1 vs pass 2)")
        print(f"{'class':32s} {'steps':>5s} {'median ms':>9s} {'pass spread':>11s} {'max':>7s} {'within':>7s} "
              f"{'faults/step':>11s}")
        for r in spread_table(passes[0], passes[1], which):
            print(f"{r['class']:32s} {r['steps']:5d} {r['median_ms']:9.1f} {100 * r['pass_spread']:10.1f}% "
                  f"{100 * r['pass_spread_max']:6.1f}% {100 * r['within_spread']:6.1f}% {r['faults_per_step']:11.0f}")
        diffs = [abs(b[which] - a[which]) / min(a[which], b[which]) for (_, a), (_, b) in zip(passes[0], passes[1])]
        print(f"all steps: median pass spread {100 * statistics.median(diffs):.1f}%, "
              f"p90 {100 * statistics.quantiles(diffs, n=10)[8]:.1f}%, max {100 * max(diffs):.1f}%; "
              f"total {sum(t[which] for _, t in passes[0]):.2f} s vs {sum(t[which] for _, t in passes[1]):.2f} s")
    print(f"loadavg after {os.getloadavg()[0]:.2f}")
    if args.steps_out:
        if args.steps_clock == "cpu-ref" and ref_clock is None:
            raise SystemExit("--steps-clock cpu-ref needs --threads 1")
        write_steps(passes[0], args.steps_out, {"wall": 3, "cpu": 4, "cpu-ref": 5}[args.steps_clock])
        print(f"steps of pass 1 ({args.steps_clock} clock) written to {args.steps_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
