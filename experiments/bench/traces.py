"""Trace-layer speed and memory: how long the real traces take to load, what prompt-token
synthesis costs per request, and the peak memory of generating and streaming a million
synthetic requests.

    python -m experiments.bench.traces [--repeats 5] [--million 1000000] [--prompt uniform:16:128]

Prints medians over `--repeats` runs. The million-request part runs in a fresh child process
so its peak RSS (VmHWM) is its own, not the loading benchmarks'. Real traces are read
from ../shared/traces next to the repository; the ones absent are skipped, with a line saying
so. Bars (issue 3): Azure conversation trace (19,366 rows) loads in < 1 s; generating and
streaming 1,000,000 requests peaks below 500 MB.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time

from experiments.shared_data import shared_path

SHARED = shared_path("traces")
REAL = {
    "azure-2023-conv": SHARED / "azure-2023-conv" / "AzureLLMInferenceTrace_conv.csv",
    "azure-2023-code": SHARED / "azure-2023-code" / "AzureLLMInferenceTrace_code.csv",
    "mooncake-conversation": SHARED / "mooncake-conversation" / "conversation_trace_0-45min.jsonl",
    "vidur-splitwise-conv": SHARED / "vidur-splitwise" / "splitwise_conv.csv",
}


def _median_s(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def bench_loading(repeats: int) -> None:
    import traces

    print(f"== loading real traces (median of {repeats}) ==")
    for name, path in REAL.items():
        if not path.is_file():
            print(f"{name:<24} skipped: {path} is absent")
            continue
        seconds, table = _median_s(lambda: traces.load(path), repeats)
        print(f"{name:<24} {len(table):>7,} rows  load {seconds * 1e3:8.1f} ms  ({seconds / len(table) * 1e6:.2f} us/row)")


def bench_synthesis(repeats: int) -> None:
    import traces

    print(f"== streaming Requests with synthesised prompt tokens (median of {repeats}) ==")
    tables = {name: traces.load(REAL[name]) for name in ("azure-2023-conv", "mooncake-conversation") if REAL[name].is_file()}
    if not tables:
        tables["azure-conv-like (generated)"] = traces.generate("azure-conv-like", num_requests=19_366)
    for name, table in tables.items():
        tokens = int(table.df["prompt_len"].sum())

        def stream():
            n = 0
            for req in table.iter_requests(block_size=16, vocab_size=151_936):
                n += len(req.prompt_token_ids)
            return n

        seconds, n = _median_s(stream, repeats)
        assert n == tokens
        kind = "block hashes" if table.has_prefix_structure else "request-private"
        print(f"{name:<24} {len(table):>7,} requests  {tokens / 1e6:7.1f} M tokens ({kind})  {seconds:6.2f} s  "
              f"= {seconds / len(table) * 1e6:7.1f} us/request, {seconds / tokens * 1e9:5.1f} ns/token")


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Unlike ru_maxrss it is not inherited from
    the parent across fork+exec, so the child's number is its own."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: best effort


def bench_million(n: int, prompt: str, output: str) -> None:
    """Generate `n` Poisson requests, then stream them as policy Requests (synthesised tokens)."""
    import traces

    start = time.perf_counter()
    table = traces.generate("poisson", seed=0, num_requests=n, rate=100.0, prompt=prompt, output=output)
    t_gen = time.perf_counter() - start
    rss_after_gen = peak_rss_mb()
    start = time.perf_counter()
    count = tokens = 0
    last = -1.0
    for req in table.iter_requests(block_size=16, vocab_size=32_000):
        count += 1
        tokens += len(req.prompt_token_ids)
        assert req.arrival_time >= last
        last = req.arrival_time
    t_stream = time.perf_counter() - start
    peak = peak_rss_mb()
    print(f"generated {n:,} requests (prompt {prompt}, output {output}) in {t_gen:.2f} s; "
          f"streamed {count:,} Requests ({tokens / 1e6:.1f} M prompt tokens) in {t_stream:.2f} s "
          f"({t_stream / count * 1e6:.1f} us/request)")
    print(f"peak RSS after generating {rss_after_gen:.0f} MB; peak RSS after streaming {peak:.0f} MB "
          f"(bar: < 500 MB) -> {'OK' if peak < 500 else 'OVER'}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--million", type=int, default=1_000_000, help="requests in the memory benchmark")
    parser.add_argument("--prompt", default="uniform:16:128", help="prompt lengths of the memory benchmark")
    parser.add_argument("--output", default="uniform:1:512", help="output lengths of the memory benchmark")
    parser.add_argument("--only-million", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    if args.only_million:
        bench_million(args.million, args.prompt, args.output)
        return
    bench_loading(args.repeats)
    bench_synthesis(max(1, args.repeats // 2))
    print(f"== generating and streaming {args.million:,} requests (fresh process, peak RSS) ==", flush=True)
    subprocess.run([sys.executable, "-m", "experiments.bench.traces", "--only-million", "--million", str(args.million),
                    "--prompt", args.prompt, "--output", args.output], check=True)


if __name__ == "__main__":
    main()
