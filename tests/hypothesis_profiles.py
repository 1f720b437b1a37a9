"""Hypothesis profiles, chosen with the HYPOTHESIS_PROFILE environment variable (default `ci`).

- `ci`: what every run of the suite uses. 200 examples for property tests that take their
  example count from the profile (tests/test_ledger_properties.py); no per-example deadline
  (an example is a whole switch session over TCP, and this machine is shared).
- `thorough`: 2,000 examples, for a long run before a release:
  `HYPOTHESIS_PROFILE=thorough python3 -m pytest tests/test_ledger_properties.py`.

Property tests with their own explicit @settings(max_examples=...) keep that count.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

# No explain phase: on a failing end-to-end example it replays hundreds of variants (minutes).
PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)
settings.register_profile("ci", max_examples=200, deadline=None, phases=PHASES,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=2_000, deadline=None, phases=PHASES,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or "ci")
