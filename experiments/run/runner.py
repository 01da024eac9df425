"""Run every variant of a spec in each requested engine, resumably.

    plan_jobs(spec)   -> every (engine, variant, seed, repeat) with its cache key; all checks
                         that can fail (model, KV pool, backends, profiles) happen here,
                         before any work starts
    run_spec(spec)    -> simulations in parallel worker processes (or on Ray), executor runs
                         one at a time in this process; finished runs are skipped

A run's key is the hash of the canonical JSON of everything that determines its result: the
trace section (file content, not its name) with the seed and rate scale, the model, the
hardware, the resolved variant (with its KV pool size), the engine, the cost model's content
(the profile file's bytes), the SLOs, the repeat index, and the engine's own source code
(policy + traces + sim or executor; executor runs also name the machine). Renaming a variant or
moving the output folder never reruns anything; changing any input, code included, always does.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from experiments.run import model_ref, results
from experiments.run.environment import code_fingerprint, machine_fingerprint
from policy.utils import cdiv
from sim.models import check_max_model_len
from experiments.run.spec import ExperimentSpec, SpecError, Variant, canonical_json, file_digest

RESULTS_VERSION = 1
DEFAULT_CPU_KV_MIB = 512  # the executor's own default on a CPU


@dataclass
class Job:
    engine: str
    variant: Variant
    seed: int
    repeat: int
    num_blocks: int
    key: str
    label: str
    cost_model: dict | None = None
    existing_dir: str | None = None  # a finished folder with this key under another label

    @property
    def dirname(self) -> str:
        return self.existing_dir or f"{self.label}-{self.key[:16]}"

    def index_row(self) -> dict:
        return {"engine": self.engine, "variant": self.variant.name, "seed": self.seed, "repeat": self.repeat,
                "rate_scale": self.variant.knobs["rate_scale"], "num_blocks": self.num_blocks, "key": self.key,
                "dir": f"runs/{self.dirname}"}


@dataclass
class RunReport:
    out_dir: Path
    jobs: list[Job]
    ran: list[Job] = field(default_factory=list)
    reused: list[Job] = field(default_factory=list)
    wall_s: float = 0.0


# -- planning -------------------------------------------------------------------------------
def _slug(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in text)
    return keep[:60]


def resolve_num_blocks(spec: ExperimentSpec, shape, variant: Variant) -> int:
    knobs = variant.knobs
    if knobs.get("num_blocks"):
        return int(knobs["num_blocks"])
    block_bytes = model_ref.kv_block_bytes(shape, knobs["block_size"], spec.dtype)
    if spec.kv_cache_mib is not None or "executor" in spec.engines or spec.hardware is None:
        mib = spec.kv_cache_mib if spec.kv_cache_mib is not None else DEFAULT_CPU_KV_MIB
        return int(mib * 2**20 // block_bytes)
    from sim.hardware import get_hardware, kv_blocks_for

    return kv_blocks_for(shape, get_hardware(spec.hardware), block_size=knobs["block_size"], dtype=spec.dtype,
                         weight_bits=4 if knobs["weight_format"] == "gptq-int4" else 16,
                         max_num_batched_tokens=knobs["max_num_batched_tokens"], max_num_seqs=knobs["max_num_seqs"])


def cost_model_desc(spec: ExperimentSpec, variant: Variant, profile_path: str | None) -> dict:
    """How a worker rebuilds the cost model, plus what identifies its content (for the key)."""
    kind = spec.cost_model
    if kind == "roofline":
        from sim.hardware import get_hardware

        hw = get_hardware(spec.hardware)
        return {"kind": "roofline", "model": spec.model, "hardware": spec.hardware, "hardware_spec": hw.to_dict(),
                "dtype": spec.dtype, "weight_bits": 4 if variant.knobs["weight_format"] == "gptq-int4" else 16}
    if kind == "constant":
        return {"kind": "constant", "step_s": 0.01, "per_token_s": 1e-4}
    if kind in ("roofline-ideal", "roofline-fitted") or kind.startswith("profile:"):
        from sim.cost.op_profile import profile_file
        from sim.hardware import get_hardware

        digest = file_digest(profile_file(kind.partition(":")[2])) if kind.startswith("profile:") else None
        return {"kind": "registry", "spec": kind, "model": spec.model, "hardware": spec.hardware,
                "hardware_spec": get_hardware(spec.hardware).to_dict(), "dtype": spec.dtype,
                "weight_bits": 4 if variant.knobs["weight_format"] == "gptq-int4" else 16, "sha256": digest}
    path = profile_path if kind == "calibrated" else kind
    if path is None:
        raise SpecError("cost_model: 'calibrated' needs a profile; run `folovllm calibrate` first")
    return {"kind": "profile", "path": str(path), "sha256": file_digest(path)}


def build_cost_model(desc: dict):
    from sim.cost.registry import build_cost_model as build

    if desc["kind"] == "roofline":
        return build("roofline", model=model_ref.model_shape(desc["model"]), hardware=desc["hardware"],
                     dtype=desc["dtype"], weight_bits=desc["weight_bits"])
    if desc["kind"] == "constant":
        return build(f"constant:{desc['step_s']}:{desc['per_token_s']}")
    if desc["kind"] == "registry":
        return build(desc["spec"], model=model_ref.model_shape(desc["model"]), hardware=desc["hardware"],
                     dtype=desc["dtype"], weight_bits=desc["weight_bits"])
    return build(desc["path"])


def speed_reference(spec: ExperimentSpec, profile_path: str | None) -> float | None:
    """For `executor: {clock: cpu-ref}`: the probe time of the calibration whose profile the
    simulator prices with, so both engines read time on one scale (None: the clock measures
    its own reference when it starts, or another clock)."""
    if spec.executor.get("clock") != "cpu-ref":
        return None
    from experiments.run.calibrate import profile_speed_reference

    kind = spec.cost_model
    if kind == "calibrated":
        return profile_speed_reference(profile_path)
    if kind.endswith(".json"):
        return profile_speed_reference(kind)
    return None


def _check_executor(spec: ExperimentSpec) -> None:
    if "executor" not in spec.engines:
        return
    for i, v in enumerate(spec.variants):
        if v.knobs["weight_format"] == "gptq-int4" and not model_ref.is_gptq_dir(spec.model):
            raise SpecError(f"{spec.source}: variants[{i}] ({v.name}).weight_format: 'gptq-int4' on the executor "
                            "needs a GPTQ checkpoint directory as `model` (make one with `folovllm quantize`); "
                            "or run this variant in the sim engine only")
        backend = v.knobs["attention_backend"]
        if backend != "torch":
            device = spec.executor.get("device")
            import torch

            on_gpu = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
            if not on_gpu and not (backend == "triton" and os.environ.get("TRITON_INTERPRET") == "1"):
                raise SpecError(f"{spec.source}: variants[{i}] ({v.name}).attention_backend: {backend!r} needs a "
                                "CUDA device on the executor; allowed here: 'torch'")


def plan_jobs(spec: ExperimentSpec, *, profile_path: str | None = None) -> list[Job]:
    """Every run of the spec, with its key. Raises SpecError (naming the field) on anything
    that would fail later."""
    try:
        shape = model_ref.model_shape(spec.model)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        raise SpecError(f"{spec.source}: model: {exc}") from None
    _check_executor(spec)
    from experiments.run.workload import load_table

    for seed in spec.seeds:  # the trace itself: file format, preset parameters, transforms
        try:
            load_table(spec.trace, seed)
        except (ValueError, TypeError, OSError) as exc:
            raise SpecError(f"{spec.source}: trace: {exc}") from None
    model_id = model_ref.model_identity(spec.model)
    hardware_id = None
    if spec.hardware is not None:
        hardware_id = {"file_sha256": file_digest(spec.hardware)} if spec.hardware.endswith(".json") else spec.hardware
    # The engines' own code is an input too: an executor run measured before a kernel change, or a
    # simulation priced by older code, must not be reused. Executor runs are also tied to the machine.
    code_ids = {"sim": code_fingerprint("policy", "traces", "sim")}
    executor_id = spec.executor
    if "executor" in spec.engines:
        code_ids["executor"] = f"{code_fingerprint('policy', 'traces', 'executor')}-{machine_fingerprint()}"
        reference = speed_reference(spec, profile_path)
        if reference is not None:  # the times a cpu-ref replay reports are on this reference's scale
            executor_id = {**spec.executor, "speed_reference_s": reference}
    jobs: list[Job] = []
    for i, variant in enumerate(spec.variants):
        knobs = variant.knobs
        try:
            check_max_model_len(shape, knobs["max_model_len"], override_hint=None)
        except ValueError as exc:
            raise SpecError(f"{spec.source}: variants[{i}] ({variant.name}).max_model_len: {exc}") from None
        try:
            num_blocks = resolve_num_blocks(spec, shape, variant)
        except ValueError as exc:
            raise SpecError(f"{spec.source}: variants[{i}] ({variant.name}): {exc}") from None
        need = cdiv(knobs["max_model_len"], knobs["block_size"])
        if num_blocks < need:
            raise SpecError(
                f"{spec.source}: variants[{i}] ({variant.name}).num_blocks: the KV pool has {num_blocks} block(s) of "
                f"{knobs['block_size']} tokens, which cannot hold one request of max_model_len={knobs['max_model_len']} "
                f"tokens (needs {need}); raise kv_cache_mib / num_blocks or lower max_model_len"
            )
        try:
            sched = variant.scheduler_config(num_blocks).to_dict()
        except ValueError as exc:
            raise SpecError(f"{spec.source}: variants[{i}] ({variant.name}): {exc}") from None
        for seed in spec.seeds:
            trace_id = spec.canonical_trace(seed, knobs["rate_scale"])
            for engine in spec.engines:
                repeats = spec.repeats if engine == "executor" else 1
                cost = cost_model_desc(spec, variant, profile_path) if engine == "sim" else None
                for repeat in range(repeats):
                    ident = {
                        "version": RESULTS_VERSION, "engine": engine, "trace": trace_id, "model": model_id,
                        "dtype": spec.dtype, "hardware": hardware_id if engine == "sim" else None,
                        "scheduler": sched, "attention_backend": knobs["attention_backend"],
                        "weight_format": knobs["weight_format"], "slo": spec.slo,
                        "cost_model": {k: v for k, v in cost.items() if k != "path"} if cost else None,
                        "executor": executor_id if engine == "executor" else None, "repeat": repeat,
                        "code": code_ids[engine],
                    }
                    if knobs["replicas"] > 1:  # (single-replica keys stay what they were)
                        ident["cluster"] = {"replicas": knobs["replicas"], "router": knobs["router"]}
                    key = hashlib.sha256(canonical_json(ident).encode()).hexdigest()
                    label = _slug(f"{engine}-{variant.name}-s{seed}" + (f"-r{repeat}" if repeats > 1 else ""))
                    jobs.append(Job(engine, variant, seed, repeat, num_blocks, key, label, cost))
    return jobs


def scheduler_kwargs(job: Job) -> dict:
    return job.variant.scheduler_config(job.num_blocks).to_dict()


# -- simulation (worker side) --------------------------------------------------------------
def sim_payload(spec: ExperimentSpec, job: Job, out_dir: Path) -> dict:
    return {"trace": spec.trace, "seed": job.seed, "rate_scale": job.variant.knobs["rate_scale"],
            "model": spec.model, "scheduler": scheduler_kwargs(job), "cost_model": job.cost_model, "slo": spec.slo,
            "replicas": job.variant.knobs["replicas"], "router": job.variant.knobs["router"],
            "run_dir": str(out_dir / "runs" / job.dirname), "run_info": _run_info(spec, job)}


def run_sim_payload(payload: dict) -> str:
    """One simulation, start to finish; picklable (runs in a worker process or on Ray)."""
    from policy import SchedulerConfig
    from sim import simulate
    from experiments.run.workload import build_workload

    sched = SchedulerConfig(**payload["scheduler"])
    shape = model_ref.model_shape(payload["model"])
    workload = build_workload(payload["trace"], payload["seed"], rate_scale=payload["rate_scale"],
                              block_size=sched.block_size, vocab_size=shape.vocab_size,
                              max_model_len=sched.max_model_len)
    cost = build_cost_model(payload["cost_model"])
    replicas = payload.get("replicas", 1)
    t0 = time.perf_counter()
    if replicas > 1:
        from policy.router import build_router
        from sim.cluster import simulate_cluster

        cluster = simulate_cluster(workload.requests, sched, cost, build_router(payload["router"], replicas))
        info = {**payload["run_info"], "workload": workload.stats, "wall_s": time.perf_counter() - t0,
                "cost_model_describe": cost.describe()}
        results.write_cluster_run(Path(payload["run_dir"]), cluster, slo=payload["slo"],
                                  run_info=results._jsonable(info))
        return payload["run_dir"]
    result = simulate(workload.requests, sched, cost)
    info = {**payload["run_info"], "workload": workload.stats, "wall_s": time.perf_counter() - t0,
            "cost_model_describe": cost.describe()}
    results.write_run(Path(payload["run_dir"]), result.recorder, slo=payload["slo"],
                      scheduler_stats=result.scheduler_stats, run_info=results._jsonable(info))
    return payload["run_dir"]


def _run_info(spec: ExperimentSpec, job: Job) -> dict:
    return {"engine": job.engine, "variant": job.variant.name, "knobs": job.variant.knobs, "seed": job.seed,
            "repeat": job.repeat, "num_blocks": job.num_blocks, "key": job.key, "model": spec.model,
            "dtype": spec.dtype, "hardware": spec.hardware, "spec": spec.name,
            "cost_model": {k: v for k, v in (job.cost_model or {}).items() if k != "hardware_spec"} or None}


# -- executor (this process) ----------------------------------------------------------------
class ExecutorPool:
    """One loaded engine per (block size, backend, weights), reused across variants: a new
    variant gets a fresh scheduler on the same KV memory."""

    def __init__(self, spec: ExperimentSpec, max_blocks: int, speed_reference_s: float | None = None) -> None:
        self.spec = spec
        self.max_blocks = max_blocks
        self.speed_reference_s = speed_reference_s
        self._engines: dict[tuple, object] = {}

    def engine_for(self, job: Job):
        import torch
        from executor.engine import LLMEngine

        knobs = job.variant.knobs
        key = (knobs["block_size"], knobs["attention_backend"], knobs["weight_format"])
        engine = self._engines.get(key)
        if engine is None:
            self._engines.clear()  # one model in memory at a time
            if self.spec.executor.get("threads"):
                torch.set_num_threads(int(self.spec.executor["threads"]))
            model_dir = model_ref.executor_model_dir(self.spec.model)
            engine = LLMEngine(
                model_dir, num_blocks=self.max_blocks, block_size=knobs["block_size"],
                max_model_len=max(v.knobs["max_model_len"] for v in self.spec.variants),
                attention_backend=knobs["attention_backend"], device=self.spec.executor.get("device"),
                dtype=model_ref.TORCH_DTYPES[self.spec.dtype], load_tokenizer=False,
            )
            if self.spec.executor.get("warmup", True):
                engine.warmup()
            self._engines[key] = engine
        return engine

    def run(self, job: Job, out_dir: Path) -> Path:
        from experiments.run.workload import build_workload

        engine = self.engine_for(job)
        engine.reset_scheduler(**scheduler_kwargs(job))
        sched = engine.scheduler_config
        workload = build_workload(self.spec.trace, job.seed, rate_scale=job.variant.knobs["rate_scale"],
                                  block_size=sched.block_size, vocab_size=engine.config.vocab_size,
                                  max_model_len=sched.max_model_len)
        if self.spec.executor.get("warmup", True):
            engine.warmup(num_requests=2, prompt_len=32, max_tokens=4)
            engine.reset_scheduler(**scheduler_kwargs(job))
        from executor.engine import make_clock

        clock = make_clock(self.spec.executor.get("clock", "wall"), reference_s=self.speed_reference_s)
        replay = engine.replay(workload.requests, clock=clock)
        stats = replay.scheduler_stats
        info = {**_run_info(self.spec, job), "workload": workload.stats, "wall_s": replay.wall_s,
                "clock": self.spec.executor.get("clock", "wall"), "load_before": _loadavg()}
        if hasattr(clock, "speed_stats"):
            info["speed"] = clock.speed_stats()
        return results.write_run(out_dir / "runs" / job.dirname, replay.recorder, slo=self.spec.slo,
                                 scheduler_stats=stats, run_info=results._jsonable(info))


def _loadavg() -> list[float] | None:
    try:
        return list(os.getloadavg())
    except OSError:
        return None


# -- the run ----------------------------------------------------------------------------------
def _pool_context():
    # Forking a process that already loaded torch (the executor, calibration) is unsafe.
    return multiprocessing.get_context("spawn" if "torch" in sys.modules else "fork")


def run_spec(
    spec: ExperimentSpec,
    out_dir: str | Path,
    *,
    workers: int | None = None,
    ray_address: str | None = None,
    profile_path: str | None = None,
    progress: bool = True,
    on_job_done: Callable[[Job], None] | None = None,
) -> RunReport:
    """Run (or reuse) every job of the spec; writes spec.json, index.json and runs/."""
    out = Path(out_dir)
    jobs = plan_jobs(spec, profile_path=profile_path)  # every check, before any work
    if ray_address is not None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise SpecError("--ray needs the optional 'ray' package, which is not installed "
                            "(pip install 'folovllm[ray]'); drop --ray to use local processes") from None
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    results.remove_stale_tmp(runs)
    finished = {p.name.rsplit("-", 1)[-1]: p.name for p in runs.iterdir() if results.is_complete(p)}
    for job in jobs:  # a renamed variant keeps its finished result (same key, older label)
        job.existing_dir = finished.get(job.key[:16])
    results.write_json_atomic({"spec": spec.to_dict(), "source": spec.source,
                               "variants": [{"name": v.name, "knobs": v.knobs} for v in spec.variants]},
                              out / "spec.json")
    results.write_json_atomic({"jobs": [j.index_row() for j in jobs]}, out / "index.json")
    from experiments.run.environment import environment

    results.write_json_atomic(environment(), out / "environment.json")

    report = RunReport(out, jobs)
    t0 = time.perf_counter()
    todo = []
    for job in jobs:
        if results.is_complete(runs / job.dirname):
            report.reused.append(job)
        else:
            todo.append(job)
    sim_jobs = [j for j in todo if j.engine == "sim"]
    # Executor runs round by round (every variant's first repeat, then every variant's second):
    # a machine whose speed drifts over the minutes a spec takes then shows up in each variant's
    # run-to-run spread, instead of as a difference between variants run at different times.
    exec_jobs = sorted((j for j in todo if j.engine == "executor"), key=lambda j: (j.seed, j.repeat))

    def done(job: Job) -> None:
        report.ran.append(job)
        if on_job_done is not None:
            on_job_done(job)

    if sim_jobs:
        _run_sims(spec, sim_jobs, out, workers, ray_address, progress, done)
    if exec_jobs:
        max_blocks = max(j.num_blocks for j in jobs if j.engine == "executor")
        pool = ExecutorPool(spec, max_blocks, speed_reference(spec, profile_path))
        bar = _bar(len(exec_jobs), "executor", progress)
        for job in exec_jobs:
            if bar is not None:
                bar.set_postfix_str(job.variant.name[:30])
            pool.run(job, out)
            done(job)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
    report.wall_s = time.perf_counter() - t0
    return report


def _bar(total: int, desc: str, progress: bool):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="run", file=sys.stderr, leave=True)


def _run_sims(spec, jobs, out, workers, ray_address, progress, done) -> None:
    payloads = [(job, sim_payload(spec, job, out)) for job in jobs]
    bar = _bar(len(jobs), "sim", progress)

    def tick(job):
        done(job)
        if bar is not None:
            bar.update(1)

    try:
        if ray_address is not None:
            import ray

            ray.init(address=ray_address, ignore_reinit_error=True)
            remote = ray.remote(run_sim_payload)
            refs = {remote.remote(p): job for job, p in payloads}
            pending = list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                ray.get(ready[0])
                tick(refs[ready[0]])
            return
        workers = workers or min(len(jobs), os.cpu_count() or 1)
        if workers <= 1 or len(jobs) == 1:
            for job, p in payloads:
                run_sim_payload(p)
                tick(job)
            return
        with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) as ex:
            futures = {ex.submit(run_sim_payload, p): job for job, p in payloads}
            try:
                for fut in as_completed(futures):
                    fut.result()
                    tick(futures[fut])
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
    finally:
        if bar is not None:
            bar.close()
