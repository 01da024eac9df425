"""Calibration: measure the executor's step time over a grid of plan shapes and fit the
simulator's profiled cost model to it.

The real engine is driven through its own scheduler, so every timed step is a genuine plan
(`engine.step()`: schedule + forward + sample + update, exactly what a replay times):

- prefill chunks: one request of `n * P` tokens prefilled `P` tokens per step, so chunks of
  P tokens at contexts 0, P, 2P, ... (prefill attention over cached context);
- decodes: B requests at context C decoding together, each over its own KV blocks (distinct
  prompts: B decodes sharing one cached prompt would read the same blocks, which the CPU's
  caches serve up to 37 % faster than a replay's distinct contexts). The largest batch is
  prefilled once per context and shrunk by aborting requests;
- mixed steps: a fresh prompt of P tokens joining those B decodes, then aborted;
- prefill after a prefix hit: a prompt whose first C tokens are in the prefix cache, so its
  P new tokens attend to C cached ones (what conversation traces do on every turn);
- short engine runs (*replays*): bursts of requests, every step a sample (the step mixes a
  replay produces: several prefill chunks beside decodes). One with random lengths and no
  prefix sharing, one conversation-like (sessions sharing long prefixes, contexts up to
  `max_model_len`). Each replay is a cross-validation group: the cost model's form is the one
  that best predicts a replay it was not fitted on.

The contexts span the workload's `max_model_len` (decodes that attend to hundreds of cached
tokens cost several times a short-context decode, and a model fitted on short contexts
extrapolates that badly); the decode batches include 2 (the 1-4 row floor).

Each grid point is timed `repeats` times after a warm-up step, in each of `passes` passes over
the whole grid; the sample is the median of all its timings.
The fit (`sim.cost.profiled.fit_profile`) reports every form's held-out error.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from traces.timeline import plan_shape

PREFILL_TOKENS = (16, 64, 128, 256)
DECODE_BATCHES = (1, 2, 4, 8, 16)
MIXED_PREFILL = (16, 64, 192)
HIT_PREFILL = (16, 128)
DECODE_REPEAT_FACTOR = 4
DEFAULT_MAX_MODEL_LEN = 512
# Tokens a decode grid point needs beyond its context: timed decodes, the mixed steps, slack.
_DECODE_HEADROOM = 48


# "cpu": the calling thread's CPU time, as executor.engine.EngineCpuClock measures replays
# (one torch thread, so every step's instruction runs on it). "cpu-ref": that CPU time at the
# host's reference speed (executor.clocks.ReferenceSpeedClock), made when calibration starts.
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time, "cpu-ref": None}


def contexts_for(max_model_len: int) -> tuple[int, ...]:
    """Decode / prefix-hit contexts from short to the longest a workload reaches."""
    top = max(32, max_model_len - _DECODE_HEADROOM)
    return tuple(sorted({32, max(32, top // 2), top}))


@dataclass
class CalibrationResult:
    profile_path: Path
    fit: dict
    num_samples: int
    wall_s: float
    noise_cv_median: float


def _sample(shape: tuple, seconds: float) -> dict:
    n_pre, pre_tok, n_dec, pre_ctx, dec_ctx, pairs, n_sampled = shape
    return {"num_prefill_requests": n_pre, "num_prefill_tokens": pre_tok, "num_decode_requests": n_dec,
            "sum_prefill_context_len": pre_ctx, "sum_context_len": pre_ctx + dec_ctx,
            "prefill_attn_pairs": pairs, "num_sampled": n_sampled, "measured_s": seconds}


class _Profiler:
    def __init__(self, engine, repeats: int, clock=time.perf_counter) -> None:
        self.engine = engine
        self.repeats = repeats
        self.clock = clock
        self.samples: list[dict] = []
        self.cvs: list[float] = []
        self.points: dict = {}
        self._next = 0
        self.vocab = engine.config.vocab_size

    def tokens(self, n: int) -> list[int]:
        """Fresh token ids (never a prefix-cache hit with anything before)."""
        start = self._next
        self._next += n
        return [3 + (start + i) * 7919 % (self.vocab - 3) for i in range(n)]

    def add(self, prompt: list[int], max_tokens: int) -> str:
        from executor.sampler import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        req = self.engine.make_request(prompt, params)
        self.engine.add_request(req, params)
        return req.request_id

    def step(self):
        t0 = self.clock()
        plan, result = self.engine.step()
        return plan, self.clock() - t0

    def collect(self, key, shapes_times: list[tuple[tuple, float]]) -> None:
        """Timings of one grid point from one pass (kept until `finish`)."""
        self.points.setdefault(key, []).extend(shapes_times)

    def finish(self) -> None:
        for key in list(self.points):
            group = f"{key[0]}{key[1]}" if key[0] == "replay" else None
            self.record(self.points.pop(key), group)

    def record(self, shapes_times: list[tuple[tuple, float]], group: str | None = None) -> None:
        """One sample from repeated steps of (nearly) the same shape: median time, and the
        shape of the step whose time is the median. `group`: the replay the steps belong to."""
        if not shapes_times:
            return
        times = [t for _, t in shapes_times]
        med = statistics.median(times)
        shape = min(shapes_times, key=lambda st: abs(st[1] - med))[0]
        sample = _sample(shape, med)
        if group is not None:
            sample["group"] = group
        self.samples.append(sample)
        if len(times) > 1 and med > 0:
            self.cvs.append(statistics.pstdev(times) / statistics.mean(times))

    def drain(self) -> None:
        engine = self.engine
        for rid in list(engine.scheduler.requests):
            engine.abort(rid)
        while engine.has_unfinished_requests():
            engine.step()
        engine.step()  # flush aborted ids to the runner

    def reset(self, **knobs) -> None:
        self.drain()
        self.engine.reset_scheduler(**knobs)


def profile_engine(engine, *, prefill_tokens=PREFILL_TOKENS, decode_batches=DECODE_BATCHES, contexts=None,
                   mixed_prefill=MIXED_PREFILL, hit_prefill=HIT_PREFILL, repeats: int = 2, passes: int = 2,
                   max_chunks: int = 3, bursts: bool = True, progress: bool = True,
                   clock=time.perf_counter) -> _Profiler:
    """The whole grid `passes` times, `repeats` timed steps per point per pass; a point's
    sample is the median over all its timings. Passes spread each point over the run, so a
    burst of load from another process slows every point a little instead of a few a lot."""
    prof = _Profiler(engine, repeats, clock)
    max_len = engine.scheduler_config.max_model_len
    contexts = tuple(contexts or contexts_for(max_len))
    total = (len(prefill_tokens) + len(contexts) * (len(decode_batches) + 1) + int(bursts)) * passes
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="calibrating", unit="point", file=sys.stderr)
    for _ in range(passes):
        _grid_pass(prof, prefill_tokens, decode_batches, contexts, mixed_prefill, repeats, max_chunks, bar)
        _prefix_hit_pass(prof, contexts, hit_prefill, repeats, bar)
        if bursts:
            profile_bursts(prof)
            profile_conversations(prof, max_model_len=max_len, max_num_seqs=max(decode_batches))
            if bar is not None:
                bar.update(1)
    prof.finish()
    if bar is not None:
        bar.close()
    return prof


def _grid_pass(prof, prefill_tokens, decode_batches, contexts, mixed_prefill, repeats, max_chunks, bar) -> None:
    engine = prof.engine
    cfg = engine.scheduler_config
    budget = max(max(prefill_tokens), max(mixed_prefill)) + max(decode_batches) + 16

    # Prefill chunks of P tokens at growing context.
    for p in prefill_tokens:
        n_chunks = max(1, min(max_chunks, (cfg.max_model_len - 2) // p))
        prof.reset(enable_prefix_caching=False, enable_chunked_prefill=True, long_prefill_token_threshold=p,
                   max_num_batched_tokens=budget,
                   max_num_seqs=max(decode_batches) + 1)
        by_chunk: dict[int, list] = {}
        for rep in range(repeats + 1):
            prof.add(prof.tokens(p * n_chunks), 1)
            for chunk in range(n_chunks):
                plan, dt = prof.step()
                if rep > 0:  # the first pass is the warm-up
                    by_chunk.setdefault(chunk, []).append((plan_shape(plan), dt))
            prof.drain()
        for chunk in sorted(by_chunk):
            prof.collect(("prefill", p, chunk), by_chunk[chunk])
        if bar is not None:
            bar.update(1)

    # Decodes of B requests at context C, and mixed steps on top of them. The B requests have
    # distinct prompts (distinct KV blocks, as in a replay: B decodes sharing one cached prompt
    # read the same blocks and run up to 37 % faster from the CPU's caches). The batch is
    # prefilled once at the largest B, then shrunk by aborting requests, so each context costs
    # one set of prefills; those prefill chunks are samples too.
    # Decode steps are cheap (50-200 ms) and most of what a replay below capacity runs, so they
    # get DECODE_REPEAT_FACTOR times the repeats of a prefill point: their medians carry the fit.
    batches = sorted(set(decode_batches), reverse=True)
    mixed_at = {1, max(batches) // 2, max(batches)} if len(batches) > 2 else set(batches)
    decode_repeats = repeats * DECODE_REPEAT_FACTOR
    for c in contexts:
        n_steps = (decode_repeats + 1) * len(batches) + (repeats + 1) * len(mixed_prefill) * len(mixed_at) + 8
        prof.reset(enable_prefix_caching=False, enable_chunked_prefill=True, long_prefill_token_threshold=0,
                   max_num_batched_tokens=max(budget, c), max_num_seqs=max(batches) + 1)
        rids = [prof.add(prof.tokens(c), n_steps) for _ in range(max(batches))]
        while engine.scheduler.num_waiting or any(
                r.num_computed_tokens < r.num_prompt_tokens for r in engine.scheduler.requests.values()):
            plan, dt = prof.step()
            if plan.scheduled and plan.num_decode_tokens == 0:
                prof.collect(("batch-prefill", c, plan_shape(plan)), [(plan_shape(plan), dt)])
        for b in batches:
            for rid in rids[b:]:
                if rid in engine.scheduler.requests:
                    engine.abort(rid)
            rids = rids[:b]
            decodes = []
            for i in range(decode_repeats + 1):
                plan, dt = prof.step()
                if i > 0:
                    decodes.append((plan_shape(plan), dt))
            prof.collect(("decode", c, b), decodes)
            if b in mixed_at:
                for p in mixed_prefill:
                    mixed = []
                    for i in range(repeats + 1):
                        rid = prof.add(prof.tokens(p), 4)
                        plan, dt = prof.step()
                        engine.abort(rid)
                        if i > 0 and plan.num_prefill_tokens == p:
                            mixed.append((plan_shape(plan), dt))
                    prof.collect(("mixed", c, b, p), mixed)
            if bar is not None:
                bar.update(1)
    prof.drain()


def _prefix_hit_pass(prof, contexts, hit_prefill, repeats, bar) -> None:
    """Prefill of P new tokens after a prefix-cache hit of C tokens (one request per step)."""
    engine = prof.engine
    bs = engine.scheduler_config.block_size
    max_len = engine.scheduler_config.max_model_len
    for c in contexts:
        c = max(bs, c // bs * bs)  # whole blocks hit
        prof.reset(enable_prefix_caching=True, enable_chunked_prefill=True, long_prefill_token_threshold=0,
                   max_num_batched_tokens=max(max(hit_prefill), c) + 16, max_num_seqs=4)
        prefix = prof.tokens(c)
        prof.add(prefix + prof.tokens(1), 1)
        while engine.has_unfinished_requests():
            prof.step()  # fills the prefix cache
        for p in hit_prefill:
            if c + p + 2 > max_len:
                continue
            timed = []
            for rep in range(repeats + 1):
                prof.add(prefix + prof.tokens(p), 1)
                plan, dt = prof.step()
                while engine.has_unfinished_requests():
                    prof.step()
                if rep > 0:
                    timed.append((plan_shape(plan), dt))
            prof.collect(("hit", c, p), timed)
        if bar is not None:
            bar.update(1)
    prof.drain()


def profile_conversations(prof: _Profiler, *, max_model_len: int, sessions: int = 4, turns: int = 4,
                          max_output: int = 16, max_num_seqs: int = 16, budget: int = 256,
                          seed: int = 4321) -> None:
    """A conversation-like replay: each session's turn t re-sends the whole history (a long
    shared prefix: prefix-cache hits, prefill after a hit) plus a new message; contexts grow to
    `max_model_len`. All turns are queued at once, in turn order, so decodes over long cached
    contexts run beside prefill chunks, as in a busy conversation trace."""
    import random

    rng = random.Random(seed)
    engine = prof.engine
    prof.reset(enable_prefix_caching=True, enable_chunked_prefill=True, long_prefill_token_threshold=0,
               max_num_batched_tokens=budget, max_num_seqs=max_num_seqs)
    limit = max_model_len - max_output - 1
    histories = [prof.tokens(rng.randint(limit // 8, limit // 3)) for _ in range(sessions)]
    for _turn in range(turns):
        for s in range(sessions):
            message = prof.tokens(rng.randint(8, max(9, limit // (2 * turns))))
            histories[s] = (histories[s] + message)[:limit]
            prof.add(list(histories[s]), rng.randint(2, max_output))
    step = 0
    while engine.has_unfinished_requests():
        plan, dt = prof.step()
        if plan.scheduled:
            prof.collect(("replay", "conversation", step, plan_shape(plan)), [(plan_shape(plan), dt)])
            step += 1
    prof.drain()


def profile_bursts(prof: _Profiler, *, bursts: int = 1, requests: int = 16, max_prompt: int = 256,
                   max_output: int = 24, max_num_seqs: int = 8, budget: int = 256, seed: int = 1234) -> None:
    """Short engine runs: bursts of requests with random lengths, every step a sample. They
    add the step mixes a real replay produces (several prefill chunks beside decodes) that a
    grid of pure shapes misses."""
    import random

    rng = random.Random(seed)
    engine = prof.engine
    for burst in range(bursts):
        prof.reset(enable_prefix_caching=False, enable_chunked_prefill=True, long_prefill_token_threshold=0,
                   max_num_batched_tokens=budget, max_num_seqs=max_num_seqs)
        for _ in range(requests):
            prof.add(prof.tokens(rng.randint(8, max_prompt)), rng.randint(2, max_output))
        step = 0
        while engine.has_unfinished_requests():
            plan, dt = prof.step()
            if plan.scheduled:  # the same seed gives the same plans in every pass
                prof.collect(("replay", f"burst{burst}", step, plan_shape(plan)), [(plan_shape(plan), dt)])
                step += 1
    prof.drain()


def calibrate(model: str, out: str | Path, *, dtype: str = "fp32", block_size: int = 16, repeats: int = 2,
              quick: bool = False, progress: bool = True, device: str | None = None,
              attention_backend: str = "torch", threads: int | None = None,
              max_model_len: int = DEFAULT_MAX_MODEL_LEN, clock: str = "wall") -> CalibrationResult:
    """Profile `model` on this machine, fit the profiled cost model, save it to `out`.
    `threads` sets torch's intra-op threads (the executor runs it predicts must use the same);
    `max_model_len` is the longest context the workloads it prices reach (the grid spans it).
    `clock="cpu"` times steps in the engine thread's CPU time instead of wall time: with one
    torch thread that is the step's own cost, without the time the thread was not running (a
    busy or virtualised host). `clock="cpu-ref"` also divides out the host's speed drift
    (executor.clocks.ReferenceSpeedClock) and records the probe's reference time in the
    profile, so replays on that clock a while later are on the same scale. Replays measured on
    the same clock (`executor: {clock: ...}`, `folovllm fidelity`) are what such a profile
    predicts."""
    if clock not in CLOCKS:
        raise ValueError(f"clock={clock!r}: choose one of {sorted(CLOCKS)}")
    _set_threads(threads)
    if clock in ("cpu", "cpu-ref"):
        import torch

        if torch.get_num_threads() != 1:
            raise ValueError(f"clock={clock!r} needs one torch thread (threads=1): other threads' work would be missed")
    from executor.engine import LLMEngine
    from sim.cost.profiled import fit_profile

    from experiments.run import model_ref
    from experiments.run.environment import environment, machine_fingerprint

    t0 = time.perf_counter()
    model_dir = model_ref.executor_model_dir(model)
    grid = dict(prefill_tokens=PREFILL_TOKENS, decode_batches=DECODE_BATCHES, contexts=contexts_for(max_model_len),
                mixed_prefill=MIXED_PREFILL, hit_prefill=HIT_PREFILL)
    if quick:
        max_model_len = min(max_model_len, 128)
        grid = dict(prefill_tokens=(16, 32, 64), decode_batches=(1, 2, 4), contexts=(16, 64), mixed_prefill=(16,),
                    hit_prefill=(16,))
    max_model_len = max(max_model_len, max(grid["contexts"]) + _DECODE_HEADROOM,
                        max(grid["prefill_tokens"]) * 4 + 16)
    # Room for the largest decode batch at the longest context, each request on its own blocks.
    num_blocks = max(64, (max(grid["decode_batches"]) + 1) * -(-max_model_len // block_size) + 8)
    engine = LLMEngine(model_dir, num_blocks=num_blocks, block_size=block_size,
                       max_model_len=max_model_len, max_num_seqs=max(grid["decode_batches"]) + 1,
                       max_num_batched_tokens=max_model_len, attention_backend=attention_backend,
                       dtype=model_ref.TORCH_DTYPES[dtype], device=device, load_tokenizer=False)
    engine.warmup()
    ref_clock = None
    if clock == "cpu-ref":
        from executor.clocks import ReferenceSpeedClock

        ref_clock = ReferenceSpeedClock()
    prof = profile_engine(engine, repeats=repeats, passes=1 if quick else 2, bursts=not quick, progress=progress,
                          clock=ref_clock.now if ref_clock else CLOCKS[clock],
                          **grid)
    speed = rebase_to_median_speed(prof.samples, ref_clock) if ref_clock else None
    env = environment(with_torch=True)
    hardware = {"name": "measured", "fingerprint": machine_fingerprint(), "cpu": env["cpu"],
                "cpu_count": env["cpu_count"], "torch_threads": env.get("torch_threads"), "gpu": env.get("gpu"),
                "loadavg_at_end": env.get("loadavg"),
                "step_noise_cv_median": statistics.median(prof.cvs) if prof.cvs else None,
                "attention_backend": attention_backend, "clock": clock}
    if speed:
        hardware["speed_reference_s"] = speed["reference_s"]
        hardware["speed_during_calibration"] = speed
    profile = fit_profile(prof.samples, model=model, hardware=hardware, dtype=dtype, weight_bits=16)
    path = profile.save(out)
    return CalibrationResult(path, profile.fit_report, len(prof.samples), time.perf_counter() - t0,
                             hardware["step_noise_cv_median"] or 0.0)


def rebase_to_median_speed(samples: list[dict], ref_clock) -> dict:
    """Put the samples timed on a `cpu-ref` clock on the scale of the host's *median* speed
    over the whole calibration (the clock's own reference was a fraction of a second at its
    start): times scale by the median probe ratio, and so does the reference that replays
    compared with this profile will use. Returns the speed record kept in the profile."""
    stats = ref_clock.speed_stats()
    factor = stats["ratio_p50"]
    for sample in samples:
        sample["measured_s"] *= factor
    return {**stats, "reference_s": ref_clock.reference_s * factor, "self_referenced": False,
            "ratio_p10": stats["ratio_p10"] / factor, "ratio_p50": 1.0, "ratio_p90": stats["ratio_p90"] / factor}


def profile_speed_reference(profile_path: str | Path | None) -> float | None:
    """The probe time a `cpu-ref` calibration recorded (None for other clocks or no profile)."""
    if not profile_path:
        return None
    import json

    try:
        hardware = json.loads(Path(profile_path).read_text()).get("hardware") or {}
    except (OSError, ValueError):
        return None
    ref = hardware.get("speed_reference_s") if isinstance(hardware, dict) else None
    return float(ref) if ref else None


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def cached_profile_path(model: str, dtype: str = "fp32", threads: int | None = None,
                        max_model_len: int = DEFAULT_MAX_MODEL_LEN, clock: str = "wall") -> Path:
    """Where the calibrated profile of this machine + model + dtype (+ torch threads) + the
    contexts it spans + the clock it was timed on + executor code is kept."""
    _set_threads(threads)
    from experiments.run.environment import code_fingerprint, machine_fingerprint
    from experiments.run.model_ref import _cache_root

    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in model.replace("/", "_"))[-60:]
    return (_cache_root() / "profiles"
            / f"{slug}-{dtype}-len{max_model_len}{'' if clock == 'wall' else '-' + clock}-{machine_fingerprint()}-{code_fingerprint('executor')}.json")


def ensure_profile(model: str, dtype: str = "fp32", *, force: bool = False, progress: bool = True,
                   echo=print, threads: int | None = None, max_model_len: int = DEFAULT_MAX_MODEL_LEN,
                   clock: str = "wall") -> Path:
    """The cached profile for this machine, calibrating first when there is none."""
    path = cached_profile_path(model, dtype, threads, max_model_len, clock)
    if path.is_file() and not force:
        echo(f"using the cached calibration profile {path}")
        return path
    echo(f"calibrating {model} ({dtype}) on this machine -> {path}")
    res = calibrate(model, path, dtype=dtype, progress=progress, threads=threads, max_model_len=max_model_len,
                    clock=clock)
    echo(describe_result(res))
    return path


def describe_result(res: CalibrationResult) -> str:
    fit = res.fit
    held = fit.get("holdout_mape")
    parts = [f"calibration: {res.num_samples} grid points in {res.wall_s:.0f} s"]
    if held is not None:
        parts.append(f"held-out step-time error (MAPE) {100 * held:.1f}% (max {100 * fit['holdout_max_ape']:.1f}%)")
    parts.append(f"in-sample {100 * fit.get('train_mape', 0):.1f}%")
    parts.append(f"step-time noise (median CV of repeats) {100 * res.noise_cv_median:.1f}%")
    return "; ".join(parts)
