"""How the ledger writer forms its groups (switch/ledger/writer.py, LedgerWriter).

With no linger (the default, `commit_interval_ms_max` 0) a group is what queued while the last
one committed: an idle writer commits a lone unit at once instead of waiting for company, and
a busy one commits in groups as large as a commit is long. With a linger the writer waits that
long after a group's first unit for more. The commit itself is the real SQLite one, wrapped
(the `commit_group` seam) to record each group's size and, where a test says so, to hold the
writer thread until the test has queued what it wants behind it.
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


def test_the_switch_default_is_no_linger():
    assert (SwitchConfig().commit_interval_ms_max, LedgerWriter.__init__.__kwdefaults__["commit_interval_ms_max"]) \
        == (0.0, 0.0)


def test_a_negative_linger_is_refused_naming_the_flag():
    with pytest.raises(ValueError, match=r"^commit_interval_ms_max \(--commit-interval-ms\) must be ≥ 0$"):
        SwitchConfig(commit_interval_ms_max=-1.0)


async def test_without_linger_what_queued_during_a_commit_is_the_next_group(tmp_path):
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


async def test_without_linger_an_idle_writer_does_not_wait_for_company(tmp_path):
    """Two units 50 ms apart on an idle writer: two groups of one (the first was committed
    before the second came)."""
    writer = await started(tmp_path)
    groups = Groups(writer)
    try:
        await writer.submit(unit(0))
        await asyncio.sleep(0.05)
        await writer.submit(unit(1))
        assert groups.sizes == [1, 1]
    finally:
        await writer.close()


async def test_with_a_linger_a_unit_waits_for_those_that_follow_within_it(tmp_path):
    """A 2 s linger: a unit submitted 50 ms after the first joins its group."""
    writer = await started(tmp_path, commit_interval_ms_max=2000.0)
    groups = Groups(writer)
    try:
        first = asyncio.create_task(writer.submit(unit(0)))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(writer.submit(unit(1)))
        await asyncio.wait_for(asyncio.gather(first, second), HOLD_TIMEOUT_S)
        assert groups.sizes == [2]
        assert stored(writer.path) == {"writer-test-0": "0", "writer-test-1": "1"}
    finally:
        await writer.close()
