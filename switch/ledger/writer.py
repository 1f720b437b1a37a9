"""The one task that writes the ledger: group commit, one fsync per group.

Many connections feed it through a bounded queue; it commits a group of Commits (typed
records, switch/ledger/records.py) in one transaction through the store adapter
(switch/ledger/sqlite.py), then resolves each one's future; only then does a response leave.

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


class LedgerWriter:
    """The one task that writes the ledger: group commit, one fsync per group.

    `submit` returns a future resolved once the unit is durable (or failed). Limits:
    `queue_size_max` units waiting, `batch_size_max` units per commit. A group is what queued
    while the last one committed, plus what the loop's current pass adds, plus the units
    announced as coming (`expect`: the engine's requests already decided, whose response is
    being MACed): for those, and only while some are, the group waits at most
    `commit_interval_ms_max` after the writer took its first unit. So an idle switch commits a
    lone request at once, and a busy one does not commit a group of one just before the next
    decided request would have joined it (PostgreSQL's commit_delay with commit_siblings, made
    exact: we know who is coming).
    """

    def __init__(
        self,
        path: Store,
        *,
        batch_size_max: int = 512,
        commit_interval_ms_max: float = 2.0,
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
        self.queue: asyncio.Queue[tuple[Commit, asyncio.Future[None]]] = asyncio.Queue(queue_size_max)
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
        """expected: this unit was announced with `expect`."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if expected:
            self.coming -= 1
        await self.queue.put((unit, fut))
        self._arrived()
        await fut

    async def _run(self) -> None:
        while True:
            first = await self.queue.get()
            self._busy = True
            batch = [first]
            try:
                batch = await self._collect(first)
                await self._commit(batch)
            except Exception as exc:  # our bug: this group is answered 96, the writer lives on
                log.exception("ledger_writer_failed", units=len(batch), error=type(exc).__name__)
                for _, f in batch:
                    if not f.done():
                        f.set_exception(LedgerUnavailable("ledger writer failed"))
            finally:
                self._busy = False

    async def _collect(self, first: tuple[Commit, asyncio.Future[None]]) -> list[tuple[Commit, asyncio.Future[None]]]:
        """A group: what is queued now and what the loop's current pass adds (one yield); then,
        while there is room and units are coming (`expect`), what arrives within
        commit_interval_ms_max of the writer taking the first."""
        batch = [first]
        self._drain_into(batch)
        await asyncio.sleep(0)
        self._drain_into(batch)
        if self.coming <= 0 or len(batch) >= self.batch_size_max or self.commit_interval_s_max <= 0:
            return batch
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.commit_interval_s_max
        while self.coming > 0 and len(batch) < self.batch_size_max:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._arrival = arrival = loop.create_future()
            timer = loop.call_later(remaining, _resolve, arrival)
            try:
                await arrival
            finally:
                timer.cancel()
                self._arrival = None
            self._drain_into(batch)
        return batch

    def _drain_into(self, batch: list[tuple[Commit, asyncio.Future[None]]]) -> None:
        while len(batch) < self.batch_size_max:
            try:
                batch.append(self.queue.get_nowait())
            except asyncio.QueueEmpty:
                return

    async def _commit(self, batch: list[tuple[Commit, asyncio.Future[None]]]) -> None:
        loop = asyncio.get_running_loop()
        units = [u for u, _ in batch]
        started = time.perf_counter()
        try:
            if self._pg is not None:
                await self._pg.commit(units)
            else:
                await loop.run_in_executor(self._pool, self._write_group, units)
        except Exception as exc:  # disk full, I/O error, or our bug: nobody gets approved
            self._failed(batch, exc)
            return
        if self.failed_groups:
            log.warning("ledger_commit_recovered", failed_groups=self.failed_groups, reopens=self.reopens)
            self.failed_groups = 0
        self.batches += 1
        self.units += len(units)
        if any(u.events for u in units):
            self.events_committed.set()
        for _, f in batch:
            if not f.done():
                f.set_result(None)
        elapsed_ms = (time.perf_counter() - started) * 1000
        if self.on_commit is not None:
            self.on_commit(len(units), elapsed_ms)
        if elapsed_ms > 100:
            log.warning("ledger_commit_slow", units=len(units), commit_ms=round(elapsed_ms, 1))

    def _failed(self, batch: list[tuple[Commit, asyncio.Future[None]]], exc: Exception) -> None:
        """Answer the group and everything queued behind it 96 (decided on state that is now
        void) and rebuild the hot state. After an I/O error the writer thread has already
        reopened the store and fenced the group (`_restart`), so a 96 is final."""
        self.failed_groups += 1
        self.failed_groups_total += 1
        log.error("ledger_commit_failed", units=len(batch), error=type(exc).__name__,
                  code=getattr(exc, "sqlite_errorname", "") or getattr(exc, "sqlstate", "") or "", detail=str(exc))
        restart, self._restart = self._restart, None
        if restart is not None:
            detail = {"error": restart.error} if restart.error else {}
            log.warning("ledger_store_reopened", reopened=restart.reopened, fenced=restart.fenced,
                        cause=getattr(exc, "sqlite_errorname", ""), **detail)
        failed = [f for _, f in batch]
        while not self.queue.empty():
            _, f = self.queue.get_nowait()
            failed.append(f)
        for f in failed:
            if not f.done():
                f.set_exception(LedgerUnavailable("ledger commit failed"))
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
        while not self.queue.empty() or self._busy:
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
