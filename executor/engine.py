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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from executor.attention.registry import get_backend
from executor.clocks import CLOCKS, EngineCpuClock, ReferenceSpeedClock, WallClock, make_clock  # noqa: F401 (re-exported)
from executor.engine_config import ExecutorConfig
from executor.kv_cache import KVBudgetError, KVCache, blocks_for_budget, bytes_per_block
from executor.model_runner import ModelRunner
from executor.sampler import Sampler, SamplingParams
from policy import Request, RequestRejected, SchedulerConfig, build_scheduler
from policy.config import DEFAULT_MAX_MODEL_LEN, KNOB_NAMES
from policy.utils import cdiv
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


_GREEDY = SamplingParams(temperature=0.0)


class _NoRecorder:
    """Observer for online `step()` callers that keep no timelines."""

    def on_arrival(self, request, now) -> None: ...

    def on_rejected(self, request_id, arrival_s, prompt_len, max_tokens, reason) -> None: ...

    def on_preempted(self, request_ids, now) -> None: ...

    def on_aborted(self, request, now) -> None: ...

    def on_step(self, plan, result, start_s, end_s, shape=None) -> None: ...


def split_knobs(knobs: dict) -> tuple[dict, dict]:
    """Route keyword knobs to SchedulerConfig or ExecutorConfig by name; an unknown name is an error."""
    sched_names = set(KNOB_NAMES)
    exec_names = set(ExecutorConfig.field_names())
    unknown = sorted(set(knobs) - sched_names - exec_names)
    if unknown:
        raise TypeError(f"LLMEngine: unknown knob(s) {unknown}; scheduling knobs: {sorted(sched_names)}; "
                        f"executor knobs: {sorted(exec_names)}")
    return ({k: v for k, v in knobs.items() if k in sched_names}, {k: v for k, v in knobs.items() if k in exec_names})


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class LLMEngine:
    """A paged-KV serving engine on one device: loads the model, sizes the KV pool, and runs
    the shared step driver with the model runner as its step.

    `LLMEngine(model, **knobs)`: each keyword is a `SchedulerConfig` field (scheduling, shared
    with the simulator, same defaults) or an `ExecutorConfig` field (device, dtype, backend,
    memory); or pass the two records whole. `generate` serves a batch offline, `replay`
    replays a trace in real time, `add_request` + `step` drive it one step at a time.
    """

    def __init__(self, model: str | Path | torch.nn.Module = "smollm2-135m", *, tokenizer=None,
                 scheduler_config: SchedulerConfig | None = None, executor_config: ExecutorConfig | None = None,
                 **knobs) -> None:
        sched_knobs, exec_knobs = split_knobs(knobs)
        if exec_knobs.get("dtype") is not None and not isinstance(exec_knobs["dtype"], str):
            exec_knobs["dtype"] = str(exec_knobs["dtype"]).removeprefix("torch.")
        if exec_knobs.get("cuda_graph_batch_sizes") is not None:
            exec_knobs["cuda_graph_batch_sizes"] = tuple(exec_knobs["cuda_graph_batch_sizes"])
        ecfg = replace(executor_config or ExecutorConfig(), **exec_knobs)
        scfg = replace(scheduler_config or SchedulerConfig(), **sched_knobs)
        self.executor_config = ecfg
        if ecfg.threads is not None:
            torch.set_num_threads(ecfg.threads)
        self.device = torch.device(ecfg.device) if ecfg.device is not None else _default_device()
        self._load(model, ecfg, tokenizer)
        self.backend = get_backend(ecfg.attention_backend, self.device)
        self.scheduler_config = self._size_kv_pool(scfg, ecfg)
        self.kv_cache = KVCache(self.config, self.scheduler_config.num_blocks, self.scheduler_config.block_size,
                                dtype=self.dtype, device=self.device)
        self._build_runner(ecfg)
        self._ids = itertools.count()
        self._new_scheduler()

    # -- setup helpers ------------------------------------------------------------------
    def _load(self, model, ecfg: ExecutorConfig, tokenizer) -> None:
        dtype = getattr(torch, ecfg.dtype) if ecfg.dtype is not None else None
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
        if self.tokenizer is None and ecfg.load_tokenizer and self.model_dir is not None:
            self.tokenizer = _load_tokenizer(self.model_dir)

    def _size_kv_pool(self, scfg: SchedulerConfig, ecfg: ExecutorConfig) -> SchedulerConfig:
        """The scheduler config with max_model_len and num_blocks resolved for this model and
        memory budget; refuses a pool that cannot hold one max-length request."""
        positions = self.config.max_position_embeddings
        if scfg.max_model_len is not None and scfg.max_model_len > positions:
            raise ValueError(f"max_model_len={scfg.max_model_len} exceeds the model's max_position_embeddings={positions}")
        max_model_len = scfg.max_model_len or min(DEFAULT_MAX_MODEL_LEN, positions)
        block_size = scfg.block_size
        min_blocks = cdiv(max_model_len, block_size)
        num_blocks = scfg.num_blocks
        if num_blocks is None:
            budget = ecfg.kv_cache_memory
            if budget is None:
                budget = (self._profile_free_memory(ecfg.gpu_memory_utilization, scfg.max_num_batched_tokens,
                                                    block_size, scfg.max_num_seqs)
                          if self.device.type == "cuda" else DEFAULT_CPU_KV_BYTES)
            num_blocks = blocks_for_budget(self.config, block_size, self.dtype, int(budget), min_blocks=min_blocks)
        elif num_blocks < min_blocks:
            raise KVBudgetError(
                f"num_blocks={num_blocks} cannot hold one request of max_model_len={max_model_len} tokens "
                f"(needs {min_blocks} blocks of {block_size}); raise num_blocks or lower max_model_len"
            )
        return replace(scfg, num_blocks=num_blocks, max_model_len=max_model_len)

    def _build_runner(self, ecfg: ExecutorConfig) -> None:
        scfg = self.scheduler_config
        graph_runner = None
        cuda_graphs = ecfg.cuda_graphs
        if cuda_graphs is None:
            cuda_graphs = self.device.type == "cuda" and self.backend.graph_capturable
        if cuda_graphs:
            if self.device.type != "cuda" or not self.backend.graph_capturable:
                raise ValueError(f"cuda_graphs=True needs a CUDA device and a capturable backend (got {self.device}, "
                                 f"{self.backend.name})")
            from executor.cuda_graphs import DecodeGraphRunner

            self.kv_cache.bind(self.model, self.backend)
            graph_runner = DecodeGraphRunner(
                self.model, max_batch=scfg.max_num_seqs, max_model_len=scfg.max_model_len,
                block_size=scfg.block_size, device=self.device, batch_sizes=ecfg.cuda_graph_batch_sizes,
            )
        self.runner = ModelRunner(self.model, self.kv_cache, self.backend, device=self.device,
                                  sampler=Sampler(self.device, ecfg.seed), graph_runner=graph_runner)
        if graph_runner is not None:
            graph_runner.capture()

    def _profile_free_memory(self, utilization: float, max_tokens: int, block_size: int, max_seqs: int) -> int:
        """Bytes left for KV after a forward pass of the largest step (peak activations, logits
        of the largest sampling batch), given the target memory utilisation."""
        from executor.model_runner import build_step_inputs

        dev = self.device
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        n = max(1, min(max_tokens, self.config.max_position_embeddings))
        blocks = cdiv(n, block_size)
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
        self._driver = self.make_driver(WallClock(), _NoRecorder())

    def make_driver(self, clock, observer, execute=None) -> StepDriver:
        """A step driver over this engine's scheduler and model runner (or `execute`, a wrapper
        of `_execute`), with the executor's admission check: what `generate`, `replay` and the
        HTTP server all run."""
        return StepDriver(self.scheduler, execute or self._execute, clock, observer, admit_check=self._check_request)

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
            request.sampling_params = self._replay_params(_GREEDY, request)

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
        self.make_driver(WallClock(), TimelineRecorder()).run(requests)
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
        template = sampling_params or _GREEDY

        def prepared(reqs):
            for req in reqs:
                req.arrival_time = req.arrival_time * time_scale
                req.sampling_params = self._replay_params(template, req)
                yield req

        clock = clock if clock is not None else WallClock()
        if step_duration is None:
            execute = self._execute
        else:
            def execute(plan, shape, run=self._execute):
                sampled = run(plan, shape)
                if plan.scheduled:
                    clock.advance(step_duration(shape))
                return sampled

        t0 = time.perf_counter()
        stats = self.make_driver(clock, recorder, execute).run(prepared(requests))
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
    from executor.tokenizer import has_tokenizer, load_tokenizer

    return load_tokenizer(model_dir) if has_tokenizer(model_dir) else None
