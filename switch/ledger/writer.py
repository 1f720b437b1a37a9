"""The one task that writes the ledger: group commit, one fsync per group.

Many connections feed it through a bounded queue; it commits a group of Commits (typed
records, switch/ledger/records.py) in one transaction through the store adapter
(switch/ledger/sqlite.py), then resolves each one's future; only then does a response leave.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog

from switch.ledger.records import Commit
from switch.ledger.sqlite import commit_group
from switch.ledger.store import LedgerUnavailable, connect, ledger_id

log = structlog.get_logger()


class LedgerWriter:
    """The one task that writes the ledger: group commit, one fsync per group.

    `submit` returns a future resolved once the unit is durable (or failed). Limits:
    `queue_size_max` units waiting, `batch_size_max` units per commit, and a group closes
    `commit_interval_ms_max` after its first unit arrived.
    """

    def __init__(
        self,
        path: Path,
        *,
        batch_size_max: int = 512,
        commit_interval_ms_max: float = 2.0,
        queue_size_max: int = 8192,
        on_failure: Any = None,
    ) -> None:
        self.path = path
        self.batch_size_max = batch_size_max
        self.commit_interval_s_max = commit_interval_ms_max / 1000
        self.queue: asyncio.Queue[tuple[Commit, asyncio.Future[None]]] = asyncio.Queue(queue_size_max)
        self._conn = connect(path)
        self.ledger_id = ledger_id(self._conn)
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
        self._busy = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ledger-writer")

    async def submit(self, unit: Commit) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self.queue.put((unit, fut))
        await fut

    async def _run(self) -> None:
        while True:
            first = await self.queue.get()
            self._busy = True
            try:
                await self._commit(await self._collect(first))
            finally:
                self._busy = False

    async def _collect(self, first: tuple[Commit, asyncio.Future[None]]) -> list[tuple[Commit, asyncio.Future[None]]]:
        """A group: what is queued now, then, if there is room, what arrives within
        commit_interval_ms_max of the first (one sleep, not a timed wait per unit)."""
        batch = [first]
        self._drain_into(batch)
        if len(batch) < self.batch_size_max:
            await asyncio.sleep(self.commit_interval_s_max)
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
            await loop.run_in_executor(self._pool, self.commit_group, self._conn, units)
        except Exception as exc:  # disk full, I/O error, or our bug: nobody gets approved
            log.error("ledger_commit_failed", units=len(units), error=type(exc).__name__, detail=str(exc))
            failed = [f for _, f in batch]
            while not self.queue.empty():  # later units were decided on state that is now void
                _, f = self.queue.get_nowait()
                failed.append(f)
            for f in failed:
                if not f.done():
                    f.set_exception(LedgerUnavailable("ledger commit failed"))
            if self.on_failure is not None:
                self.on_failure()
            return
        self.batches += 1
        self.units += len(units)
        if any(u.events for u in units):
            self.events_committed.set()
        for _, f in batch:
            if not f.done():
                f.set_result(None)
        elapsed_ms = (time.perf_counter() - started) * 1000
        if elapsed_ms > 100:
            log.warning("ledger_commit_slow", units=len(units), commit_ms=round(elapsed_ms, 1))

    async def drain(self) -> None:
        """Wait until every queued unit is committed (graceful shutdown)."""
        while not self.queue.empty() or self._busy:
            await asyncio.sleep(self.commit_interval_s_max)

    async def close(self) -> None:
        await self.drain()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._pool.shutdown(wait=True)
        self._conn.close()
