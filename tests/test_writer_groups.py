"""How the ledger writer forms its groups (switch/ledger/writer.py, LedgerWriter).

A group is what queued while the last one committed, plus the units announced as coming
(`expect`: the engine's decided requests whose response is being MACed); only while some are
does a group wait, and at most `commit_interval_ms_max` after its first unit. So an idle
writer commits a lone unit at once, whatever the window. Under load (submits closer together
than `linger_gap_ms`, smoothed) a group also lingers for requests not yet received, each within
that gap of the last, at most `commit_linger_ms` in all (0, never, by default). The commit itself is the real SQLite
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
from conftest import query

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


def test_lingering_is_off_by_default_and_a_negative_linger_is_refused_naming_the_flag():
    assert (SwitchConfig().commit_linger_ms, LedgerWriter.__init__.__kwdefaults__["commit_linger_ms"],
            LedgerWriter.__init__.__kwdefaults__["linger_gap_ms"]) == (0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"^commit_linger_ms \(--commit-linger-ms\) must be ≥ 0$"):
        SwitchConfig(commit_linger_ms=-0.5)


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
        assert writer.waiting == 5 and not first.done()
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


async def held_first(writer: LedgerWriter) -> tuple[Groups, asyncio.Task[None]]:
    """The writer's first group (unit 0, alone) held at the store."""
    groups = Groups(writer, hold=0)
    first = asyncio.create_task(writer.submit(unit(0)))
    await groups.wait_held()
    return groups, first


async def test_a_group_holds_at_most_batch_size_max_units(tmp_path):
    """batch_size_max 2: five units queued behind a held commit form groups of 2, 2 and 1,
    committed in the order they were submitted."""
    writer = await started(tmp_path, batch_size_max=2)
    groups, first = await held_first(writer)
    try:
        behind = [asyncio.create_task(writer.submit(unit(i))) for i in range(1, 6)]
        await asyncio.sleep(0.05)
        assert writer.waiting == 5
        groups.go.set()
        await asyncio.wait_for(asyncio.gather(first, *behind), HOLD_TIMEOUT_S)
        assert (groups.sizes, writer.waiting) == ([1, 2, 2, 1], 0)
        assert stored(writer.path) == {f"writer-test-{i}": str(i) for i in range(6)}
    finally:
        groups.go.set()
        await writer.close()


async def test_a_full_queue_holds_submitters_back_until_the_writer_takes_a_group(tmp_path):
    """queue_size_max 3: of five units submitted behind a held commit three wait in the
    queue and two wait for room; once the held group commits, all five are committed."""
    writer = await started(tmp_path, batch_size_max=3, queue_size_max=3)
    groups, first = await held_first(writer)
    try:
        behind = [asyncio.create_task(writer.submit(unit(i))) for i in range(1, 6)]
        await asyncio.sleep(0.05)
        assert (writer.waiting, len(writer._room)) == (3, 2)
        groups.go.set()
        await asyncio.wait_for(asyncio.gather(first, *behind), HOLD_TIMEOUT_S)
        assert (groups.sizes, writer.waiting) == ([1, 3, 2], 0)
        assert stored(writer.path) == {f"writer-test-{i}": str(i) for i in range(6)}
    finally:
        groups.go.set()
        await writer.close()


async def test_a_cancelled_submitter_does_not_cancel_its_group(tmp_path):
    """Three units share a group behind a held commit; one submitter is cancelled while it
    waits. The other two return normally once the group commits; the cancelled one gets its
    CancelledError then (not before: its unit was queued and is committed with the group)."""
    writer = await started(tmp_path)
    groups, first = await held_first(writer)
    try:
        behind = [asyncio.create_task(writer.submit(unit(i))) for i in range(1, 4)]
        await asyncio.sleep(0.05)
        behind[1].cancel()
        await asyncio.sleep(0.05)
        assert not behind[1].done()  # settled with its group, not alone
        groups.go.set()
        results = await asyncio.wait_for(asyncio.gather(first, *behind, return_exceptions=True), HOLD_TIMEOUT_S)
        assert [type(r).__name__ for r in results] == ["NoneType", "NoneType", "CancelledError", "NoneType"]
        assert groups.sizes == [1, 3]
        assert stored(writer.path) == {f"writer-test-{i}": str(i) for i in range(4)}
    finally:
        groups.go.set()
        await writer.close()


# ---------------------------------------------------------------------------- lingering under load
# Gaps and caps here are hundreds of milliseconds, so a slow machine does not change what the
# tests see; the switch's gap is 1 ms, its linger off unless --commit-linger-ms is given.


async def test_under_load_a_group_lingers_for_requests_that_keep_coming(tmp_path):
    """Two units in one turn (0 s apart: under load), then two more 20 ms apart: all four are
    one group, which commits once no request came for a gap (500 ms) — well before its cap."""
    writer = await started(tmp_path, commit_linger_ms=5_000.0, linger_gap_ms=500.0)
    groups = Groups(writer)
    try:
        loop = asyncio.get_running_loop()
        began = loop.time()
        tasks = [asyncio.create_task(writer.submit(unit(0))), asyncio.create_task(writer.submit(unit(1)))]
        for i in (2, 3):
            await asyncio.sleep(0.02)
            assert groups.sizes == []  # still lingering
            tasks.append(asyncio.create_task(writer.submit(unit(i))))
        await asyncio.wait_for(asyncio.gather(*tasks), HOLD_TIMEOUT_S)
        assert groups.sizes == [4] and loop.time() - began < 4.0
        assert stored(writer.path) == {f"writer-test-{i}": str(i) for i in range(4)}
    finally:
        await writer.close()


async def test_a_lingering_group_commits_at_its_cap_however_many_keep_coming(tmp_path):
    """Units 20 ms apart for about a second, within the gap (500 ms) all along: each group
    commits at its cap (200 ms after the writer took it), so there are several, in order."""
    writer = await started(tmp_path, commit_linger_ms=200.0, linger_gap_ms=500.0)
    groups = Groups(writer)
    try:
        tasks = [asyncio.create_task(writer.submit(unit(0))), asyncio.create_task(writer.submit(unit(1)))]
        for i in range(2, 50):
            await asyncio.sleep(0.02)
            tasks.append(asyncio.create_task(writer.submit(unit(i))))
        await asyncio.wait_for(asyncio.gather(*tasks), HOLD_TIMEOUT_S)
        assert sum(groups.sizes) == 50 and len(groups.sizes) >= 3
        assert stored(writer.path) == {f"writer-test-{i}": str(i) for i in range(50)}
    finally:
        await writer.close()


async def test_requests_further_apart_than_the_gap_never_linger(tmp_path):
    """A 5 s cap but a 10 ms gap: units 50 ms apart are groups of one, each durable at once."""
    writer = await started(tmp_path, commit_linger_ms=5_000.0, linger_gap_ms=10.0)
    groups = Groups(writer)
    try:
        for i in range(4):
            await asyncio.wait_for(writer.submit(unit(i)), 1.0)
            await asyncio.sleep(0.05)
        assert groups.sizes == [1, 1, 1, 1] and writer.gap_s > 0.01
    finally:
        await writer.close()


async def test_a_linger_of_0_never_waits_for_requests_not_yet_received(tmp_path):
    """commit_linger_ms 0: two units in one turn are one group, committed at once; a third 20 ms
    later is a group of its own, however close together they came."""
    writer = await started(tmp_path, commit_linger_ms=0.0, linger_gap_ms=500.0)
    groups = Groups(writer)
    try:
        first = [asyncio.create_task(writer.submit(unit(0))), asyncio.create_task(writer.submit(unit(1)))]
        await asyncio.wait_for(asyncio.gather(*first), 1.0)
        await asyncio.sleep(0.02)
        await asyncio.wait_for(writer.submit(unit(2)), 1.0)
        assert groups.sizes == [2, 1]
    finally:
        await writer.close()


async def test_a_switch_started_with_a_linger_commits_concurrent_purchases_together(tmp_path):
    """`start_switch(commit_linger_ms=…)` passes it as `eum switch --commit-linger-ms` does: the
    core's writer lingers (200 ms, gap 1 ms), and eight purchases sent at once over eight
    connections are all approved and posted, each once, and the ledger verifies."""
    from conftest import LAUNCH, provision, start_switch
    from switch.clock import FixedClock
    from switch.ledger.audit import verify
    from terminal_sim.terminal import Terminal

    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH), commit_linger_ms=200.0) as env:
        assert (env.core.writer.commit_linger_s, env.core.writer.linger_gap_s) == (0.2, 0.001)
        await provision(env)
        pan = env.cards["namdong"]["pan"]
        clients = [await env.client().connect() for _ in range(8)]
        terms = [Terminal("T0000001", "NAMDONG01", stan=100 * i) for i in range(8)]
        assert (await clients[0].request(terms[0].sign_on()))["39"] == "00"
        answers = await asyncio.gather(*(c.request(t.purchase(pan, 1_000)) for c, t in zip(clients, terms)))
        for c in clients:
            await c.close()
        assert [a["39"] for a in answers] == ["00"] * 8 and len({a["37"] for a in answers}) == 8
        assert query(env.core.db_path, "SELECT COUNT(*) FROM postings WHERE kind = 'purchase'") == [(8,)]
        assert verify(env.core.db_path).ok
