"""`folovllm trace ...`: describe, convert and generate request traces."""

from __future__ import annotations

import json

import click

from traces.readers import FORMATS


def _parse_params(pairs: tuple[str, ...]) -> dict:
    params = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--param")
        key, value = pair.split("=", 1)
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                continue
        params[key.replace("-", "_")] = value
    return params


@click.group()
def trace() -> None:
    """Read, convert, generate and describe request traces.

    Formats read (auto-detected, or named with --format): azure (Azure LLM inference 2023/2024
    CSV), mooncake (Mooncake / aiperf JSONL with hash_ids), bailian (Qwen-Bailian JSONL),
    burstgpt (CSV), sharegpt (JSON), vidur (Vidur trace-replay CSV), canonical-jsonl and
    canonical-parquet (this project's own table).
    """


@trace.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(FORMATS), help="Trace format (default: auto-detect).")
@click.option("--arrival-mode", type=click.Choice(["batch", "spread"]), default=None,
              help="Mooncake only: keep the ~3 s quantised timestamps (batch) or spread each bucket (spread).")
@click.option("--seed", type=int, default=None, help="Mooncake --arrival-mode spread only: the jitter seed (default 0).")
@click.option("-o", "--option", "reader_opts", multiple=True, metavar="KEY=VALUE",
              help="Other reader options, e.g. -o tokenizer=DIR (sharegpt), -o model=GPT-4 (burstgpt).")
@click.option("--warm-with", "warm_with", type=click.Path(exists=True, dir_okay=False), default=None,
              metavar="EARLIER_TRACE",
              help="Fill the prefix cache with an earlier window of the same trace before measuring the reuse ceiling.")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
def stats(file: str, fmt: str | None, arrival_mode: str | None, seed: int | None, reader_opts, warm_with,
          as_json: bool) -> None:
    """Describe FILE: request rate, inter-arrival CV, peak rates, prompt/output length
    percentiles, total tokens, and the prefix-reuse ceiling (share of prompt tokens an
    unbounded prefix cache could reuse; traces with block hashes only). Notes at the end say
    what the reader dropped, approximated or chose (e.g. the Mooncake replay mode).

    Example: folovllm trace stats AzureLLMInferenceTrace_conv.csv

    Example: folovllm trace stats window2.jsonl --warm-with window1.jsonl
    """
    from traces.io import load
    from traces.stats import describe, format_stats

    table = _load_or_fail(load, file, fmt, _reader_options(arrival_mode, seed, reader_opts))
    warm = _load_or_fail(load, warm_with, None, {}) if warm_with else None
    try:
        result = describe(table, warm_with=warm)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(result, indent=2, default=float) if as_json else format_stats(result))


@trace.command()
@click.argument("src", type=click.Path(exists=True, dir_okay=False))
@click.argument("dst", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(FORMATS), help="Input format (default: auto-detect).")
@click.option("--to", "to_fmt", type=click.Choice(["canonical-jsonl", "canonical-parquet", "vidur"]),
              help="Output format (default: from DST's extension: .jsonl, .parquet, .csv = Vidur).")
@click.option("--max-model-len", type=int, help="Clip prompts/outputs to fit this context (counted in the notes).")
@click.option("--head", "head_n", type=int, help="Keep only the first N requests.")
@click.option("--rate-scale", type=float, help="Replay at this multiple of the recorded rate.")
@click.option("--arrival-mode", type=click.Choice(["batch", "spread"]), default=None,
              help="Mooncake only: keep the ~3 s quantised timestamps (batch) or spread each bucket (spread).")
@click.option("--seed", type=int, default=None, help="Mooncake --arrival-mode spread only: the jitter seed (default 0).")
@click.option("-o", "--option", "reader_opts", multiple=True, metavar="KEY=VALUE",
              help="Other reader options, e.g. -o tokenizer=DIR (sharegpt), -o model=GPT-4 (burstgpt).")
def convert(src, dst, fmt, to_fmt, max_model_len, head_n, rate_scale, arrival_mode, seed, reader_opts) -> None:
    """Convert SRC to DST (canonical JSONL / Parquet, or Vidur's CSV to feed Vidur the same requests).

    Example: folovllm trace convert conversation_trace.jsonl mooncake.parquet --max-model-len 32768
    """
    from traces import transforms
    from traces.io import load, write

    table = _load_or_fail(load, src, fmt, _reader_options(arrival_mode, seed, reader_opts))
    if head_n:
        table = transforms.head(table, head_n)
    if rate_scale:
        table = transforms.scale_rate(table, rate_scale)
    if max_model_len:
        table = transforms.clip_to_max_model_len(table, max_model_len)
    written = write(table, dst, to_fmt)
    click.echo(f"wrote {len(table):,} requests to {dst} ({written})")
    for note in table.notes:
        click.echo(f"note: {note}")


@trace.command()
@click.argument("preset")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Preset parameter, e.g. -p num_requests=500 -p rate=4 -p prompt=lognormal:1000:0.8")
def gen(preset: str, out: str, seed: int, params: tuple[str, ...]) -> None:
    """Generate the workload PRESET and write it to OUT (.jsonl or .parquet; .csv = Vidur).

    Presets: nano-vllm, poisson, gamma, constant, shared-prefix, multi-turn, few-shot, replay,
    azure-conv-like, azure-code-like. `folovllm trace presets` lists each one's parameters and
    defaults. Lengths (prompt=..., output=...) take fixed:N, uniform:LO:HI,
    lognormal:MEDIAN:SIGMA[:MIN:MAX], empirical:TRACE:prompt|output or
    percentiles:0=MIN,50=P50,...,100=MAX. The same seed gives the same file.

    Example: folovllm trace gen poisson reqs.jsonl -p num_requests=1000 -p rate=8

    Example: folovllm trace gen azure-code-like code.parquet -p num_requests=5000 -p rate_scale=2
    """
    from traces.generators import generate
    from traces.io import write

    try:
        table = generate(preset, seed=seed, **_parse_params(params))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        write(table, out)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {len(table):,} requests to {out}")
    for note in table.notes:
        click.echo(f"note: {note}")


@trace.command()
def presets() -> None:
    """List the workload presets of `folovllm trace gen` with their parameters and defaults."""
    from traces.generators import preset_parameters

    for name, params in preset_parameters().items():
        shown = "  ".join(f"{k}={v}" if v == "<required>" else f"{k}={v!r}" for k, v in params.items())
        click.echo(f"{name:<16} {shown}")


def _reader_options(arrival_mode, seed, pairs) -> dict:
    options = _parse_params(tuple(pairs))
    if arrival_mode:
        options["arrival_mode"] = arrival_mode
    if seed is not None:
        options["seed"] = seed
    return options


def _load_or_fail(load, path, fmt, options):
    try:
        return load(path, fmt, **options)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
