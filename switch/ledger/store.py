"""The ledger store (SQLite, embedded default): schema, connections, migrations.

Double entry: a posting is a balanced set of entries (credit positive, debit negative,
summing to zero) between named accounts. Account balances are credits minus debits, so a
card's cash account holds a positive balance and the sum over all accounts is zero.

Account names:
  card:<id>:cash, card:<id>:cashback     the member's money on one card
  card:<id>:receivable                   clawback the card could not cover (negative)
  card:<id>:held                         cash held by the card's open pre-authorizations
  merchant:<mid>:payable                 what the platform owes the merchant
  fee_income                             merchant fees earned by the platform
  cashback_expense:<funder>              cashback paid by national / city / district funders
  fee_subsidy:<funder>                   fee support paid by a funder on merchants' behalf
  bank_settlement                        money charged in from members' bank accounts

Outbox: a unit that posts also carries the events that tell of it (docs/events.md); they are
inserted into `outbox` in the same transaction, so a posting never exists without its events
nor an event without its posting. `seq` orders the outbox; one writer commits in seq order,
so every reader sees a prefix of it and the relay keeps one position (`outbox_relay`).

Durability: WAL with synchronous=FULL. One writer owns every write (switch/ledger/writer.py):
it commits a group of Commits in one transaction (one fsync) through the adapter
(switch/ledger/sqlite.py), and only then does a response leave.
"""

from __future__ import annotations

import os
import re
import sqlite3
import uuid
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Union, cast
from urllib.parse import quote

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- Balances, folded: an account's balance is its row here plus its entries past the fold mark
-- (the view `accounts`, ACCOUNTS below). The group commit appends entries only; every
-- FOLD_EVERY_S (a quarter second) it folds the entries past the mark into these rows, one upsert
-- per account, and moves the mark, in the group's transaction (switch/ledger/sqlite.py,
-- fold_accounts). So a card's row is written four times a second at most, not once per approval:
-- docs/performance.md, "The balances folded once a second (kept)".
CREATE TABLE IF NOT EXISTS account_folds(
    name TEXT PRIMARY KEY,
    balance INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS accounts_folded(
    id INTEGER PRIMARY KEY CHECK (id = 0), entries_rowid INTEGER NOT NULL
);
INSERT OR IGNORE INTO accounts_folded(id, entries_rowid) VALUES (0, 0);
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
-- A card's postings (the card statement's), folded with the balances (fold_accounts): the
-- postings of the entries past the mark are found through those entries, so no index on
-- postings(card_id) dirties a page per approval at a random place. A posting with no entries
-- (nothing to fold it by) gets its row in its own group:
-- docs/performance.md, "A card's postings folded with the balances (kept)".
CREATE TABLE IF NOT EXISTS card_postings(
    card_id INTEGER NOT NULL, posting_id INTEGER NOT NULL, PRIMARY KEY(card_id, posting_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS postings_open_holds ON postings(id) WHERE kind = 'hold' AND undone < amount;
CREATE TABLE IF NOT EXISTS entries(
    posting_id INTEGER NOT NULL, account TEXT NOT NULL, amount INTEGER NOT NULL
);
-- No index on entries(posting_id): each group's entries would dirty that index's last pages
-- too (1.7 pages a commit at two in flight, 4.6 at 32). Nothing on the switch's path reads a
-- posting's entries by its id; verify and the reports join them whole, where SQLite sorts or
-- builds an automatic index per query. An older ledger's index is dropped on open
-- (`_entries_unindexed`). docs/performance.md: "The entries without a posting index (kept)".
-- The day and month counters, appended: one row per key per group, a counter is the sum of its
-- period's rows (COUNTERS below: the views member_months, card_days and card_months). Each
-- group's rows land on the last page of the table, where an upsert keyed (period, card)
-- dirtied a page per card. docs/performance.md: "The day and month counters appended (kept)".
-- No index by period either: a rowid only grows (none of these rows is ever deleted), so a
-- period's rows all lie at or after the next rowid as it stood just before its first row went
-- in, which move_periods keeps (one row a table a day or a month, written before the rows of
-- the group or the views' trigger that first moves that period: `record_period`; a late row
-- of an older period lands after it too). A period's counters are read from there on
-- (switch/ledger/sqlite.py, `_period_moves`). docs/performance.md:
-- "The counters' periods without an index (kept)".
CREATE TABLE IF NOT EXISTS member_month_moves(
    month TEXT NOT NULL, member TEXT NOT NULL, eligible INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS card_day_moves(
    day TEXT NOT NULL, card_id INTEGER NOT NULL, spent INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS card_month_moves(
    month TEXT NOT NULL, card_id INTEGER NOT NULL, charged INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS move_periods(
    moves TEXT NOT NULL, period TEXT NOT NULL, first INTEGER NOT NULL, PRIMARY KEY(moves, period)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages(
    tid TEXT NOT NULL, stan TEXT NOT NULL, tx_time TEXT NOT NULL, mti TEXT NOT NULL,
    digest TEXT NOT NULL, rc TEXT NOT NULL, response TEXT NOT NULL, posting_id INTEGER,
    at TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_key ON messages(tx_time, tid, stan);
CREATE TABLE IF NOT EXISTS key_groups(
    name TEXT NOT NULL, profile TEXT NOT NULL, bdk TEXT NOT NULL, kcv TEXT NOT NULL,
    PRIMARY KEY(name, profile)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tombstones(
    tid TEXT NOT NULL, stan TEXT NOT NULL, tx_time TEXT NOT NULL, at TEXT NOT NULL,
    PRIMARY KEY(tx_time, tid, stan)
) WITHOUT ROWID;
-- `seq` is the rowid (max + 1 at each insert): no outbox row is ever deleted, so it numbers the
-- rows 1..max in commit order as AUTOINCREMENT did, without AUTOINCREMENT's `sqlite_sequence`
-- row, which every group commit rewrote (a WAL page a group: docs/performance.md,
-- "The outbox's sequence without AUTOINCREMENT (kept)"). A ledger made with AUTOINCREMENT is
-- rebuilt so on open, every row and its seq kept (`_outbox_without_autoincrement`).
CREATE TABLE IF NOT EXISTS outbox(
    seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL, topic TEXT NOT NULL, type TEXT NOT NULL,
    posting_id INTEGER NOT NULL, payload TEXT NOT NULL, committed_at REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS outbox_posting_type ON outbox(posting_id, type);
CREATE TABLE IF NOT EXISTS outbox_relay(
    name TEXT PRIMARY KEY, seq INTEGER NOT NULL, at TEXT NOT NULL
) WITHOUT ROWID;
"""


class PgDsn(str):
    """A PostgreSQL ledger's address (postgresql://…): switch/ledger/postgres.py."""


# Where a ledger lives: the SQLite file in a data dir (the embedded default), or a PostgreSQL
# database. Every reader and the writer take one of these; `connect` opens either.
Store = Union[Path, PgDsn]

STORE_ENV = "EUM_STORE"  # the default of every command's --store (as DATABASE_URL is elsewhere)


STORE_HELP = ("the ledger: 'sqlite' (the data dir's ledger.sqlite3, the default) or a postgresql://USER@HOST:PORT/DB "
              f"URL (docs/scale-out.md); default ${STORE_ENV}")


def redact(url: str) -> str:
    """A store URL fit for a log or an error: never its password."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def store_url(store: str | None) -> str | None:
    """The store a command was given (`--store`), else $EUM_STORE, else None (SQLite)."""
    chosen = store if store is not None else os.environ.get(STORE_ENV) or None
    if chosen in (None, "", "sqlite"):
        return None
    if not chosen.startswith(("postgresql://", "postgres://")):
        raise ValueError(f"--store: {redact(chosen)!r} is neither 'sqlite' nor a postgresql:// URL")
    return chosen


def locate(data_dir: Path, store: str | None = None) -> Store:
    """The ledger of a data dir (SQLite), or the PostgreSQL database `store` names."""
    url = store_url(store)
    return PgDsn(url) if url is not None else data_dir / "ledger.sqlite3"


# A NULL parameter binds through an adapter of its own. Without one, Python's sqlite3 module,
# for every None it binds (the outbox's `seq`, a posting's empty columns: ≈ 5 a purchase), looks
# for `__adapt__` on its protocol type, and that failed lookup formats an AttributeError before
# dropping it (≈ 2,000 instructions each). `{}.get` returns None for None, in C: the parameter
# still binds as NULL. Process-wide, for every SQLite connection; no other type is touched.
# docs/performance.md, "A NULL parameter's adapter (kept)".
sqlite3.register_adapter(type(None), cast(Callable[[None], None], {}.get))


def connect(path: Store, *, readonly: bool = False, cached_statements: int = 128,
            factory: type[sqlite3.Connection] = sqlite3.Connection) -> Any:
    """A DB-API connection to the ledger. For PostgreSQL, a thin translation of the same SQL
    (switch/ledger/postgres.py, PgConnection): the read side is written once. cached_statements:
    prepared statements a SQLite connection keeps (sqlite3's default: 128); factory: a SQLite
    writable connection's class (the group commit's: switch/ledger/sqlite.py)."""
    if isinstance(path, PgDsn):
        from switch.ledger.postgres import PgConnection

        return PgConnection(path, readonly=readonly)
    if readonly:
        return _connect_readonly(path)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False,
                           cached_statements=cached_statements, factory=factory)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA foreign_keys=ON")
    if readonly:
        conn.execute("PRAGMA query_only=ON")
    return conn


def _connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection that never creates the file (a mistyped path is an error, not an
    empty ledger) and reads a ledger this process may not write. Tried in turn: read-write
    without create (as the writer's connections: closed last, it checkpoints the WAL away),
    read-only (a read-only file), immutable (a read-only directory, where SQLite cannot make
    the WAL's shared-memory file: only a ledger closed cleanly, with no WAL left to read)."""
    uri = f"file:{quote(str(path))}"
    for mode in ("?mode=rw", "?mode=ro", "?mode=ro&immutable=1"):
        if "immutable" in mode:
            wal = Path(f"{path}-wal")
            if wal.exists() and wal.stat().st_size:
                raise LedgerReadOnly(f"the ledger at {path} is in a read-only directory with a write-ahead log "
                                     "not yet checkpointed: copy the data dir somewhere writable to read it")
        conn = sqlite3.connect(uri + mode, uri=True, isolation_level=None, check_same_thread=False)
        try:
            if mode == "?mode=rw":
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=10000")
            conn.execute("PRAGMA query_only=ON")
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # opens the file (and the WAL) now
            return conn
        except sqlite3.OperationalError as exc:
            conn.close()
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF != sqlite3.SQLITE_READONLY:
                raise
    raise AssertionError("an immutable read-only open writes nothing, so it cannot be refused as a write")


# Columns added after the first schema: (table, column, declaration). Added on open.
MIGRATIONS = (
    ("terminals", "key_lmk", "TEXT NOT NULL DEFAULT ''"),      # BDK (DUKPT) or TAK (mac), under the LMK
    ("terminals", "ksn_initial", "TEXT NOT NULL DEFAULT ''"),
    ("terminals", "ksn_max", "INTEGER NOT NULL DEFAULT 0"),    # highest DUKPT counter accepted
    ("cards", "pvv", "TEXT NOT NULL DEFAULT ''"),              # Visa PVV; the PIN itself is never stored
    ("cards", "pin_tries", "INTEGER NOT NULL DEFAULT 0"),
    ("cards", "pin_blocked", "INTEGER NOT NULL DEFAULT 0"),
    ("postings", "reversed", "INTEGER NOT NULL DEFAULT 0"),   # of a purchase: the part undone by reversals
    ("outbox", "partition", "INTEGER"),   # the member's partition and its place in that partition's event
    ("outbox", "pseq", "INTEGER"),        # sequence: written by a cluster's owners (PostgreSQL), NULL here
    ("terminals", "status", "TEXT NOT NULL DEFAULT 'active'"),  # active | disabled (eum admin terminal disable)
)
# Run once, right after a column above is added: an older store kept `reversed` in the JSON detail.
BACKFILLS = {
    ("postings", "reversed"): "UPDATE postings SET reversed = json_extract(detail, '$.reversed') "
                              "WHERE json_extract(detail, '$.reversed') IS NOT NULL",
}


# Tables the hot path writes once per message, keyed time first so a group's inserts land on
# the few pages at the end of the key range instead of one page per card or terminal (a
# scattered key dirties a page per row, each written to the WAL and again at checkpoint;
# docs/performance.md "Issue 10 levers"). A store made before the re-keying is rebuilt on open.
HOT_KEYS = {
    "messages": ("tx_time", "tid", "stan"),
    "tombstones": ("tx_time", "tid", "stan"),
}
# Of those, the ones whose rows are appended in rowid order, the key a unique index of its own
# (`<table>_key`) of small entries: a message's row (≈ 360 bytes with its stored response) goes
# to the table's last page, and only the index's ≈ 35-byte entry lands where the key sorts.
# Keyed by the whole row (WITHOUT ROWID), the many terminals of one second scatter a group's
# rows over that second's pages, ≈ 9 rows a page and a split every few inserts: ≈ 77 of a
# 28-purchase group's ≈ 117 pages written were the messages table's (docs/performance.md, "The
# messages appended"). Tombstones are rare: they keep the whole row in their key.
APPENDED = frozenset({"messages"})


# The counters as the rest of the code and the operator read them: a view per counter, the sum
# of its moves by key, with the columns of the keyed tables they replace (PostgreSQL keeps those
# tables: switch/ledger/postgres.py). An INSERT into a view adds a move. Made after the tables
# (a store from before the moves has tables by these names until `_counters_as_moves`).
COUNTERS = {  # view: (moves table, period column, key column, value column)
    "member_months": ("member_month_moves", "month", "member", "eligible"),
    "card_days": ("card_day_moves", "day", "card_id", "spent"),
    "card_months": ("card_month_moves", "month", "card_id", "charged"),
}


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE … COMMIT on an autocommit connection; ROLLBACK if the block raises. The
    block's error is the one raised: SQLite itself rolls back after some errors (disk full, I/O
    error), when a second ROLLBACK would raise and hide it, and a ROLLBACK that fails must not
    hide it either. The group commit's transaction too (switch/ledger/sqlite.py, `_commit`)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        raise


def _counter_views(view: str) -> str:
    moves, period, key, value = COUNTERS[view]
    return (f"CREATE VIEW IF NOT EXISTS {view}({key}, {period}, {value}) AS "
            f"SELECT {key}, {period}, SUM({value}) FROM {moves} GROUP BY {period}, {key};\n"
            f"CREATE TRIGGER IF NOT EXISTS {view}_insert INSTEAD OF INSERT ON {view} BEGIN "
            f"{record_period(moves).replace('?', 'NEW.' + period, 1)}; "
            f"INSERT INTO {moves}({period}, {key}, {value}) VALUES (NEW.{period}, NEW.{key}, NEW.{value}); END;\n")


def _make_counter_view(conn: sqlite3.Connection, view: str) -> None:
    """The counter's view and its INSERT trigger (`_counter_views`), where missing."""
    for statement in _counter_views(view).splitlines():
        conn.execute(statement)


def record_period(moves: str) -> str:
    """SQL: the next rowid of `moves` as the period `?` is first moved, kept once. Run before
    the rows' INSERT: every row of that period is inserted after it, so at or past it."""
    return (f"INSERT OR IGNORE INTO move_periods(moves, period, first) "
            f"SELECT '{moves}', ?, COALESCE(MAX(rowid), 0) + 1 FROM {moves}")


def _periods_recorded(conn: sqlite3.Connection, moves: str, column: str) -> None:
    """Each period's first rowid in `moves` (its period in `column`) as its rows stand: an
    older store's, in the caller's transaction."""
    conn.execute(f"INSERT OR IGNORE INTO move_periods(moves, period, first) "
                 f"SELECT '{moves}', {column}, MIN(rowid) FROM {moves} GROUP BY {column}")


def _periods_unindexed(conn: sqlite3.Connection) -> None:
    """A ledger from before move_periods: each moves table's periods recorded from its rows,
    its period index dropped and its view's trigger made again (the new one records a new
    period first), one transaction."""
    for view, (moves, period, _, _) in COUNTERS.items():
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?",
                        (f"{moves}_{period}",)).fetchone() is None:
            continue
        with transaction(conn):
            _periods_recorded(conn, moves, period)
            conn.execute(f"DROP INDEX {moves}_{period}")
            conn.execute(f"DROP TRIGGER IF EXISTS {view}_insert")
            _make_counter_view(conn, view)


def _counters_as_moves(conn: sqlite3.Connection) -> None:
    """Each counter's view, made once; a store from before the moves keeps its counters as one
    move per key (the keyed table's rows, copied, then the table dropped: one transaction)."""
    for view, (moves, period, key, value) in COUNTERS.items():
        kind = conn.execute("SELECT type FROM sqlite_master WHERE name = ?", (view,)).fetchone()
        if kind is not None and kind[0] == "view":
            continue
        with transaction(conn):
            if kind is not None:
                conn.execute(f"INSERT INTO {moves}({period}, {key}, {value}) "
                             f"SELECT {period}, {key}, {value} FROM {view} ORDER BY {period}, {key}")
                _periods_recorded(conn, moves, period)
                conn.execute(f"DROP TABLE {view}")
            _make_counter_view(conn, view)


# The fold mark as SQL (SQLite): the rowid of the last entry folded into account_folds and
# card_postings. Every reader that adds what is past it names it so (the view below, the
# switch's point reads in switch/ledger/sqlite.py, verify and the card statement in audit.py).
FOLD_MARK = "(SELECT entries_rowid FROM accounts_folded)"

# The balances as every reader reads them (SQLite): a view named as the table it replaces, with
# its columns. The entries past the mark are few (at most about FOLD_EVERY_S of them), summed by
# account; an account that has no folded row yet still shows. An INSERT into the view adds a
# folded row, an UPDATE moves an account's folded row by the change (a tampering test's UPDATE
# still changes what verify reads). PostgreSQL keeps the table (switch/ledger/postgres.py).
ACCOUNTS = f"""
CREATE VIEW IF NOT EXISTS accounts(name, balance) AS
  WITH unfolded(account, moved) AS (
    SELECT account, SUM(amount) FROM entries WHERE rowid > {FOLD_MARK}
    GROUP BY account)
  SELECT f.name, f.balance + COALESCE(u.moved, 0) FROM account_folds f LEFT JOIN unfolded u ON u.account = f.name
  UNION ALL
  SELECT u.account, u.moved FROM unfolded u WHERE u.account NOT IN (SELECT name FROM account_folds);
CREATE TRIGGER IF NOT EXISTS accounts_insert INSTEAD OF INSERT ON accounts BEGIN
  INSERT INTO account_folds(name, balance) VALUES (NEW.name, NEW.balance); END;
CREATE TRIGGER IF NOT EXISTS accounts_update INSTEAD OF UPDATE ON accounts BEGIN
  INSERT INTO account_folds(name, balance) VALUES (OLD.name, NEW.balance - OLD.balance)
  ON CONFLICT(name) DO UPDATE SET balance = balance + excluded.balance; END;
"""


def _accounts_folded(conn: sqlite3.Connection) -> None:
    """The view `accounts`, made once; a store from before the folds keeps its balances as
    folded rows, with every entry folded (the table's rows copied, the mark at the last entry,
    the table dropped: one transaction)."""
    kind = conn.execute("SELECT type FROM sqlite_master WHERE name = 'accounts'").fetchone()
    if kind is not None and kind[0] == "view":
        return
    with transaction(conn):
        if kind is not None:
            conn.execute("INSERT INTO account_folds(name, balance) SELECT name, balance FROM accounts ORDER BY name")
            conn.execute("UPDATE accounts_folded SET entries_rowid = (SELECT COALESCE(MAX(rowid), 0) FROM entries)")
            conn.execute("DROP TABLE accounts")
        for statement in ACCOUNTS.split(";\n")[:-1]:
            conn.execute(statement)


def _card_postings_folded(conn: sqlite3.Connection) -> None:
    """A store from before card_postings: every posting of a card gets its row, and the index
    it replaces goes (one transaction)."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'postings_card'").fetchone() is None:
        return
    with transaction(conn):
        conn.execute("INSERT OR IGNORE INTO card_postings(card_id, posting_id) "
                     "SELECT card_id, id FROM postings WHERE card_id IS NOT NULL ORDER BY card_id, id")
        conn.execute("DROP INDEX postings_card")


def _entries_unindexed(conn: sqlite3.Connection) -> None:
    """A ledger from before SCHEMA dropped entries(posting_id)'s index loses it (SCHEMA says
    why); its rows are untouched."""
    conn.execute("DROP INDEX IF EXISTS entries_posting")


def _primary_key(conn: sqlite3.Connection, table: str) -> tuple[str, ...]:
    cols = sorted((row[5], row[1]) for row in conn.execute(f"PRAGMA table_info({table})") if row[5])
    return tuple(name for _, name in cols)


def _outbox_without_autoincrement(conn: sqlite3.Connection) -> None:
    """A ledger made before the outbox's `seq` was its plain rowid (AUTOINCREMENT, whose
    `sqlite_sequence` row each group commit rewrote) gets SCHEMA's outbox, every row and its
    `seq` kept: the next insert takes max + 1, as AUTOINCREMENT gave, since no outbox row is
    ever deleted."""
    row = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'outbox'").fetchone()
    if row is not None and "AUTOINCREMENT" in row[0].upper():
        _rekey(conn, "outbox")


def _layout(conn: sqlite3.Connection, table: str) -> tuple[bool, tuple[str, ...]]:
    """(appended, key) of a table as it is stored: appended, a rowid table whose key is its
    unique index `<table>_key`; else keyed by its primary key."""
    key = _primary_key(conn, table)
    if key:
        return False, key
    return True, tuple(row[2] for row in conn.execute(f"PRAGMA index_info({table}_key)"))


def _rekey(conn: sqlite3.Connection, table: str) -> None:
    """Rebuild `table` with SCHEMA's layout (its key, its indexes), keeping every row (one
    transaction). The old table goes before the new indexes are made: a renamed table keeps
    its indexes, and their names."""
    start = SCHEMA.index(f"CREATE TABLE IF NOT EXISTS {table}(")
    create = SCHEMA[start:SCHEMA.index(";", start)]
    indexes = re.findall(rf"CREATE (?:UNIQUE )?INDEX IF NOT EXISTS \w+ ON {table}\([^;]*\)", SCHEMA)
    with transaction(conn):
        conn.execute(f"ALTER TABLE {table} RENAME TO {table}_rekey")
        conn.execute(create)
        made = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        for _, name, decl, notnull, default, _ in list(conn.execute(f"PRAGMA table_info({table}_rekey)")):
            if name not in made:  # a column MIGRATIONS added to the old table: kept, with its values
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}" + (" NOT NULL" if notnull else "")
                             + ("" if default is None else f" DEFAULT {default}"))
        cols = ", ".join(row[1] for row in conn.execute(f"PRAGMA table_info({table})"))
        order = ", ".join(HOT_KEYS.get(table, ())) or "rowid"
        conn.execute(f"INSERT INTO {table}({cols}) SELECT {cols} FROM {table}_rekey ORDER BY {order}")
        conn.execute(f"DROP TABLE {table}_rekey")
        for index in indexes:
            conn.execute(index)


def open_store(data_dir: Path, store: str | None = None) -> Store:
    """Create the data dir and the schema on first run; return where the ledger is. New tables
    (the outbox) are in SCHEMA, whose CREATE … IF NOT EXISTS also upgrades an older store.
    With a PostgreSQL `store` (or $EUM_STORE), its versioned migrations run instead."""
    writable_dir(data_dir)
    where = locate(data_dir, store)
    if isinstance(where, PgDsn):
        from switch.ledger.postgres import migrate

        migrate(where)
        return where
    path = where
    try:
        _upgrade(path)
    except sqlite3.OperationalError as exc:
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF != sqlite3.SQLITE_READONLY:
            raise
        raise LedgerReadOnly(f"the ledger at {path} is read-only: reports and verify read it, changes and "
                             "the switch need it writable") from None
    return path


def _upgrade(path: Path) -> None:
    """Schema, added columns, re-keyed tables and the ledger's name, on a SQLite ledger (made if
    missing). A ledger this process may not write fails here (SQLITE_READONLY), not at its
    first commit: SQLite opens a file it cannot write read-only without a word."""
    conn = connect(path)
    try:
        conn.executescript(SCHEMA)
        conn.execute("BEGIN IMMEDIATE")
        try:  # changes nothing, but is refused on a read-only ledger
            conn.execute("DELETE FROM meta WHERE key = ''")
        finally:
            conn.execute("ROLLBACK")
        for table, column, decl in MIGRATIONS:
            have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
                if (table, column) in BACKFILLS:
                    conn.execute(BACKFILLS[(table, column)])
        for table, key in HOT_KEYS.items():
            if _layout(conn, table) != (table in APPENDED, key):
                _rekey(conn, table)
        _counters_as_moves(conn)
        _periods_unindexed(conn)
        _outbox_without_autoincrement(conn)
        _accounts_folded(conn)
        _card_postings_folded(conn)
        _entries_unindexed(conn)
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


def ledger_id(conn: Any) -> str:
    row = conn.execute("SELECT value FROM meta WHERE key = 'ledger_id'").fetchone()
    assert row is not None, "open_store names every ledger before it is used"
    return row[0]


class StoreUnavailable(RuntimeError):
    """The ledger cannot be opened (a PostgreSQL server that does not answer, a database that
    does not exist, another writer): one line for the operator, never a password."""


class NoLedger(StoreUnavailable):
    """A read found no ledger where it was pointed (a mistyped --data-dir): never made empty."""


class LedgerReadOnly(StoreUnavailable):
    """The ledger can be read but not written (its file or directory is read-only)."""


class DataDirUnusable(StoreUnavailable):
    """--data-dir is a file, or a directory this process cannot make or write in."""


def writable_dir(data_dir: Path) -> None:
    """The data dir as a writer needs it: a directory (made if missing) this process writes in."""
    if data_dir.exists() and not data_dir.is_dir():
        raise DataDirUnusable(f"--data-dir {data_dir} is a file, not a directory")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataDirUnusable(f"--data-dir {data_dir} cannot be made: {exc.strerror}") from None
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise DataDirUnusable(f"--data-dir {data_dir} is not writable")


def existing(data_dir: Path, store: str | None = None) -> Store:
    """Where the ledger is, for a command that only reads it: NoLedger if there is none (a
    read never creates one). On PostgreSQL, a database no switch or eum admin has opened
    (no schema) has no ledger either."""
    where = locate(data_dir, store)
    if isinstance(where, PgDsn):
        conn = connect(where, readonly=True)
        try:
            found = conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()[0]
        finally:
            conn.close()
        if not found:
            raise NoLedger(f"no ledger at {redact(where)} (the database has no eum schema)")
        return where
    if data_dir.exists() and not data_dir.is_dir():
        raise DataDirUnusable(f"--data-dir {data_dir} is a file, not a directory")
    if not where.is_file():
        raise NoLedger(f"no ledger at {data_dir}")
    return where


class LedgerUnavailable(RuntimeError):
    """The ledger could not make a unit durable; the terminal gets 96."""
