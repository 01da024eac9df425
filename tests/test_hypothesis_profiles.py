"""Hypothesis profiles: `ci` by default; `long` via FOLOVLLM_HYPOTHESIS_PROFILE or --hypothesis-profile
scales every test's example budget (issue 17: settings were hard-coded on the test classes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hypothesis_budget import examples, steps

ROOT = Path(__file__).resolve().parents[1]


def test_budget_follows_the_loaded_profile():
    # EXPECT_* are set by the subprocess runs below; a plain run expects the ci budget
    assert examples(10) == int(os.environ.get("EXPECT_EXAMPLES", "10"))
    assert steps(40) == int(os.environ.get("EXPECT_STEPS", "40"))


@pytest.mark.parametrize("how", ["env", "option"])
def test_long_profile_scales_budgets(how):
    env = {**os.environ, "EXPECT_EXAMPLES": "200", "EXPECT_STEPS": "160"}
    args = [sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-p", "no:cacheprovider",
            f"{Path(__file__).relative_to(ROOT)}::test_budget_follows_the_loaded_profile"]
    if how == "env":
        env["FOLOVLLM_HYPOTHESIS_PROFILE"] = "long"
    else:
        env.pop("FOLOVLLM_HYPOTHESIS_PROFILE", None)
        args.append("--hypothesis-profile=long")
    res = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "1 passed" in res.stdout, res.stdout[-2000:] + res.stderr[-2000:]
