"""pytest plugin loaded only by the mutation run (`-p mutmut_plain_logs`, see run.sh).

1. Hypothesis profile `mutation`: 20 examples instead of the suite's 200 for the property
   tests that take their count from the profile (tests/test_ledger_properties.py, where an
   example is a whole switch session). A surviving mutant runs every test that reaches its
   function; at 200 examples that one test alone took 20 s per mutant.

2. Fastest tests first. mutmut runs, with -x, the tests that reach the mutated function;
   pytest would run them in file order, so a fee mutant that tests/test_fees.py kills in
   milliseconds first ran every end-to-end test of the files before it. Ordered by the
   durations mutmut recorded (mutants/mutmut-stats.json), a killed mutant stops early.

3. Plain log tracebacks. With structlog unconfigured, an exception logged by the switch (`log.exception`, e.g. a
mutant raising inside the engine, answered 96) is rendered by rich with every frame's
locals; in mutmut's trampolined code that takes minutes per traceback, so a mutant the
tests would kill in a second ran into mutmut's timeout instead. Before each test that
finds structlog unconfigured, configure the same console output with a plain traceback.
Tests that configure logging themselves (switch.logs) are unaffected.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import structlog
from hypothesis import HealthCheck, Phase, settings

settings.register_profile(
    "mutation", max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow],
    phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink))


def _plain() -> None:
    if not structlog.is_configured():
        structlog.configure(processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False),
            structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback),
        ])


def pytest_configure(config) -> None:
    settings.load_profile("mutation")  # after tests/conftest.py loaded the suite's profile
    _plain()


def pytest_runtest_setup(item) -> None:
    _plain()


def pytest_collection_modifyitems(session, config, items) -> None:
    # MUTATION_SKIP="tests/test_x.py tests/test_y.py::test_z": leave out tests that fail on the tree as it is
    # (mutmut needs every selected test to pass before it mutates anything). run.sh prints what it skips.
    skip = tuple(os.environ.get("MUTATION_SKIP", "").split())
    if skip:
        dropped = [item for item in items if item.nodeid.startswith(skip)]
        if dropped:
            items[:] = [item for item in items if not item.nodeid.startswith(skip)]
            config.hook.pytest_deselected(items=dropped)
    stats = Path("mutmut-stats.json")  # the run's working directory is ./mutants
    if not stats.exists():
        return
    durations = json.loads(stats.read_text()).get("duration_by_test", {})
    items.sort(key=lambda item: durations.get(item.nodeid, 0.0))
