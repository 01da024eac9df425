"""Price Vidur's own batch sequence with one of our cost models: the cost-only part of a
side-by-side, with scheduling taken out.

    python -m experiments.bench.vidur_batches price VIDUR_RUN VIDUR_TRACE_CSV \\
        --cost-model profile:DIR --model llama-2-7b --hardware a100-80g
    python -m experiments.bench.vidur_batches scale-profile SRC_DIR DST_DIR FACTOR

`price` reads the batches Vidur ran (its chrome_trace.json: request ids and tokens per request,
and the time Vidur charged), rebuilds each batch's shape from the requests' prompt lengths
(the trace-replay CSV Vidur was given; Vidur numbers requests by row), prices every batch with
our cost model and prints busy time on both sides, overall and for decode-only and mixed
batches. Near saturation queueing turns a 1 % difference here into tens of % of TTFT.

`scale-profile` copies a Vidur profile folder (mlp.csv, attention.csv) with every timing column
multiplied by FACTOR: to check that a latency gap closes when our per-step cost is matched to
Vidur's (pick FACTOR so that `price` reports equal busy time), i.e. that the gap is cost
amplified by queueing and not the schedulers.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from experiments.bench.vidur_side_by_side import newest_output
from policy.plan import StepShape

PROFILE_FILES = ("mlp.csv", "attention.csv")
TIME_PREFIX = "time_stats."


@dataclass
class VidurBatch:
    duration_s: float
    request_ids: list[int]
    num_tokens: list[int]


def find_chrome_trace(run: str | Path) -> Path:
    return newest_output(run, "chrome_trace.json", " (run Vidur with its chrome trace on)")


def read_vidur_batches(run: str | Path) -> list[VidurBatch]:
    path = find_chrome_trace(run)
    events = json.loads(path.read_text()).get("traceEvents", [])
    batches = []
    for i, event in enumerate(events):
        if event.get("ph") != "X":
            continue
        args = event.get("args", {})
        if "request_ids" not in args or "num_tokens" not in args or "dur" not in event:
            raise ValueError(f"{path}: event {i} lacks dur / args.request_ids / args.num_tokens")
        if len(args["request_ids"]) != len(args["num_tokens"]):
            raise ValueError(f"{path}: event {i}: {len(args['request_ids'])} request ids, {len(args['num_tokens'])} token counts")
        batches.append(VidurBatch(float(event["dur"]) / 1e6, [int(r) for r in args["request_ids"]],
                                  [int(t) for t in args["num_tokens"]]))
    return batches


def read_prompt_lengths(trace_csv: str | Path) -> list[int]:
    df = pd.read_csv(trace_csv)
    if "num_prefill_tokens" not in df.columns:
        raise ValueError(f"{trace_csv}: no num_prefill_tokens column (expected Vidur's trace-replay CSV)")
    return [int(x) for x in df["num_prefill_tokens"]]


def batch_shapes(batches: list[VidurBatch], prompt_lens: list[int]) -> list[StepShape]:
    """Each batch as the StepShape our cost models price: a request whose prompt is not yet all
    computed runs a prefill chunk of its token count after the tokens it already has; one whose
    prompt is done decodes one token. The batch completing a prompt samples that request's first
    token; every decode samples."""
    computed = [0] * len(prompt_lens)
    shapes = []
    for b_index, batch in enumerate(batches):
        n_pre = pre_tok = n_dec = pre_ctx = dec_ctx = pairs = n_sampled = 0
        for rid, q in zip(batch.request_ids, batch.num_tokens):
            if not 0 <= rid < len(prompt_lens):
                raise ValueError(f"batch {b_index}: request id {rid} not in the trace ({len(prompt_lens)} requests)")
            c, prompt = computed[rid], prompt_lens[rid]
            if c >= prompt:
                n_dec += 1
                n_sampled += 1
                dec_ctx += c + 1
                computed[rid] += 1
            else:
                if c + q > prompt:
                    raise ValueError(f"batch {b_index}: request {rid} computes {q} prompt tokens after {c} of {prompt}")
                n_pre += 1
                pre_tok += q
                pre_ctx += c + q
                pairs += q * c + q * (q + 1) // 2
                computed[rid] += q
                if computed[rid] == prompt:
                    n_sampled += 1
        shapes.append(StepShape(n_pre, pre_tok, n_dec, pre_ctx, dec_ctx, pairs, n_sampled))
    return shapes


def price(batches: list[VidurBatch], shapes: list[StepShape], cost_model) -> pd.DataFrame:
    """Busy seconds per batch kind (decode-only / mixed / all): Vidur's and ours."""
    df = pd.DataFrame({
        "kind": ["decode-only" if s.num_prefill_requests == 0 else "mixed" for s in shapes],
        "vidur_s": [b.duration_s for b in batches],
        "ours_s": [cost_model.time_for_shape(s) for s in shapes],
    })
    by_kind = df.groupby("kind").agg(batches=("vidur_s", "size"), vidur_s=("vidur_s", "sum"), ours_s=("ours_s", "sum"))
    total = pd.DataFrame({"batches": [len(df)], "vidur_s": [df.vidur_s.sum()], "ours_s": [df.ours_s.sum()]}, index=["all"])
    out = pd.concat([by_kind, total])
    out["ours_vs_vidur_pct"] = 100.0 * (out.ours_s / out.vidur_s - 1.0)
    return out


def scale_profile(src: str | Path, dst: str | Path, factor: float) -> list[Path]:
    if factor <= 0:
        raise ValueError(f"scale factor {factor}: must be > 0")
    src, dst = Path(src), Path(dst)
    present = [name for name in PROFILE_FILES if (src / name).is_file()]
    if not present:
        raise FileNotFoundError(f"{src}: none of {PROFILE_FILES}")
    dst.mkdir(parents=True, exist_ok=True)
    written = []
    for name in present:
        df = pd.read_csv(src / name)
        for column in df.columns:
            if column.startswith(TIME_PREFIX) and pd.api.types.is_numeric_dtype(df[column]):
                df[column] = df[column] * factor
        df.to_csv(dst / name, index=False)
        written.append(dst / name)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("price", help="price Vidur's batches with our cost model")
    p.add_argument("vidur_run", help="Vidur run folder (or its chrome_trace.json)")
    p.add_argument("trace_csv", help="the trace-replay CSV Vidur was given")
    p.add_argument("--cost-model", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--hardware", required=True)
    p.add_argument("--tp", type=int, default=1)
    s = sub.add_parser("scale-profile", help="copy a profile folder with its timings scaled")
    s.add_argument("src")
    s.add_argument("dst")
    s.add_argument("factor", type=float)
    args = parser.parse_args(argv)
    try:
        if args.command == "scale-profile":
            for path in scale_profile(args.src, args.dst, args.factor):
                print(f"wrote {path}")
            return 0
        from sim.cost.registry import build_cost_model
        from sim.hardware import get_hardware
        from sim.models import get_model_shape

        cost_model = build_cost_model(args.cost_model, model=get_model_shape(args.model),
                                      hardware=get_hardware(args.hardware), tp=args.tp)
        batches = read_vidur_batches(args.vidur_run)
        table = price(batches, batch_shapes(batches, read_prompt_lengths(args.trace_csv)), cost_model)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table.round({"vidur_s": 1, "ours_s": 1, "ours_vs_vidur_pct": 2}).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
