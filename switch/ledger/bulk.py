"""Bulk loading (`eum admin seed`): many rows in one transaction, one fsync.

The store's side of switch/ops/seed.py, which decides what to load. A `BulkLoad` holds the
data dir's write transaction from `next_ids()` to the end of the `with` block: it commits
when the block ends normally and rolls back otherwise, so a seed lands whole or not at all.
The opening charges of all cards are one balanced posting with one entry per card.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from switch.domain import card_accounts
from switch.ledger.sqlite import fold_accounts
from switch.ledger.store import PgDsn, Store, StoreUnavailable, connect, redact

MerchantRow = tuple[str, str, str, int, str]             # mid, name, district, annual sales, category
TerminalRow = tuple[str, str, str, str, str]             # tid, mid, security, key under LMK, initial KSN
CardRow = tuple[int, str, str, str, str, str, str]       # id, pan, program, member, expiry, status, issued at


@dataclass(frozen=True)
class NextIds:
    merchant: int   # the number of the next merchant (merchants are numbered from 1)
    card: int
    posting: int
    dukpt_device: int


class BulkLoad:
    def __init__(self, db_path: Store) -> None:
        self.conn: sqlite3.Connection = connect(db_path)
        self.folded = not isinstance(db_path, PgDsn)  # SQLite: balances folded from the entries (store.py)
        if isinstance(db_path, PgDsn):  # the data dir's lock guards SQLite; PostgreSQL's writer lock this one
            from switch.ledger.postgres import WRITER_LOCK

            if not self.conn.execute("SELECT pg_try_advisory_lock(?)", (WRITER_LOCK,)).fetchone()[0]:
                self.conn.close()
                raise StoreUnavailable(f"a switch writes the ledger at {redact(db_path)}: a bulk load needs it "
                                       "to itself (stop the switch or every instance, load, start again)")

    def __enter__(self) -> BulkLoad:
        self.conn.execute("PRAGMA cache_size=-262144")
        self.conn.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                if self.folded:  # the load's entries summed once into their accounts' rows, not by each read
                    fold_accounts(self.conn)
                self.conn.execute("COMMIT")
            elif self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        finally:
            self.conn.close()

    def next_ids(self) -> NextIds:
        one = lambda sql: self.conn.execute(sql).fetchone()[0]  # noqa: E731
        return NextIds(merchant=one("SELECT COUNT(*) FROM merchants") + 1,
                       card=one("SELECT COALESCE(MAX(id), 0) FROM cards") + 1,
                       posting=one("SELECT COALESCE(MAX(id), 0) FROM postings") + 1,
                       dukpt_device=one("SELECT COUNT(*) FROM terminals WHERE security LIKE 'dukpt-%'") + 1)

    def merchants(self, rows: Sequence[MerchantRow]) -> None:
        self.conn.executemany("INSERT INTO merchants(mid, name, district, annual_sales, category, online_mall) "
                              "VALUES (?,?,?,?,?,0)", rows)

    def terminals(self, rows: Sequence[TerminalRow]) -> None:
        self.conn.executemany("INSERT INTO terminals(tid, mid, security, key_lmk, ksn_initial) VALUES (?,?,?,?,?)",
                              rows)

    def cards(self, rows: Sequence[CardRow]) -> None:
        self.conn.executemany("INSERT INTO cards(id, pan, program, member, expiry, status, issued_at) "
                              "VALUES (?,?,?,?,?,?,?)", rows)

    def opening_charges(self, posting_id: int, at: str, charges: Sequence[tuple[int, int]], detail: dict) -> int:
        """One balanced posting: each (card id, won) onto the card's cash, their sum from
        bank_settlement. Returns the total."""
        entries = [(posting_id, card_accounts(cid)[0], amount) for cid, amount in charges]
        total = sum(amount for _, amount in charges)
        entries.append((posting_id, "bank_settlement", -total))
        self.conn.execute("INSERT INTO postings(id, kind, at, amount, detail) VALUES (?, 'seed_charge', ?, ?, ?)",
                          (posting_id, at, total, json.dumps(detail)))
        self.conn.executemany("INSERT INTO entries(posting_id, account, amount) VALUES (?,?,?)", entries)
        if not self.folded:
            self.conn.executemany("INSERT INTO accounts(name, balance) VALUES (?, ?) "
                                  "ON CONFLICT(name) DO UPDATE SET balance = accounts.balance + excluded.balance",
                                  [(acc, amt) for _, acc, amt in entries])
        return total


def population_rows(db_path: Path, *, first_tid: str, first_card_id: int,
                    cards_max: int) -> tuple[list[tuple[str, str, str, str]], list[tuple[str, str]]]:
    """(tid, mid, security, initial KSN) of the terminals from `first_tid`, and (PAN, expiry)
    of up to `cards_max` cards from `first_card_id`, in order."""
    conn = connect(db_path, readonly=True)
    try:
        terminals = conn.execute("SELECT tid, mid, security, ksn_initial FROM terminals WHERE tid >= ? ORDER BY tid",
                                 (first_tid,)).fetchall()
        cards = conn.execute("SELECT pan, expiry FROM cards WHERE id >= ? ORDER BY id LIMIT ?",
                             (first_card_id, cards_max)).fetchall()
    finally:
        conn.close()
    return terminals, cards
