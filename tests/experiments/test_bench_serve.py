"""`folovllm bench serve` against `folovllm serve` (a separate process on 127.0.0.1): every
request is counted, each one's TTFT and E2EL agree with the server's own timeline as causality
requires, and `folovllm report` reads the results folder unchanged."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from experiments.cli import main
from tests.serve_helpers import require_serve_extra

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`folovllm serve` on a tiny random model (no tokenizer: token-id prompts), recording
    its timelines; yields (url, record dir), and after the module stops it with SIGINT."""
    require_serve_extra()
    from executor.models_registry import write_random_model

    root = tmp_path_factory.mktemp("bench_serve")
    model = write_random_model("tiny-qwen2", root / "tiny", seed=0)
    record = root / "server"
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "experiments.cli", "serve", str(model), "--port", str(port), "--device", "cpu",
           "--kv-cache-memory", "8000000", "--max-model-len", "512", "--max-num-seqs", "8",
           "--max-num-batched-tokens", "256", "--threads", "1", "--max-waiting", "64", "--record", str(record)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"folovllm serve exited early:\n{proc.stdout.read().decode()}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("folovllm serve did not become healthy within 120 s")
            time.sleep(0.2)
        yield url, record, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _stop(proc) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    return out.decode()


def test_bench_serve_matches_the_server_timelines_and_feeds_the_report(served, tmp_path):
    url, record, proc = served
    out = tmp_path / "results"
    res = CliRunner().invoke(main, ["bench", "serve", "--endpoint", url, "--preset", "azure-conv-like",
                                    "--num-requests", "32", "--max-prompt-len", "64", "--max-output-len", "8", "--rate-scale", "0.5",
                                    "--max-in-flight", "16", "--timeout", "60", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "32 requests: finished 32, aborted 0, rejected 0, timed_out 0, failed 0" in res.output

    index = json.loads((out / "index.json").read_text())["jobs"]
    assert [(j["engine"], j["variant"], j["repeat"]) for j in index] == [("http", "endpoint", 0)]
    run_dir = out / index[0]["dir"]
    client = pd.read_parquet(run_dir / "requests.parquet")
    from traces.metrics import REQUEST_COLUMNS

    assert tuple(client.columns[: len(REQUEST_COLUMNS)]) == REQUEST_COLUMNS
    assert (client["output_len"] == client["max_tokens"]).all()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["num_finished"] == 32 and summary["num_timed_out"] == 0 and summary["num_failed"] == 0

    from experiments.analysis.report import write_report

    html, md = write_report(out)
    assert "endpoint" in md.read_text() and html.stat().st_size > 1000

    log = _stop(proc)
    from experiments.serve.http_agreement import agreement, read_requests

    server = read_requests(record)
    assert len(server) == 32, log

    agree = agreement(client, server, tolerance_s=0.020)
    assert agree["num_matched"] == 32
    # Causality, whatever the machine's load: the client sends before the server stamps the
    # arrival and reads each token after the server sampled it, so its TTFT and E2EL are never
    # smaller; and it counted exactly the tokens the server generated.
    for metric in ("ttft", "e2el"):
        assert agree[metric]["min_diff_s"] > -0.001, agree[metric]
    both = client.astype({"request_id": str}).merge(server.astype({"request_id": str}), on="request_id",
                                                     suffixes=("_client", "_server"))
    assert (both["output_len_client"] == both["output_len_server"]).all()
    # A loose ceiling that catches a wrong definition (e.g. TTFT taken from the trace's arrival
    # instead of the send); the 20 ms bar itself is timing, measured and printed by
    # `python -m experiments.bench.serve_agreement` (README "Serving over HTTP").
    assert agree["ttft"]["median_diff_s"] < 0.25, agree["ttft"]


def test_bench_serve_names_an_unreachable_endpoint(tmp_path):
    require_serve_extra()
    port = _free_port()
    res = CliRunner().invoke(main, ["bench", "serve", "--endpoint", f"http://127.0.0.1:{port}", "--preset",
                                    "azure-conv-like", "--num-requests", "2", "--out", str(tmp_path / "r")])
    assert res.exit_code != 0
    assert f"127.0.0.1:{port}: cannot list models" in res.output
    assert not (tmp_path / "r").exists()


def test_client_runs_are_written_as_repeats_with_every_outcome_counted(tmp_path):
    """No server needed: outcomes as the client records them -> the executor's run format."""
    from experiments.serve.http_client import Outcome
    from experiments.serve.http_replay import ClientConfig, ClientRun, OUTCOMES, write_results

    def outcomes():
        done = Outcome("a", 4, 3, 0.0, send_s=0.01, token_times=[0.05, 0.07, 0.09], finish_s=0.09,
                       status="finished", finish_reason="length", http_status=200, num_attempts=1)
        full = Outcome("b", 4, 3, 0.02, send_s=0.02, finish_s=0.021, status="rejected", http_status=429,
                       error="HTTP 429: the waiting queue is full", num_attempts=2)
        slow = Outcome("c", 4, 3, 0.03, send_s=0.03, token_times=[0.2], finish_s=1.03, status="timed_out",
                       error="no end within 1.0 s", http_status=200, num_attempts=1)
        return [done, full, slow]

    cfg = ClientConfig("http://127.0.0.1:1", "m")
    for _ in range(2):
        outs = outcomes()
        counts = {s: sum(o.status == s for o in outs) for s in OUTCOMES} | {"num_retries": 1}
        run_dir = write_results(tmp_path, ClientRun(outs, 1.1, cfg, counts), variant="v")
    jobs = json.loads((tmp_path / "index.json").read_text())["jobs"]
    assert [(j["engine"], j["variant"], j["repeat"]) for j in jobs] == [("http", "v", 0), ("http", "v", 1)]
    assert [v["name"] for v in json.loads((tmp_path / "spec.json").read_text())["variants"]] == ["v"]
    table = pd.read_parquet(run_dir / "requests.parquet")
    assert list(table["status"]) == ["finished", "rejected", "timed_out"]
    assert table.loc[0, "ttft_s"] == pytest.approx(0.04) and table.loc[0, "tpot_s"] == pytest.approx(0.02)
    assert list(table["http_status"]) == [200, 429, 200] and list(table["num_attempts"]) == [1, 2, 1]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["num_finished"], summary["num_rejected"], summary["num_timed_out"], summary["num_failed"],
            summary["num_retries"]) == (1, 1, 1, 0, 1)
