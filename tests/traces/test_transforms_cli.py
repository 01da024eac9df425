"""Transforms say what they did; the `folovllm trace` commands work end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import traces
from traces import transforms
from traces.cli import trace
from traces.stats import describe

from tests.traces.helpers import AZURE_CONV, MOONCAKE, real_trace


@pytest.fixture
def table():
    return traces.generate("poisson", seed=0, num_requests=400, rate=4.0, prompt="uniform:10:3000", output="uniform:1:900")


def test_scale_rate(table):
    fast = transforms.scale_rate(table, 3.0)
    assert np.allclose(fast.df["arrival_s"] * 3.0, table.df["arrival_s"])
    assert describe(fast)["rate_rps"] == pytest.approx(3 * describe(table)["rate_rps"])
    assert fast.notes[-1] == "rate scaled x3"
    with pytest.raises(ValueError, match="factor must be > 0"):
        transforms.scale_rate(table, 0)


def test_window_head_sample(table):
    w = transforms.window(table, 10.0, 30.0)
    t = table.df["arrival_s"]
    assert len(w) == int(((t >= 10) & (t < 30)).sum()) and w.df["arrival_s"].iloc[0] < 1.0
    assert f"kept {len(w)} of 400" in w.notes[-1]
    h = transforms.head(table, 7)
    assert h.df["request_id"].tolist() == table.df["request_id"].tolist()[:7]
    s1, s2 = transforms.sample(table, 50, seed=1), transforms.sample(table, 50, seed=1)
    assert s1.df.equals(s2.df) and len(s1) == 50
    ids = s1.df["request_id"].astype(int).tolist()
    assert ids == sorted(ids)  # original order kept
    assert "sample: 50 of 400" in s1.notes[-1]


def test_clip_to_max_model_len_counts_and_keeps_hashes_consistent():
    table = traces.load(real_trace(MOONCAKE))
    clipped = transforms.clip_to_max_model_len(table, 32_768)
    df, orig = clipped.df, table.df
    assert (df["prompt_len"] + df["output_len"] <= 32_768).all()
    n_prompt = int((orig["prompt_len"] > 32_767).sum())
    n_output = int((np.minimum(orig["prompt_len"], 32_767) + orig["output_len"] > 32_768).sum())
    assert f"{n_prompt} prompt(s) and {n_output} output(s) shortened" in clipped.notes[-1] and n_prompt > 0
    for h, p in zip(df["block_hashes"], df["prompt_len"]):
        assert len(h) == -(-p // 512)
    req = next(clipped.iter_requests())
    assert len(req.prompt_token_ids) == df["prompt_len"].iloc[0]


def test_cli_stats_convert_gen(tmp_path):
    runner = CliRunner()
    src = real_trace(AZURE_CONV)
    out = runner.invoke(trace, ["stats", str(src)])
    assert out.exit_code == 0, out.output
    assert "19,366" in out.output and "p50 1020" in out.output and "CV 1.09" in out.output
    out = runner.invoke(trace, ["stats", "--json", str(src)])
    assert json.loads(out.output)["num_requests"] == 19366

    dst = tmp_path / "conv_vidur.csv"
    out = runner.invoke(trace, ["convert", str(src), str(dst), "--max-model-len", "4096"])
    assert out.exit_code == 0, out.output
    assert "clipped to max_model_len=4096" in out.output
    assert dst.read_text().startswith("arrived_at,num_prefill_tokens,num_decode_tokens\n")
    assert len(traces.load(dst)) == 19366

    gen_out = tmp_path / "p.parquet"
    out = runner.invoke(trace, ["gen", "poisson", str(gen_out), "-p", "num_requests=50", "-p", "rate=2", "--seed", "3"])
    assert out.exit_code == 0, out.output
    assert traces.load(gen_out).df.equals(traces.generate("poisson", seed=3, num_requests=50, rate=2).df)


def test_cli_errors_are_clear(tmp_path):
    runner = CliRunner()
    bad = tmp_path / "bad.csv"
    bad.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0,5,5\n1,-2,5\n")
    out = runner.invoke(trace, ["stats", str(bad)])
    assert out.exit_code != 0 and f"{bad}:3" in out.output and "num_prefill_tokens=-2" in out.output
    out = runner.invoke(trace, ["gen", "nope", str(tmp_path / "x.jsonl")])
    assert out.exit_code != 0 and "unknown workload preset" in out.output
    for args in ([], ["stats", "--help"], ["convert", "--help"], ["gen", "--help"]):
        out = runner.invoke(trace, args + (["--help"] if not args else []))
        assert out.exit_code == 0 and "Example" in out.output or "Commands" in out.output
