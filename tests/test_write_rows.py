"""The group commit's rows in multi-row statements (switch/ledger/sqlite.py, `write_rows`):
the same rows, in the same order, with the same outcome as one execution per row, in a few
statements; a failing row ends the whole transaction; the statement journal of an upsert
stays in memory (docs/performance.md, "The group commit's rows in multi-row statements")."""

from __future__ import annotations

import sqlite3

import pytest

from switch.ledger import sqlite as adapter
from switch.ledger.sqlite import ROWS_PER_INSERT_MAX, connect_writer, write_rows
from switch.ledger.store import open_store


class _Counting:
    """The connection, with each statement that reaches SQLite counted."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.statements: list[tuple[str, int]] = []  # ("one" statement or "each" row, parameters bound)

    def execute(self, sql: str, params=()):
        self.statements.append(("one", len(params)))
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, rows):
        rows = list(rows)
        self.statements.extend(("each", len(r)) for r in rows)
        return self.conn.executemany(sql, rows)


@pytest.fixture
def conn(tmp_path):
    c = connect_writer(open_store(tmp_path))
    yield c
    c.close()


@pytest.mark.parametrize("n, statements", [(1, 1), (2, 1), (3, 2), (7, 3), (256, 1), (257, 2), (600, 5)])
def test_entries_land_in_order_in_power_of_two_statements(conn, n, statements):
    rows = [(i // 3 + 1, f"card:{i}", i * 10 - 7) for i in range(n)]
    counting = _Counting(conn)
    conn.execute("BEGIN IMMEDIATE")
    write_rows(counting, adapter._ENTRY, rows)
    conn.execute("COMMIT")
    assert conn.execute("SELECT posting_id, account, amount FROM entries ORDER BY rowid").fetchall() == rows
    assert len(counting.statements) == statements
    # 600 = 256 + 256 + 64 + 16 + 8: never more rows a statement than the maximum
    assert all(bound <= 3 * ROWS_PER_INSERT_MAX for _, bound in counting.statements)
    assert sum(bound for _, bound in counting.statements) == 3 * n


# an upsert of balances (the group commit wrote one per group before the balances were folded;
# the fold and PostgreSQL's accounts still add so)
_ADD = ("INSERT INTO account_folds(name, balance) VALUES (?, ?) "
        "ON CONFLICT(name) DO UPDATE SET balance = balance + excluded.balance")


def test_an_upsert_adds_to_the_balances_already_there(conn):
    conn.execute("INSERT INTO account_folds(name, balance) VALUES ('fee_income', 500), ('card:1', -20)")
    conn.execute("BEGIN IMMEDIATE")
    write_rows(conn, _ADD, [("card:1", 1000), ("card:2", 7), ("fee_income", -300)])
    conn.execute("COMMIT")
    assert dict(conn.execute("SELECT name, balance FROM accounts")) == {"fee_income": 200, "card:1": 980, "card:2": 7}


def test_a_row_that_breaks_a_key_ends_the_whole_transaction(conn):
    """INSERT OR ROLLBACK: what the group wrote before the failing statement goes too, and the
    connection is out of its transaction (commit_group's own ROLLBACK is not needed)."""
    conn.execute("BEGIN IMMEDIATE")
    write_rows(conn, adapter._ENTRY, [(1, "card:1", -100), (1, "merchant:M1", 100)])
    message = ("T0000001", "000001", "1015120000", "0200", "d", "00", "{}", 1, "2025-10-15T12:00:00+09:00")
    with pytest.raises(sqlite3.IntegrityError):
        write_rows(conn, adapter._MESSAGE, [message, message])  # the same key twice
    assert not conn.in_transaction
    assert conn.execute("SELECT COUNT(*) FROM entries").fetchone() == (0,)
    assert conn.execute("SELECT COUNT(*) FROM messages").fetchone() == (0,)


def test_plain_inserts_become_insert_or_rollback_and_upserts_keep_their_clause():
    assert adapter._multi_row(adapter._ENTRY, 2) == (
        "INSERT OR ROLLBACK INTO entries(posting_id, account, amount) VALUES (?,?,?),(?,?,?)")
    assert adapter._multi_row(_ADD, 2) == (
        "INSERT INTO account_folds(name, balance) VALUES (?, ?),(?, ?) "
        "ON CONFLICT(name) DO UPDATE SET balance = balance + excluded.balance")
    assert adapter._multi_row(adapter._TOMBSTONE, 2) == (
        "INSERT OR IGNORE INTO tombstones(tid, stan, tx_time, at) VALUES (?,?,?,?),(?,?,?,?)")
    assert adapter._multi_row(adapter._ENTRY, 1) == adapter._ENTRY  # one row: the statement as written


def test_updates_stay_one_execution_per_row(conn):
    counting = _Counting(conn)
    write_rows(counting, adapter._KSN, [(5, "T0000001"), (9, "T0000002")])
    assert counting.statements == [("each", 2), ("each", 2)]


def test_the_writers_connection_keeps_its_temporary_files_in_memory(conn):
    assert conn.execute("PRAGMA temp_store").fetchone() == (2,)  # 2: MEMORY
