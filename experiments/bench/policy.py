"""Cost of the policy layer per step: one `schedule()` + `update_from_output()` call,
divided by the number of running requests, in steady decode.

    python -m experiments.bench.policy [--sizes 16,64,256,1024] [--repeats 7] [--json PATH]

Every request is admitted first (one large prefill step), ignores eos and has a max_tokens
no run reaches, so each measured step is a pure decode step over all N requests: the
per-token work the scheduler adds to every engine iteration. The pool is sized so nothing
is preempted. Each repeat times many steps; the table shows the median over repeats
(and the spread), with prefix caching on and off. The bar: <= 2 us per running request per
step at 256 running with prefix caching on.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from policy import Request, SchedulerConfig, build_scheduler
from policy.utils import cdiv
from traces.files import atomic_write_json

BLOCK_SIZE = 16
PROMPT_LEN = 128
BAR_RUNNING, BAR_US = 256, 2.0
TARGET_REQUEST_STEPS = 20_000  # per repeat: about 20-60 ms of work at any size


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
    }


def bench_one(num_running: int, caching: bool, repeats: int) -> dict:
    steps = max(10, TARGET_REQUEST_STEPS // num_running)
    decode_steps = 2 + steps * repeats  # 2 warm-up steps, then the measured repeats
    max_len = PROMPT_LEN + decode_steps + 8
    blocks_per_request = cdiv(max_len, BLOCK_SIZE)
    cfg = SchedulerConfig(
        num_blocks=num_running * blocks_per_request,
        block_size=BLOCK_SIZE,
        max_model_len=max_len,
        max_num_seqs=num_running,
        max_num_batched_tokens=max(8192, num_running * PROMPT_LEN),
        enable_prefix_caching=caching,
    )
    sched = build_scheduler(cfg)
    for i in range(num_running):
        prompt = list(range(i * PROMPT_LEN, (i + 1) * PROMPT_LEN))  # distinct: no hits, all hashing
        sched.add_request(Request(f"r{i}", prompt, max_tokens=max_len, ignore_eos=True, eos_token_id=0))
    tokens = [1] * num_running

    def step() -> None:
        plan = sched.schedule()
        sched.update_from_output(plan, tokens)

    plan = sched.schedule()  # the one prefill step admits everybody
    if len(plan.scheduled) != num_running or plan.num_prefill_tokens != num_running * PROMPT_LEN:
        raise RuntimeError(f"setup: expected all {num_running} requests admitted in one step, got {len(plan.scheduled)}")
    sched.update_from_output(plan, tokens)
    step()
    step()
    per_repeat_s = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        per_repeat_s.append((time.perf_counter() - start) / steps)
    plan = sched.schedule()  # check the measured steps were what we claim
    if plan.num_decode_tokens != num_running or plan.preempted_ids or sched.num_running != num_running:
        raise RuntimeError("benchmark drifted out of steady decode (a preemption or a finished request)")
    step_s = statistics.median(per_repeat_s)
    return {
        "running": num_running,
        "prefix_caching": caching,
        "steps_per_repeat": steps,
        "repeats": repeats,
        "us_per_request_step": step_s / num_running * 1e6,
        "us_per_request_step_min": min(per_repeat_s) / num_running * 1e6,
        "us_per_request_step_max": max(per_repeat_s) / num_running * 1e6,
        "ms_per_step": step_s * 1e3,
    }


def write_json_atomic(path: Path, data: dict) -> None:
    atomic_write_json(path, data, sort_keys=False)


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes: expected comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--sizes: every size must be >= 1, got {text!r}")
    return sizes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.bench.policy", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=parse_sizes, default=[16, 64, 256, 1024], help="running requests (comma list)")
    ap.add_argument("--repeats", type=int, default=7, help="timed repeats per size (median reported; >= 1)")
    ap.add_argument("--json", type=Path, default=None, metavar="PATH", help="also save the figures as JSON")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")

    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), "
          f"load {info['load_avg_1m']}, {info['implementation']} {info['python']}")
    print(f"decode-only steps, block_size={BLOCK_SIZE}, prompt={PROMPT_LEN} tokens, median of {args.repeats} repeats")
    header = f"{'running':>8} {'prefix cache':>12} {'us/req/step':>12} {'(min..max)':>16} {'ms/step':>9}"
    print(header)
    print("-" * len(header))
    rows = []
    for n in args.sizes:
        for caching in (True, False):
            r = bench_one(n, caching, args.repeats)
            rows.append(r)
            spread = f"{r['us_per_request_step_min']:.2f}..{r['us_per_request_step_max']:.2f}"
            print(f"{n:>8} {'on' if caching else 'off':>12} {r['us_per_request_step']:>12.2f} {spread:>16} "
                  f"{r['ms_per_step']:>9.3f}", flush=True)
    bar = next((r for r in rows if r["running"] == BAR_RUNNING and r["prefix_caching"]), None)
    verdict = None
    if bar is not None:
        verdict = bar["us_per_request_step"] <= BAR_US
        print(f"bar: {BAR_RUNNING} running, prefix caching on: {bar['us_per_request_step']:.2f} us per request "
              f"per step (<= {BAR_US} us): {'PASS' if verdict else 'FAIL'}")
    if args.json is not None:
        write_json_atomic(args.json, {"machine": info, "block_size": BLOCK_SIZE, "prompt_len": PROMPT_LEN,
                                      "results": rows, "bar": {"running": BAR_RUNNING, "max_us": BAR_US,
                                                               "passed": verdict}})
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
