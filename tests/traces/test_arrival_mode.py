"""Quantised-timestamp traces (Mooncake, ~3 s buckets): `--arrival-mode` on `sim` and `run`, and the
replay note kept in converted files (issue 17: the only way was a `trace convert` round trip, which
dropped the note)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import traces
from experiments.run.commands import run
from experiments.run.spec import SpecError, load_spec
from experiments.run.workload import load_table
from sim.cli import sim
from traces.cli import trace


@pytest.fixture
def mooncake(tmp_path):
    """Nine requests in three 3-s buckets (three share each recorded timestamp), with hash ids."""
    path = tmp_path / "mc.jsonl"
    rows = [{"timestamp": 3000 * (i // 3), "input_length": 600, "output_length": 4, "hash_ids": [i % 2, 10 + i]}
            for i in range(9)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_sim_arrival_mode_spread_replays_inside_the_buckets(mooncake, tmp_path):
    outs = {}
    for mode in ("batch", "spread"):
        out = tmp_path / mode
        res = CliRunner().invoke(sim, ["--trace", str(mooncake), "--arrival-mode", mode, "--model", "qwen3-0.6b",
                                       "--out", str(out)])
        assert res.exit_code == 0, res.output
        assert f"mooncake arrivals: {mode} replay" in res.output
        import pandas as pd

        outs[mode] = pd.read_parquet(out / "requests.parquet")["arrival_s"].to_numpy()
    assert len(set(outs["batch"])) == 3 and len(set(outs["spread"])) > 3
    assert np.all(np.diff(outs["spread"]) >= 0) and outs["spread"].max() < 9.0


def test_arrival_mode_on_a_trace_without_quantised_timestamps_is_an_error(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n")
    res = CliRunner().invoke(sim, ["--trace", str(path), "--arrival-mode", "spread", "--quiet"])
    assert res.exit_code != 0 and isinstance(res.exception, SystemExit)
    assert "applies to traces with quantised timestamps (mooncake); this trace is azure" in res.output


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_converted_files_keep_the_replay_note(mooncake, tmp_path, suffix):
    dst = tmp_path / f"converted{suffix}"
    res = CliRunner().invoke(trace, ["convert", str(mooncake), str(dst), "--arrival-mode", "spread", "--seed", "3"])
    assert res.exit_code == 0, res.output
    back = traces.load(dst)
    assert back.notes == ["mooncake arrivals: spread replay of ~3-s quantised timestamps (seed 3)"]
    assert back.df["arrival_s"].tolist() == pytest.approx(traces.load(mooncake, arrival_mode="spread",
                                                                      seed=3).df["arrival_s"].tolist())
    stats = CliRunner().invoke(trace, ["stats", str(dst)])
    assert "note          mooncake arrivals: spread replay" in stats.output


def _spec(tmp_path, trace_path, **trace_extra):
    spec = {"name": "mc", "trace": {"path": str(trace_path), **trace_extra}, "model": "qwen3-0.6b",
            "hardware": "h100-sxm", "engines": ["sim"], "base": {"max_model_len": 2048},
            "variants": [{"name": "a"}]}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_spec_arrival_mode_reaches_the_workload_and_run_overrides_it(mooncake, tmp_path):
    spec = load_spec(_spec(tmp_path, mooncake, arrival_mode="spread"))
    assert len(set(load_table(spec.trace, seed=0).df["arrival_s"])) > 3
    assert len(set(load_table({"path": str(mooncake)}, seed=0).df["arrival_s"])) == 3
    with pytest.raises(SpecError, match=r"trace\.arrival_mode: 'jitter' is not allowed"):
        load_spec(_spec(tmp_path, mooncake, arrival_mode="jitter"))

    out = tmp_path / "out"
    res = CliRunner().invoke(run, [str(_spec(tmp_path, mooncake)), "--out", str(out), "--workers", "1",
                                   "--no-report", "--arrival-mode", "spread"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "spec.json").read_text())["spec"]["trace"]["arrival_mode"] == "spread"


def test_trace_stats_warm_with_an_earlier_window(tmp_path):
    """Window 2 reuses prefixes first seen in window 1: cold, it counts them as misses."""
    early, late = tmp_path / "w1.jsonl", tmp_path / "w2.jsonl"
    early.write_text("".join(json.dumps({"timestamp": 1000 * i, "input_length": 1024, "output_length": 4,
                                         "hash_ids": [1, 2 + i]}) + "\n" for i in range(2)))
    late.write_text("".join(json.dumps({"timestamp": 1000 * i, "input_length": 1024, "output_length": 4,
                                        "hash_ids": [1, 50 + i]}) + "\n" for i in range(2)))
    cold = json.loads(CliRunner().invoke(trace, ["stats", str(late), "--json"]).output)["prefix_reuse"]
    res = CliRunner().invoke(trace, ["stats", str(late), "--warm-with", str(early), "--json"])
    assert res.exit_code == 0, res.output
    warm = json.loads(res.output)["prefix_reuse"]
    assert cold["block_hit_share"] == pytest.approx(1 / 4) and warm["block_hit_share"] == pytest.approx(2 / 4)
    assert warm["warmed_with"] == str(early)
    text = CliRunner().invoke(trace, ["stats", str(late), "--warm-with", str(early)]).output
    assert f"warmed with {early}" in text
    azure = tmp_path / "a.csv"
    azure.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n")
    bad = CliRunner().invoke(trace, ["stats", str(late), "--warm-with", str(azure)])
    assert bad.exit_code != 0 and "cannot warm the prefix cache" in bad.output
