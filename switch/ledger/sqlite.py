"""The SQLite adapter of the ledger port: a group's rows (switch/ledger/rows.py) written, typed
records read back.

The only place the hot path's SQL lives. `SqliteStore.commit` applies a group of Commits in
one transaction, each table's rows in a few multi-row statements (`write_rows`), so a group
of N approvals costs a handful of statements, not N × 8. Durability: WAL, synchronous=FULL;
the caller (the single writer, switch/ledger/writer.py) runs `commit` on its thread and
answers only after it returns.
Reads serve the hot state's cache misses on a read-only connection (WAL: readers never
block the writer).
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from itertools import chain
from typing import Iterable, Sequence

from switch.domain import Merchant
from switch.ledger.records import (AUTO_CHARGE_META, AutoCharge, CardState, Commit, HoldDetail, MessageKey, MessageOutcome,
                                   PostingState, Terminal)
from switch.ledger.rows import group_rows, parse_detail
from switch.ledger.store import COUNTERS, FOLD_MARK, PgDsn, Store, connect, record_period, transaction

# ---------------------------------------------------------------------------- the group commit

_POSTING = ("INSERT INTO postings(id, kind, at, card_id, mid, tid, stan, rrn, amount, fee, support, cashback, "
            "original_id, detail) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)")
_ENTRY = "INSERT INTO entries(posting_id, account, amount) VALUES (?,?,?)"
_MESSAGE = ("INSERT INTO messages(tid, stan, tx_time, mti, digest, rc, response, posting_id, at) "
            "VALUES (?,?,?,?,?,?,?,?,?)")
_EVENT = ("INSERT INTO outbox(event_id, topic, type, posting_id, payload, committed_at, partition, pseq) "
          "VALUES (?,?,?,?,?,?,?,?)")
# a card's posting that has no entries (the others are folded: fold_accounts)
_CARD_POSTINGS = "INSERT OR IGNORE INTO card_postings(card_id, posting_id) VALUES (?,?)"
# the counters' moves: appended, a group's sum per key (switch/ledger/store.py, COUNTERS)
_MEMBER_MONTH = "INSERT INTO member_month_moves(member, month, eligible) VALUES (?,?,?)"
_CARD_DAY = "INSERT INTO card_day_moves(card_id, day, spent) VALUES (?,?,?)"
_CARD_MONTH = "INSERT INTO card_month_moves(card_id, month, charged) VALUES (?,?,?)"
_UNDONE = "UPDATE postings SET undone = undone + ?, reversed = reversed + ? WHERE id = ?"
_TOMBSTONE = "INSERT OR IGNORE INTO tombstones(tid, stan, tx_time, at) VALUES (?,?,?,?)"
_PIN_TRIES = "UPDATE cards SET pin_tries = ?, pin_blocked = ? WHERE id = ?"
_KSN = "UPDATE terminals SET ksn_max = MAX(ksn_max, ?) WHERE tid = ?"
_STATUS = "UPDATE cards SET status = ? WHERE id = ?"
_PVV = "UPDATE cards SET pvv = ? WHERE id = ?"
_CARD = ("INSERT INTO cards(id, pan, program, member, expiry, status, issued_at, pvv) VALUES (?,?,?,?,?,?,?,?)")
_MERCHANT = ("INSERT INTO merchants(mid, name, district, annual_sales, category, online_mall) VALUES (?,?,?,?,?,?)")
_TERMINAL = "INSERT INTO terminals(tid, mid, security, key_lmk, ksn_initial) VALUES (?,?,?,?,?)"
_META = "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)"
_KEY_GROUP = "INSERT INTO key_groups(name, profile, bdk, kcv) VALUES (?,?,?,?)"
_RELAY = ("INSERT INTO outbox_relay(name, seq, at) VALUES (?,?,?) "
          "ON CONFLICT(name) DO UPDATE SET seq = MAX(seq, excluded.seq), at = excluded.at")
_TERMINAL_STATUS = "UPDATE terminals SET status = ? WHERE tid = ?"
_MERCHANT_UPDATE = "UPDATE merchants SET name = ?, annual_sales = ?, category = ? WHERE mid = ?"


_SQL = {"merchants": _MERCHANT, "terminals": _TERMINAL, "cards": _CARD, "postings": _POSTING, "entries": _ENTRY,
        "messages": _MESSAGE, "outbox": _EVENT, "card_postings": _CARD_POSTINGS, "member_months": _MEMBER_MONTH,
        "card_days": _CARD_DAY, "card_months": _CARD_MONTH, "undone": _UNDONE, "tombstones": _TOMBSTONE,
        "pin_tries": _PIN_TRIES, "ksn": _KSN, "status": _STATUS, "pvv": _PVV, "meta": _META,
        "key_groups": _KEY_GROUP, "relay": _RELAY, "terminal_status": _TERMINAL_STATUS,
        "merchant_update": _MERCHANT_UPDATE}


# The counters' moves tables by the group's table name, and the SQL that records a period's
# first rowid (switch/ledger/store.py, move_periods).
_MOVES = {view: (moves, record_period(moves)) for view, (moves, _, _, _) in COUNTERS.items()}


def apply_commits(conn: sqlite3.Connection, commits: Iterable[Commit], *,
                  committed_at: float = 0.0) -> list[tuple[str, str]]:
    """Apply a group in the caller's transaction. `committed_at` (unix seconds) stamps the
    group's events, for the relay's lag. The balances' moves are the entries: the accounts are
    folded from them now and then (`fold_accounts`), not updated per group. A counter's period
    new to this connection gets its first rowid recorded before its rows go in; returned are
    the (moves table, period) pairs recorded, for the caller to remember once committed
    (`_commit`): a writer's connection records each period once, not every group."""
    recorded: list[tuple[str, str]] = []
    known = getattr(conn, "periods", None)
    for table, rows in group_rows(commits, committed_at).items():
        if not rows or table == "accounts":
            continue
        if table in _MOVES:
            moves, record = _MOVES[table]
            for period in {row[1] for row in rows}:
                if known is None or known.get(moves) != period:
                    conn.execute(record, (period,))
                    recorded.append((moves, period))
        write_rows(conn, _SQL[table], rows)
    return recorded


# ---------------------------------------------------------------------------- balances, folded
# switch/ledger/store.py (account_folds, accounts_folded, the view accounts): a balance is its
# folded row plus its entries past the mark. Folding changes no balance, only where it is kept.

# How often the group commit folds (seconds): a quarter second's approvals share the pages of
# the account rows they move (per group almost none), and the fold's pause stays short (its
# rows ≈ a quarter of a second's: the half-load p99 15.1 → 12.2 ms against 1 s, the closed
# loop's capacity the same, docs/performance.md "The fold every quarter second (kept)"); a
# balance read from the store sums at most about this long's entries past the mark.
FOLD_EVERY_S = 0.25

_FOLD = ("INSERT INTO account_folds(name, balance) SELECT account, SUM(amount) FROM entries "
         "WHERE rowid > ? AND rowid <= ? GROUP BY account "
         "ON CONFLICT(name) DO UPDATE SET balance = balance + excluded.balance")
# the same entries' postings of a card, into the card statement's table (store.py, card_postings)
_FOLD_CARD_POSTINGS = ("INSERT OR IGNORE INTO card_postings(card_id, posting_id) "
                       "SELECT DISTINCT p.card_id, p.id FROM entries e JOIN postings p ON p.id = e.posting_id "
                       "WHERE e.rowid > ? AND e.rowid <= ? AND p.card_id IS NOT NULL ORDER BY 1, 2")


def fold_accounts(conn: sqlite3.Connection) -> int:
    """Fold every entry past the mark into its account's row, and its posting into its card's
    postings, and move the mark past them, in the caller's transaction. Reads the entries
    themselves, not what a writer remembers, so any writer (the group commit, a bulk load, a
    start after a crash) folds the same way. Returns the number of entries folded."""
    mark = conn.execute("SELECT entries_rowid FROM accounts_folded").fetchone()[0]
    last = conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM entries").fetchone()[0]
    if last > mark:
        conn.execute(_FOLD, (mark, last))
        conn.execute(_FOLD_CARD_POSTINGS, (mark, last))
        conn.execute("UPDATE accounts_folded SET entries_rowid = ?", (last,))
    return last - mark


def fold_now(conn: sqlite3.Connection) -> int:
    """fold_accounts in a transaction of its own (a writer's start: the entries a crash left
    unfolded are summed once, not by every balance read after)."""
    with transaction(conn):
        folded = fold_accounts(conn)
    if getattr(conn, "fold_every_s", None) is not None:
        conn.folded_at = time.monotonic()  # type: ignore[attr-defined]
    return folded


# The most rows one INSERT statement carries (postings: 14 values a row, 3,584 in all; SQLite
# allows 32,766 host parameters a statement since 3.32).
ROWS_PER_INSERT_MAX = 256


def write_rows(conn: sqlite3.Connection, sql: str, rows: Sequence[Sequence]) -> None:
    """`sql` (one statement of one row) for every row. An INSERT's rows go in multi-row
    statements (VALUES (…),(…),…) of power-of-two sizes, largest first: a group's rows of
    a table cost a few statement steps, not one per row (the writer's SQL ≈ 0.73 of its CPU,
    the plain path's switch ≈ 0.85: docs/performance.md, "The group commit's rows in multi-row
    statements (kept)"). The rows are written in the same order as one by one, and within a
    group a table's upsert keys are distinct (the group sums them first, `_Rows`), so the
    outcome is the same. UPDATEs stay one execution per row."""
    n = len(rows)
    if n == 1 or not sql.startswith("INSERT"):
        conn.executemany(sql, rows)
        return
    at = 0
    while at < n:
        size = min(ROWS_PER_INSERT_MAX, 1 << ((n - at).bit_length() - 1))  # the largest power of two that fits
        conn.execute(_multi_row(sql, size), list(chain.from_iterable(rows[at:at + size])))
        at += size


@functools.lru_cache(maxsize=512)
def _multi_row(sql: str, rows: int) -> str:
    """An INSERT of one VALUES tuple (with whatever follows it: ON CONFLICT …) for `rows` tuples.

    A plain INSERT becomes INSERT OR ROLLBACK: a row that breaks a constraint ends the whole
    transaction at once, as commit_group's ROLLBACK would a moment later (a group fails or
    commits whole), so SQLite keeps no statement journal to undo that statement alone. An
    upsert keeps its own conflict handling (and its statement journal, in memory:
    `connect_writer`)."""
    if rows == 1:
        return sql
    head, values, rest = sql.partition(" VALUES ")
    if head.startswith("INSERT INTO ") and " ON CONFLICT" not in rest:
        head = "INSERT OR ROLLBACK INTO " + head[len("INSERT INTO "):]
    one_end = rest.index(")") + 1
    return head + values + ",".join([rest[:one_end]] * rows) + rest[one_end:]


class WriterConnection(sqlite3.Connection):
    """The group commit's connection, which remembers when it last folded the balances and,
    for each counter's moves table, the last period whose first rowid it saw committed
    (`apply_commits`: a bound of one period a table)."""

    folded_at = 0.0
    fold_every_s = FOLD_EVERY_S

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.periods: dict[str, str] = {}


def connect_writer(path: Store) -> sqlite3.Connection:
    """The group commit's connection: the store's writable one (switch/ledger/store.py,
    `connect`), with its temporary files in memory. A multi-row INSERT (`write_rows`) keeps a
    statement journal, the pages it changed as they were, to undo that statement alone if a
    later row of it fails; beyond 64 KiB SQLite spills that journal to a temporary file,
    created, written and deleted per statement (seen with strace: one file and ≈ 50 writes
    a group). In memory it is bounded by the pages one statement changes (at most
    ROWS_PER_INSERT_MAX rows: a few hundred KiB). It keeps 256 prepared statements, not 128:
    a table's multi-row INSERTs come in up to nine sizes."""
    conn = connect(path, cached_statements=256, factory=WriterConnection)
    conn.execute("PRAGMA temp_store=MEMORY")
    return conn


def commit_group(conn: sqlite3.Connection, commits: Sequence[Commit]) -> None:
    """One transaction, one fsync (WAL, synchronous=FULL), for the whole group; on the writer's
    connection, once every `fold_every_s`, the balances folded in the same transaction."""
    now = time.monotonic()
    every = getattr(conn, "fold_every_s", None)  # a WriterConnection (or a wrapper of one: benchmarks/core_split.py)
    fold = every is not None and now - conn.folded_at >= every  # type: ignore[attr-defined]
    _commit(conn, commits, fold)
    if fold:
        conn.folded_at = now  # type: ignore[attr-defined]


def _commit(conn: sqlite3.Connection, commits: Sequence[Commit], fold: bool) -> None:
    with transaction(conn):  # a failed group is rolled back whole, its own error raised
        recorded = apply_commits(conn, commits, committed_at=time.time())
        if fold:
            fold_accounts(conn)
    known = getattr(conn, "periods", None)
    if known is not None:  # committed: these periods' first rowids are in the ledger
        for moves, period in recorded:
            if period > known.get(moves, ""):
                known[moves] = period


def commit_unsynced(conn: sqlite3.Connection, commits: Sequence[Commit]) -> None:
    """commit_group without an fsync, and with no checkpoint run under it: only for the fence
    the writer lays over a group whose fsync failed (switch/ledger/writer.py), while fsync
    itself may be what fails. The connection goes back to synchronous=FULL."""
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("PRAGMA synchronous=OFF")
    try:
        _commit(conn, commits, fold=False)  # the fence stays as small as it can be
    finally:
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA wal_autocheckpoint=1000")


# ---------------------------------------------------------------------------- reads


def _unfolded(name: str) -> str:
    """SQL: the sum of account `name`'s entries past the fold mark (`name` is SQL too)."""
    return (f"COALESCE((SELECT SUM(amount) FROM entries WHERE rowid > {FOLD_MARK} "
            f"AND account = {name}), 0)")


def _card_account(kind: str) -> str:
    return f"'card:' || c.id || ':{kind}'"


def _period_moves(view: str) -> tuple[str, str]:
    """SQLite: (a period's counters by key, one key's counter in a period, `{key}` its SQL),
    summed from the period's moves, read from the rowid move_periods keeps for it on
    (switch/ledger/store.py: no index by period). Parameters: the period, then
    the key if any; a period never moved has no row in move_periods, so no counters."""
    moves, period, key, value = COUNTERS[view]
    rows = (f"FROM move_periods p JOIN {moves} m ON m.rowid >= p.first AND m.{period} = p.period "
            f"WHERE p.moves = '{moves}' AND p.period = ?")
    return (f"SELECT m.{key}, SUM(m.{value}) {rows} GROUP BY m.{key}",
            f"SELECT SUM(m.{value}) {rows} AND m.{key} = {{key}}")


def _period_keyed(view: str) -> tuple[str, str]:
    """PostgreSQL: the same reads from its keyed counters (switch/ledger/postgres.py)."""
    _, period, key, value = COUNTERS[view]
    return (f"SELECT {key}, {value} FROM {view} WHERE {period} = ?",
            f"SELECT {value} FROM {view} WHERE {period} = ? AND {key} = {{key}}")


# The counters' reads by view, for each kind of store.
_PERIOD_MOVES = {view: _period_moves(view) for view in COUNTERS}
_PERIOD_KEYED = {view: _period_keyed(view) for view in COUNTERS}


class SqliteReader:
    """Point reads for the hot state's cache misses, as typed records. On a PostgreSQL store
    the same SQL runs through switch/ledger/postgres.py's PgConnection."""

    def __init__(self, path: Store) -> None:
        self.conn: sqlite3.Connection = connect(path, readonly=True)
        folded = not isinstance(path, PgDsn)  # PostgreSQL keeps every balance in its accounts row
        self._BALANCE = self._BALANCE_FOLDED if folded else self._BALANCE_ROW
        self._CARD = self._CARD_FOLDED if folded else self._CARD_ROWS
        # a counter's period: SQLite's moves past the period's first rowid, PostgreSQL's keyed rows;
        # each statement's text made once here, not per read
        counters = _PERIOD_MOVES if folded else _PERIOD_KEYED
        self._PERIOD = {view: by_period for view, (by_period, _) in counters.items()}
        self._ONE = {view: one.format(key="?") for view, (_, one) in counters.items()}
        self._CARD_COUNTERS = (f", COALESCE(({counters['member_months'][1].format(key='c.member')}), 0), "
                               f"COALESCE(({counters['card_days'][1].format(key='c.id')}), 0)")

    def close(self) -> None:
        self.conn.close()

    # A balance on SQLite: its folded row plus its entries past the mark (switch/ledger/store.py,
    # account_folds), in one statement, so one snapshot. The entries past the mark are at most
    # about FOLD_EVERY_S's (a quarter second), scanned by rowid from the mark: the view `accounts` would
    # sum every account's.
    _BALANCE_FOLDED = "SELECT COALESCE((SELECT balance FROM account_folds WHERE name = ?1), 0) + " + _unfolded("?1")
    _BALANCE_ROW = "SELECT COALESCE((SELECT balance FROM accounts WHERE name = ?), 0)"

    def _balance(self, name: str) -> int:
        return self.conn.execute(self._BALANCE, (name,)).fetchone()[0]

    def card_by_pan(self, pan: str) -> CardState | None:
        return self._card("c.pan=?", (pan,))

    def card_by_id(self, card_id: int) -> CardState | None:
        return self._card("c.id=?", (card_id,))

    def cards_page(self, after_id: int, limit: int, *, program: str | None = None, member: str | None = None,
                   status: str | None = None) -> list[CardState]:
        """Up to `limit` cards with ids above `after_id`, in id order (HotState.warm), only those
        of `program`, `member`, `status` when given (eum admin card list|find)."""
        where: list[str] = ["c.id > ?"]
        args: list[object] = [after_id]
        for column, value in (("c.program", program), ("c.member", member), ("c.status", status)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        rows = self.conn.execute(self._CARD.format(extra="", where=" AND ".join(where)) + " ORDER BY c.id LIMIT ?",
                                 (*args, limit)).fetchall()
        return [self._card_state(tuple(r)) for r in rows]

    def month_counters(self, month: str) -> list[tuple[str, int]]:
        return self.conn.execute(self._PERIOD["member_months"], (month,)).fetchall()

    def day_counters(self, day: str) -> list[tuple[int, int]]:
        return self.conn.execute(self._PERIOD["card_days"], (day,)).fetchall()

    def month_charged(self, month: str) -> list[tuple[int, int]]:
        return self.conn.execute(self._PERIOD["card_months"], (month,)).fetchall()

    def member_of(self, pan: str) -> str | None:
        """The card's member only (a cluster's ingress routes by it: switch/ops/cluster.py)."""
        row = self.conn.execute("SELECT member FROM cards WHERE pan=?", (pan,)).fetchone()
        return row[0] if row else None

    def card_with_counters(self, pan: str, month: str, day: str) -> tuple[CardState | None, int, int]:
        """A card, its member's eligible spend in `month` and its own spending on `day`: what a
        purchase on a card not yet in memory needs, in one statement (one round trip on
        PostgreSQL instead of six; docs/performance.md, "PostgreSQL: one read per new card")."""
        row = self._card_row("c.pan=?", (month, day, pan), self._CARD_COUNTERS)
        return (None, 0, 0) if row is None else (self._card_state(row), row[12], row[13])

    # a card's three balances are accounts named after it: one join each, so a card is one read
    _CARD_COLUMNS = ("SELECT c.id, c.pan, c.program, c.member, c.expiry, c.status, c.pvv, c.pin_tries, "
                     "c.pin_blocked, ")
    _CARD_JOINS = ("LEFT JOIN {table} a ON a.name = 'card:' || c.id || ':cash' "
                   "LEFT JOIN {table} b ON b.name = 'card:' || c.id || ':cashback' "
                   "LEFT JOIN {table} r ON r.name = 'card:' || c.id || ':receivable' WHERE {{where}}")
    _CARD_ROWS = (_CARD_COLUMNS + "COALESCE(a.balance, 0), COALESCE(b.balance, 0), COALESCE(r.balance, 0){extra} "
                  "FROM cards c " + _CARD_JOINS.format(table="accounts"))
    _CARD_FOLDED = (_CARD_COLUMNS + ", ".join(f"COALESCE({t}.balance, 0) + {_unfolded(_card_account(kind))}"
                                              for t, kind in (("a", "cash"), ("b", "cashback"), ("r", "receivable")))
                    + "{extra} FROM cards c " + _CARD_JOINS.format(table="account_folds"))

    def _card_row(self, where: str, args: tuple, extra: str = "") -> tuple | None:
        return self.conn.execute(self._CARD.format(extra=extra, where=where), args).fetchone()

    @staticmethod
    def _card_state(row: tuple) -> CardState:
        return CardState(row[0], row[1], row[2], row[3], row[4], row[5], cash=row[9], cashback=row[10],
                         receivable=row[11], pvv=row[6], pin_tries=row[7], pin_blocked=bool(row[8]))

    def _card(self, where: str, args: tuple) -> CardState | None:
        row = self._card_row(where, args)
        return None if row is None else self._card_state(row)

    def merchant(self, mid: str) -> Merchant | None:
        row = self.conn.execute(
            "SELECT mid, name, district, annual_sales, category, online_mall FROM merchants WHERE mid=?",
            (mid,)).fetchone()
        if row is None:
            return None
        return Merchant(mid=row[0], name=row[1], district=row[2], annual_sales=row[3], category=row[4],
                        online_mall=bool(row[5]))

    _TERMINAL = "SELECT tid, mid, security, key_lmk, ksn_initial, ksn_max, status FROM terminals"

    def terminal(self, tid: str) -> Terminal | None:
        row = self.conn.execute(self._TERMINAL + " WHERE tid=?", (tid,)).fetchone()
        return Terminal(*row) if row else None

    # ------------------------------------------------------------------ inventory pages (eum admin … list)
    # Keyset paging: the rows after a key, in key order, at most `limit`; the last row's key asks for the next.

    def terminals_page(self, after: str, limit: int, *, mid: str | None = None) -> list[Terminal]:
        where, args = ("tid > ? AND mid = ?", (after, mid)) if mid is not None else ("tid > ?", (after,))
        rows = self.conn.execute(f"{self._TERMINAL} WHERE {where} ORDER BY tid LIMIT ?", (*args, limit)).fetchall()
        return [Terminal(*row) for row in rows]

    def terminal_count(self, mid: str) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM terminals WHERE mid=?", (mid,)).fetchone()[0]

    def merchants_page(self, after: str, limit: int) -> list[Merchant]:
        rows = self.conn.execute("SELECT mid, name, district, annual_sales, category, online_mall FROM merchants "
                                 "WHERE mid > ? ORDER BY mid LIMIT ?", (after, limit)).fetchall()
        return [Merchant(mid=r[0], name=r[1], district=r[2], annual_sales=r[3], category=r[4],
                         online_mall=bool(r[5])) for r in rows]

    def account_balance(self, name: str) -> int:
        return self._balance(name)

    def member_month(self, member: str, month: str) -> int:
        return self._counter("member_months", month, member)

    def card_day(self, card_id: int, day: str) -> int:
        return self._counter("card_days", day, card_id)

    def card_month_charged(self, card_id: int, month: str) -> int:
        return self._counter("card_months", month, card_id)

    def _counter(self, view: str, period: str, key: object) -> int:
        row = self.conn.execute(self._ONE[view], (period, key)).fetchone()
        return row[0] if row and row[0] is not None else 0

    def _posting(self, where: str, arg: object) -> PostingState | None:
        row = self.conn.execute(
            "SELECT id, kind, card_id, mid, amount, undone, at, rrn, original_id, detail, reversed FROM postings "
            f"WHERE {where}", (arg,)).fetchone()
        if row is None:
            return None
        return PostingState(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8],
                            parse_detail(row[9]), reversed=row[10])

    def posting(self, posting_id: int) -> PostingState | None:
        return self._posting("id=?", posting_id)

    def holds_expired(self, at: str, limit: int = 1_000) -> list[tuple[int, int]]:
        """(hold posting id, card id) of open holds that expire before `at` (ISO 8601 KST),
        oldest first, at most `limit` (the partial index postings_open_holds holds only open ones)."""
        rows = self.conn.execute("SELECT id, card_id, detail FROM postings WHERE kind = 'hold' AND undone < amount "
                                 "ORDER BY id").fetchall()
        out = []
        for pid, card_id, detail in rows:
            d = parse_detail(detail)
            if isinstance(d, HoldDetail) and d.expires < at:
                out.append((pid, card_id))
                if len(out) == limit:
                    break
        return out

    def posting_by_rrn(self, rrn: str) -> PostingState | None:
        return self._posting("rrn=? ORDER BY id DESC LIMIT 1", rrn)  # a hold's chain shares its RRN: the latest

    def message(self, key: MessageKey) -> MessageOutcome | None:
        row = self.conn.execute(
            "SELECT mti, digest, rc, response, posting_id, at FROM messages WHERE tid=? AND stan=? AND tx_time=?",
            key).fetchone()
        if row is None:
            return None
        return MessageOutcome(key, row[0], row[1], row[2], json.loads(row[3]), row[4], row[5])

    def message_keys(self) -> Iterable[MessageKey]:
        """Every stored message's key (to build the switch's filter of known keys)."""
        return self.conn.execute("SELECT tid, stan, tx_time FROM messages")

    def message_count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]

    def tombstone_keys(self) -> Iterable[MessageKey]:
        """Every remembered reversal-before-original's key (to build the switch's filter)."""
        return self.conn.execute("SELECT tid, stan, tx_time FROM tombstones")

    def tombstone_count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM tombstones").fetchone()[0]

    def tombstone(self, key: MessageKey) -> bool:
        return self.conn.execute("SELECT 1 FROM tombstones WHERE tid=? AND stan=? AND tx_time=?",
                                 key).fetchone() is not None

    def auto_charges(self) -> dict[int, AutoCharge]:
        """Every card's auto-charge setting (meta rows auto_charge:<card id>); a card set to
        amount 0 has none."""
        out = {}
        for key, value in self.conn.execute("SELECT key, value FROM meta WHERE key LIKE 'auto_charge:%'"):
            threshold, amount = (int(x) for x in value.split(","))
            if amount:
                out[int(key[len(AUTO_CHARGE_META):])] = AutoCharge(threshold, amount)
        return out

    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def key_group(self, name: str, profile: str) -> tuple[str, str] | None:
        row = self.conn.execute("SELECT bdk, kcv FROM key_groups WHERE name=? AND profile=?", (name, profile)).fetchone()
        return (row[0], row[1]) if row else None

    def dukpt_terminals(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM terminals WHERE security LIKE 'dukpt-%'").fetchone()[0]

    def max_posting_id(self) -> int:
        return self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM postings").fetchone()[0]

    def max_card_id(self) -> int:
        return self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM cards").fetchone()[0]

    def cards_from(self, first_id: int, limit: int) -> list[tuple[int, str]]:
        """(id, pan) of cards from `first_id`, in id order (seeding PINs onto seeded cards)."""
        return self.conn.execute("SELECT id, pan FROM cards WHERE id >= ? ORDER BY id LIMIT ?",
                                 (first_id, limit)).fetchall()
