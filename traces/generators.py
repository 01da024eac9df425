"""Seeded synthetic workloads: arrival processes x length distributions x prefix structure.

Arrivals: Poisson, Gamma with a burstiness (coefficient of variation) knob, constant rate,
or the arrival process of a real trace replayed at a chosen rate. Lengths: fixed, uniform,
lognormal, empirical (a real trace's), or piecewise log-linear through published
percentiles. Structure: shared system prompts, multi-turn sessions, few-shot prefixes, all as
16-token block hashes so every engine synthesises the same shared tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from traces.table import TraceTable
from policy.utils import cdiv

STRUCT_BLOCK = 16  # block size of the hash ids the structured generators emit


# -- arrivals -------------------------------------------------------------------------------
def poisson_arrivals(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    return gamma_arrivals(n, rate, 1.0, rng)


def gamma_arrivals(n: int, rate: float, cv: float, rng: np.random.Generator) -> np.ndarray:
    """Inter-arrival gaps ~ Gamma(shape=1/cv^2) with mean 1/rate (cv=1 is Poisson; larger is burstier)."""
    if rate <= 0:
        return np.zeros(n)
    if cv <= 0:
        return constant_arrivals(n, rate)
    shape = 1.0 / (cv * cv)
    gaps = rng.gamma(shape, 1.0 / (rate * shape), size=n)
    gaps[0] = 0.0
    return np.cumsum(gaps)


def constant_arrivals(n: int, rate: float) -> np.ndarray:
    return np.arange(n) / rate if rate > 0 else np.zeros(n)


def replay_arrivals(trace: TraceTable, n: int, rate: float | None) -> np.ndarray:
    """The first `n` arrival times of `trace`, rescaled to mean `rate` requests/s (None keeps
    the trace's own rate). Cycles through the trace when `n` exceeds its length."""
    t = np.sort(trace.df["arrival_s"].to_numpy(dtype=np.float64))
    gaps = np.diff(t, prepend=t[0])
    reps = cdiv(n, len(gaps))
    gaps = np.tile(gaps, reps)[:n]
    gaps[0] = 0.0
    arrivals = np.cumsum(gaps)
    if rate is not None and arrivals[-1] > 0:
        arrivals *= (n - 1) / rate / arrivals[-1]
    return arrivals


# -- lengths --------------------------------------------------------------------------------
@dataclass(frozen=True)
class LengthDist:
    """A token-length distribution, written as a string in specs and on the command line:
    `fixed:N`, `uniform:LO:HI`, `lognormal:MEDIAN:SIGMA[:MIN:MAX]`, `empirical:TRACE_FILE:prompt|output`,
    `quantiles:MIN,P50,P90,P99,MAX`, `percentiles:0=MIN,50=P50,...,100=MAX` (any increasing
    percentiles from 0 to 100; lengths are log-linear between them)."""

    kind: str
    args: tuple

    @classmethod
    def parse(cls, text) -> "LengthDist":
        if isinstance(text, LengthDist):
            return text
        if isinstance(text, (int, np.integer)):
            return cls("fixed", (int(text),))
        parts = str(text).split(":")
        kind, args = parts[0], parts[1:]
        try:
            if kind == "fixed" and len(args) == 1:
                return cls(kind, (int(args[0]),))
            if kind == "uniform" and len(args) == 2:
                return cls(kind, (int(args[0]), int(args[1])))
            if kind == "lognormal" and len(args) in (2, 4):
                return cls(kind, tuple(float(a) for a in args))
            if kind == "empirical" and len(args) == 2 and args[1] in ("prompt", "output"):
                return cls(kind, (args[0], args[1]))
            if kind == "quantiles" and len(args) == 1:
                q = tuple(float(v) for v in args[0].split(","))
                if len(q) == 5:
                    return cls("percentiles", tuple(zip((0.0, 50.0, 90.0, 99.0, 100.0), q)))
            if kind == "percentiles" and len(args) == 1:
                pairs = tuple((float(p), float(v)) for p, v in (item.split("=") for item in args[0].split(",")))
                probs = [p for p, _ in pairs]
                if pairs and probs[0] == 0 and probs[-1] == 100 and all(a < b for a, b in zip(probs, probs[1:])):
                    return cls(kind, pairs)
        except ValueError:
            pass
        raise ValueError(
            f"length distribution {text!r}: expected fixed:N, uniform:LO:HI, lognormal:MEDIAN:SIGMA[:MIN:MAX], "
            "empirical:TRACE_FILE:prompt|output, quantiles:MIN,P50,P90,P99,MAX or "
            "percentiles:0=MIN,...,100=MAX (increasing percentiles from 0 to 100)"
        )

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        k, a = self.kind, self.args
        if k == "fixed":
            out = np.full(n, a[0])
        elif k == "uniform":
            out = rng.integers(a[0], a[1] + 1, size=n)
        elif k == "lognormal":
            out = np.rint(rng.lognormal(np.log(a[0]), a[1], size=n))
            if len(a) == 4:
                out = np.clip(out, a[2], a[3])
        elif k == "empirical":
            from traces.io import load

            col = "prompt_len" if a[1] == "prompt" else "output_len"
            values = load(a[0]).df[col].to_numpy()
            out = rng.choice(values, size=n, replace=True)
        else:  # percentiles: piecewise log-linear inverse CDF through published percentiles
            probs = np.array([p for p, _ in a]) / 100.0
            logs = np.log(np.maximum([v for _, v in a], 1.0))
            out = np.rint(np.exp(np.interp(rng.uniform(size=n), probs, logs)))
        out = np.maximum(out.astype(np.int64), 1)
        return out


# -- presets --------------------------------------------------------------------------------
# Statistics of the Azure LLM inference traces 2023 (Patel et al., Splitwise, ISCA 2024;
# Azure/AzurePublicDataset data/AzureLLMInferenceTrace_{conv,code}.csv, CC-BY 4.0): mean rate and
# inter-arrival CV as published in the project's shared/traces/azure-2023-*/SOURCE.md, and the
# length percentiles p0/10/25/50/75/90/95/99/99.9/100 computed from those files
# (numpy inverted_cdf). The lengths are strongly non-lognormal (e.g. conv prompts jump from
# 1,189 at p75 to 2,735 at p90), hence the dense percentile grid rather than a fitted law.
AZURE_CONV = dict(
    rate=5.53, cv=1.09,
    prompt="percentiles:0=2,10=207,25=396,50=1020,75=1189,90=2735,95=4083,99=4142,99.9=6212,100=14050",
    output="percentiles:0=7,10=54,25=85,50=129,75=395,90=424,95=451,99=601,99.9=954,100=1000",
)
AZURE_CODE = dict(
    rate=2.57, cv=13.2,
    prompt="percentiles:0=3,10=147,25=578,50=1469,75=2745,90=5194,95=7315,99=7436,99.9=7437,100=7437",
    output="percentiles:0=6,10=7,25=9,50=13,75=24,90=55,95=90,99=252,99.9=831,100=1899",
)


def _table(name: str, arrivals, prompt, output, notes, **extra) -> TraceTable:
    n = len(prompt)
    ids = pd.Series(np.arange(n)).astype(str)  # straight to pandas strings: no fixed-width numpy copy
    data = {"request_id": ids, "arrival_s": arrivals, "prompt_len": prompt, "output_len": output}
    data.update(extra)
    return TraceTable.from_dataframe(pd.DataFrame(data), name=name, source=f"generated:{name}", notes=notes)


def gen_random(name, num_requests=1000, rate=1.0, cv=1.0, prompt="uniform:100:1024", output="uniform:100:1024", seed=0, **_):
    rng = np.random.default_rng(seed)
    p, o = LengthDist.parse(prompt), LengthDist.parse(output)
    arrivals = gamma_arrivals(num_requests, rate, cv, rng)
    note = f"{name}: {num_requests} requests, rate {rate}/s, cv {cv}, prompt {prompt}, output {output}, seed {seed}"
    return _table(name, arrivals, p.sample(num_requests, rng), o.sample(num_requests, rng), [note])


def gen_shared_prefix(num_groups=8, prompts_per_group=16, system_prompt_len=512, question_len=128, output_len=128,
                      rate=0.0, cv=1.0, seed=0, **_):
    """SGLang's generated-shared-prefix shape: groups of prompts that start with the group's
    system prompt. Group order is shuffled (seeded) so groups interleave in time."""
    rng = np.random.default_rng(seed)
    n = num_groups * prompts_per_group
    groups = rng.permutation(np.repeat(np.arange(num_groups), prompts_per_group))
    sys_blocks = system_prompt_len // STRUCT_BLOCK  # only whole blocks can be shared
    prompt_len = system_prompt_len + question_len
    total_blocks = cdiv(prompt_len, STRUCT_BLOCK)
    next_id = num_groups * sys_blocks
    hashes = []
    for g in groups.tolist():
        shared = list(range(g * sys_blocks, (g + 1) * sys_blocks))
        own = list(range(next_id, next_id + total_blocks - sys_blocks))
        next_id += len(own)
        hashes.append(shared + own)
    note = (f"shared-prefix: {num_groups} groups x {prompts_per_group} prompts, system prompt {system_prompt_len} "
            f"+ question {question_len} tokens, output {output_len}, seed {seed}")
    return _table("shared-prefix", gamma_arrivals(n, rate, cv, rng), np.full(n, prompt_len), np.full(n, output_len), [note],
                  session_id=groups.astype(str), block_hashes=hashes, hash_block_size=np.full(n, STRUCT_BLOCK))


def gen_multi_turn(num_sessions=32, turns=4, first_prompt_len=256, user_turn_len=64, output_len=128,
                   think_time_s=5.0, rate=1.0, seed=0, **_):
    """Chat sessions: turn t's prompt is the whole history (previous prompt + answer) plus a new
    user message, so each turn re-reads a growing prefix. Only the previous *prompt* blocks
    are shared hash ids: the answer was generated, so its tokens differ per engine."""
    rng = np.random.default_rng(seed)
    starts = poisson_arrivals(num_sessions, rate, rng) if rate > 0 else np.zeros(num_sessions)
    rows, next_id = [], 0
    for s in range(num_sessions):
        t, history_len, history_ids = float(starts[s]), 0, []
        for turn in range(turns):
            add = first_prompt_len if turn == 0 else output_len + user_turn_len
            plen = history_len + add
            full = plen // STRUCT_BLOCK
            keep = history_len // STRUCT_BLOCK  # whole blocks of the previous prompt
            ids = history_ids[:keep]
            extra = cdiv(plen, STRUCT_BLOCK) - len(ids)
            ids = ids + list(range(next_id, next_id + extra))
            next_id += extra
            rows.append((f"{s}-{turn}", t, plen, output_len, str(s), turn, ids))
            history_len, history_ids = plen, ids[:full]
            t += think_time_s + float(rng.exponential(think_time_s))
    rows.sort(key=lambda r: r[1])
    df = pd.DataFrame(rows, columns=["request_id", "arrival_s", "prompt_len", "output_len", "session_id", "turn", "block_hashes"])
    df["hash_block_size"] = STRUCT_BLOCK
    note = f"multi-turn: {num_sessions} sessions x {turns} turns, think time ~{think_time_s}s, seed {seed}"
    return TraceTable.from_dataframe(df, name="multi-turn", source="generated:multi-turn", notes=[note])


def gen_few_shot(num_requests=256, num_prefixes=4, prefix_len=1024, question_len=64, output_len=64, rate=0.0, cv=1.0,
                 seed=0, **_):
    """A few long few-shot example blocks, each reused by many short questions."""
    per = cdiv(num_requests, num_prefixes)
    table = gen_shared_prefix(num_prefixes, per, prefix_len, question_len, output_len, rate, cv, seed)
    from traces.transforms import head

    return head(table, num_requests) if len(table) > num_requests else table


def gen_azure_like(which: str, num_requests=1000, rate_scale=1.0, seed=0, **_):
    stats = AZURE_CONV if which == "conv" else AZURE_CODE
    table = gen_random(f"azure-{which}-like", num_requests, stats["rate"] * rate_scale, stats["cv"], stats["prompt"],
                       stats["output"], seed)
    table.notes.append(f"azure-{which}-like: arrival rate and length percentiles of the Azure 2023 {which} trace")
    return table


def gen_nano_vllm(num_requests=256, min_len=100, max_len=1024, seed=0, **_):
    """nano-vllm's benchmark: random lengths uniform in [100, 1024] for input and output, all at t=0."""
    rng = np.random.default_rng(seed)
    p = rng.integers(min_len, max_len + 1, size=num_requests)
    o = rng.integers(min_len, max_len + 1, size=num_requests)
    return _table("nano-vllm", np.zeros(num_requests), p, o, [f"nano-vllm workload: {num_requests} requests at t=0, seed {seed}"])


def gen_replay(trace, num_requests=None, rate=None, prompt=None, output=None, seed=0, **_):
    """The arrival process of a real trace (optionally at another rate) with its own lengths,
    or with lengths from given distributions."""
    from traces.io import load

    src = load(trace) if not isinstance(trace, TraceTable) else trace
    n = num_requests or len(src)
    rng = np.random.default_rng(seed)
    arrivals = replay_arrivals(src, n, rate)
    idx = np.arange(n) % len(src)
    p = LengthDist.parse(prompt).sample(n, rng) if prompt else src.df["prompt_len"].to_numpy()[idx]
    o = LengthDist.parse(output).sample(n, rng) if output else src.df["output_len"].to_numpy()[idx]
    return _table("replay", arrivals, p, o, [f"replay of {src.source} arrivals at rate {rate or 'as recorded'}"])


PRESETS = {
    "nano-vllm": gen_nano_vllm,
    "poisson": lambda **kw: gen_random("poisson", **{**kw, "cv": 1.0}),
    "gamma": lambda **kw: gen_random("gamma", **kw),
    "constant": lambda **kw: gen_random("constant", **{**kw, "cv": 0.0}),
    "shared-prefix": gen_shared_prefix,
    "multi-turn": gen_multi_turn,
    "few-shot": gen_few_shot,
    "replay": gen_replay,
    "azure-conv-like": lambda **kw: gen_azure_like("conv", **kw),
    "azure-code-like": lambda **kw: gen_azure_like("code", **kw),
}


_TARGETS = {"poisson": gen_random, "gamma": gen_random, "constant": gen_random,
            "azure-conv-like": gen_azure_like, "azure-code-like": gen_azure_like}


def preset_parameters() -> dict[str, dict]:
    """Each preset's parameters and defaults ("<required>" where there is none), for help texts."""
    import inspect

    out = {}
    for preset in PRESETS:
        sig = inspect.signature(_TARGETS.get(preset, PRESETS[preset]))
        params = {k: ("<required>" if p.default is inspect.Parameter.empty else p.default)
                  for k, p in sig.parameters.items() if k not in ("_", "name", "which", "seed")}
        if preset in ("poisson", "constant"):
            params.pop("cv")
        out[preset] = params
    return out


def generate(preset: str, seed: int = 0, **params) -> TraceTable:
    """Build a named synthetic workload. Unknown presets and parameters are errors."""
    if preset not in PRESETS:
        raise ValueError(f"unknown workload preset {preset!r}; known presets: {', '.join(sorted(PRESETS))}")
    fn = PRESETS[preset]
    allowed = set(preset_parameters()[preset]) | {"seed"}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"preset {preset!r}: unknown parameter(s) {unknown}; allowed: {sorted(allowed - {'seed'})}")
    return fn(seed=seed, **params)
