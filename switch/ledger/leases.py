"""The statements of a cluster's coordination (switch/ops/cluster.py decides when to run
them): the lease table, the instances table and the id sequences (switch/ledger/postgres.py,
migration 4). The only SQL of several instances outside the group commit and the relay."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from switch.ledger.postgres import MIGRATE_LOCK
from switch.ledger.store import PgDsn, connect

POSTING_BLOCK = 10_000  # the sequences' increments (migration 4)
CARD_BLOCK = 1_000

log = structlog.get_logger()


class LeaseTable:
    """One instance's statements on its own asyncpg connection."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def heartbeat(self, me: str, link: str) -> None:
        await self.conn.execute("INSERT INTO instances(id, link, heartbeat_at) VALUES ($1, $2, now()) "
                                "ON CONFLICT (id) DO UPDATE SET link = excluded.link, heartbeat_at = now()", me, link)

    async def renew(self, me: str, ttl_s: float, held: list[int]) -> dict[int, int]:
        """Of `held`, what is still this instance's: partition → epoch, leased `ttl_s` more."""
        rows = await self.conn.fetch(
            "UPDATE partition_leases SET expires_at = now() + make_interval(secs => $2) "
            "WHERE owner = $1 AND partition = ANY($3::int[]) AND expires_at > now() RETURNING partition, epoch",
            me, ttl_s, held)
        return {r["partition"]: r["epoch"] for r in rows}

    async def live(self, ttl_s: float) -> int:
        return await self.conn.fetchval(
            "SELECT COUNT(*) FROM instances WHERE heartbeat_at > now() - make_interval(secs => $1)", ttl_s)

    async def claim(self, me: str, ttl_s: float, n: int) -> dict[int, int]:
        """Up to `n` free or expired partitions, each at its next epoch."""
        rows = await self.conn.fetch(
            "UPDATE partition_leases SET owner = $1, epoch = epoch + 1, expires_at = now() + make_interval(secs => $2) "
            "WHERE partition IN (SELECT partition FROM partition_leases WHERE owner IS NULL OR expires_at <= now() "
            "ORDER BY partition LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING partition, epoch", me, ttl_s, n)
        return {r["partition"]: r["epoch"] for r in rows}

    async def expire(self, me: str, partitions: list[int]) -> None:
        await self.conn.execute("UPDATE partition_leases SET expires_at = '-infinity' "
                                "WHERE owner = $1 AND partition = ANY($2::int[])", me, partitions)

    async def leave(self, me: str) -> None:
        await self.conn.execute("UPDATE partition_leases SET expires_at = '-infinity' WHERE owner = $1", me)
        await self.conn.execute("DELETE FROM instances WHERE id = $1", me)

    async def routes(self) -> dict[int, tuple[str, str, int]]:
        """Every live lease: partition → (owner, its link, epoch)."""
        rows = await self.conn.fetch("SELECT l.partition, l.owner, i.link, l.epoch FROM partition_leases l "
                                     "JOIN instances i ON i.id = l.owner WHERE l.expires_at > now()")
        return {r["partition"]: (r["owner"], r["link"], r["epoch"]) for r in rows}

    async def close(self) -> None:
        await self.conn.close()


class IdBlocks:
    """Posting and card ids from the ledger's sequences, a block at a time (one short read per
    block, on the loop, as the hot state's other reads)."""

    SEQUENCES = {"posting": ("posting_ids", POSTING_BLOCK, "postings"), "card": ("card_ids", CARD_BLOCK, "cards")}

    def __init__(self, dsn: str) -> None:
        self.dsn = PgDsn(dsn)

    def align(self) -> None:
        """Move each sequence past every id a single writer may have used (one writer and a
        cluster never run together: the writer lock). Never backwards."""
        conn = connect(self.dsn)
        try:
            conn.execute("SELECT pg_advisory_lock(?)", (MIGRATE_LOCK,))
            try:
                for seq, step, table in self.SEQUENCES.values():
                    last, called = conn.execute(f"SELECT last_value, is_called FROM {seq}").fetchone()
                    top = conn.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}").fetchone()[0]
                    nxt = max(last + (step if called else 0), top + 1)
                    conn.execute("SELECT setval(?, ?, false)", (seq, nxt))
            finally:
                conn.execute("SELECT pg_advisory_unlock(?)", (MIGRATE_LOCK,))
        finally:
            conn.close()

    def block(self, kind: str) -> tuple[int, int]:
        """[first, end) of a fresh block of ids."""
        seq, step, _ = self.SEQUENCES[kind]
        conn = connect(self.dsn)
        try:
            first = conn.execute(f"SELECT nextval('{seq}')").fetchone()[0]
        finally:
            conn.close()
        return first, first + step


class SignOns:
    """A terminal's sign-on, valid on every instance of a cluster: recorded when it signs on or
    off at one instance, looked up by another it sends to without signing on there. Its own
    connection (sign-ons are rare); a database that does not answer leaves the local state as it
    is (a terminal then signs on again where it is, as a POS does on connecting)."""

    def __init__(self, dsn: str, instance: str) -> None:
        self.dsn = dsn
        self.instance = instance
        self._conn: Any = None
        self._lock = asyncio.Lock()

    async def _run(self, sql: str, *args: Any) -> Any:
        import asyncpg

        async with self._lock:
            if self._conn is None:
                self._conn = await asyncpg.connect(self.dsn)
            return await self._conn.fetch(sql, *args)

    async def record(self, tid: str, signed_on: bool) -> None:
        try:
            if signed_on:
                await self._run("INSERT INTO terminal_signons(tid, instance) VALUES ($1, $2) ON CONFLICT (tid) "
                                "DO UPDATE SET instance = excluded.instance, at = now()", tid, self.instance)
            else:
                await self._run("DELETE FROM terminal_signons WHERE tid = $1", tid)
        except Exception as exc:
            log.warning("signon_not_shared", terminal=tid, error=type(exc).__name__)

    async def holds(self, tid: str) -> bool:
        try:
            return bool(await self._run("SELECT 1 FROM terminal_signons WHERE tid = $1", tid))
        except Exception as exc:
            log.warning("signon_lookup_failed", terminal=tid, error=type(exc).__name__)
            return False

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()
