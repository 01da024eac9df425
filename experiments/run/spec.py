"""Experiment specs: one YAML file says what to replay, on what, under which policies.

A spec is validated completely before any work starts, and every error names the field
(`variants[2].batching`) and what it may be, so a typo costs a second, not a half-run sweep.

    name: chunked-prefill            # required
    description: free text
    trace:                           # exactly one of `path` or `preset`
      preset: azure-conv-like        # a traces.generate preset ...
      params: {num_requests: 48}     # ... and its parameters
      # path: /data/trace.csv        # or a trace file (+ optional format)
      # format: azure
      transforms:                    # applied in order (traces.transforms)
        - {op: head, n: 64}
        - {op: scale_rate, factor: 2.0}
      max_prompt_len: 512            # clip prompt lengths (counted in the results)
      max_output_len: 64             # clip output lengths
    model: smollm2-135m              # a sim preset / HF directory / "random:<shape>"
    hardware: h100-sxm               # for the roofline cost model (preset or a .json file)
    cost_model: roofline             # roofline | roofline-ideal | roofline-fitted | profile:DIR | calibrated | constant | a profile .json path
    dtype: fp32                      # bf16 | fp16 | fp32
    engines: [sim]                   # sim, executor
    seeds: [0]                       # one trace instance per seed
    repeats: 1                       # executor repeats of every variant (run-to-run spread)
    kv_cache_mib: 256                # KV pool memory (both engines); or num_blocks in base
    executor: {threads: 1, clock: cpu}  # torch threads; clock wall (default) | cpu (engine thread CPU time)
    slo: {ttft_s: 1.0, tpot_s: 0.1}
    base: {max_num_seqs: 16}         # knobs shared by every variant
    variants:                        # explicit variants (each merged over base) ...
      - {name: static, batching: static}
    grid: {max_num_batched_tokens: [64, 256]}   # ... times this cartesian grid
    # Engine-level knobs, also per variant / grid: rate_scale, attention_backend, weight_format,
    # and for the simulator replicas (default 1) behind a router (round-robin, least-tokens,
    # prefix-aware), e.g. `base: {replicas: 4}` and `grid: {router: [round-robin, prefix-aware]}`.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from experiments.run.strict_yaml import DuplicateKeyError, NotTextError, load_yaml_file
from policy.config import DEFAULT_MAX_MODEL_LEN, SchedulerConfig
from policy.router import ROUTERS

ENGINES = ("sim", "executor")
DTYPES = ("bf16", "fp16", "fp32")
WEIGHT_FORMATS = ("dense", "gptq-int4")
ATTENTION_BACKENDS = ("torch", "triton", "flash-attn")  # executor.attention.registry.BACKEND_NAMES (no torch here)
TRANSFORM_OPS = {
    "head": {"n": int},
    "scale_rate": {"factor": (int, float)},
    "window": {"start_s": (int, float), "end_s": (int, float)},
    "clip_to_max_model_len": {"max_model_len": int},
}
COST_MODELS = ("roofline", "calibrated", "constant")
# Further names sim.cost.registry builds for a spec (profile:DIR names a profile folder).
GPU_COST_MODELS = ("roofline-ideal", "roofline-fitted")


def _gpu_cost_model(cost_model: str, base_dir) -> str:
    """A registry cost model; for profile:DIR, the folder resolved against the spec's folder."""
    if not cost_model.startswith("profile:"):
        return cost_model
    folder = Path(cost_model.partition(":")[2])
    if base_dir is not None and not folder.is_absolute() and not folder.exists():
        folder = base_dir / folder
    if not (folder / "ops.csv").is_file() and not (folder / "mlp.csv").is_file() and not folder.is_file():
        raise SpecError(f"cost_model: {cost_model!r}: no ops.csv or mlp.csv in {folder}")
    return f"profile:{folder}"

# Knobs a variant may set: every SchedulerConfig field (names, types, defaults and choices are
# SchedulerConfig's own) plus the engine-level ones below.
_SPEC_TYPES = {float: (int, float)}
SCHEDULER_KNOBS = {name: _SPEC_TYPES.get(typ, typ) for name, typ, *_ in SchedulerConfig.knob_fields()}
ENGINE_KNOBS = {
    "attention_backend": str,
    "weight_format": str,
    "rate_scale": (int, float),  # multiplies the trace's request rate (throughput-vs-rate sweeps)
    "replicas": int,  # identical simulated replicas behind `router` (sim only)
    "router": str,  # policy.router: how arrivals are spread over the replicas
}
VARIANT_KNOBS = {**SCHEDULER_KNOBS, **ENGINE_KNOBS}
CHOICES = {
    **{name: choices for name, _, _, _, choices in SchedulerConfig.knob_fields() if choices},
    "attention_backend": ATTENTION_BACKENDS,
    "weight_format": WEIGHT_FORMATS,
    "router": tuple(ROUTERS),
}
# Scheduling defaults are SchedulerConfig's (None: resolved per model / memory budget).
DEFAULT_KNOBS = {
    **{name: default for name, _, default, *_ in SchedulerConfig.knob_fields() if name != "num_blocks"},
    "attention_backend": "torch",
    "weight_format": "dense",
    "rate_scale": 1.0,
    "replicas": 1,
    "router": "round-robin",
}
TOP_LEVEL = {
    "name": str,
    "description": str,
    "trace": dict,
    "model": str,
    "hardware": str,
    "cost_model": str,
    "dtype": str,
    "engines": list,
    "seeds": list,
    "repeats": int,
    "kv_cache_mib": (int, float),
    "slo": dict,
    "base": dict,
    "variants": list,
    "grid": dict,
    "executor": dict,
}
TRACE_KEYS = {"path": str, "format": str, "preset": str, "params": dict, "transforms": list,
              "max_prompt_len": int, "max_output_len": int, "arrival_mode": str}
ARRIVAL_MODES = ("batch", "spread")  # quantised-timestamp traces (Mooncake); spread is seeded by the spec's seed
SLO_KEYS = {"ttft_s": (int, float), "tpot_s": (int, float), "e2el_s": (int, float)}
EXECUTOR_KEYS = {"warmup": bool, "device": str, "threads": int, "clock": str}
EXECUTOR_CLOCKS = ("wall", "cpu", "cpu-ref")  # executor.clocks.CLOCKS (no torch here)


class SpecError(ValueError):
    """A spec is invalid; the message names the file and the field."""


def _type_name(t) -> str:
    if isinstance(t, tuple):
        return " or ".join(_type_name(x) for x in t)
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string", dict: "a mapping",
            list: "a list"}.get(t, t.__name__)


def _check_type(where: str, value, expected) -> None:
    types = expected if isinstance(expected, tuple) else (expected,)
    ok = isinstance(value, types)
    if isinstance(value, bool) and bool not in types:
        ok = False  # YAML `yes` is not an integer
    if not ok:
        raise SpecError(f"{where}: expected {_type_name(expected)}, got {type(value).__name__} {value!r}")


def _check_keys(where: str, data: dict, allowed: dict) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    for key, value in data.items():
        _check_type(f"{where}.{key}" if where else key, value, allowed[key])


@dataclass(frozen=True)
class Variant:
    """One policy configuration: a name and every knob, fully resolved (no defaults left)."""

    name: str
    knobs: dict

    def scheduler_config(self, num_blocks: int) -> SchedulerConfig:
        knobs = {k: self.knobs[k] for k in SCHEDULER_KNOBS if k in self.knobs}
        return SchedulerConfig(**{**knobs, "num_blocks": num_blocks})


@dataclass
class ExperimentSpec:
    name: str
    description: str
    trace: dict
    model: str
    hardware: str | None
    cost_model: str
    dtype: str
    engines: tuple[str, ...]
    seeds: tuple[int, ...]
    repeats: int
    kv_cache_mib: float | None
    slo: dict
    variants: list[Variant]
    executor: dict = field(default_factory=dict)
    source: str = "<spec>"
    raw: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return copy.deepcopy(self.raw)

    def canonical_trace(self, seed: int, rate_scale: float) -> dict:
        """What identifies the request list a run replays (the trace file's content included)."""
        trace = dict(self.trace)
        if "path" in trace:
            trace["path_sha256"] = file_digest(trace["path"])
            trace.pop("path")
        return {"trace": trace, "seed": seed, "rate_scale": rate_scale}


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def canonical_json(data) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def load_spec(path: str | Path, overrides: dict | None = None) -> ExperimentSpec:
    """Read and validate a YAML spec file. `overrides` (top-level keys) replace the file's."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec file {path} does not exist")
    try:
        data = load_yaml_file(path)
    except (DuplicateKeyError, NotTextError) as exc:
        raise SpecError(str(exc)) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML ({exc})") from None
    if overrides:
        data = {**(data or {}), **overrides}
    return parse_spec(data, source=str(path), base_dir=path.parent)


def parse_spec(data, *, source: str = "<spec>", base_dir: Path | None = None) -> ExperimentSpec:
    try:
        return _parse(data, source, base_dir)
    except SpecError as exc:
        if str(exc).startswith(source):
            raise
        raise SpecError(f"{source}: {exc}") from None


def _parse(data, source: str, base_dir: Path | None) -> ExperimentSpec:
    if not isinstance(data, dict):
        raise SpecError(f"the spec must be a mapping of keys, got {type(data).__name__}")
    raw = copy.deepcopy(data)
    _check_keys("", data, TOP_LEVEL)
    for key in ("name", "trace", "model"):
        if key not in data:
            raise SpecError(f"{key}: required field is missing")

    trace = _parse_trace(data["trace"], base_dir)
    engines = tuple(data.get("engines", ["sim"]))
    if not engines:
        raise SpecError(f"engines: must name at least one of {list(ENGINES)}")
    for i, engine in enumerate(engines):
        if engine not in ENGINES:
            raise SpecError(f"engines[{i}]: {engine!r} is not an engine; allowed: {list(ENGINES)}")
    if len(set(engines)) != len(engines):
        raise SpecError(f"engines: {list(engines)} names an engine twice")
    seeds = tuple(data.get("seeds", [0]))
    if not seeds:
        raise SpecError("seeds: must list at least one seed")
    for i, seed in enumerate(seeds):
        _check_type(f"seeds[{i}]", seed, int)
    repeats = data.get("repeats", 1)
    if repeats < 1:
        raise SpecError(f"repeats: must be >= 1, got {repeats}")
    dtype = data.get("dtype", "fp32")
    if dtype not in DTYPES:
        raise SpecError(f"dtype: {dtype!r} is not allowed; allowed: {list(DTYPES)}")
    cost_model = data.get("cost_model", "roofline")
    if cost_model in GPU_COST_MODELS or cost_model.startswith("profile:"):
        cost_model = _gpu_cost_model(cost_model, base_dir)
    elif cost_model not in COST_MODELS:
        profile = Path(cost_model)
        if base_dir is not None and not profile.is_absolute() and not profile.exists():
            profile = base_dir / profile
        if profile.suffix != ".json":
            raise SpecError(f"cost_model: {cost_model!r} must be one of {list(COST_MODELS)} or a profile .json path")
        if not profile.is_file():
            raise SpecError(f"cost_model: profile file {cost_model!r} does not exist")
        cost_model = str(profile)
    hardware = data.get("hardware")
    if "sim" in engines and (cost_model == "roofline" or cost_model in GPU_COST_MODELS
                             or cost_model.startswith("profile:")) and hardware is None:
        raise SpecError("hardware: required when the sim engine uses the roofline cost model "
                        "(a preset such as h100-sxm, or a hardware .json)")
    if hardware is not None and hardware.endswith(".json"):
        hw = Path(hardware)
        if base_dir is not None and not hw.is_absolute() and not hw.exists():
            hw = base_dir / hw
        if not hw.is_file():
            raise SpecError(f"hardware: file {hardware!r} does not exist")
        hardware = str(hw)
    elif hardware is not None:
        from sim.hardware import HARDWARE_PRESETS, _ALIASES

        key = _ALIASES.get(hardware.lower(), hardware.lower())
        if key not in HARDWARE_PRESETS:
            raise SpecError(f"hardware: {hardware!r} is not a preset; allowed: {sorted(HARDWARE_PRESETS)} "
                            "or a hardware .json file")
    model = data["model"]
    _check_model(model, engines)

    slo = data.get("slo", {})
    _check_keys("slo", slo, SLO_KEYS)
    executor = data.get("executor", {})
    _check_keys("executor", executor, EXECUTOR_KEYS)
    if executor.get("clock", "wall") not in EXECUTOR_CLOCKS:
        raise SpecError(f"executor.clock: {executor['clock']!r} is not one of {list(EXECUTOR_CLOCKS)}")
    if executor.get("clock") in ("cpu", "cpu-ref") and executor.get("threads") != 1:
        raise SpecError(f"executor.clock: {executor['clock']} needs executor.threads: 1 (the engine thread's CPU time "
                        "is the clock)")
    kv_cache_mib = data.get("kv_cache_mib")
    if kv_cache_mib is not None and kv_cache_mib <= 0:
        raise SpecError(f"kv_cache_mib: must be > 0, got {kv_cache_mib}")

    variants = _expand_variants(data.get("base", {}), data.get("variants"), data.get("grid", {}),
                                model_max_len=_model_positions(model))
    if "executor" in engines:
        for i, v in enumerate(variants):
            if v.knobs["replicas"] > 1:
                raise SpecError(f"variants[{i}] ({v.name}).replicas: the executor runs one replica; "
                                f"replicas={v.knobs['replicas']} needs engines: [sim]")
    if trace.get("max_prompt_len") is not None:
        for v in variants:
            if trace["max_prompt_len"] >= v.knobs["max_model_len"]:
                raise SpecError(f"trace.max_prompt_len={trace['max_prompt_len']} must be below variant "
                                f"{v.name!r} max_model_len={v.knobs['max_model_len']}")
    return ExperimentSpec(
        name=data["name"], description=data.get("description", ""), trace=trace, model=model, hardware=hardware,
        cost_model=cost_model, dtype=dtype, engines=engines, seeds=seeds, repeats=repeats,
        kv_cache_mib=kv_cache_mib, slo=slo, variants=variants, executor=executor, source=source, raw=raw,
    )


def _check_model(model: str, engines: tuple[str, ...]) -> None:
    if model.startswith("random:"):
        from executor.models_registry import SHAPES  # no torch at import time

        shape = model.split(":", 1)[1]
        if shape not in SHAPES:
            raise SpecError(f"model: random shape {shape!r} is unknown; allowed: {sorted(SHAPES)}")
        return
    if Path(model).expanduser().is_dir():
        if not (Path(model).expanduser() / "config.json").is_file():
            raise SpecError(f"model: directory {model!r} has no config.json")
        return
    if model == "smollm2-135m":
        return
    from sim.models import MODEL_PRESETS, _normalise

    if "executor" in engines:
        raise SpecError(f"model: {model!r} is not something the executor can run; allowed: 'smollm2-135m', "
                        "an HF model directory, or 'random:<shape>'")
    if _normalise(model) not in MODEL_PRESETS:
        raise SpecError(f"model: {model!r} is unknown; allowed: a sim preset {sorted(MODEL_PRESETS)}, "
                        "an HF model directory, or 'random:<shape>'")


def _parse_trace(trace: dict, base_dir: Path | None) -> dict:
    _check_keys("trace", trace, TRACE_KEYS)
    trace = copy.deepcopy(trace)
    if ("path" in trace) == ("preset" in trace):
        raise SpecError("trace: give exactly one of 'path' (a trace file) or 'preset' (a generator)")
    if "path" in trace:
        path = Path(trace["path"]).expanduser()
        if base_dir is not None and not path.is_absolute() and not path.exists():
            path = base_dir / path
        if not path.exists():
            raise SpecError(f"trace.path: file {trace['path']!r} does not exist")
        trace["path"] = str(path.resolve())
        if "params" in trace:
            raise SpecError("trace.params: only meaningful with trace.preset")
    else:
        from traces.generators import PRESETS

        if trace["preset"] not in PRESETS:
            raise SpecError(f"trace.preset: {trace['preset']!r} is unknown; allowed: {sorted(PRESETS)}")
        if "format" in trace:
            raise SpecError("trace.format: only meaningful with trace.path")
        if "arrival_mode" in trace:
            raise SpecError("trace.arrival_mode: only meaningful with trace.path (a trace with quantised timestamps)")
    if "arrival_mode" in trace and trace["arrival_mode"] not in ARRIVAL_MODES:
        raise SpecError(f"trace.arrival_mode: {trace['arrival_mode']!r} is not allowed; allowed: {list(ARRIVAL_MODES)}")
    for i, step in enumerate(trace.get("transforms", [])):
        where = f"trace.transforms[{i}]"
        _check_type(where, step, dict)
        op = step.get("op")
        if op not in TRANSFORM_OPS:
            raise SpecError(f"{where}.op: {op!r} is unknown; allowed: {sorted(TRANSFORM_OPS)}")
        args = {k: v for k, v in step.items() if k != "op"}
        _check_keys(where, args, TRANSFORM_OPS[op])
    for key in ("max_prompt_len", "max_output_len"):
        if key in trace and trace[key] < 1:
            raise SpecError(f"trace.{key}: must be >= 1, got {trace[key]}")
    return trace


def _check_knobs(where: str, knobs: dict) -> None:
    _check_keys(where, knobs, VARIANT_KNOBS)
    for key, value in knobs.items():
        if key in CHOICES and value not in CHOICES[key]:
            raise SpecError(f"{where}.{key}: {value!r} is not allowed; allowed: {list(CHOICES[key])}")
        if key in SCHEDULER_KNOBS and SCHEDULER_KNOBS[key] is int and value < (0 if key ==
                                                                                  "long_prefill_token_threshold" else 1):
            raise SpecError(f"{where}.{key}: must be >= 1, got {value}")
    if "rate_scale" in knobs and knobs["rate_scale"] <= 0:
        raise SpecError(f"{where}.rate_scale: must be > 0, got {knobs['rate_scale']}")
    if "replicas" in knobs and knobs["replicas"] < 1:
        raise SpecError(f"{where}.replicas: must be >= 1 (the number of simulated replicas), got {knobs['replicas']}")


def _model_positions(model: str) -> int | None:
    """The model's max positions (to resolve an unset max_model_len), or None if unknown here."""
    try:
        from experiments.run.model_ref import model_shape

        return model_shape(model).max_position_embeddings
    except Exception:  # an unprepared or unusual model: the engines resolve it themselves
        return None


def _expand_variants(base: dict, variants: list | None, grid: dict, *, model_max_len: int | None = None) -> list[Variant]:
    _check_knobs("base", base)
    explicit = variants if variants is not None else [{}]
    if not explicit:
        raise SpecError("variants: must list at least one variant (or leave it out)")
    for i, v in enumerate(explicit):
        _check_type(f"variants[{i}]", v, dict)
        _check_knobs(f"variants[{i}]", {k: x for k, x in v.items() if k != "name"})
        if "name" in v:
            _check_type(f"variants[{i}].name", v["name"], str)
    _check_keys("grid", grid, {k: list for k in VARIANT_KNOBS})
    for key, values in grid.items():
        if not values:
            raise SpecError(f"grid.{key}: must list at least one value")
        for j, value in enumerate(values):
            _check_knobs(f"grid.{key}[{j}]".rsplit(".", 1)[0], {key: value})
    grid_keys = list(grid)
    out: list[Variant] = []
    for i, v in enumerate(explicit):
        for combo in itertools.product(*(grid[k] for k in grid_keys)):
            knobs = {**DEFAULT_KNOBS, **base, **{k: x for k, x in v.items() if k != "name"}, **dict(zip(grid_keys, combo))}
            knobs["watermark"] = float(knobs["watermark"])
            if knobs["max_model_len"] is None:
                knobs["max_model_len"] = min(DEFAULT_MAX_MODEL_LEN, model_max_len or DEFAULT_MAX_MODEL_LEN)
            knobs["rate_scale"] = float(knobs["rate_scale"])
            name = v.get("name") or (f"v{i}" if not grid_keys or len(explicit) > 1 else "")
            suffix = ",".join(f"{k}={x}" for k, x in zip(grid_keys, combo))
            full = "/".join(p for p in (name, suffix) if p) or f"v{i}"
            where = f"variants[{i}]" + (f" ({suffix})" if suffix else "")
            _check_scheduler(where, knobs)
            out.append(Variant(full, knobs))
    names = [v.name for v in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SpecError(f"variants: names must be unique, repeated: {dupes}")
    return out


def _check_scheduler(where: str, knobs: dict) -> None:
    """The policy layer's own validation, with the variant named; num_blocks checked later
    (it depends on the model and memory budget)."""
    data = {k: knobs[k] for k in SCHEDULER_KNOBS if k in knobs}
    data.setdefault("num_blocks", 1 << 30)
    try:
        SchedulerConfig(**data)
    except (ValueError, TypeError) as exc:
        raise SpecError(f"{where}: {exc}") from None
