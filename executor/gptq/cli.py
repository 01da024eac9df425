"""`folovllm quantize` and `folovllm eval {ppl,kl}`."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from executor.gptq.calibration import DEFAULT_EVAL_TEXT


@click.command(name="quantize")
@click.argument("model_dir")
@click.option("--bits", type=int, default=4, show_default=True, help="Bits per weight (2, 4 or 8; GPU kernels: 4).")
@click.option("--group-size", type=int, default=128, show_default=True, help="Input rows per scale/zero group; -1 = one group.")
@click.option("--desc-act/--no-desc-act", default=True, show_default=True,
              help="Act-order: quantize columns by decreasing Hessian diagonal (on SmolLM2 it takes group 128 "
                   "from +39% to +19% perplexity over float32).")
@click.option("--sym/--asym", default=True, show_default=True, help="Symmetric grid (zero fixed at 2**(bits-1)) or asymmetric.")
@click.option("--calib", "calib_files", multiple=True, type=click.Path(dir_okay=False),
              help="Calibration text file (repeatable). Default: the licence texts in /usr/share/common-licenses except GPL-3.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory (must not exist).")
@click.option("--nsamples", type=int, default=32, show_default=True, help="Calibration windows.")
@click.option("--seq-len", type=int, default=512, show_default=True, help="Tokens per calibration window.")
@click.option("--damp", type=float, default=0.01, show_default=True, help="Dampening, fraction of mean(diag H).")
@click.option("--format", "checkpoint_format", type=click.Choice(["auto", "gptq", "gptq_v2"]), default="auto",
              show_default=True, help="Zeros convention: gptq (v1, zero-1) or gptq_v2; auto = v1 if --sym else v2.")
@click.option("--true-sequential/--no-true-sequential", default=True, show_default=True,
              help="Quantize sublayers in order, each seeing already-quantized earlier sublayers.")
@click.option("--static-groups", is_flag=True,
              help="Fix each group's scale/zero from the original weights before GPTQ (keeps g_idx monotone "
                   "with --desc-act).")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists (atomically).")
def quantize(model_dir, bits, group_size, desc_act, sym, calib_files, out_dir, nsamples, seq_len, damp,
             checkpoint_format, true_sequential, static_groups, overwrite):
    """Quantize MODEL_DIR (HF safetensors directory or prepared model name) with GPTQ."""
    import torch

    from executor.evaluate import resolve_model_dir
    from executor.gptq.calibration import CalibrationError, default_calibration_files, read_texts
    from executor.gptq.checkpoint import GPTQCheckpointError, GPTQConfig
    from executor.gptq.sequential import quantize_model_dir

    torch.manual_seed(0)
    fmt = checkpoint_format if checkpoint_format != "auto" else ("gptq" if sym else "gptq_v2")
    try:
        src = resolve_model_dir(model_dir)
        cfg = GPTQConfig(bits=bits, group_size=group_size, desc_act=desc_act, sym=sym, checkpoint_format=fmt,
                         damp_percent=damp, true_sequential=true_sequential,
                         static_groups=static_groups).validate("options")
        files = [Path(f) for f in calib_files] or default_calibration_files()
        click.echo(f"calibration text: {', '.join(str(f) for f in files)}"
                   + ("" if calib_files else f" (every licence except {DEFAULT_EVAL_TEXT}, the evaluation text)"))
        report = quantize_model_dir(src, out_dir, cfg, read_texts(files), n_samples=nsamples, seq_len=seq_len,
                                    overwrite=overwrite, log=click.echo)
    except (GPTQCheckpointError, CalibrationError, FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {report.out_dir}: {len(report.layers)} linears at {bits} bits, group {group_size}, "
               f"desc_act={desc_act}, sym={sym}, static_groups={static_groups}, format={fmt}")
    click.echo(f"quantized linear weights: {report.packed_bytes / 2**20:.2f} MiB vs {report.dense16_bytes / 2**20:.2f} "
               f"MiB at 16 bits ({report.memory_ratio:.3f}x)")
    click.echo(f"time: {report.seconds_total:.1f} s total, {report.seconds_quantize:.1f} s calibration + GPTQ")


@click.group(name="eval")
def eval_group():
    """Quality checks: perplexity and KL divergence on a text file."""


def _bar(desc):
    from tqdm import tqdm
    return lambda it: tqdm(it, desc=desc, unit="window")


_text_option = click.option("--text", "text_file", type=click.Path(dir_okay=False), default=str(DEFAULT_EVAL_TEXT),
                            show_default=True, help="Evaluation text file.")
_window_options = [
    click.option("--window", type=int, default=512, show_default=True, help="Tokens per window."),
    click.option("--stride", type=int, default=256, show_default=True, help="New targets per later window."),
    click.option("--max-tokens", type=int, default=0, help="Use only the first N tokens of the text (0 = all)."),
    click.option("--backend", type=click.Choice(["auto", "executor", "transformers"]), default="auto",
                 show_default=True, help="auto = our executor when present, else transformers (+ GPTQLinear)."),
    click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of prose."),
]


def _with_window_options(f):
    for opt in reversed(_window_options):
        f = opt(f)
    return f


def _quiet_libraries():
    """--json output must be the only thing a caller parses: silence transformers' progress bars."""
    try:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def _tokens(model, text_file, max_tokens):
    from executor.evaluate import tokenize_file
    ids = tokenize_file(model, text_file)
    return ids[:max_tokens] if max_tokens else ids


@eval_group.command(name="ppl")
@click.argument("model")
@_text_option
@_with_window_options
def ppl(model, text_file, window, stride, max_tokens, backend, as_json):
    """Perplexity of MODEL on --text with fixed-length sliding windows."""
    from executor.evaluate import load_scorer, perplexity

    if as_json:
        _quiet_libraries()
    try:
        scorer = load_scorer(model, backend)  # first: a broken model directory is named before any tokenizer runs
        ids = _tokens(model, text_file, max_tokens)
        res = perplexity(scorer, ids, window, stride, progress=None if as_json else _bar("ppl"))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps({"model": str(model), "text": str(text_file), "backend": scorer.backend, **asdict(res)}))
    else:
        click.echo(f"{model}: perplexity {res.perplexity:.3f} on {text_file} ({res.n_scored} tokens, "
                   f"{res.n_windows} windows of {window}, stride {stride}, backend {scorer.backend}, "
                   f"{res.seconds:.1f} s)")


@eval_group.command(name="kl")
@click.argument("model_a")
@click.argument("model_b")
@_text_option
@_with_window_options
def kl(model_a, model_b, text_file, window, stride, max_tokens, backend, as_json):
    """Mean KL(P_A || P_B) of next-token distributions of MODEL_B against reference MODEL_A."""
    from executor.evaluate import kl_divergence, load_scorer

    if as_json:
        _quiet_libraries()
    try:
        a, b = load_scorer(model_a, backend), load_scorer(model_b, backend)
        ids = _tokens(model_a, text_file, max_tokens)
        res = kl_divergence(a, b, ids, window, stride, progress=None if as_json else _bar("kl"))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps({"model_a": str(model_a), "model_b": str(model_b), "text": str(text_file),
                               "backend": a.backend, **asdict(res)}))
    else:
        click.echo(f"KL({model_a} || {model_b}) = {res.mean_kl:.5f} nats/token mean, max {res.max_kl:.3f}; "
                   f"top-1 agreement {res.top1_agreement:.3%} ({res.n_scored} tokens, {res.n_windows} windows, "
                   f"backend {a.backend}, {res.seconds:.1f} s)")
