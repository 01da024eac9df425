"""Smoke runs of the benchmark scripts and the heavier CLIs at toy sizes.

The figures these scripts print are measured elsewhere (their commands are in the README); here
each runs end to end on a tiny random model or a few hundred simulated requests, and the test
checks that what it prints and writes is complete and consistent. Nothing is timed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private FoloVLLM cache: random models and calibration profiles land in tmp."""
    monkeypatch.setenv("FOLOVLLM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from executor.models_registry import write_random_model

    return write_random_model("tiny-qwen2", tmp_path_factory.mktemp("bench") / "tiny", seed=0)


def test_bench_policy_small_sizes_write_json(tmp_path, capsys):
    from experiments.bench.policy import main

    out = tmp_path / "policy.json"
    assert main(["--sizes", "4,8", "--repeats", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "us/req/step" in printed and "wrote" in printed
    data = json.loads(out.read_text())
    assert [(r["running"], r["prefix_caching"]) for r in data["results"]] == [(4, True), (4, False), (8, True), (8, False)]
    assert all(r["us_per_request_step"] > 0 for r in data["results"])
    assert data["bar"]["passed"] is None  # 256 running was not among the sizes


def test_bench_policy_rejects_bad_sizes():
    from experiments.bench.policy import main

    with pytest.raises(SystemExit):
        main(["--sizes", "4,0"])
    with pytest.raises(SystemExit):
        main(["--repeats", "0"])


def test_bench_sim_limited_replay(capsys):
    from experiments.bench.sim import main

    assert main(["--repeats", "1", "--limit", "150", "--profile"]) == 0
    out = capsys.readouterr().out
    assert "150 requests" in out and "simulated: 150 finished, 0 rejected" in out
    assert "top 25 functions by own time" in out or "functions by own time" in out


def test_bench_traces_tiny_million(capsys):
    from experiments.bench.traces import main

    main(["--repeats", "1", "--million", "2000", "--only-million"])
    out = capsys.readouterr().out
    assert "generated 2,000 requests" in out and "streamed 2,000 Requests" in out


def test_bench_traces_loading_and_synthesis(tmp_path, monkeypatch, capsys):
    """On a small Azure-format file in place of the real traces (those take minutes to synthesise)."""
    from experiments.bench import traces as bench_traces

    csv = tmp_path / "AzureLLMInferenceTrace_conv.csv"
    rows = [f"2023-11-16 18:15:{i // 10:02d}.{i % 10}000000,{100 + 7 * i},{20 + i}" for i in range(40)]
    csv.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(rows) + "\n")
    monkeypatch.setattr(bench_traces, "REAL", {"azure-2023-conv": csv, "mooncake-conversation": tmp_path / "absent.jsonl"})
    bench_traces.bench_loading(1)
    bench_traces.bench_synthesis(1)
    out = capsys.readouterr().out
    assert "azure-2023-conv               40 rows" in out
    assert "mooncake-conversation    skipped" in out
    assert "40 requests" in out and "request-private" in out


def test_bench_executor_quick_on_a_tiny_model(tiny_dir, tmp_path, capsys):
    from experiments.bench.executor import main

    out = tmp_path / "exec.json"
    assert main(["--model", str(tiny_dir), "--quick", "--threads", "1", "--num-requests", "8", "--kv-requests", "8",
                 "--step-cost", "--json-out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "[throughput] medians" in printed and "[kv] paged holds" in printed
    assert "[step-cost] least-squares fit" in printed
    report = json.loads(out.read_text())
    step = report["step_cost"]
    assert [r["batch"] for r in step["rows"]] == [1, 2, 4, 8, 16, 32, 64]
    assert [p["num_requests"] for p in step["predictions"]] == [16, 1024]  # --quick sets 16 requests
    tp, kv = report["throughput"], report["kv_capacity"]
    assert set(tp["median_tok_per_s"]) == {"continuous", "static", "hf-static"}
    # paged KV holds at least as many concurrent requests as contiguous in the same memory
    assert kv["concurrency_ratio"] >= 1.0
    assert kv["paged"]["slot_utilization"] >= kv["contiguous"]["slot_utilization"]


def test_bench_kernels_says_it_needs_a_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the real benchmark would run")
    from experiments.bench.kernels import main, parse_args

    assert main(["--quick"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    args = parse_args(["--quick"])
    assert args.batches == [1, 64] and args.repeats <= 20


def test_calibrate_quick_then_a_calibrated_spec_on_both_engines(cache, tmp_path):
    """`folovllm calibrate --quick` on a tiny model, then a spec priced by that profile runs in
    the simulator and the executor, and the comparison has a headline."""
    from experiments.cli import main

    runner = CliRunner()
    profile = tmp_path / "profile.json"
    res = runner.invoke(main, ["calibrate", "--model", "random:tiny-qwen2", "--quick", "--repeats", "1",
                               "--threads", "1", "--out", str(profile)])
    assert res.exit_code == 0, res.output
    assert profile.is_file() and "profile written to" in res.output

    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""name: smoke
trace: {{preset: poisson, params: {{num_requests: 6, rate: 50.0, prompt: "uniform:8:24", output: "uniform:2:6"}}}}
model: random:tiny-qwen2
cost_model: {profile}
dtype: fp32
engines: [sim, executor]
executor: {{threads: 1}}
kv_cache_mib: 16
base: {{max_model_len: 64, max_num_seqs: 4, max_num_batched_tokens: 64}}
variants:
  - {{name: seqs-4}}
  - {{name: seqs-2, max_num_seqs: 2}}
""")
    out = tmp_path / "results"
    res = runner.invoke(main, ["run", str(spec), "--out", str(out), "--workers", "1"])
    assert res.exit_code == 0, res.output
    comparison = json.loads((out / "comparison.json").read_text())
    assert {r["variant"] for r in comparison["rows"]} == {"seqs-4", "seqs-2"}
    assert comparison["headline"] is not None
    assert (out / "report.md").is_file()


def test_fidelity_protocol_on_a_tiny_model(cache, tmp_path):
    """The protocol end to end, as small as it goes: one workload, one load, one variant."""
    from experiments.run.calibrate import cached_profile_path, calibrate
    from experiments.run.fidelity import ProtocolConfig, run_protocol

    model = "random:tiny-qwen2"
    profile = cached_profile_path(model, "fp32", 1, max_model_len=64, clock="cpu-ref")
    calibrate(model, profile, quick=True, repeats=1, progress=False, threads=1, clock="cpu-ref")
    reference = json.loads(profile.read_text())["hardware"]["speed_reference_s"]
    assert reference > 0
    cfg = ProtocolConfig(num_requests=6, loads=(0.5,), chunks=(64,), prefix_caching=(True,), repeats=1,
                         max_prompt_len=48, max_output_len=6, max_model_len=64, model=model,
                         workloads=("synthetic",))
    lines = []
    summary = run_protocol(cfg, tmp_path / "fid", echo=lines.append)
    assert any("simulated capacity" in line for line in lines)
    assert summary["headline"], summary
    md = (tmp_path / "fid" / "fidelity.md").read_text()
    assert "synthetic" in md
    assert "The cost model on the executor's own steps" in md
    saved = json.loads((tmp_path / "fid" / "fidelity.json").read_text())
    assert saved["config"]["loads"] == [0.5] and saved["config"]["clock"] == "cpu-ref"
    assert saved["step_accounting"]["synthetic"]["overall"]["steps"] > 0
    runs = [json.loads(r.read_text()) for r in (tmp_path / "fid" / "synthetic" / "runs").glob("executor-*/run.json")]
    assert runs and all(r["clock"] == "cpu-ref" for r in runs)
    # Replays read time on the calibration's scale: the profile's probe reference, not their own.
    assert all(r["speed"]["reference_s"] == reference and not r["speed"]["self_referenced"] for r in runs)
    assert all(r["speed"]["probes"] > 0 for r in runs)
    assert saved["host_speed"]["synthetic"]["replays"] == len(runs)
    assert "Host speed during the replays" in md


def test_fidelity_cli_rejects_unknown_workloads():
    from experiments.cli import main

    res = CliRunner().invoke(main, ["fidelity", "--workloads", "synthetic,nope"])
    assert res.exit_code != 0 and "nope" in res.output


def test_folovllm_help_lists_every_subcommand_without_importing_them():
    from experiments.cli import SUBCOMMANDS, main

    res = CliRunner().invoke(main, ["--help"])
    assert res.exit_code == 0
    for name, (_, short_help) in SUBCOMMANDS.items():
        assert name in res.output and short_help.split()[0] in res.output


@pytest.mark.parametrize("name", ["trace", "sim", "run", "calibrate", "report", "demo", "fidelity", "cost", "profile",
                                  "model", "generate", "replay", "quantize", "eval"])
def test_every_subcommand_loads_and_has_help(name):
    from experiments.cli import main

    res = CliRunner().invoke(main, [name, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage:" in res.output


def test_unknown_subcommand_is_an_error():
    from experiments.cli import main

    res = CliRunner().invoke(main, ["no-such-command"])
    assert res.exit_code != 0 and "no-such-command" in res.output


def test_a_missing_module_is_reported_not_raised(monkeypatch):
    from experiments import cli

    monkeypatch.setitem(cli.SUBCOMMANDS, "ghost", ("experiments.no_such_module:cmd", "A command not built yet."))
    res = CliRunner().invoke(cli.main, ["ghost"])
    assert res.exit_code != 0 and "not part of this build yet" in res.output
    monkeypatch.setitem(cli.SUBCOMMANDS, "ghost", ("experiments.cli:no_such_attr", "A command not built yet."))
    res = CliRunner().invoke(cli.main, ["ghost"])
    assert res.exit_code != 0 and "not part of this build yet" in res.output


@pytest.mark.slow
def test_demo_command_on_a_tiny_spec(cache, tmp_path):
    """`folovllm demo` end to end (model check, calibration profile, both engines, report) with a
    tiny random model; the embedded SmolLM2 must be prepared, as the demo always checks it."""
    from executor.models_registry import cache_root, is_prepared
    from experiments.run.calibrate import cached_profile_path, calibrate
    from experiments.cli import main

    real = Path("~/.cache/folovllm/models/smollm2-135m").expanduser()
    if not is_prepared(real):
        pytest.skip("SmolLM2 is not prepared (`folovllm model prepare smollm2-135m`)")
    cache_root().mkdir(parents=True)
    (cache_root() / "smollm2-135m").symlink_to(real)  # the private cache sees the prepared model
    model = "random:tiny-qwen2"
    calibrate(model, cached_profile_path(model, "fp32", 1, max_model_len=64), quick=True, repeats=1, progress=False,
              threads=1)
    spec = tmp_path / "demo.yaml"
    spec.write_text(f"""name: tiny-demo
trace: {{preset: poisson, params: {{num_requests: 6, rate: 20.0, prompt: "uniform:8:24", output: "uniform:2:6"}}}}
model: {model}
cost_model: calibrated
dtype: fp32
engines: [sim, executor]
executor: {{threads: 1}}
kv_cache_mib: 16
base: {{max_model_len: 64, max_num_batched_tokens: 64}}
variants:
  - {{name: seqs-4, max_num_seqs: 4}}
  - {{name: seqs-1, max_num_seqs: 1}}
""")
    out = tmp_path / "demo"
    res = CliRunner().invoke(main, ["demo", "--spec", str(spec), "--out", str(out), "--rate-scale", "0.5"])
    assert res.exit_code == 0, res.output
    assert "[4/4] writing the report" in res.output and "using the cached calibration profile" in res.output
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    assert json.loads((out / "spec.json").read_text())["spec"]["base"]["rate_scale"] == 0.5


def test_bench_step_spread_on_a_tiny_model(tiny_dir, tmp_path, capsys):
    from experiments.bench.step_spread import main

    steps = tmp_path / "steps.parquet"
    assert main(["--model", str(tiny_dir), "--requests", "3", "--prefix", "16", "--suffix", "8", "--output", "4",
                 "--max-num-seqs", "3", "--budget", "32", "--passes", "2", "--steps-out", str(steps),
                 "--steps-clock", "cpu-ref"]) == 0
    printed = capsys.readouterr().out
    assert "identical plans, pass 1 vs pass 2" in printed and "all steps: median pass spread" in printed
    assert "CPU time at reference speed (cpu-ref clock)" in printed
    import pandas as pd

    table = pd.read_parquet(steps)
    assert len(table) > 0 and (table["duration_s"] > 0).all()


def test_bench_sim_memory_one_small_case_in_process(capsys):
    from experiments.bench.sim_memory import main

    assert main(["1m", "--requests", "300"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["requests"] == 300 and result["finished"] + result["rejected"] == 300
    assert result["peak_rss_mb"] > 0 and result["max_live_requests"] >= 1


def test_compare_routers_on_the_first_mooncake_requests(tmp_path, capsys):
    from experiments.run.compare_routers import MOONCAKE, main

    if not Path(MOONCAKE).is_file():
        pytest.skip(f"the Mooncake trace is not at {MOONCAKE} (../shared/traces absent)")
    assert main(["--limit", "60", "--replicas", "2", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "routers.json").read_text())
    assert {r["router"] for r in rows} >= {"round-robin", "prefix-aware"}
    assert all(sum(r["routed"]) == 60 for r in rows)


def test_serve_agreement_benchmark_on_the_tiny_model(tmp_path, capsys):
    pytest.importorskip("starlette", reason="the 'serve' extra is not installed")
    pytest.importorskip("uvicorn", reason="the 'serve' extra is not installed")
    from experiments.bench.serve_agreement import main

    main(["--model", "tiny", "--workload", "small", "--out", str(tmp_path)])  # the timing bar is not asserted
    printed = capsys.readouterr().out
    assert "TTFT" in printed
