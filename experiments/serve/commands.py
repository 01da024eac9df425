"""`folovllm bench serve` (replay a trace against an OpenAI-compatible endpoint) and
`folovllm bench agreement` (a client run's TTFT / E2EL against the server's own timelines)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import click

MISSING_HTTPX = "`folovllm bench serve` needs httpx (in the optional 'serve' extra): pip install 'folovllm[serve]'"


@click.group()
def bench() -> None:
    """Measure serving endpoints."""


def _workload(trace_path, preset, spec_path, variant_name, num_requests, seed, rate_scale, max_prompt_len,
              max_output_len, vocab_size, max_model_len):
    """(requests, variant label, rate_scale, knobs, spec section) for the chosen source."""
    from experiments.run.workload import build_workload, clip_requests

    if spec_path is not None:
        from experiments.run.spec import load_spec

        spec = load_spec(spec_path)
        names = [v.name for v in spec.variants]
        variant = next((v for v in spec.variants if v.name == (variant_name or names[0])), None)
        if variant is None:
            raise click.ClickException(f"{spec_path}: no variant {variant_name!r}; variants: {', '.join(names)}")
        knobs = variant.knobs
        seed = spec.seeds[0] if seed is None else seed
        scale = knobs.get("rate_scale", 1.0) * (rate_scale or 1.0)
        limits = [n for n in (knobs.get("max_model_len"), max_model_len) if n]
        wl = build_workload(spec.trace, seed, rate_scale=scale, block_size=knobs.get("block_size", 16),
                            vocab_size=vocab_size, max_model_len=min(limits) if limits else None)
        reqs = wl.requests[:num_requests] if num_requests else wl.requests
        section = {"name": spec.name, "description": spec.description, "trace": spec.trace, "model": spec.model}
        return reqs, variant.name, scale, knobs, section, wl.stats, seed
    import traces

    seed = 0 if seed is None else seed
    table = traces.load(trace_path) if trace_path is not None else traces.generate(preset, seed=seed)
    reqs = table.iter_requests(vocab_size=vocab_size, eos_token_id=None, ignore_eos=True)
    if num_requests:
        reqs = itertools.islice(reqs, num_requests)
    wl = clip_requests(list(reqs), max_prompt_len=max_prompt_len, max_output_len=max_output_len,
                       max_model_len=max_model_len, rate_scale=rate_scale or 1.0)
    source = {"path": str(trace_path)} if trace_path is not None else {"preset": preset}
    section = {"name": "bench-serve", "description": "a trace replayed over HTTP", "trace": source}
    return wl.requests, "endpoint", rate_scale or 1.0, {}, section, wl.stats, seed


@bench.command("serve")
@click.option("--endpoint", required=True, help="Base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000")
@click.option("--trace", "trace_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A trace file (any format traces.load reads).")
@click.option("--preset", default=None, help="A generated trace preset, e.g. azure-conv-like.")
@click.option("--spec", "spec_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="An experiment spec: replay exactly the requests its runs replay (with --variant).")
@click.option("--variant", "variant_name", default=None, help="With --spec: the variant whose workload to send.")
@click.option("--model", default=None, help="Model name to send (default: the endpoint's first model).")
@click.option("--num-requests", type=int, default=None, help="Send only the first N requests.")
@click.option("--seed", type=int, default=None, help="Generator seed (default: the spec's first, or 0).")
@click.option("--rate-scale", type=float, default=None, help="Multiply the request rate (0.5 halves it).")
@click.option("--max-prompt-len", type=int, default=None, help="Clip prompts to this many tokens.")
@click.option("--max-output-len", type=int, default=None, help="Clip output lengths.")
@click.option("--vocab-size", type=int, default=None,
              help="Token ids are drawn below this (default: the vocab_size the endpoint's /v1/models reports).")
@click.option("--max-in-flight", type=int, default=64, show_default=True, help="Requests open at once.")
@click.option("--timeout", "timeout_s", type=float, default=300.0, show_default=True, help="Per-request timeout (s).")
@click.option("--retries", type=int, default=0, show_default=True,
              help="Retries after a connection failure or a 429/502/503/504 (exponential back-off).")
@click.option("--retry-backoff", type=float, default=0.5, show_default=True, help="First back-off (s).")
@click.option("--label", default=None, help="Variant name in the results (default: the spec variant, or 'endpoint').")
@click.option("--engine-label", default="http", show_default=True,
              help="Engine name in the results; 'executor' lets the simulator comparison pair it with a "
                   "'sim' run of the same variant.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("results/bench-serve"),
              show_default=True, help="Results folder (a rerun adds a repeat; `folovllm report` reads it).")
def serve_bench(endpoint, trace_path, preset, spec_path, variant_name, model, num_requests, seed, rate_scale,
                max_prompt_len, max_output_len, vocab_size, max_in_flight, timeout_s, retries, retry_backoff, label,
                engine_label, out) -> None:
    """Replay a trace's arrivals against ENDPOINT's /v1/completions (streaming), measuring
    TTFT from the first token chunk and ITL between chunks, and write the run as the
    executor does."""
    import importlib.util

    if importlib.util.find_spec("httpx") is None:
        raise click.ClickException(MISSING_HTTPX)
    if sum(x is not None for x in (trace_path, preset, spec_path)) != 1:
        raise click.ClickException("give exactly one of --trace PATH, --preset NAME or --spec SPEC")
    import httpx

    from experiments.serve.http_replay import ClientConfig, replay, served_models, write_results

    try:
        cards = served_models(endpoint)
    except (httpx.HTTPError, ValueError) as exc:
        raise click.ClickException(f"{endpoint}: cannot list models ({exc})") from None
    card = next((c for c in cards if model is None or c.get("id") == model), None)
    if model is None:
        if card is None:
            raise click.ClickException(f"{endpoint}: /v1/models lists no model; pass --model")
        model = card["id"]
    vocab_size = vocab_size or (card or {}).get("vocab_size")
    if not vocab_size:
        raise click.ClickException(f"{endpoint} does not report its vocabulary size; pass --vocab-size")
    max_model_len = (card or {}).get("max_model_len")
    try:
        reqs, variant, scale, knobs, section, wl_stats, seed = _workload(
            trace_path, preset, spec_path, variant_name, num_requests, seed, rate_scale, max_prompt_len,
            max_output_len, int(vocab_size), max_model_len)
        cfg = ClientConfig(endpoint=endpoint, model=model, max_in_flight=max_in_flight, timeout_s=timeout_s,
                           retries=retries, retry_backoff_s=retry_backoff)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"replaying {len(reqs)} request(s) against {endpoint} ({model}), at most {max_in_flight} in flight",
               err=True)
    run = replay(reqs, cfg)
    run_dir = write_results(out, run, variant=label or variant, engine=engine_label, seed=seed, rate_scale=scale,
                            knobs=knobs, spec=section, run_info={"workload": wl_stats})
    summary = json.loads((run_dir / "summary.json").read_text())
    counts = ", ".join(f"{s} {run.counts[s]}" for s in ("finished", "aborted", "rejected", "timed_out", "failed"))
    click.echo(f"{len(reqs)} requests: {counts}; retries {run.counts['num_retries']}; {run.wall_s:.1f} s")
    for key in ("ttft_p50_s", "ttft_p90_s", "tpot_p50_s", "itl_p50_s", "e2el_p50_s", "output_throughput"):
        value = summary.get(key)
        click.echo(f"{key:>20}: {value:.4f}" if isinstance(value, float) else f"{key:>20}: {value}")
    click.echo(f"run: {run_dir}")


@bench.command("agreement")
@click.argument("client_run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("server_run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--tolerance", type=float, default=0.020, show_default=True, help="Seconds.")
def agreement_cmd(client_run, server_run, tolerance) -> None:
    """Per-request TTFT and E2EL of CLIENT_RUN (a `bench serve` run folder) against SERVER_RUN
    (the folder `folovllm serve --record` wrote), matched by request id."""
    from experiments.serve.http_agreement import agreement, read_requests

    try:
        result = agreement(read_requests(client_run), read_requests(server_run), tolerance_s=tolerance)
    except (FileNotFoundError, KeyError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(result, indent=2))
