"""Spec validation: bad specs fail before any work, naming the field and the allowed values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from experiments.run.runner import plan_jobs, run_spec
from experiments.run.spec import SpecError, load_spec, parse_spec

SPECS = Path(__file__).resolve().parents[2] / "experiments" / "specs"


def base_spec(**over) -> dict:
    spec = {
        "name": "t",
        "trace": {"preset": "poisson", "params": {"num_requests": 8}},
        "model": "qwen3-0.6b",
        "hardware": "h100-sxm",
        "engines": ["sim"],
        "variants": [{"name": "a"}, {"name": "b", "batching": "static"}],
    }
    spec.update(over)
    return spec


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_valid_spec_expands_variants_with_defaults(tmp_path):
    spec = load_spec(write(tmp_path, base_spec(grid={"max_num_seqs": [4, 8]})))
    assert [v.name for v in spec.variants] == ["a/max_num_seqs=4", "a/max_num_seqs=8", "b/max_num_seqs=4",
                                               "b/max_num_seqs=8"]
    static = spec.variants[2].knobs
    assert static["batching"] == "static" and static["max_num_seqs"] == 4 and static["block_size"] == 16


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"colour": "red"}, "unknown key(s) ['colour']"),
        ({"repeats": "two"}, "repeats: expected an integer"),
        ({"engines": ["sim", "gpu"]}, "engines[1]: 'gpu' is not an engine; allowed: ['sim', 'executor']"),
        ({"dtype": "int8"}, "dtype: 'int8' is not allowed; allowed: ['bf16', 'fp16', 'fp32']"),
        ({"variants": [{"batching": "dynamic"}]}, "variants[0].batching: 'dynamic' is not allowed; allowed: ['continuous', 'static']"),
        ({"variants": [{"max_num_seqs": "16"}]}, "variants[0].max_num_seqs: expected an integer"),
        ({"variants": [{"enable_prefix_caching": 1}]}, "variants[0].enable_prefix_caching: expected true/false"),
        ({"variants": [{"chunk": 4}]}, "variants[0]: unknown key(s) ['chunk']"),
        ({"variants": [{"weight_format": "awq"}]}, "weight_format: 'awq' is not allowed; allowed: ['dense', 'gptq-int4']"),
        ({"variants": [{"attention_backend": "xformers"}]}, "attention_backend: 'xformers' is not allowed"),
        ({"grid": {"policy": ["fcfs", "lifo"]}}, "policy: 'lifo' is not allowed"),
        ({"trace": {"preset": "zipf"}}, "trace.preset: 'zipf' is unknown"),
        ({"trace": {"path": "/nonexistent/trace.csv"}}, "trace.path: file '/nonexistent/trace.csv' does not exist"),
        ({"trace": {"preset": "poisson", "transforms": [{"op": "shuffle"}]}}, "trace.transforms[0].op: 'shuffle' is unknown"),
        ({"trace": {"preset": "poisson", "transforms": [{"op": "head", "count": 3}]}}, "trace.transforms[0]: unknown key(s) ['count']"),
        ({"model": "gpt-5"}, "model: 'gpt-5' is unknown"),
        ({"hardware": "tpu-v9"}, "hardware: 'tpu-v9' is not a preset"),
        ({"cost_model": "magic"}, "cost_model: 'magic' must be one of"),
        ({"variants": [{"kv_layout": "contiguous"}]}, "enable_prefix_caching"),
        ({"variants": [{"enable_chunked_prefill": False, "max_num_batched_tokens": 64}]}, "max_num_batched_tokens"),
        ({"variants": [{"name": "x"}, {"name": "x"}]}, "names must be unique"),
        ({"executor": {"clock": "tsc"}}, "executor.clock: 'tsc' is not one of ['wall', 'cpu', 'cpu-ref']"),
        ({"executor": {"clock": "cpu", "threads": 2}}, "executor.clock: cpu needs executor.threads: 1"),
        ({"executor": {"clock": "cpu-ref"}}, "executor.clock: cpu-ref needs executor.threads: 1"),
        ({"grid": {"router": ["round-robin", "random"]}}, "grid.router: 'random' is not allowed; allowed: "
                                                           "['round-robin', 'least-tokens', 'prefix-aware']"),
        ({"base": {"replicas": 0}}, "base.replicas: must be >= 1 (the number of simulated replicas), got 0"),
        ({"variants": [{"replicas": "4"}]}, "variants[0].replicas: expected an integer"),
        ({"engines": ["sim", "executor"], "model": "smollm2-135m", "base": {"replicas": 2}},
         "variants[0] (a).replicas: the executor runs one replica; replicas=2 needs engines: [sim]"),
    ],
)
def test_bad_spec_names_the_field(tmp_path, change, fragment):
    path = write(tmp_path, base_spec(**change))
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert fragment in str(err.value)
    assert str(path) in str(err.value)  # the file is named too


def test_missing_required_field():
    data = base_spec()
    del data["model"]
    with pytest.raises(SpecError, match="model: required field is missing"):
        parse_spec(data)


def test_kv_pool_too_small_for_one_request_fails_before_any_work(tmp_path):
    spec = load_spec(write(tmp_path, base_spec(variants=[{"name": "ok"}, {"name": "tiny", "num_blocks": 8,
                                                                          "max_model_len": 1024}])))
    out = tmp_path / "out"
    with pytest.raises(SpecError) as err:
        run_spec(spec, out, workers=1, progress=False)
    msg = str(err.value)
    assert "variants[1] (tiny).num_blocks" in msg and "cannot hold one request" in msg
    assert not out.exists()  # nothing was started


def test_executor_only_settings_are_checked_up_front(tmp_path):
    spec = parse_spec(base_spec(model="random:tiny-qwen2", engines=["sim", "executor"],
                                variants=[{"weight_format": "gptq-int4"}]))
    with pytest.raises(SpecError, match=r"weight_format: 'gptq-int4' on the executor needs a GPTQ checkpoint"):
        plan_jobs(spec)
    with pytest.raises(SpecError, match="not something the executor can run"):
        parse_spec(base_spec(engines=["executor"]))


def test_builtin_specs_are_valid():
    names = sorted(p.name for p in SPECS.glob("*.yaml"))
    assert {"demo.yaml", "continuous-vs-static.yaml", "paged-vs-contiguous.yaml", "attention-backends.yaml",
            "chunked-prefill.yaml", "prefix-caching.yaml", "gptq-int4.yaml"} <= set(names)
    mooncake = Path(__file__).resolve().parents[2].parent / "shared" / "traces" / "mooncake-conversation"
    for name in names:
        if name.endswith("-mooncake.yaml") and not mooncake.is_dir():
            with pytest.raises(SpecError, match="trace.path"):
                load_spec(SPECS / name)
            continue
        spec = load_spec(SPECS / name)
        if spec.cost_model != "calibrated":
            assert plan_jobs(spec), name


def test_bad_trace_parameters_fail_before_any_work(tmp_path):
    spec = load_spec(write(tmp_path, base_spec(trace={"preset": "poisson", "params": {"num_requests": 8,
                                                                                         "burstiness": 3}})))
    with pytest.raises(SpecError, match="trace: .*burstiness"):
        run_spec(spec, tmp_path / "out", workers=1, progress=False)
    assert not (tmp_path / "out").exists()


def test_max_model_len_above_the_models_positions_is_refused_before_any_run(tmp_path):
    # issue 17: the spec runner used to accept a context the model was never trained for
    spec = load_spec(write(tmp_path, base_spec(model="llama-3-8b", base={"max_model_len": 131072})))
    with pytest.raises(SpecError, match=r"variants\[0\] \(a\)\.max_model_len: max_model_len=131,072 exceeds "
                                        r"llama-3-8b's max_position_embeddings=8,192"):
        plan_jobs(spec)


def test_run_prints_full_variant_names(tmp_path):
    """issue 17: the CLI cut names at 28 characters, so grid rows looked identical."""
    from click.testing import CliRunner

    from experiments.run.commands import run

    spec = base_spec(variants=[{"name": "continuous-batching-with-prefix-cache"}],
                     grid={"max_num_batched_tokens": [256, 512]})
    path = write(tmp_path, spec)
    res = CliRunner().invoke(run, [str(path), "--out", str(tmp_path / "out"), "--workers", "1", "--no-report"])
    assert res.exit_code == 0, res.output
    for tokens in (256, 512):
        assert f"continuous-batching-with-prefix-cache/max_num_batched_tokens={tokens} " in res.output


def test_a_spec_compares_routers_over_replicas(tmp_path):
    # Routers as a grid over replicas: one simulated cluster per router, a run folder each with
    # the pooled tables (a `replica` column) and the cluster view in its summary; the
    # replica count and router are part of the run's key.
    data = base_spec(trace={"preset": "shared-prefix", "params": {"num_groups": 4, "prompts_per_group": 10,
                                                                  "system_prompt_len": 256, "question_len": 32,
                                                                  "output_len": 16, "rate": 40.0}},
                     base={"replicas": 3, "enable_prefix_caching": True}, variants=None,
                     grid={"router": ["round-robin", "least-tokens", "prefix-aware"]})
    del data["variants"]
    spec = load_spec(write(tmp_path, data))
    assert [v.name for v in spec.variants] == ["router=round-robin", "router=least-tokens", "router=prefix-aware"]
    jobs = plan_jobs(spec)
    assert len({job.key for job in jobs}) == 3
    single = load_spec(write(tmp_path, {**data, "base": {"replicas": 1, "enable_prefix_caching": True}}))
    assert not {job.key for job in plan_jobs(single)} & {job.key for job in jobs}
    run_spec(spec, tmp_path / "out", workers=1, progress=False)
    out = tmp_path / "out"
    import json

    import pandas as pd

    hit = {}
    for run in sorted((out / "runs").iterdir()):
        summary = json.loads((run / "summary.json").read_text())
        info = json.loads((run / "run.json").read_text())
        assert summary["num_replicas"] == 3 and summary["router"] == info["knobs"]["router"]
        assert len(summary["per_replica"]) == 3 and sum(summary["routed"]) == summary["num_requests"] == 40
        requests = pd.read_parquet(run / "requests.parquet")
        assert set(requests["replica"]) <= {0, 1, 2} and len(requests) == 40
        if summary["router"] == "round-robin":
            assert summary["routed"] == [14, 13, 13]
        hit[summary["router"]] = summary["prefix_hit_rate"]
    assert hit["prefix-aware"] > hit["round-robin"]
