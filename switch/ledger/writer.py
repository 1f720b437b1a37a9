"""The one task that writes the ledger: group commit, one fsync per group.

Many connections feed it through a bounded queue of groups; it commits a group of Commits
(typed records, switch/ledger/records.py) in one transaction through the store adapter
(switch/ledger/sqlite.py), then resolves the group's one future; only then does a response
leave.

A group that fails is never retried: its units and the queue behind them are answered 96
and the hot state is rebuilt from the store (`on_failure`). A full disk (SQLITE_FULL) leaves
the connection as it is: nothing of the group was made durable, and the next group commits
once there is space. An I/O error (SQLITE_IOERR: a write or an fsync failed) is not trusted
so far (PostgreSQL's "fsyncgate"): the data may sit in the page cache and reach the disk
later, or never. Before the 96 leaves, the writer closes its connection, opens a new one and
lays a fence over the failed group (`commit_unsynced`), so a crash after the 96 cannot bring
the group back at the next start; see docs/reliability.md, "fsync failure".
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import sqlite3
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import structlog

from switch.ledger.records import Commit, MetaSet
from switch.ledger.sqlite import commit_group, commit_unsynced, connect_writer, fold_now
from switch.ledger.store import LedgerUnavailable, PgDsn, Store, connect, ledger_id

log = structlog.get_logger()

FENCE_KEY = "io_error_fenced_at"  # meta: when and why the last fence was laid


def io_error(exc: BaseException) -> bool:
    """SQLITE_IOERR and its extended codes (a failed write, fsync, read…): the store's state
    on disk is unknown. SQLITE_FULL and our own bugs are not."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == sqlite3.SQLITE_IOERR


@dataclass(frozen=True)
class Restart:
    """What the writer did after an I/O error, before answering: the connection reopened, and
    the failed group fenced off (both False with `error` when that step failed too)."""

    reopened: bool
    fenced: bool
    error: str = ""


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


# A group lingers for new requests only while they arrive less than this apart (smoothed over
# about the last eight submits): at 1 ms apart or closer, a wait of 1 ms finds the next one
# more often than not (at exactly 1 ms, 63 % of the time for arrivals at random).
LINGER_GAP_MS = 1.0
_GAP_SMOOTHING = 8  # the smoothed gap moves 1/8 of the way to each new gap
_UNBOUNDED = float("inf")


class _Done(asyncio.Future):  # type: ignore[type-arg]
    """A group's one future, awaited by every unit of the group (`LedgerWriter.submit`). A
    submitter cancelled while it waits must not cancel the others' outcome, so it refuses
    cancellation: the cancelled task gets its CancelledError once the group is settled, as
    `asyncio.shield` would give it at once (its unit is committed either way)."""

    def cancel(self, msg: Any = None) -> bool:
        return False


class _Group:
    """Units committed together, in submission order, and the future they all await."""

    __slots__ = ("units", "done")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.units: list[Commit] = []
        self.done: asyncio.Future[None] = _Done(loop=loop)


class LedgerWriter:
    """The one task that writes the ledger: group commit, one fsync per group.

    `submit` returns once the unit is durable (or raises LedgerUnavailable). Limits:
    `queue_size_max` units waiting, `batch_size_max` units per commit. A group is what queued
    while the last one committed, plus what the loop's current pass adds, plus the units
    announced as coming (`expect`: the engine's requests already decided, whose response is
    being MACed): for those, and only while some are, the group waits at most
    `commit_interval_ms_max` after the writer took its first unit. So an idle switch commits a
    lone request at once, and a busy one does not commit a group of one just before the next
    decided request would have joined it (PostgreSQL's commit_delay with commit_siblings, made
    exact: we know who is coming).

    With `commit_linger_ms` > 0 (off by default, as PostgreSQL's commit_delay is), a group
    under load may also linger for requests not yet received: when requests have been arriving
    less than `LINGER_GAP_MS` apart (a smoothed gap between submits), the group waits for each
    next arrival at most that gap, and in all at most `commit_linger_ms` after the writer took
    it; the first gap without an arrival (nobody announced) ends it. A group's commit costs
    about as much for one unit as for a few (its transaction, its fsync, a WAL page for each
    table and index it appends to), so at part load fuller groups cost less CPU a request, for
    up to that much more latency; an idle or lightly loaded switch (requests further apart
    than the gap) never lingers (docs/performance.md, "A group may linger while requests keep
    coming (off by default)").

    The hand-off is per group, not per unit: a unit is appended to the group being formed (the
    last of `_groups`, a new one when there is none or it is full) and awaits that group's one
    future, which the writer settles once for all of them. Groups commit in the order they
    were formed, so a unit submitted after another is committed with it or after it.
    """

    def __init__(
        self,
        path: Store,
        *,
        batch_size_max: int = 512,
        commit_interval_ms_max: float = 2.0,
        commit_linger_ms: float = 0.0,
        linger_gap_ms: float = LINGER_GAP_MS,
        queue_size_max: int = 8192,
        on_failure: Any = None,
        owner: str = "",
        leases: Any = None,
    ) -> None:
        """owner, leases: one instance of several on a PostgreSQL ledger (switch/ops/cluster.py):
        every group is fenced by the leases held (switch/ledger/postgres.py, PgCommitter)."""
        self.path = path
        self.batch_size_max = batch_size_max
        self.commit_interval_s_max = commit_interval_ms_max / 1000
        self.commit_linger_s = commit_linger_ms / 1000
        self.linger_gap_s = linger_gap_ms / 1000
        self._last_submit = -_UNBOUNDED  # the loop's time of the last submit
        self.gap_s = _UNBOUNDED  # seconds between submits, smoothed (`submit`, when lingering)
        self.queue_size_max = queue_size_max
        self._groups: deque[_Group] = deque()  # formed, not yet taken by the writer; the last one open
        self.waiting = 0  # units in _groups
        self._wake: asyncio.Future[None] | None = None  # the writer waits on it for a first unit
        self._room: list[asyncio.Future[None]] = []  # submitters waiting for waiting < queue_size_max
        # SQLite: a connection used on the writer thread. PostgreSQL: an asyncpg connection on
        # the loop (switch/ledger/postgres.py, PgCommitter), opened by `open`.
        self._pg: Any = None
        if isinstance(path, PgDsn):
            from switch.ledger.postgres import PgCommitter

            self._pg = PgCommitter(path, owner=owner, leases=leases)
            self._conn: sqlite3.Connection | None = None
            probe = connect(path, readonly=True)
            try:
                self.ledger_id = ledger_id(probe)
            finally:
                probe.close()
        else:
            self._conn = connect_writer(path)
            self.ledger_id = ledger_id(self._conn)
            fold_now(self._conn)  # what a crash left unfolded, before anyone reads a balance (the warm hot state)
        # set after a commit that carried events: the outbox relay waits on it instead of polling
        self.events_committed = asyncio.Event()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-writer")
        # The one call that makes a group durable (run on the writer thread). A fault-injection
        # seam: tests/test_failure_paths.py wraps it on a running writer to make one commit fail.
        self.commit_group = commit_group
        self._task: asyncio.Task[None] | None = None
        self.on_failure = on_failure
        self.batches = 0
        self.units = 0
        self.failed_groups = 0   # in a row, since the last group that committed
        self.failed_groups_total = 0
        self.reopens = 0         # connections reopened after an I/O error, in all
        # called after each group that commits with (units, commit_ms): the metrics' histograms
        # (switch/ops/metrics.py); None: nobody asked
        self.on_commit: Any = None
        self._restart: Restart | None = None  # set on the writer thread by a failed group's I/O error
        self._busy = False
        self.coming = 0  # units announced (expect) and not yet submitted or withdrawn
        self._arrival: asyncio.Future[None] | None = None  # a lingering group waits on it

    async def open(self) -> None:
        """Connect where connecting is a network call (PostgreSQL: takes the writer lock, and
        raises postgres.WriterBusy when another switch holds it). Before `start`."""
        if self._pg is not None:
            await self._pg.open()

    @property
    def partitioned(self) -> bool:
        """One of a cluster's writers: each unit names its member's partition for the fence."""
        return self._pg is not None and self._pg.leases is not None

    def forget_pseq(self, partitions: Any) -> None:
        """A cluster gained `partitions`: re-read where their event sequences stand."""
        if self._pg is not None:
            self._pg.forget_pseq(partitions)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ledger-writer")

    @property
    def running(self) -> bool:
        """Started and not closed (nor ended by a bug): units submitted now will be committed."""
        return self._task is not None and not self._task.done()

    def expect(self) -> None:
        """A unit is coming soon (its request decided, its response being built): a group
        being formed may wait for it. Each `expect` is ended by `submit(..., expected=True)` or
        by `withdraw`."""
        self.coming += 1

    def withdraw(self) -> None:
        """An expected unit will not come (its request was answered without a commit)."""
        self.coming -= 1
        self._arrived()

    def _arrived(self) -> None:
        if self._arrival is not None and not self._arrival.done():
            self._arrival.set_result(None)

    async def submit(self, unit: Commit, *, expected: bool = False) -> None:
        """expected: this unit was announced with `expect`. Returns once the unit's group is
        durable; raises LedgerUnavailable when it failed."""
        if expected:
            self.coming -= 1
        if self.commit_linger_s > 0:  # the gap between submits, smoothed: only a lingering writer reads it
            now = asyncio.get_running_loop().time()
            gap, self._last_submit = now - self._last_submit, now
            if self.gap_s == _UNBOUNDED:  # the first gap measured (the first submit's is unbounded)
                self.gap_s = gap
            else:
                self.gap_s += (gap - self.gap_s) / _GAP_SMOOTHING
        while self.waiting >= self.queue_size_max:  # back-pressure: wait until the writer takes a group
            room: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._room.append(room)
            await room
        groups = self._groups
        if groups and len(groups[-1].units) < self.batch_size_max:
            group = groups[-1]
        else:
            group = _Group(asyncio.get_running_loop())
            groups.append(group)
        group.units.append(unit)
        self.waiting += 1
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)
        self._arrived()
        await group.done

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        groups = self._groups
        while True:
            if not groups:
                self._wake = loop.create_future()
                try:
                    await self._wake
                finally:
                    self._wake = None
                continue
            self._busy = True
            group = groups[0]
            try:
                await self._collect(group)
                self._take(group)
                await self._commit(group)
            except Exception as exc:  # our bug: this group is answered 96, the writer lives on
                log.exception("ledger_writer_failed", units=len(group.units), error=type(exc).__name__)
                if groups and groups[0] is group:
                    self._take(group)
                if not group.done.done():
                    group.done.set_exception(LedgerUnavailable("ledger writer failed"))
            finally:
                self._busy = False

    async def _collect(self, group: _Group) -> None:
        """The group being formed stays open while the writer lingers: what the loop's current
        pass adds joins it (one yield); then, while there is room and units are coming
        (`expect`), what arrives within commit_interval_ms_max of the writer taking it; then,
        under load, what keeps arriving within commit_linger_ms of it (`_linger`)."""
        if len(self._groups) > 1:  # full: later units have a group of their own
            return
        linger = self.commit_linger_s > 0
        loop = asyncio.get_running_loop()
        taken = loop.time() if linger else 0.0
        await asyncio.sleep(0)
        units = group.units
        if self.coming > 0 and len(units) < self.batch_size_max and self.commit_interval_s_max > 0:
            deadline = (taken if linger else loop.time()) + self.commit_interval_s_max
            while self.coming > 0 and len(units) < self.batch_size_max:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._arrival = arrival = loop.create_future()  # inline: no coroutine a wait
                timer = loop.call_later(remaining, _resolve, arrival)
                try:
                    await arrival
                finally:
                    timer.cancel()
                    self._arrival = None
        if linger and self.gap_s < self.linger_gap_s:
            await self._linger(loop, units, taken + self.commit_linger_s)

    async def _linger(self, loop: asyncio.AbstractEventLoop, units: list[Commit], deadline: float) -> None:
        """Under load (requests arriving less than linger_gap_ms apart): wait for each next
        arrival at most that gap, until `deadline`, the group is full or a gap passes with no
        arrival and nobody announced."""
        while len(units) < self.batch_size_max and len(self._groups) == 1:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            before = len(units)
            self._arrival = arrival = loop.create_future()  # until the next submit or withdraw (`_arrived`)
            timer = loop.call_later(min(remaining, self.linger_gap_s), _resolve, arrival)
            try:
                await arrival
            finally:
                timer.cancel()
                self._arrival = None
            if len(units) == before and self.coming <= 0:
                return

    def _take(self, group: _Group) -> None:
        """The group leaves the queue (closed: a unit submitted from now on forms the next)."""
        self._groups.popleft()
        self.waiting -= len(group.units)
        room, self._room = self._room, []
        for fut in room:
            if not fut.done():
                fut.set_result(None)

    async def _commit(self, group: _Group) -> None:
        loop = asyncio.get_running_loop()
        units = group.units
        started = time.perf_counter()
        try:
            if self._pg is not None:
                await self._pg.commit(units)
            else:
                await loop.run_in_executor(self._pool, self._write_group, units)
        except Exception as exc:  # disk full, I/O error, or our bug: nobody gets approved
            self._failed(group, exc)
            return
        if self.failed_groups:
            log.warning("ledger_commit_recovered", failed_groups=self.failed_groups, reopens=self.reopens)
            self.failed_groups = 0
        self.batches += 1
        self.units += len(units)
        if any(u.events for u in units):
            self.events_committed.set()
        group.done.set_result(None)
        elapsed_ms = (time.perf_counter() - started) * 1000
        if self.on_commit is not None:
            self.on_commit(len(units), elapsed_ms)
        if elapsed_ms > 100:
            log.warning("ledger_commit_slow", units=len(units), commit_ms=round(elapsed_ms, 1))

    def _failed(self, group: _Group, exc: Exception) -> None:
        """Answer the group and everything queued behind it 96 (decided on state that is now
        void) and rebuild the hot state. After an I/O error the writer thread has already
        reopened the store and fenced the group (`_restart`), so a 96 is final."""
        self.failed_groups += 1
        self.failed_groups_total += 1
        log.error("ledger_commit_failed", units=len(group.units), error=type(exc).__name__,
                  code=getattr(exc, "sqlite_errorname", "") or getattr(exc, "sqlstate", "") or "", detail=str(exc))
        restart, self._restart = self._restart, None
        if restart is not None:
            detail = {"error": restart.error} if restart.error else {}
            log.warning("ledger_store_reopened", reopened=restart.reopened, fenced=restart.fenced,
                        cause=getattr(exc, "sqlite_errorname", ""), **detail)
        failed = [group]
        while self._groups:
            behind = self._groups[0]
            self._take(behind)
            failed.append(behind)
        for g in failed:
            g.done.set_exception(LedgerUnavailable("ledger commit failed"))
        if self.on_failure is not None:
            try:
                self.on_failure()
            except Exception as rebuild_error:  # the store cannot be read either: the cache holds only
                log.error("ledger_state_rebuild_failed",  # committed rows, so serving on goes on safely
                          error=type(rebuild_error).__name__, detail=str(rebuild_error))

    # ------------------------------------------------------------------ on the writer thread

    def _write_group(self, units: list[Commit]) -> None:
        if self._conn is None:  # the last reopen failed: try again, or fail this group too
            self._conn = connect_writer(self.path)
            self.reopens += 1
        try:
            self.commit_group(self._conn, units)
        except Exception as exc:
            if io_error(exc):
                self._restart = self._reopen_and_fence(exc)
            raise

    def _reopen_and_fence(self, exc: BaseException) -> Restart:
        """Close the connection that met the I/O error, open a new one, and commit a small fence
        over the failed group without an fsync (fsync may be what fails). SQLite wrote the
        group's frames before the failed fsync, so they may be in the WAL file; as long as this
        process keeps its read connection open they are invisible, but a crash would let the
        next start's WAL recovery replay them: the fence, written at the same place in the WAL,
        ends the log before them. Never raises: a step that fails is reported in the Restart."""
        old, self._conn = self._conn, None
        if old is not None:
            with contextlib.suppress(sqlite3.Error):
                old.close()
        try:
            self._conn = connect_writer(self.path)
        except sqlite3.Error as reopen_error:
            return Restart(False, False, str(reopen_error))
        self.reopens += 1
        at = datetime.datetime.now(tz=datetime.timezone.utc).isoformat().replace("+00:00", "Z")
        fence = Commit(changes=(MetaSet(FENCE_KEY, f"{at} {getattr(exc, 'sqlite_errorname', '')}"),))
        try:
            commit_unsynced(self._conn, [fence])
        except sqlite3.Error as fence_error:  # writes fail too: the group's frames likely never got there either
            return Restart(True, False, str(fence_error))
        return Restart(True, True)

    async def drain(self) -> None:
        """Wait until every queued unit is committed (graceful shutdown)."""
        while self._groups or self._busy:
            await asyncio.sleep(max(self.commit_interval_s_max, 0.001))

    async def close(self) -> None:
        await self.drain()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._pool.shutdown(wait=True)
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):  # a ledger at rest is folded (a failure: the next start folds)
                fold_now(self._conn)
            self._conn.close()
        if self._pg is not None:
            await self._pg.close()
