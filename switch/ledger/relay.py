"""The outbox relay: outbox rows → MQTT (aiomqtt 2.x), QoS 1, at least once.

One asyncio task in the switch process, off the authorization path:

  read a bounded batch after `position` (own read-only connection, in its own thread)
  → publish each row with QoS 1 (`await client.publish` returns after the PUBACK)
  → position = the last row of the acknowledged prefix of the batch
  → mark it durable: one upsert of `outbox_relay` handed to the ledger writer

The mark rides in the writer's next group commit like any unit, so there is still exactly
one writer of the ledger: no second connection ever takes SQLite's write lock, and the
writer never waits on the relay (see docs/events.md, "How the relay marks rows"). A crash
between a PUBACK and its mark re-sends those rows after restart with the same event_id:
consumers deduplicate.

No automatic reconnect in aiomqtt 2.x: the loop reconnects with capped exponential backoff
(with jitter). The backlog stays in the outbox, so it survives broker outages and switch
restarts. Relay lag and backlog are logged every `status_interval_s`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import urlsplit

import aiomqtt
import structlog

from switch.ledger.outbox import RELAY_NAME, OutboxReader, OutboxRow
from switch.ledger.records import Commit, RelayMarked
from switch.ledger.store import LedgerUnavailable
from switch.ledger.writer import LedgerWriter

log = structlog.get_logger()
T = TypeVar("T")

MQTT_PORT_DEFAULT = 1883


def parse_mqtt_url(text: str) -> tuple[str, int]:
    """mqtt://HOST[:PORT] → (host, port). Only plain MQTT over TCP is supported here."""
    parts = urlsplit(text)
    if parts.scheme != "mqtt" or not parts.hostname:
        raise ValueError(f"{text!r} is not mqtt://HOST:PORT")
    try:
        port = parts.port or MQTT_PORT_DEFAULT
    except ValueError:
        raise ValueError(f"{text!r} has no valid port") from None
    return parts.hostname, port


@dataclass(frozen=True, slots=True)
class RelayConfig:
    host: str
    port: int = MQTT_PORT_DEFAULT
    client_id: str = ""               # default: eum-switch-<first 8 of the ledger id>
    batch_size_max: int = 256         # rows read and published per round
    in_flight_max: int = 64           # QoS 1 publishes awaiting their PUBACK
    publish_timeout_s: float = 5.0    # a PUBACK later than this: reconnect and re-send
    connect_timeout_s: float = 5.0
    keepalive_s: int = 15
    backoff_s_min: float = 0.2        # first wait after a failed connection …
    backoff_s_max: float = 5.0        # … doubling up to this
    idle_poll_s: float = 1.0          # re-read the outbox at least this often when idle
    status_interval_s: float = 10.0   # relay_status log line
    stop_timeout_s: float = 2.0       # on stop, time to finish the batch in flight
    resend_window_s: float = 10.0     # after a lost connection, re-send what the broker acknowledged
                                      # this recently: a broker that crashed may not have saved it

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError("MQTT port must be 1..65535")
        if self.batch_size_max < 1 or self.in_flight_max < 1:
            raise ValueError("batch_size_max and in_flight_max must be ≥ 1")
        if not 0 < self.backoff_s_min <= self.backoff_s_max:
            raise ValueError("backoff_s_min must be > 0 and ≤ backoff_s_max")
        if min(self.publish_timeout_s, self.connect_timeout_s, self.idle_poll_s, self.status_interval_s) <= 0:
            raise ValueError("timeouts and intervals must be > 0")
        if self.resend_window_s < 0:
            raise ValueError("resend_window_s must be ≥ 0")

    @classmethod
    def from_url(cls, url: str, **kw: Any) -> "RelayConfig":
        host, port = parse_mqtt_url(url)
        return cls(host=host, port=port, **kw)


class Relay:
    def __init__(self, config: RelayConfig, db_path: Path, writer: LedgerWriter) -> None:
        self.config = config
        self.db_path = db_path
        self.writer = writer
        self.client_id = config.client_id or f"eum-switch-{writer.ledger_id[:8]}"
        self.position = 0           # last seq acknowledged by the broker (durable mark may lag a batch)
        self.cursor = 0             # last seq sent and acknowledged on this connection (≤ position after a rewind)
        self.resent = 0             # rows sent again after a lost connection (resend_window_s)
        self._acks: deque[tuple[float, int]] = deque()  # (monotonic time, first seq) of acknowledged batches
        self.connected = False
        self.published = 0          # rows acknowledged since start
        self.reconnects = 0
        self._publish_lag_ms_max = 0.0  # commit → PUBACK, worst since the last status line
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-reader")
        self._reader: OutboxReader | None = None
        self._task: asyncio.Task[None] | None = None
        self._status_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._wake = asyncio.Event()

    @property
    def broker(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name="outbox-relay")
        self._status_task = loop.create_task(self._report(), name="outbox-relay-status")

    async def stop(self) -> None:
        """Finish the batch in flight (so its rows are marked, not re-sent), then stop."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=self.config.stop_timeout_s)
            if not done:
                self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self._status_task is not None:
            self._status_task.cancel()
            try:
                await self._status_task
            except asyncio.CancelledError:
                pass
        await self._log_status()
        await self._read(lambda r: r.close())
        self._pool.shutdown(wait=True)

    async def _read(self, fn: Callable[[OutboxReader], T]) -> T:
        """Run a read on the relay's own connection, in its own thread (never on the loop)."""
        def call() -> T:
            if self._reader is None:
                self._reader = OutboxReader(self.db_path)
            return fn(self._reader)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    # ------------------------------------------------------------------ the loop

    async def _begin(self) -> None:
        self.position = self.cursor = await self._read(lambda r: r.position())
        status = await self._read(lambda r: r.status(relayed_seq=self.position))
        log.info("relay_started", broker=self.broker, client_id=self.client_id, **status.as_dict())

    async def _run(self) -> None:
        await self._begin()
        backoff = self.config.backoff_s_min
        while not self._stopping:
            try:
                client = aiomqtt.Client(self.config.host, self.config.port, identifier=self.client_id,
                                        clean_session=True, timeout=self.config.connect_timeout_s,
                                        keepalive=self.config.keepalive_s,
                                        max_inflight_messages=self.config.in_flight_max)
                client.pending_calls_threshold = self.config.batch_size_max  # a full batch is by design
                async with client:
                    self.connected = True
                    backoff = self.config.backoff_s_min
                    log.info("relay_connected", broker=self.broker, relayed_seq=self.position)
                    await self._pump(client)
            except Exception as exc:  # MqttError, OSError; anything else is logged as our bug, and retried
                if self._stopping:
                    break
                self.reconnects += 1
                wait = backoff * (0.5 + random.random() / 2)  # jitter: many switches do not retry in step
                if isinstance(exc, (aiomqtt.MqttError, OSError)):
                    log.warning("relay_disconnected", broker=self.broker, error=type(exc).__name__,
                                detail=str(exc), retry_in_s=round(wait, 2), relayed_seq=self.position)
                else:
                    log.exception("relay_failed", error=type(exc).__name__, retry_in_s=round(wait, 2))
                self._rewind()
                await self._sleep(wait)
                backoff = min(backoff * 2, self.config.backoff_s_max)
            finally:
                self.connected = False

    async def _pump(self, client: aiomqtt.Client) -> None:
        """Publish batches while connected; return only when stopping. A lost connection
        surfaces as MqttError from `watch` (aiomqtt's message iterator ends on disconnect)."""
        watch = asyncio.get_running_loop().create_task(_until_disconnected(client))
        try:
            while not self._stopping:
                self.writer.events_committed.clear()  # before the read: a commit after it wakes us
                rows = await self._next_batch()
                if rows:
                    await self._publish(client, rows, watch)
                    continue
                await _first_of(watch, self.writer.events_committed.wait(), self._wake.wait(),
                                timeout=self.config.idle_poll_s)
        finally:
            watch.cancel()

    async def _next_batch(self) -> list[Any]:
        return await self._read(lambda r: r.rows_after(self.cursor, limit=self.config.batch_size_max))

    async def _send_all(self, client: aiomqtt.Client, messages: list[tuple[str, str]],
                        watch: asyncio.Task[None]) -> list[asyncio.Task[Any]]:
        """Publish (topic, payload) pairs with QoS 1, in order (tasks start in order, so the
        PUBLISH packets leave in order); return once all are acknowledged or the connection is
        gone, with the sends (done or cancelled) for the caller to count."""
        loop = asyncio.get_running_loop()
        sends = [loop.create_task(client.publish(topic, payload.encode(), qos=1,
                                                 timeout=self.config.publish_timeout_s)) for topic, payload in messages]
        all_sent = asyncio.gather(*sends, return_exceptions=True)
        try:
            await asyncio.wait({watch, all_sent}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for s in sends:
                s.cancel()
        return sends

    async def _publish(self, client: aiomqtt.Client, rows: list[OutboxRow], watch: asyncio.Task[None]) -> None:
        sends = await self._send_all(client, [(r.topic, r.payload) for r in rows], watch)
        acked = 0
        for s in sends:  # the acknowledged prefix is marked; rows from the first gap on are re-sent
            if not s.done() or s.cancelled() or s.exception() is not None:
                break
            acked += 1
        if acked:
            self._publish_lag_ms_max = max(self._publish_lag_ms_max, (time.time() - rows[0].committed_at) * 1000)
            self.published += acked
            self.resent += sum(1 for r in rows[:acked] if r.seq <= self.position)
            self._acks.append((time.monotonic(), rows[0].seq))
            self.cursor = rows[acked - 1].seq
            if self.cursor > self.position:
                await self._mark(self.cursor)
        if acked < len(rows):
            errors = [s.exception() for s in sends if s.done() and not s.cancelled() and s.exception() is not None]
            if watch.done() and not watch.cancelled() and watch.exception() is not None:
                errors.insert(0, watch.exception())
            raise aiomqtt.MqttError(f"{len(rows) - acked} of {len(rows)} publishes not acknowledged"
                                    + (f" ({errors[0]})" if errors else ""))

    def _rewind(self) -> None:
        """The connection is gone. A broker acknowledges a QoS 1 PUBLISH before it has saved
        it (Mosquitto saves every `autosave_interval`), so a broker that crashed may have lost
        what it acknowledged last: send again, on the next connection, every row acknowledged
        within resend_window_s. Consumers deduplicate on event_id; the durable mark does not
        move back (a switch restart re-sends from the mark anyway)."""
        horizon = time.monotonic() - self.config.resend_window_s
        while self._acks and self._acks[0][0] < horizon:
            self._acks.popleft()
        if self._acks:
            first = self._acks[0][1]
            log.info("relay_resend", rows=self.cursor - first + 1, from_seq=first, window_s=self.config.resend_window_s)
            self.cursor = first - 1
        self._acks.clear()

    async def _mark(self, seq: int) -> None:
        """The broker has every row up to `seq`. The durable mark goes through the ledger
        writer (the one writer); if that commit fails the rows are simply re-sent later."""
        self.position = seq
        at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        try:
            await self.writer.submit(Commit(changes=(RelayMarked(RELAY_NAME, seq, at),)))
        except LedgerUnavailable:
            log.warning("relay_mark_failed", relayed_seq=seq)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    # ------------------------------------------------------------------ visibility

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(self.config.status_interval_s)
            await self._log_status()

    async def _log_status(self) -> None:
        try:
            status = await self._read(lambda r: r.status(relayed_seq=self.position))
        except Exception as exc:  # a status line must never take the relay down
            log.warning("relay_status_failed", error=type(exc).__name__)
            return
        log.info("relay_status", broker=self.broker, connected=self.connected, published=self.published,
                 resent=self.resent, reconnects=self.reconnects, publish_lag_ms_max=round(self._publish_lag_ms_max, 1),
                 **status.as_dict())
        self._publish_lag_ms_max = 0.0


class PartitionRelay(Relay):
    """The relay of one instance of a cluster (switch/ops/cluster.py; docs/scale-out.md,
    "Outbox with several instances"). With several writers the outbox's global `seq` is taken
    before commit, so a row can become visible after a later one and one global position
    would skip it. Each partition's events carry `pseq`, numbered by that partition's one
    owner in its commit order (switch/ledger/postgres.py, PgCommitter); this relay publishes
    the partitions its instance holds, each from its own position (`outbox_relay` row
    `mqtt:<partition>`), and takes a PostgreSQL advisory lock per partition first, so two
    relays never publish one partition at once during a hand-over. A position moves only
    when the whole batch is acknowledged; after a lost connection or a hand-over the rows
    after the last mark are sent again (consumers deduplicate on event_id)."""

    LOCK_BASE = 0x65756D10 << 16

    def __init__(self, config: RelayConfig, dsn: str, writer: LedgerWriter,
                 owned: Callable[[], Any], instance: str) -> None:
        super().__init__(config, dsn, writer)  # type: ignore[arg-type]
        if not config.client_id:  # one MQTT client id per instance: a broker drops the older of two alike
            self.client_id = f"{self.client_id}-{instance}"
        self.owned = owned
        self.positions: dict[int, int] = {}  # partition → last pseq acknowledged by the broker
        self._db: Any = None                 # holds the partitions' advisory locks

    async def _begin(self) -> None:
        import asyncpg

        if self._db is None:
            self._db = await asyncpg.connect(str(self.db_path))
        log.info("relay_started", broker=self.broker, client_id=self.client_id, mode="partitions")

    async def _claim(self) -> None:
        want = set(self.owned())
        for p in [p for p in self.positions if p not in want]:
            await self._db.execute("SELECT pg_advisory_unlock($1)", self.LOCK_BASE + p)
            del self.positions[p]
        for p in sorted(want - set(self.positions)):
            if await self._db.fetchval("SELECT pg_try_advisory_lock($1)", self.LOCK_BASE + p):
                mark = await self._db.fetchval("SELECT seq FROM outbox_relay WHERE name = $1", f"{RELAY_NAME}:{p}")
                self.positions[p] = mark or 0

    async def _next_batch(self) -> list[Any]:
        await self._claim()
        parts = sorted(self.positions)
        if not parts:
            return []
        return await self._db.fetch(
            "SELECT o.partition, o.pseq, o.topic, o.payload, o.committed_at FROM outbox o "
            "JOIN unnest($1::int[], $2::bigint[]) AS c(p, pos) ON o.partition = c.p AND o.pseq > c.pos "
            "ORDER BY o.partition, o.pseq LIMIT $3",
            parts, [self.positions[p] for p in parts], self.config.batch_size_max)

    async def _publish(self, client: aiomqtt.Client, rows: list[Any], watch: asyncio.Task[None]) -> None:  # type: ignore[override]
        sends = await self._send_all(client, [(r["topic"], r["payload"]) for r in rows], watch)
        failed = sum(1 for t in sends if not t.done() or t.cancelled() or t.exception() is not None)
        if failed:
            raise aiomqtt.MqttError(f"{failed} of {len(rows)} publishes not acknowledged")
        moved: dict[int, int] = {}
        for r in rows:  # in pseq order within each partition
            moved[r["partition"]] = r["pseq"]
        self.positions.update(moved)
        self.published += len(rows)
        self._publish_lag_ms_max = max(self._publish_lag_ms_max, (time.time() - rows[0]["committed_at"]) * 1000)
        at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        try:
            await self.writer.submit(Commit(changes=tuple(RelayMarked(f"{RELAY_NAME}:{p}", seq, at)
                                                          for p, seq in sorted(moved.items()))))
        except LedgerUnavailable:
            log.warning("relay_mark_failed", partitions=len(moved))

    def _rewind(self) -> None:
        """Positions move only on a whole acknowledged batch: the next connection goes on from them."""

    async def _log_status(self) -> None:
        log.info("relay_status", broker=self.broker, connected=self.connected, published=self.published,
                 reconnects=self.reconnects, partitions=len(self.positions),
                 publish_lag_ms_max=round(self._publish_lag_ms_max, 1))
        self._publish_lag_ms_max = 0.0

    async def stop(self) -> None:
        await super().stop()
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()  # the advisory locks go with the session


async def _until_disconnected(client: aiomqtt.Client) -> None:
    """Ends (with MqttError) when the connection is lost: the relay subscribes to nothing, so
    aiomqtt's message iterator yields only that."""
    async for _ in client.messages:
        pass


async def _first_of(watch: asyncio.Task[None], *aws: Any, timeout: float | None) -> None:
    """Wait for any of `aws` (or the timeout); if the connection watch ends first, raise its error."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        done, _ = await asyncio.wait({watch, *tasks}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
    if watch in done:
        watch.result()  # raises the disconnection
        raise aiomqtt.MqttError("connection closed")
