"""The real engine: the shared step driver with a wall clock and the model runner as its step.

    driver = StepDriver(scheduler, execute=runner.execute, clock=WallClock(), observer=recorder)

The loop itself (arrivals, admission, empty plans, stalls, recording) is `policy.driver`'s,
the very one the simulator runs; this module only loads the model, sizes the KV pool and
supplies "run this plan". `generate` runs a batch offline (like `vllm.LLM.generate`);
`replay` injects requests at their arrival times on the monotonic clock and returns the same
`RunResult` as the simulator.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from executor.attention.base import get_backend
from executor.kv_cache import KVBudgetError, KVCache, blocks_for_budget, bytes_per_block
from executor.model_runner import ModelRunner
from executor.sampler import Sampler, SamplingParams
from policy import Request, RequestRejected, SchedulerConfig, build_scheduler
from policy.driver import Clock, StepDriver
from policy.plan import StepShape
from traces.run_result import RunResult
from traces.timeline import TimelineRecorder

DEFAULT_CPU_KV_BYTES = 512 * 2**20


@dataclass
class Output:
    """One finished request, like vLLM's RequestOutput (single sample)."""

    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str | None
    finish_reason: str | None
    num_cached_tokens: int = 0
    num_preemptions: int = 0


@dataclass
class EngineStats:
    num_steps: int = 0
    num_rejected: int = 0
    step_seconds: float = 0.0
    rejected: dict[str, str] = field(default_factory=dict)  # request id -> reason


class WallClock:
    """Monotonic seconds since the clock was made; waiting really sleeps."""

    def __init__(self, clock=time.monotonic, sleep=time.sleep) -> None:
        self._clock = clock
        self._sleep = sleep
        self._t0 = clock()

    def now(self) -> float:
        return self._clock() - self._t0

    def wait_until(self, t: float) -> None:
        delay = t - self.now()
        if delay > 0:
            self._sleep(delay)


class _NoRecorder:
    """Observer for online `step()` callers that keep no timelines."""

    def on_arrival(self, request, now) -> None: ...

    def on_rejected(self, request_id, arrival_s, prompt_len, max_tokens, reason) -> None: ...

    def on_preempted(self, request_ids, now) -> None: ...

    def on_aborted(self, request, now) -> None: ...

    def on_step(self, plan, result, start_s, end_s, shape=None) -> None: ...


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class LLMEngine:
    def __init__(
        self,
        model: str | Path | torch.nn.Module = "smollm2-135m",
        *,
        tokenizer=None,
        num_blocks: int | None = None,
        kv_cache_memory: int | None = None,
        gpu_memory_utilization: float = 0.90,
        block_size: int = 16,
        max_model_len: int | None = None,
        max_num_seqs: int = 128,
        max_num_batched_tokens: int = 2048,
        enable_chunked_prefill: bool = True,
        long_prefill_token_threshold: int = 0,
        enable_prefix_caching: bool = True,
        policy: str = "fcfs",
        batching: str = "continuous",
        kv_layout: str = "paged",
        reserve_full_prompt: bool = True,
        watermark: float = 0.0,
        attention_backend: str = "torch",
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        cuda_graphs: bool | None = None,
        cuda_graph_batch_sizes: Sequence[int] | None = None,
        seed: int = 0,
        load_tokenizer: bool = True,
    ) -> None:
        self.device = torch.device(device) if device is not None else _default_device()
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        if dtype is None and isinstance(model, torch.nn.Module):
            dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        if dtype is None:
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.dtype = dtype

        self.model_dir: Path | None = None
        if isinstance(model, torch.nn.Module):
            self.model = model
        else:
            from executor.loader import load_model
            from executor.models_registry import resolve_model

            self.model_dir = resolve_model(model)
            self.model = load_model(self.model_dir, device=self.device, dtype=dtype)
        self.config = self.model.config
        self.tokenizer = tokenizer
        if self.tokenizer is None and load_tokenizer and self.model_dir is not None:
            self.tokenizer = _load_tokenizer(self.model_dir)

        if max_model_len is None:
            max_model_len = min(4096, self.config.max_position_embeddings)
        if max_model_len > self.config.max_position_embeddings:
            raise ValueError(
                f"max_model_len={max_model_len} exceeds the model's max_position_embeddings="
                f"{self.config.max_position_embeddings}"
            )
        self.backend = get_backend(attention_backend, self.device)

        min_blocks = -(-max_model_len // block_size)
        if num_blocks is None:
            if kv_cache_memory is None:
                kv_cache_memory = (
                    self._profile_free_memory(gpu_memory_utilization, max_num_batched_tokens, block_size, max_num_seqs)
                    if self.device.type == "cuda" else DEFAULT_CPU_KV_BYTES
                )
            num_blocks = blocks_for_budget(self.config, block_size, dtype, int(kv_cache_memory), min_blocks=min_blocks)
        elif num_blocks < min_blocks:
            raise KVBudgetError(
                f"num_blocks={num_blocks} cannot hold one request of max_model_len={max_model_len} tokens "
                f"(needs {min_blocks} blocks of {block_size}); raise num_blocks or lower max_model_len"
            )
        self.scheduler_config = SchedulerConfig(
            num_blocks=num_blocks, block_size=block_size, max_model_len=max_model_len, max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens, enable_chunked_prefill=enable_chunked_prefill,
            long_prefill_token_threshold=long_prefill_token_threshold, enable_prefix_caching=enable_prefix_caching,
            policy=policy, batching=batching, kv_layout=kv_layout, reserve_full_prompt=reserve_full_prompt,
            watermark=watermark,
        )
        self.kv_cache = KVCache(self.config, num_blocks, block_size, dtype=dtype, device=self.device)
        graph_runner = None
        if cuda_graphs is None:
            cuda_graphs = self.device.type == "cuda" and self.backend.graph_capturable
        if cuda_graphs:
            if self.device.type != "cuda" or not self.backend.graph_capturable:
                raise ValueError(f"cuda_graphs=True needs a CUDA device and a capturable backend (got {self.device}, "
                                 f"{self.backend.name})")
            from executor.cuda_graphs import DecodeGraphRunner

            self.kv_cache.bind(self.model, self.backend)
            graph_runner = DecodeGraphRunner(
                self.model, max_batch=max_num_seqs, max_model_len=max_model_len, block_size=block_size,
                device=self.device, batch_sizes=cuda_graph_batch_sizes,
            )
        self.runner = ModelRunner(self.model, self.kv_cache, self.backend, device=self.device,
                                  sampler=Sampler(self.device, seed), graph_runner=graph_runner)
        if graph_runner is not None:
            graph_runner.capture()
        self._ids = itertools.count()
        self._new_scheduler()

    # -- setup helpers ------------------------------------------------------------------
    def _profile_free_memory(self, utilization: float, max_tokens: int, block_size: int, max_seqs: int) -> int:
        """Bytes left for KV after a forward pass of the largest step (peak activations, logits
        of the largest sampling batch), given the target memory utilisation."""
        from executor.model_runner import build_step_inputs

        dev = self.device
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        n = max(1, min(max_tokens, self.config.max_position_embeddings))
        blocks = -(-n // block_size)
        cache = KVCache(self.config, blocks, block_size, dtype=self.dtype, device=dev)
        cache.bind(self.model, self.backend)
        seqs = max(1, min(max_seqs, n))
        per = n // seqs
        rows = [([0] * (per if i < seqs - 1 else n - per * (seqs - 1)), 0, list(range(blocks))) for i in range(seqs)]
        inputs = build_step_inputs(rows, [True] * seqs, block_size, dev)
        with torch.inference_mode():
            hidden = self.model(inputs.input_ids, inputs.positions, inputs.meta)
            logits = self.model.compute_logits(hidden[inputs.logits_rows]).float()
            logits.softmax(-1).sort(dim=-1)  # the sampler's top-p path is the largest temporary
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev) - cache.nbytes
        del cache, inputs, hidden, logits
        for attn in self.model.attention_layers:
            attn.k_cache = attn.v_cache = None
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(dev)
        used_by_others = total - free - torch.cuda.memory_reserved(dev)
        budget = int(total * utilization) - peak - max(0, used_by_others)
        if budget <= 0:
            raise KVBudgetError(
                f"no GPU memory left for the KV cache: {total / 2**30:.1f} GiB x {utilization} - peak "
                f"{peak / 2**30:.1f} GiB - other processes {used_by_others / 2**30:.1f} GiB"
            )
        return budget

    @property
    def kv_bytes_per_block(self) -> int:
        return bytes_per_block(self.config, self.scheduler_config.block_size, self.dtype)

    def reset_scheduler(self, **overrides) -> None:
        """A fresh scheduler (new config fields allowed, same KV memory): for warm-up and sweeps."""
        if self.scheduler.has_unfinished_requests():
            raise RuntimeError("reset_scheduler: requests are still running")
        data = self.scheduler_config.to_dict()
        data.update(overrides)
        if data["num_blocks"] > self.kv_cache.num_blocks or data["block_size"] != self.kv_cache.block_size:
            raise ValueError("reset_scheduler cannot grow the KV pool or change block_size")
        self.scheduler_config = SchedulerConfig.from_dict(data)
        self._new_scheduler()

    def _new_scheduler(self) -> None:
        """A fresh scheduler, a clean worker, and the online driver `add_request`/`step` use."""
        self.scheduler = build_scheduler(self.scheduler_config)
        self.runner.reset()
        self.stats = EngineStats()
        self._driver = self._make_driver(WallClock(), _NoRecorder())

    def _make_driver(self, clock, observer) -> StepDriver:
        return StepDriver(self.scheduler, self._execute, clock, observer, admit_check=self._check_request)

    # -- requests ---------------------------------------------------------------------
    def tokenize(self, prompt: str) -> list[int]:
        if self.tokenizer is None:
            raise ValueError("text prompts need a tokenizer, and this model directory has none; pass token ids")
        return list(self.tokenizer.encode(prompt, add_special_tokens=False)) if prompt else []

    def make_request(self, prompt: str | Sequence[int], params: SamplingParams, *, request_id: str | None = None,
                     arrival_time: float = 0.0, priority: int = 0) -> Request:
        ids = self.tokenize(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        eos_ids = self.config.eos_token_ids
        stop = tuple(params.stop_token_ids)
        if not params.ignore_eos and len(eos_ids) > 1:
            stop = stop + tuple(t for t in eos_ids[1:] if t not in stop)
        return Request(
            request_id=request_id if request_id is not None else f"req-{next(self._ids)}",
            prompt_token_ids=ids, max_tokens=params.max_tokens, arrival_time=arrival_time, priority=priority,
            eos_token_id=eos_ids[0] if eos_ids else None, stop_token_ids=stop, ignore_eos=params.ignore_eos,
            min_tokens=params.min_tokens,
        )

    def _check_request(self, request: Request) -> None:
        """The executor's own admission check (token ids must index the embedding), run by the
        driver before the scheduler's; attaches default greedy sampling when none is set."""
        vocab = self.config.vocab_size
        bad = [t for t in request.prompt_token_ids if not (isinstance(t, int) and 0 <= t < vocab)]
        if bad:
            raise RequestRejected(
                f"request {request.request_id!r}: prompt token id(s) {bad[:5]} outside the vocabulary [0, {vocab})"
            )
        if request.sampling_params is None:
            request.sampling_params = self._default_params(request)

    @staticmethod
    def _default_params(request: Request) -> SamplingParams:
        max_tokens = request.max_tokens if isinstance(request.max_tokens, int) and request.max_tokens >= 1 else 1
        return SamplingParams(temperature=0.0, max_tokens=max_tokens,
                              min_tokens=min(max(0, request.min_tokens), max_tokens),
                              ignore_eos=request.ignore_eos, stop_token_ids=request.stop_token_ids)

    def add_request(self, request: Request, params: SamplingParams | None = None) -> None:
        """Queue a policy Request now; raises RequestRejected (counted in stats) for bad ones."""
        if params is not None:
            request.sampling_params = params
        try:
            self._check_request(request)
            self.scheduler.add_request(request)
        except RequestRejected as exc:
            self.stats.num_rejected += 1
            self.stats.rejected[request.request_id] = str(exc)
            raise

    def abort(self, request_id: str) -> Request:
        return self.scheduler.abort(request_id)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    # -- the step -----------------------------------------------------------------------
    def _execute(self, plan, shape) -> list:
        """The driver's "run this plan": one forward pass and sampling, timed."""
        if not plan.scheduled:
            return self.runner.execute(plan)  # drops worker state of ended requests
        t0 = time.perf_counter()
        sampled = self.runner.execute(plan)
        self.stats.step_seconds += time.perf_counter() - t0
        self.stats.num_steps += 1
        return sampled

    def step(self):
        """Schedule and run one step. Returns (plan, StepResult), result None for an empty plan."""
        return self._driver.step()

    # -- offline generation ---------------------------------------------------------------
    def generate(self, prompts, sampling_params: SamplingParams | Sequence[SamplingParams] | None = None) -> list[Output]:
        """Generate for every prompt (text, or a list of token ids); outputs in input order.

        A single str or a single list of ints counts as one prompt. A bad prompt raises
        RequestRejected naming it, and nothing of this call stays queued.
        """
        if isinstance(prompts, str) or (isinstance(prompts, (list, tuple)) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        params_list = list(sampling_params) if isinstance(sampling_params, (list, tuple)) else [sampling_params] * len(prompts)
        if len(params_list) != len(prompts):
            raise ValueError(f"got {len(params_list)} sampling params for {len(prompts)} prompts")
        if self.scheduler.has_unfinished_requests():
            raise RuntimeError("generate() needs an idle engine (requests are still queued)")
        requests = []
        for i, (prompt, params) in enumerate(zip(prompts, params_list)):
            req = self.make_request(prompt, params)
            req.sampling_params = params
            try:  # every prompt is checked before any runs: a bad one leaves nothing queued
                self._check_request(req)
                self.scheduler.validate(req)
            except RequestRejected as exc:
                self.stats.num_rejected += 1
                raise RequestRejected(f"prompt {i}: {exc}") from None
            requests.append(req)
        self._make_driver(WallClock(), TimelineRecorder()).run(requests)
        return [self._output(req) for req in requests]

    def _output(self, req: Request) -> Output:
        tokens = list(req.output_token_ids)
        text = self.tokenizer.decode(tokens, skip_special_tokens=True) if self.tokenizer is not None else None
        return Output(req.request_id, list(req.prompt_token_ids), tokens, text, req.finish_reason,
                      max(req.num_cached_tokens, 0), req.num_preemptions)

    # -- real-time trace replay -------------------------------------------------------------
    def replay(self, requests: Iterable[Request], *, sampling_params: SamplingParams | None = None,
               time_scale: float = 1.0, recorder: TimelineRecorder | None = None,
               clock: Clock | None = None, step_duration: Callable[[StepShape], float] | None = None) -> RunResult:
        """Inject each request at `arrival_time * time_scale` seconds after the start (on the
        monotonic clock), run steps while there is work, sleep until the next arrival when idle.
        Requests must come in arrival order. Refused requests are recorded as rejected and
        counted; the rest are served.

        `sampling_params` is a template (temperature, top-k/p, seed); each request keeps its own
        max_tokens / min_tokens / ignore_eos / stop ids. Default: greedy.

        `clock` defaults to the monotonic wall clock. With `step_duration` (e.g. a simulator
        cost model's `time_for_shape`) and a virtual clock, each step still runs on the model
        but time advances by the priced duration instead: the executor then replays exactly
        what the simulator would (tests/test_engines_agree.py).
        """
        if self.scheduler.has_unfinished_requests():
            raise RuntimeError("replay() needs an idle engine")
        if step_duration is not None and not hasattr(clock, "advance"):
            raise ValueError("replay(step_duration=...) needs a clock with advance(), e.g. policy.driver.VirtualClock")
        recorder = recorder or TimelineRecorder()
        template = sampling_params or SamplingParams(temperature=0.0)

        def prepared(reqs):
            for req in reqs:
                req.arrival_time = req.arrival_time * time_scale
                req.sampling_params = self._replay_params(template, req)
                yield req

        clock = clock if clock is not None else WallClock()
        execute = self._execute
        if step_duration is not None:
            def execute(plan, shape, run=self._execute):
                sampled = run(plan, shape)
                if plan.scheduled:
                    clock.advance(step_duration(shape))
                return sampled

        t0 = time.perf_counter()
        driver = StepDriver(self.scheduler, execute, clock, recorder, admit_check=self._check_request)
        stats = driver.run(prepared(requests))
        return RunResult(recorder=recorder, scheduler_config=self.scheduler_config, stats=stats, engine="executor",
                         wall_s=time.perf_counter() - t0)

    @staticmethod
    def _replay_params(template: SamplingParams, req: Request) -> SamplingParams:
        """The template's sampling knobs with the request's own length/stop fields. A request
        whose fields are invalid gets valid placeholders here: the scheduler rejects it by name."""
        max_tokens = req.max_tokens if isinstance(req.max_tokens, int) and req.max_tokens >= 1 else 1
        return SamplingParams(
            temperature=template.temperature, top_k=template.top_k, top_p=template.top_p, seed=template.seed,
            max_tokens=max_tokens, min_tokens=min(max(0, req.min_tokens), max_tokens),
            ignore_eos=req.ignore_eos, stop_token_ids=req.stop_token_ids,
        )

    def warmup(self, num_requests: int = 2, prompt_len: int = 16, max_tokens: int = 4) -> None:
        """Run a tiny batch once (first-call overheads, kernel compilation) and forget it."""
        prompt_len = min(prompt_len, self.scheduler_config.max_model_len - max_tokens - 1)
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        self.generate([[(7 * i + j) % self.config.vocab_size for j in range(prompt_len)] for i in range(num_requests)],
                      params)
        self.reset_scheduler()


def _load_tokenizer(model_dir: Path):
    if not any((model_dir / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))
