"""How the ledger writer forms its groups (switch/ledger/writer.py, LedgerWriter).

A group is what queued while the last one committed, plus the units announced as coming
(`expect`: the engine's decided requests whose response is being MACed); only while some are
does a group wait, and at most `commit_interval_ms_max` after its first unit. So an idle
writer commits a lone unit at once, whatever the window. The commit itself is the real SQLite
one, wrapped (the `commit_group` seam) to record each group's size and, where a test says so,
to hold the writer thread until the test has queued what it wants behind it.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from switch.ledger.records import Commit, MetaSet
from switch.ledger.store import connect, open_store
from switch.ledger.writer import LedgerWriter
from switch.ops.config import SwitchConfig

HOLD_TIMEOUT_S = 20


class Groups:
    """Wraps a writer's commit_group: records the size of each group, and holds the group
    numbered `hold` (0-based) until `release` is called."""

    def __init__(self, writer: LedgerWriter, hold: int | None = None) -> None:
        self.real = writer.commit_group
        self.sizes: list[int] = []
        self.hold = hold
        self.held = threading.Event()
        self.go = threading.Event()
        writer.commit_group = self

    def __call__(self, conn, units) -> None:
        self.sizes.append(len(units))
        if len(self.sizes) - 1 == self.hold:
            self.held.set()
            assert self.go.wait(HOLD_TIMEOUT_S), "the test never released the held group"
        self.real(conn, units)

    async def wait_held(self) -> None:
        assert await asyncio.to_thread(self.held.wait, HOLD_TIMEOUT_S), "the held group never reached the store"


def unit(i: int) -> Commit:
    return Commit(changes=(MetaSet(f"writer-test-{i}", str(i)),))


def stored(path: Path) -> dict[str, str]:
    conn = connect(path, readonly=True)
    try:
        return dict(conn.execute("SELECT key, value FROM meta WHERE key LIKE 'writer-test-%'").fetchall())
    finally:
        conn.close()


async def started(tmp_path: Path, **kw) -> LedgerWriter:
    writer = LedgerWriter(open_store(tmp_path / "var"), **kw)
    writer.start()
    return writer


def test_the_switch_default_window_is_2_ms():
    assert (SwitchConfig().commit_interval_ms_max, LedgerWriter.__init__.__kwdefaults__["commit_interval_ms_max"]) \
        == (2.0, 2.0)


def test_a_negative_window_is_refused_naming_the_flag():
    with pytest.raises(ValueError, match=r"^commit_interval_ms_max \(--commit-interval-ms\) must be ≥ 0$"):
        SwitchConfig(commit_interval_ms_max=-1.0)


async def test_what_queued_during_a_commit_is_the_next_group(tmp_path):
    """The first unit is committed alone (nothing else was queued); five units submitted while
    that commit is held form the second group, all five together; each is durable when its
    submit returns."""
    writer = await started(tmp_path)
    groups = Groups(writer, hold=0)
    try:
        first = asyncio.create_task(writer.submit(unit(0)))
        await groups.wait_held()
        behind = [asyncio.create_task(writer.submit(unit(i))) for i in range(1, 6)]
        await asyncio.sleep(0.05)  # all five are queued (the loop ran them) before the release
        assert writer.queue.qsize() == 5 and not first.done()
        groups.go.set()
        await asyncio.wait_for(asyncio.gather(first, *behind), HOLD_TIMEOUT_S)
        assert groups.sizes == [1, 5]
        assert stored(writer.path) == {f"writer-test-{i}": str(i) for i in range(6)}
    finally:
        groups.go.set()
        await writer.close()


async def test_with_nobody_coming_a_unit_does_not_wait_out_the_window(tmp_path):
    """A 2 s window, nothing announced: two units 50 ms apart are two groups of one (the first
    was committed before the second came)."""
    writer = await started(tmp_path, commit_interval_ms_max=2000.0)
    groups = Groups(writer)
    try:
        await asyncio.wait_for(writer.submit(unit(0)), 1.0)
        await asyncio.sleep(0.05)
        await asyncio.wait_for(writer.submit(unit(1)), 1.0)
        assert groups.sizes == [1, 1]
    finally:
        await writer.close()


async def announced_then_first(tmp_path):
    """A writer with a 2 s window, one unit announced (`expect`) and a first one submitted:
    50 ms on, the group is still waiting (nothing committed, the first not durable)."""
    writer = await started(tmp_path, commit_interval_ms_max=2000.0)
    groups = Groups(writer)
    writer.expect()
    first = asyncio.create_task(writer.submit(unit(0)))
    await asyncio.sleep(0.05)
    assert not first.done() and groups.sizes == []
    return writer, groups, first


async def test_a_group_waits_for_a_unit_announced_as_coming(tmp_path):
    """A 2 s window: a unit announced (`expect`) before the first was submitted, and submitted
    50 ms after it, joins its group; nothing is left announced."""
    writer, groups, first = await announced_then_first(tmp_path)
    try:
        second = asyncio.create_task(writer.submit(unit(1), expected=True))
        await asyncio.wait_for(asyncio.gather(first, second), HOLD_TIMEOUT_S)
        assert (groups.sizes, writer.coming) == ([2], 0)
        assert stored(writer.path) == {"writer-test-0": "0", "writer-test-1": "1"}
    finally:
        await writer.close()


async def test_a_withdrawn_unit_releases_the_group_at_once(tmp_path):
    """A 2 s window: the announced unit is withdrawn (its request answered without a commit)
    50 ms in; the group commits then, long before the window ends."""
    writer, groups, first = await announced_then_first(tmp_path)
    try:
        writer.withdraw()
        await asyncio.wait_for(first, 1.0)
        assert (groups.sizes, writer.coming) == ([1], 0)
    finally:
        await writer.close()


async def test_a_group_waits_no_longer_than_its_window(tmp_path):
    """A 100 ms window and an announced unit that never comes: the group commits without it."""
    writer = await started(tmp_path, commit_interval_ms_max=100.0)
    groups = Groups(writer)
    try:
        writer.expect()
        await asyncio.wait_for(writer.submit(unit(0)), HOLD_TIMEOUT_S)
        assert (groups.sizes, writer.coming) == ([1], 1)
        writer.withdraw()
    finally:
        await writer.close()


# ---------------------------------------------------------------------------- the WAL checkpoint

def wal_bytes(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return wal.stat().st_size if wal.exists() else 0


async def commit_units(writer: LedgerWriter, n: int, *, pause_every: int = 50) -> None:
    """n units, one by one (a group each), with a short pause now and then so that the
    checkpointer gets its turns while they commit."""
    for i in range(n):
        await writer.submit(unit(i))
        if i % pause_every == pause_every - 1:
            await asyncio.sleep(0.02)


async def test_no_commit_runs_a_checkpoint_and_the_checkpointer_keeps_the_wal_bounded(tmp_path):
    """The writer's connection has SQLite's automatic checkpoint off (0 pages), so no group
    waits for a checkpoint inside its COMMIT; the Checkpointer copies the WAL beside it, and
    the WAL restarts from its start: 1,500 groups leave it far smaller than without the
    checkpointer (the control: the same groups with it stopped, where nothing else ever
    copies the WAL and it only grows)."""
    writer = await started(tmp_path, checkpoint_interval_ms=10)
    try:
        assert writer._conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
        await commit_units(writer, 1_500)
        checkpointed = wal_bytes(writer.path)
        assert writer.checkpointer.passes > 0 and writer.checkpointer.frames_copied > 0
        assert writer.checkpointer.failures == 0
        assert stored(writer.path) == {f"writer-test-{i}": str(i) for i in range(1_500)}
    finally:
        await writer.close()

    control = await started(tmp_path / "control", checkpoint_interval_ms=10)
    control.checkpointer.stop()  # nobody checkpoints: every commit appends to the WAL
    try:
        await commit_units(control, 1_500)
        unchecked = wal_bytes(control.path)
    finally:
        await control.close()
    page = 4096 + 24  # a WAL frame: its header and one page
    assert unchecked > 1_500 * page  # each group appended at least one frame, never copied
    assert checkpointed < unchecked / 4, (checkpointed, unchecked)


async def test_the_last_close_leaves_no_wal_and_every_unit_in_the_database(tmp_path):
    """Closing the writer stops the checkpointer; the writer's connection, closed last,
    checkpoints what is left and removes the WAL: the database file alone holds every unit."""
    writer = await started(tmp_path, checkpoint_interval_ms=1_000)
    await commit_units(writer, 200)
    await writer.close()
    assert wal_bytes(writer.path) == 0
    assert stored(writer.path) == {f"writer-test-{i}": str(i) for i in range(200)}


def test_the_fence_commit_gives_the_connection_back_its_own_checkpoint_setting(tmp_path):
    """commit_unsynced (the fence after an fsync failure, switch/ledger/writer.py) turns the
    automatic checkpoint off for itself and restores the connection's own value after: 0 on
    the writer's connection, SQLite's 1,000 on another."""
    from switch.ledger.sqlite import commit_unsynced, committing_connection

    path = open_store(tmp_path / "var")
    writer_conn, other = committing_connection(path), connect(path)
    try:
        for conn, expected in ((writer_conn, 0), (other, 1000)):
            commit_unsynced(conn, [unit(expected)])
            assert conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (expected,)
            assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    finally:
        writer_conn.close()
        other.close()


def test_a_failing_checkpoint_is_said_once_and_retried_until_it_passes(tmp_path):
    """A checkpoint pass that fails (an I/O error writing or syncing the database file) leaves
    the frames in the WAL, which every commit fsynced: the next pass tries again. The operator
    reads one warning when passes start failing and one line when they pass again, not a line
    every 100 ms."""
    import sqlite3

    import structlog

    from switch.ledger.sqlite import Checkpointer

    class Flaky(Checkpointer):
        outcomes = [sqlite3.OperationalError("disk I/O error"), sqlite3.OperationalError("disk I/O error"), 3, 0]

        def _pass(self, conn):
            outcome = self.outcomes.pop(0) if self.outcomes else 0
            if isinstance(outcome, Exception):
                raise outcome
            return outcome

    path = open_store(tmp_path / "var")
    checkpointer = Flaky(path, interval_s=0.005)
    with structlog.testing.capture_logs() as events:
        checkpointer.start()
        deadline = threading.Event()
        for _ in range(400):
            if checkpointer.passes >= 2:
                break
            deadline.wait(0.005)
        checkpointer.stop()
    assert (checkpointer.failures, checkpointer.frames_copied) == (2, 3)
    assert [(e["event"], e.get("error"), e.get("failures")) for e in events] == [
        ("ledger_checkpoint_failed", "OperationalError", None), ("ledger_checkpoint_recovered", None, 2)]
