"""Hypothesis profiles for the whole suite.

- `ci` (default): the example counts written in the tests, no deadline (a shared 2-core machine
  makes timings meaningless).
- `long`: 20x the examples and 4x the state-machine steps of `ci`, for a deep run before a release
  or after a change to the policy layer:

      FOLOVLLM_HYPOTHESIS_PROFILE=long python -m pytest tests/policy tests/sim -k propert
      python -m pytest --hypothesis-profile=long tests/policy      # the same, via Hypothesis' own option

Tests state their CI budget through `tests.hypothesis_budget.examples(n)` / `steps(n)`, which
scale with the loaded profile, so a longer run never needs a copied test file.
"""

from __future__ import annotations

import os

from hypothesis import settings

from tests.hypothesis_budget import CI_MAX_EXAMPLES, CI_STATEFUL_STEPS

settings.register_profile("ci", max_examples=CI_MAX_EXAMPLES, stateful_step_count=CI_STATEFUL_STEPS, deadline=None)
settings.register_profile("long", parent=settings.get_profile("ci"), max_examples=20 * CI_MAX_EXAMPLES,
                          stateful_step_count=4 * CI_STATEFUL_STEPS)
PROFILE_ENV = "FOLOVLLM_HYPOTHESIS_PROFILE"
settings.load_profile(os.environ.get(PROFILE_ENV, "ci"))
