"""Example budgets that scale with the loaded Hypothesis profile (see tests/conftest.py).

A test says how many examples it runs in CI; the `long` profile multiplies that. Read at call
time from `settings.default`, i.e. after conftest.py (or `--hypothesis-profile`) loaded a profile.
"""

from __future__ import annotations

from hypothesis import settings

CI_MAX_EXAMPLES = 100
CI_STATEFUL_STEPS = 50


def examples(ci: int) -> int:
    """`ci` examples under the ci profile, proportionally more under a longer one."""
    return max(1, round(ci * settings.default.max_examples / CI_MAX_EXAMPLES))


def steps(ci: int) -> int:
    """`ci` rule steps per state-machine run under the ci profile, proportionally more under a longer one."""
    return max(1, round(ci * settings.default.stateful_step_count / CI_STATEFUL_STEPS))
