"""`folovllm sim` end to end: bad input gets a clear error; a generated trace replays and
writes its tables; two runs write identical files."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import traces
from sim.cli import sim

needs_traces = pytest.mark.skipif(not hasattr(traces, "generate"), reason="traces.generate (traces layer) not present")


def run(*args: str):
    return CliRunner().invoke(sim, list(args), catch_exceptions=False)


def test_unknown_model_and_hardware_list_known_presets():
    res = run("--preset", "poisson", "--model", "gpt-9", "--quiet")
    assert res.exit_code != 0 and "unknown model 'gpt-9'" in res.output and "llama-3-8b" in res.output
    res = run("--preset", "poisson", "--hardware", "tpu", "--quiet")
    assert res.exit_code != 0 and "unknown hardware 'tpu'" in res.output and "h100-sxm" in res.output
    res = run("--preset", "poisson", "--hardware", "cpu", "--quiet")
    assert res.exit_code != 0 and "calibrate" in res.output


def test_model_that_does_not_fit_is_reported(tmp_path):
    hw = tmp_path / "tiny.json"
    hw.write_text(json.dumps({"name": "tiny", "memory_bytes": 8 * 2**30, "mem_bw": 1e11, "flops_16": 1e13,
                              "flops_32": 1e12}))
    res = run("--preset", "poisson", "--model", "llama-3-8b", "--hardware", str(hw), "--quiet")
    assert res.exit_code != 0 and "does not fit on 'tiny'" in res.output


def test_trace_and_preset_are_exclusive(tmp_path):
    res = run("--quiet", "--num-blocks", "100")
    assert res.exit_code != 0 and "exactly one of --trace FILE or --preset NAME" in res.output


@needs_traces
def test_preset_replay_writes_tables_deterministically(tmp_path):
    args = ["--preset", "poisson", "--model", "qwen3-0.6b", "--hardware", "h100-sxm", "--limit", "40",
            "--max-model-len", "4096", "--slo-ttft-ms", "500", "--slo-tpot-ms", "50"]
    first = run(*args, "--out", str(tmp_path / "a"))
    assert first.exit_code == 0, first.output
    assert "TTFT ms" in first.output and "finished" in first.output
    second = run(*args, "--quiet", "--out", str(tmp_path / "b"))
    assert second.exit_code == 0, second.output
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["num_requests"] == 40
    assert summary["num_finished"] + summary["num_rejected"] + summary["num_aborted"] == 40
    assert "goodput" in summary and summary["slo"] == {"ttft_s": 0.5, "tpot_s": 0.05}
    for name in ("requests.parquet", "requests.csv", "steps.parquet", "steps.csv", "summary.json", "run.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


@needs_traces
def test_tiny_pool_rejects_instead_of_hanging(tmp_path):
    res = run("--preset", "poisson", "--model", "qwen3-0.6b", "--limit", "20", "--num-blocks", "4",
              "--block-size", "16", "--quiet", "--out", str(tmp_path))
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["num_requests"] == 20 and summary["num_rejected"] > 0
    assert summary["num_finished"] + summary["num_rejected"] == 20


# issue 17: `folovllm sim --max-model-len 131072` with llama-3-8b (8,192 positions) was accepted silently.
def test_max_model_len_above_the_models_positions_is_refused(tmp_path):
    out = tmp_path / "out"
    args = ["--preset", "poisson", "--param", "num_requests=4", "--model", "llama-3-8b", "--quiet",
            "--max-model-len", "131072", "--out", str(out)]
    res = CliRunner().invoke(sim, args)
    assert res.exit_code != 0 and isinstance(res.exception, SystemExit), res.output
    assert "max_model_len=131,072 exceeds llama-3-8b's max_position_embeddings=8,192" in res.output
    assert not out.exists()
    res = CliRunner().invoke(sim, [*args, "--allow-long-max-model-len"])
    assert res.exit_code == 0, res.output


def test_summary_reports_block_hit_rate_beside_token_hit_rate(tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(sim, ["--preset", "shared-prefix", "--param", "num_groups=2", "--param",
                                   "prompts_per_group=4", "--model", "qwen3-0.6b", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "prefix hit rate (tokens / full blocks)" in res.output
    summary = json.loads((out / "summary.json").read_text())
    assert 0 < summary["prefix_block_hit_rate"] <= 1 and summary["prefix_query_blocks"] > 0
