"""The ledger's hot tables are keyed time first (docs/performance.md "Issue 10 levers"), and a
store made before the re-keying is rebuilt on open with every row kept."""

from __future__ import annotations

import sqlite3

from switch.ledger.store import HOT_KEYS, _primary_key, open_store

# The five hot tables as stores before 76542c4 made them: key columns in the old order.
OLD_TABLES = """
CREATE TABLE member_months(member TEXT NOT NULL, month TEXT NOT NULL, eligible INTEGER NOT NULL,
    PRIMARY KEY(member, month)) WITHOUT ROWID;
CREATE TABLE card_days(card_id INTEGER NOT NULL, day TEXT NOT NULL, spent INTEGER NOT NULL,
    PRIMARY KEY(card_id, day)) WITHOUT ROWID;
CREATE TABLE card_months(card_id INTEGER NOT NULL, month TEXT NOT NULL, charged INTEGER NOT NULL,
    PRIMARY KEY(card_id, month)) WITHOUT ROWID;
CREATE TABLE messages(tid TEXT NOT NULL, stan TEXT NOT NULL, tx_time TEXT NOT NULL, mti TEXT NOT NULL,
    digest TEXT NOT NULL, rc TEXT NOT NULL, response TEXT NOT NULL, posting_id INTEGER,
    at TEXT NOT NULL, PRIMARY KEY(tid, stan, tx_time)) WITHOUT ROWID;
CREATE TABLE tombstones(tid TEXT NOT NULL, stan TEXT NOT NULL, tx_time TEXT NOT NULL, at TEXT NOT NULL,
    PRIMARY KEY(tid, stan, tx_time)) WITHOUT ROWID;
INSERT INTO member_months VALUES ('M1', '2025-10', 12000), ('M2', '2025-09', 5);
INSERT INTO card_days VALUES (7, '2025-10-15', 3000), (8, '2025-10-14', 1);
INSERT INTO card_months VALUES (7, '2025-10', 500000);
INSERT INTO messages VALUES ('T0000001', '000042', '1015120000', '0200', 'ab', '00', '{"39":"00"}', 9, 'x');
INSERT INTO tombstones VALUES ('T0000002', '000007', '1015120001', 'y');
"""


def test_a_fresh_store_keys_its_hot_tables_time_first(tmp_path):
    conn = sqlite3.connect(open_store(tmp_path))
    assert {t: _primary_key(conn, t) for t in HOT_KEYS} == {
        "messages": ("tx_time", "tid", "stan"),
        "tombstones": ("tx_time", "tid", "stan"),
        "card_days": ("day", "card_id"),
        "card_months": ("month", "card_id"),
        "member_months": ("month", "member"),
    }


def test_an_older_store_is_rekeyed_on_open_with_every_row_kept(tmp_path):
    conn = sqlite3.connect(tmp_path / "ledger.sqlite3")
    conn.executescript(OLD_TABLES)
    conn.close()
    open_store(tmp_path)
    conn = sqlite3.connect(tmp_path / "ledger.sqlite3")
    assert _primary_key(conn, "messages") == ("tx_time", "tid", "stan")
    assert _primary_key(conn, "card_days") == ("day", "card_id")
    assert sorted(conn.execute("SELECT * FROM member_months")) == [("M1", "2025-10", 12000), ("M2", "2025-09", 5)]
    assert sorted(conn.execute("SELECT * FROM card_days")) == [(7, "2025-10-15", 3000), (8, "2025-10-14", 1)]
    assert list(conn.execute("SELECT * FROM card_months")) == [(7, "2025-10", 500000)]
    assert list(conn.execute("SELECT * FROM messages")) == [
        ("T0000001", "000042", "1015120000", "0200", "ab", "00", '{"39":"00"}', 9, "x")]
    assert list(conn.execute("SELECT * FROM tombstones")) == [("T0000002", "000007", "1015120001", "y")]
    # no table left over from the rebuild; a second open changes nothing
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE name LIKE '%_rekey'")] == []
    conn.close()
    open_store(tmp_path)
    conn = sqlite3.connect(tmp_path / "ledger.sqlite3")
    assert conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 1
