"""Quality checks for (quantized) models: perplexity and KL divergence on a text file.

Both walk the token sequence with the same sliding windows (HF's "perplexity of fixed-length
models" recipe): the first window scores its tokens 1..window-1; each later window ends `stride`
tokens further on and scores only those new targets (at most window-1 of them), so every token
after the first is predicted exactly once, with at least `window - stride` tokens of context
(except in the first window). KL compares the full next-token distributions of two models at exactly those positions.

Scoring runs with subnormal floats flushed to zero: softmax tails and tiny activations are
subnormal often enough to make float32 CPU forwards many times slower, and flushing values below
1e-38 does not move a perplexity.

A "model" here is anything with `logits(token_ids) -> [len, vocab]`; `load_scorer` gives one for
a model directory, through our executor when it is present, else through transformers (with our
GPTQLinear for GPTQ directories).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch

from executor.gptq.quantizer import flush_denormals
from executor.numerics import NonFiniteError, check_finite_result

MODELS_CACHE = Path("~/.cache/folovllm/models").expanduser()


class Scorer(Protocol):
    name: str
    backend: str

    def logits(self, token_ids: list[int]) -> torch.Tensor: ...


@dataclass(frozen=True)
class Window:
    begin: int          # first input token of the window
    end: int            # one past the last input token
    first_target: int   # first target position this window scores (targets: first_target .. end-1)


def scored_windows(n_tokens: int, window: int, stride: int) -> list[Window]:
    """Windows covering targets 1..n_tokens-1 exactly once (see the module docstring)."""
    if window < 2:
        raise ValueError(f"window must be >= 2, got {window}")
    if not 1 <= stride <= window:
        raise ValueError(f"stride must lie in [1, window={window}], got {stride}")
    if n_tokens < 2:
        raise ValueError(f"text too short: {n_tokens} token(s), need at least 2 to score anything")
    out = [Window(0, min(window, n_tokens), 1)]
    step = min(stride, window - 1)     # a window scores at most window-1 targets (its first token has no context)
    while out[-1].end < n_tokens:
        first = out[-1].end
        end = min(first + step, n_tokens)
        out.append(Window(max(0, end - window), end, first))
    return out


@dataclass
class PerplexityResult:
    perplexity: float
    mean_nll: float
    n_scored: int
    n_windows: int
    window: int
    stride: int
    seconds: float


@dataclass
class KLResult:
    mean_kl: float          # mean over positions of KL(P_a || P_b), nats
    max_kl: float
    top1_agreement: float   # fraction of positions where both models' argmax agree
    n_scored: int
    n_windows: int
    seconds: float


def _window_logprobs(scorer: Scorer, ids: list[int], w: Window) -> torch.Tensor:
    """log-softmax rows predicting targets w.first_target .. w.end-1, as float64 [n, vocab]."""
    logits = scorer.logits(ids[w.begin:w.end])
    if logits.dim() != 2 or logits.shape[0] != w.end - w.begin:
        raise ValueError(f"{scorer.name}: logits shape {tuple(logits.shape)} for {w.end - w.begin} tokens")
    if not bool(torch.isfinite(logits.sum(dtype=torch.float32))) and not bool(torch.isfinite(logits).all()):
        raise NonFiniteError(f"{scorer.name}: non-finite logits (NaN or Inf) for tokens {w.begin}..{w.end - 1}; "
                             "refusing to report a result (corrupted weights or a numerical overflow)")
    rows = logits[w.first_target - 1 - w.begin: w.end - 1 - w.begin]
    return torch.log_softmax(rows.to(torch.float64), dim=-1)


def perplexity(scorer: Scorer, ids: list[int], window: int = 512, stride: int = 256,
               progress: Callable | None = None) -> PerplexityResult:
    t0 = time.perf_counter()
    windows = scored_windows(len(ids), window, stride)
    nll, n = 0.0, 0
    for w in (progress(windows) if progress else windows):
        logp = _window_logprobs(scorer, ids, w)
        targets = torch.tensor(ids[w.first_target:w.end], dtype=torch.long)
        nll -= float(logp.gather(1, targets.unsqueeze(1)).sum())
        n += targets.numel()
    mean = check_finite_result("mean NLL", nll / n, scorer.name)
    return PerplexityResult(math.exp(mean), mean, n, len(windows), window, stride, time.perf_counter() - t0)


def kl_divergence(scorer_a: Scorer, scorer_b: Scorer, ids: list[int], window: int = 512, stride: int = 256,
                  progress: Callable | None = None) -> KLResult:
    """KL(P_a || P_b) per position, averaged: how far model b's predictions drift from model a's."""
    t0 = time.perf_counter()
    windows = scored_windows(len(ids), window, stride)
    total, worst, agree, n = 0.0, 0.0, 0, 0
    for w in (progress(windows) if progress else windows):
        la, lb = _window_logprobs(scorer_a, ids, w), _window_logprobs(scorer_b, ids, w)
        if la.shape != lb.shape:
            raise ValueError(f"{scorer_a.name} and {scorer_b.name} disagree on the vocabulary: "
                             f"{la.shape[-1]} vs {lb.shape[-1]} logits")
        kl = (la.exp() * (la - lb)).sum(dim=-1)
        total += float(kl.sum())
        worst = max(worst, float(kl.max()))
        agree += int((la.argmax(-1) == lb.argmax(-1)).sum())
        n += kl.numel()
    check_finite_result("mean KL", total / n, f"{scorer_a.name} vs {scorer_b.name}")
    return KLResult(total / n, worst, agree / n, n, len(windows), time.perf_counter() - t0)


def compare_models(reference: Scorer, others: dict[str, Scorer], ids: list[int], window: int = 512,
                   stride: int = 256, progress: Callable | None = None) -> tuple[PerplexityResult, dict]:
    """Perplexity of `reference` and, for each other model, its perplexity and KL against the reference,
    in one pass (the reference runs once per window instead of once per comparison).

    Returns (reference result, {name: (PerplexityResult, KLResult)}).
    """
    t0 = time.perf_counter()
    windows = scored_windows(len(ids), window, stride)
    nll = {name: 0.0 for name in ["__ref__", *others]}
    kl_sum = {name: 0.0 for name in others}
    kl_max = {name: 0.0 for name in others}
    agree = {name: 0 for name in others}
    n = 0
    for w in (progress(windows) if progress else windows):
        targets = torch.tensor(ids[w.first_target:w.end], dtype=torch.long).unsqueeze(1)
        ref = _window_logprobs(reference, ids, w)
        nll["__ref__"] -= float(ref.gather(1, targets).sum())
        for name, scorer in others.items():
            lp = _window_logprobs(scorer, ids, w)
            if lp.shape != ref.shape:
                raise ValueError(f"{scorer.name} and {reference.name} disagree on the vocabulary")
            nll[name] -= float(lp.gather(1, targets).sum())
            kl = (ref.exp() * (ref - lp)).sum(dim=-1)
            kl_sum[name] += float(kl.sum())
            kl_max[name] = max(kl_max[name], float(kl.max()))
            agree[name] += int((ref.argmax(-1) == lp.argmax(-1)).sum())
        n += targets.shape[0]
    secs = time.perf_counter() - t0
    ppl = lambda name: PerplexityResult(math.exp(nll[name] / n), nll[name] / n, n, len(windows), window, stride, secs)
    return ppl("__ref__"), {name: (ppl(name), KLResult(kl_sum[name] / n, kl_max[name], agree[name] / n, n,
                                                         len(windows), secs)) for name in others}


# ---- model loading ----------------------------------------------------------------------------

def resolve_model_dir(model: str | Path) -> Path:
    """A model directory, or a name prepared under ~/.cache/folovllm/models (e.g. `smollm2-135m`)."""
    p = Path(model).expanduser()
    if p.is_dir():
        return p
    cached = MODELS_CACHE / str(model)
    if cached.is_dir():
        return cached
    raise FileNotFoundError(f"{model}: no such model directory (nor {cached}); "
                            f"run `folovllm model prepare {model}` or pass a directory")


class HFScorer:
    backend = "transformers"

    def __init__(self, model_dir: Path):
        from executor.gptq.hf import load_hf_model

        self.name = str(model_dir)
        self.model = load_hf_model(model_dir, dtype=torch.float32)

    @torch.no_grad()
    def logits(self, token_ids: list[int]) -> torch.Tensor:
        ids = torch.tensor([token_ids], dtype=torch.long)
        with flush_denormals():
            return self.model(input_ids=ids, use_cache=False).logits[0].float()


class ExecutorScorer:
    backend = "executor"

    def __init__(self, model_dir: Path):
        from executor.api import prompt_logits
        from executor.loader import load_model

        self.name = str(model_dir)
        self.model = load_model(model_dir, device="cpu", dtype=torch.float32)
        self._prompt_logits = prompt_logits

    @torch.no_grad()
    def logits(self, token_ids: list[int]) -> torch.Tensor:
        with flush_denormals():
            return self._prompt_logits(self.model, list(token_ids)).float()


def executor_available() -> bool:
    try:
        import executor.api  # noqa: F401
        import executor.loader  # noqa: F401
    except ImportError:
        return False
    import executor.api as api
    import executor.loader as loader
    return hasattr(api, "prompt_logits") and hasattr(loader, "load_model")


def load_scorer(model: str | Path, backend: str = "auto") -> Scorer:
    """A scorer for a model directory; backend 'executor', 'transformers' or 'auto' (executor if present)."""
    model_dir = resolve_model_dir(model)
    if backend == "auto":
        backend = "executor" if executor_available() else "transformers"
    if backend == "executor":
        return ExecutorScorer(model_dir)
    if backend in ("transformers", "hf"):
        return HFScorer(model_dir)
    raise ValueError(f"backend must be auto, executor or transformers, got {backend!r}")


def tokenize_file(model: str | Path, text_file: str | Path) -> list[int]:
    """Token ids of a text file under the model's own tokenizer (no special tokens added)."""
    from executor.tokenizer import load_tokenizer

    path = Path(text_file)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: text file not found")
    tok = load_tokenizer(resolve_model_dir(model))
    return tok(path.read_text(encoding="utf-8", errors="replace"), add_special_tokens=False)["input_ids"]
