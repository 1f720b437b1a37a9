"""The ledger store (SQLite, embedded default) and its single writer.

Double entry: a posting is a balanced set of entries (credit positive, debit negative,
summing to zero) between named accounts. Account balances are credits minus debits, so a
card's cash account holds a positive balance and the sum over all accounts is zero.

Account names:
  card:<id>:cash, card:<id>:cashback     the member's money on one card
  card:<id>:receivable                   clawback the card could not cover (negative)
  merchant:<mid>:payable                 what the platform owes the merchant
  fee_income                             merchant fees earned by the platform
  cashback_expense:<funder>              cashback paid by national / city / district funders
  fee_subsidy:<funder>                   fee support paid by a funder on merchants' behalf
  bank_settlement                        money charged in from members' bank accounts

Outbox: a unit that posts also carries the events that tell of it (docs/events.md); they are
inserted into `outbox` in the same transaction, so a posting never exists without its events
nor an event without its posting. `seq` orders the outbox; one writer commits in seq order,
so every reader sees a prefix of it and the relay keeps one position (`outbox_relay`).

Durability: WAL with synchronous=FULL. One writer owns every write: many connections feed
it through a bounded queue; it commits a group of units in one transaction (one fsync),
then resolves each unit's future, and only then does a response leave.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import structlog

from switch.ledger.events import OutboxEvent

log = structlog.get_logger()

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS accounts(
    name TEXT PRIMARY KEY,
    balance INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS merchants(
    mid TEXT PRIMARY KEY, name TEXT NOT NULL, district TEXT NOT NULL,
    annual_sales INTEGER NOT NULL, category TEXT NOT NULL, online_mall INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS terminals(
    tid TEXT PRIMARY KEY, mid TEXT NOT NULL REFERENCES merchants(mid), security TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cards(
    id INTEGER PRIMARY KEY, pan TEXT UNIQUE NOT NULL, program TEXT NOT NULL,
    member TEXT NOT NULL, expiry TEXT NOT NULL, status TEXT NOT NULL, issued_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS cards_member ON cards(member);
CREATE TABLE IF NOT EXISTS postings(
    id INTEGER PRIMARY KEY, kind TEXT NOT NULL, at TEXT NOT NULL, card_id INTEGER,
    mid TEXT, tid TEXT, stan TEXT, rrn TEXT, amount INTEGER NOT NULL,
    fee INTEGER NOT NULL DEFAULT 0, support INTEGER NOT NULL DEFAULT 0,
    cashback INTEGER NOT NULL DEFAULT 0, original_id INTEGER, undone INTEGER NOT NULL DEFAULT 0,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS postings_rrn ON postings(rrn);
CREATE INDEX IF NOT EXISTS postings_card ON postings(card_id);
CREATE TABLE IF NOT EXISTS entries(
    posting_id INTEGER NOT NULL, account TEXT NOT NULL, amount INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_posting ON entries(posting_id);
CREATE TABLE IF NOT EXISTS member_months(
    member TEXT NOT NULL, month TEXT NOT NULL, eligible INTEGER NOT NULL,
    PRIMARY KEY(member, month)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS card_days(
    card_id INTEGER NOT NULL, day TEXT NOT NULL, spent INTEGER NOT NULL,
    PRIMARY KEY(card_id, day)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS card_months(
    card_id INTEGER NOT NULL, month TEXT NOT NULL, charged INTEGER NOT NULL,
    PRIMARY KEY(card_id, month)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages(
    tid TEXT NOT NULL, stan TEXT NOT NULL, tx_time TEXT NOT NULL, mti TEXT NOT NULL,
    digest TEXT NOT NULL, rc TEXT NOT NULL, response TEXT NOT NULL, posting_id INTEGER,
    at TEXT NOT NULL, PRIMARY KEY(tid, stan, tx_time)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS key_groups(
    name TEXT NOT NULL, profile TEXT NOT NULL, bdk TEXT NOT NULL, kcv TEXT NOT NULL,
    PRIMARY KEY(name, profile)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tombstones(
    tid TEXT NOT NULL, stan TEXT NOT NULL, tx_time TEXT NOT NULL, at TEXT NOT NULL,
    PRIMARY KEY(tid, stan, tx_time)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox(
    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL, topic TEXT NOT NULL, type TEXT NOT NULL,
    posting_id INTEGER NOT NULL, payload TEXT NOT NULL, committed_at REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS outbox_posting_type ON outbox(posting_id, type);
CREATE TABLE IF NOT EXISTS outbox_relay(
    name TEXT PRIMARY KEY, seq INTEGER NOT NULL, at TEXT NOT NULL
) WITHOUT ROWID;
"""


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA foreign_keys=ON")
    if readonly:
        conn.execute("PRAGMA query_only=ON")
    return conn


# Columns added after the first schema: (table, column, declaration). Added on open.
MIGRATIONS = (
    ("terminals", "key_lmk", "TEXT NOT NULL DEFAULT ''"),      # BDK (DUKPT) or TAK (mac), under the LMK
    ("terminals", "ksn_initial", "TEXT NOT NULL DEFAULT ''"),
    ("terminals", "ksn_max", "INTEGER NOT NULL DEFAULT 0"),    # highest DUKPT counter accepted
    ("cards", "pvv", "TEXT NOT NULL DEFAULT ''"),              # Visa PVV; the PIN itself is never stored
    ("cards", "pin_tries", "INTEGER NOT NULL DEFAULT 0"),
    ("cards", "pin_blocked", "INTEGER NOT NULL DEFAULT 0"),
)


def open_store(data_dir: Path) -> Path:
    """Create the data dir and the schema on first run; return the database path. New tables
    (the outbox) are in SCHEMA, whose CREATE … IF NOT EXISTS also upgrades an older store."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "ledger.sqlite3"
    conn = connect(path)
    try:
        conn.executescript(SCHEMA)
        for table, column, decl in MIGRATIONS:
            have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
        if conn.execute("SELECT 1 FROM meta WHERE key = 'ledger_id'").fetchone() is None:
            # names this ledger: event ids are derived from it (events.event_id), so two
            # ledgers never emit the same id and one ledger always emits the same id again
            conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('ledger_id', ?)", (str(uuid.uuid4()),))
            # postings above this id are told by events (a store older than the outbox keeps
            # its earlier postings without); `eum admin verify` checks them (switch/ledger/audit.py)
            since = conn.execute("SELECT COALESCE(MAX(id), 0) FROM postings").fetchone()[0]
            conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('outbox_since_posting', ?)", (str(since),))
    finally:
        conn.close()
    return path


def ledger_id(conn: sqlite3.Connection) -> str:
    row = conn.execute("SELECT value FROM meta WHERE key = 'ledger_id'").fetchone()
    assert row is not None, "open_store names every ledger before it is used"
    return row[0]


@dataclass(slots=True)
class Unit:
    """One durable unit of work: a posting's entries plus the rows that go with it."""

    entries: list[tuple[str, int]] = field(default_factory=list)  # (account, signed won)
    statements: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    posting_id: int | None = None
    pinned: list[int] = field(default_factory=list)  # cached postings this unit changes (see HotState.pin)
    events: list[OutboxEvent] = field(default_factory=list)  # the posting's events, same commit

    def check_balanced(self) -> None:
        # A posting that does not balance is our bug, never an input error: fail loudly.
        total = sum(a for _, a in self.entries)
        assert total == 0, f"posting {self.posting_id} does not balance: {total}"


def apply_units(conn: sqlite3.Connection, units: Iterable[Unit], *, committed_at: float = 0.0) -> None:
    """Apply units in one transaction (the caller commits). Balances are updated once per
    account per group, from the sum of that group's entries. `committed_at` (unix seconds)
    stamps the group's events, for the relay's lag."""
    deltas: dict[str, int] = defaultdict(int)
    entry_rows: list[tuple[int | None, str, int]] = []
    event_rows: list[tuple[str, str, str, int, str, float]] = []
    for unit in units:
        unit.check_balanced()
        # every posting is told by its events, in this same transaction (our bug otherwise)
        assert unit.posting_id is None or unit.events, f"posting {unit.posting_id} has no events"
        for sql, params in unit.statements:
            conn.execute(sql, params)
        for account, amount in unit.entries:
            deltas[account] += amount
            entry_rows.append((unit.posting_id, account, amount))
        for ev in unit.events:
            event_rows.append((ev.event_id, ev.topic, ev.type, ev.posting_id, ev.payload, committed_at))
    if entry_rows:
        conn.executemany("INSERT INTO entries(posting_id, account, amount) VALUES (?,?,?)", entry_rows)
    if event_rows:
        conn.executemany("INSERT INTO outbox(event_id, topic, type, posting_id, payload, committed_at) "
                         "VALUES (?,?,?,?,?,?)", event_rows)
    if deltas:
        conn.executemany(
            "INSERT INTO accounts(name, balance) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET balance = balance + excluded.balance",
            sorted(deltas.items()),
        )


def commit_units(conn: sqlite3.Connection, units: list[Unit]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        apply_units(conn, units, committed_at=time.time())
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # SQLite itself rolls back after some errors (disk full, I/O error):
            conn.execute("ROLLBACK")  # a second ROLLBACK would raise and hide the real cause
        raise


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
        self.queue: asyncio.Queue[tuple[Unit, asyncio.Future[None]]] = asyncio.Queue(queue_size_max)
        self._conn = connect(path)
        self.ledger_id = ledger_id(self._conn)
        # set after a commit that carried events: the outbox relay waits on it instead of polling
        self.events_committed = asyncio.Event()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-writer")
        # The one call that makes a group durable (run on the writer thread). A fault-injection
        # seam: tests/test_failure_paths.py wraps it on a running writer to make one commit fail.
        self.commit_units = commit_units
        self._task: asyncio.Task[None] | None = None
        self._on_failure = on_failure
        self.batches = 0
        self.units = 0
        self._busy = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ledger-writer")

    async def submit(self, unit: Unit) -> None:
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

    async def _collect(self, first: tuple[Unit, asyncio.Future[None]]) -> list[tuple[Unit, asyncio.Future[None]]]:
        """A group: what is queued now, then, if there is room, what arrives within
        commit_interval_ms_max of the first (one sleep, not a timed wait per unit)."""
        batch = [first]
        self._drain_into(batch)
        if len(batch) < self.batch_size_max:
            await asyncio.sleep(self.commit_interval_s_max)
            self._drain_into(batch)
        return batch

    def _drain_into(self, batch: list[tuple[Unit, asyncio.Future[None]]]) -> None:
        while len(batch) < self.batch_size_max:
            try:
                batch.append(self.queue.get_nowait())
            except asyncio.QueueEmpty:
                return

    async def _commit(self, batch: list[tuple[Unit, asyncio.Future[None]]]) -> None:
        loop = asyncio.get_running_loop()
        units = [u for u, _ in batch]
        started = time.perf_counter()
        try:
            await loop.run_in_executor(self._pool, self.commit_units, self._conn, units)
        except Exception as exc:  # disk full, I/O error, or our bug: nobody gets approved
            log.error("ledger_commit_failed", units=len(units), error=type(exc).__name__, detail=str(exc))
            failed = [f for _, f in batch]
            while not self.queue.empty():  # later units were decided on state that is now void
                _, f = self.queue.get_nowait()
                failed.append(f)
            for f in failed:
                if not f.done():
                    f.set_exception(LedgerUnavailable("ledger commit failed"))
            if self._on_failure is not None:
                self._on_failure()
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


class LedgerUnavailable(RuntimeError):
    """The ledger could not make a unit durable; the terminal gets 96."""
