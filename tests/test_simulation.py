"""Deterministic simulation of the whole authorization flow in one process, one seed at a
time, as TigerBeetle's VOPR does (docs/testing.md, "Deterministic simulation").

Each seed builds a world from `random.Random` instances seeded by it (tests/sim/): the real
switch core (`open_core`: SQLite ledger, engine, hot state, group-commit writer) and its
`Processor`, driven by simulated terminals that follow the host rules over a simulated
network that drops, duplicates, delays and reorders messages, with an in-process HSM that
goes down, stalls past the client's timeout or fails single calls, a ledger whose commits
fail for a while (full disk, failed fsync), and an operator charging and blocking cards — all
on one virtual clock (tests/sim/loop.py). The invariants
(tests/sim/checks.py) are checked at every answer a terminal receives and once the run is
quiet. A failing seed is named with the command that replays it:

    EUM_SIM_SEED=<seed> python3 -m pytest -q tests/test_simulation.py -k replay

More seeds: `EUM_SIM_SEEDS=20000 [EUM_SIM_SEED_START=1000] python3 -m pytest -q tests/test_simulation.py -k every_seed`.
"""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from sim.loop import SimLoop, SimulationDeadlock
from sim.world import Outcome, Population, SimulationFailed, build_population, replay_command, run_seed

ROOT = Path(__file__).resolve().parents[1]
SEEDS_DEFAULT = 1000
SEEDS = int(os.environ.get("EUM_SIM_SEEDS", SEEDS_DEFAULT))
SEED_START = int(os.environ.get("EUM_SIM_SEED_START", 0))
REPLAY_DEFAULT = 30  # commit failures, HSM down windows, duplicates, a reversal before its original
SUBPROCESS_TIMEOUT_S = 120

# What the default run must have exercised at least once (counted over its 1,000 seeds), so a
# change that quietly stops a fault or a path from happening fails here, not silently.
MUST_HAPPEN = (
    "dropped", "duplicated", "link_cut", "commit_failed_full", "commit_failed_io", "hsm_down", "hsm_stall",
    "note: repeat",                                     # a repeat or duplicate answered from the store
    "note: ledger unavailable",                         # 96: a commit failed
    "note: HSM unavailable",                            # 91: the request MAC or the PIN
    "note: HSM unavailable for the response MAC",       # 91 after the decision, nothing stored
    "note: original unknown: remembered",               # a reversal before its original (tombstone)
    "note: reversed before it arrived",                 # the late original declined 12
    "purchase reversed", "refund reversed",             # no stored answer: reversed by the terminal
    "purchase 00", "refund 00", "reversal 00", "purchase 51", "purchase 55", "balance 00",
    "approved with a MAC",
)


def _scratch() -> Iterator[Path]:
    """Ledgers live in memory when the machine has /dev/shm: SQLite's fsync there costs
    nothing, and each seed commits dozens of times (synchronous=FULL)."""
    shm = Path("/dev/shm")
    base = Path(tempfile.mkdtemp(prefix="eum-sim-", dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else None))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def work() -> Iterator[Path]:
    yield from _scratch()


@pytest.fixture(scope="module")
def population(work: Path) -> Population:
    return build_population(work)


def run_or_fail(seed: int, population: Population, work: Path, **kw) -> Outcome:
    try:
        return run_seed(seed, population, work, **kw)
    except SimulationFailed as exc:
        failure, trace = str(exc), exc.trace
    if os.environ.get("EUM_SIM_TRACE"):
        print("\n".join(trace))
    pytest.fail(failure, pytrace=False)


# ---------------------------------------------------------------------------- the seeds


def test_every_seed_keeps_every_invariant(population: Population, work: Path) -> None:
    counts: collections.Counter[str] = collections.Counter()
    for seed in range(SEED_START, SEED_START + SEEDS):
        counts.update(run_or_fail(seed, population, work).counts)
    if SEEDS >= SEEDS_DEFAULT:
        missing = [what for what in MUST_HAPPEN if counts[what] == 0]
        assert missing == [], f"{SEEDS} seeds from {SEED_START} never exercised: {missing}"


def test_replay_one_seed(population: Population, work: Path) -> None:
    """`EUM_SIM_SEED=N … -k replay` runs seed N alone (default: seed 30, which has failed
    commits, an HSM down, duplicates and a reversal before its original); EUM_SIM_TRACE=1
    prints its whole trace."""
    seed = int(os.environ.get("EUM_SIM_SEED", REPLAY_DEFAULT))
    outcome = run_or_fail(seed, population, work)
    if os.environ.get("EUM_SIM_TRACE"):  # (a failing run prints it in run_or_fail)
        print("\n".join(outcome.trace))
    if "EUM_SIM_SEED" not in os.environ:  # the default seed is there for its faults: keep it so
        for what in ("commit_failed", "hsm_down", "duplicated", "note: original unknown: remembered"):
            assert outcome.counts.get(what, 0) > 0, f"seed {seed} no longer has {what}: pick another default"


# ---------------------------------------------------------------------------- determinism


def test_the_same_seed_gives_the_same_trace(population: Population, work: Path) -> None:
    first = run_or_fail(REPLAY_DEFAULT, population, work)
    again = run_or_fail(REPLAY_DEFAULT, population, work)
    other = run_or_fail(REPLAY_DEFAULT + 1, population, work)
    assert again.trace == first.trace
    assert again.digest == first.digest
    assert other.digest != first.digest  # the digest tells runs apart
    assert len(first.trace) > 100


REPLAY_ELSEWHERE = r"""
import sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from sim.world import build_population, run_seed
with tempfile.TemporaryDirectory(dir=sys.argv[3]) as work:
    print(run_seed(int(sys.argv[2]), build_population(Path(work)), Path(work)).digest)
"""


def test_a_seed_gives_the_same_trace_in_another_process(population: Population, work: Path) -> None:
    """Another interpreter, another hash seed (set and dict-of-str order), another template
    ledger built from scratch: the same trace digest."""
    here = run_or_fail(REPLAY_DEFAULT, population, work)
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    argv = [sys.executable, "-c", REPLAY_ELSEWHERE, str(ROOT / "tests"), str(REPLAY_DEFAULT), str(work)]
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == here.digest


# ---------------------------------------------------------------------------- the checker can fail


LOST_COMMIT_SEED = 1
LOST_COMMIT_FAILURE = ("simulation seed 1 failed: T0000003 0200 STAN 000002: answered 00 but the ledger holds no "
                       "message for its key ('T0000003', '000002', '1015030000')")
UNSIGNED_SEED = 6
UNSIGNED_FAILURE = "simulation seed 6 failed: T0000004 0200 STAN 000002: an answer (rc 00) whose MAC does not verify"


def test_a_lost_commit_is_caught_at_the_step_it_happens(population: Population, work: Path) -> None:
    """Sabotage: the ledger writer acknowledges one group without writing it; the terminal
    that gets the approval is the step that fails."""
    with pytest.raises(SimulationFailed) as failed:
        run_seed(LOST_COMMIT_SEED, population, work, sabotage="lost_commit")
    assert str(failed.value).splitlines()[:2] == [LOST_COMMIT_FAILURE, f"replay: {replay_command(LOST_COMMIT_SEED)}"]


def test_an_approval_without_its_mac_is_caught(population: Population, work: Path) -> None:
    """Sabotage: a secured terminal's approvals leave with their MAC bytes zeroed."""
    with pytest.raises(SimulationFailed) as failed:
        run_seed(UNSIGNED_SEED, population, work, sabotage="unsigned_approval")
    assert str(failed.value).splitlines()[0] == UNSIGNED_FAILURE


def test_a_deadlock_fails_the_run_instead_of_hanging() -> None:
    loop = SimLoop()
    try:
        with pytest.raises(SimulationDeadlock) as stuck:
            loop.run_until_complete(_waits_forever())
    finally:
        loop.close()
    assert str(stuck.value) == "at t=0.250 s every task waits and no timer is pending"


async def _waits_forever() -> None:
    await asyncio.sleep(0.25)
    await asyncio.get_running_loop().create_future()


# ---------------------------------------------------------------------------- what the simulation found

# Seeds on which the simulation found defects, fixed since; each seed now keeps every invariant.


def test_an_operator_charge_waits_for_the_members_purchase(population: Population, work: Path) -> None:
    """Seed 1542 found it: T0000003 bought 1,000 with card 2 (member A; decided at t=0.7989 s,
    committed with its group at 0.8009 s) and the operator charged 25,000 on the same card at
    0.7998 s. Engine and Operations each made their own MemberLocks (`locks or MemberLocks()`
    treated the shared, empty — so false — lock table as absent), so the charge read cash
    60,000 and set the hot state to 85,000 while the ledger held 84,000. Seeds 1577, 1967 and
    5294 failed the same way; all four now pass, and the two share one lock table."""
    for seed in (1542, 1577, 1967, 5294):
        run_seed(seed, population, work)


@pytest.mark.asyncio
async def test_engine_and_operations_share_one_lock_table(tmp_path: Path) -> None:
    from datetime import datetime

    from switch.clock import FixedClock
    from switch.ops.runtime import open_core

    async with open_core(tmp_path, clock=FixedClock(datetime.fromisoformat("2025-10-15T12:00:00+09:00"))) as core:
        assert len(core.engine.locks) == 0  # empty, so false: the case `locks or MemberLocks()` got wrong
        assert core.engine.locks is core.ops.locks


def test_an_hsm_error_reply_to_the_request_mac_is_answered_91(population: Population, work: Path) -> None:
    """Seed 1 (HSM error replies on) found it: the HSM answered the `mac` terminal's M8 with 67
    (over capacity) and the 0401 was answered 63; an HSM that cannot check the MAC is 91,
    nothing stored (docs/host-interface.md §4)."""
    run_seed(1, population, work, hsm_errors=True)


def test_an_hsm_error_reply_to_the_pin_check_stores_no_decline(population: Population, work: Path) -> None:
    """Seed 64 (HSM error replies on) found it: the HSM answered the PIN verification with 67;
    the purchase was declined 63 and that decline stored, so its duplicate got 63 too. Now 91,
    nothing stored, and the repeat after the HSM recovers is decided afresh."""
    run_seed(64, population, work, hsm_errors=True)
