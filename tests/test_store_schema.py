"""The ledger's hot tables are keyed time first (docs/performance.md "Issue 10 levers"), the
messages appended in rowid order with their key in an index of its own (docs/performance.md,
"The messages appended"), the day
and month counters are appended moves read through views of their sums (docs/performance.md,
"The day and month counters appended (kept)"), and a store made before either is rebuilt on
open with every row and every counter kept."""

from __future__ import annotations

import sqlite3

import pytest

from switch.ledger.records import Commit, OutboxEvent
from switch.ledger.store import APPENDED, COUNTERS, HOT_KEYS, _layout, _primary_key, open_store

# The five hot tables as stores before 76542c4 made them: key columns in the old order, the
# counters in tables keyed by period and card or member.
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
    assert APPENDED == {"messages"}
    assert {t: _layout(conn, t) for t in HOT_KEYS} == {
        "messages": (True, ("tx_time", "tid", "stan")),  # a rowid table, its key a unique index
        "tombstones": (False, ("tx_time", "tid", "stan")),  # WITHOUT ROWID, keyed by the whole row
    }
    assert _primary_key(conn, "messages") == ()
    assert conn.execute("SELECT sql FROM sqlite_master WHERE name = 'messages_key'").fetchone() == (
        "CREATE UNIQUE INDEX messages_key ON messages(tx_time, tid, stan)",)


def test_the_messages_go_to_the_end_of_their_table_and_a_key_is_stored_once(tmp_path):
    """Rows in the order they were committed whatever their keys; the key's unique index
    refuses a second row with the same key (the writer's guard against a double answer)."""
    conn = sqlite3.connect(open_store(tmp_path))
    rows = [("T0000009", "000001", "1015120000"), ("T0000001", "000002", "1015120000"),
            ("T0000005", "000001", "1015115959")]
    for key in rows:
        conn.execute("INSERT INTO messages(tid, stan, tx_time, mti, digest, rc, response, posting_id, at) "
                     "VALUES (?, ?, ?, '0200', 'd', '00', '{}', NULL, 'x')", key)
    assert list(conn.execute("SELECT rowid, tid, stan, tx_time FROM messages ORDER BY rowid")) == [
        (1, "T0000009", "000001", "1015120000"), (2, "T0000001", "000002", "1015120000"),
        (3, "T0000005", "000001", "1015115959")]
    # a lookup by key is served by the index, not a scan of the table
    plan = " ".join(r[3] for r in conn.execute(
        "EXPLAIN QUERY PLAN SELECT rc FROM messages WHERE tid=? AND stan=? AND tx_time=?", rows[1]))
    assert plan == "SEARCH messages USING INDEX messages_key (tx_time=? AND tid=? AND stan=?)"
    try:
        conn.execute("INSERT INTO messages(tid, stan, tx_time, mti, digest, rc, response, posting_id, at) "
                     "VALUES ('T0000001', '000002', '1015120000', '0200', 'e', '05', '{}', NULL, 'y')")
    except sqlite3.IntegrityError as exc:
        assert str(exc) == "UNIQUE constraint failed: messages.tx_time, messages.tid, messages.stan"
    else:
        raise AssertionError("a second row with the same key was stored")
    assert conn.execute("SELECT COUNT(*) FROM messages").fetchone() == (3,)


def test_a_store_with_its_messages_keyed_by_the_whole_row_is_rebuilt_appended(tmp_path):
    """The layout from 76542c4 to the messages appended: WITHOUT ROWID, keyed time first."""
    conn = sqlite3.connect(tmp_path / "ledger.sqlite3")
    conn.executescript(OLD_TABLES.replace("PRIMARY KEY(tid, stan, tx_time)) WITHOUT ROWID;\nCREATE TABLE tomb",
                                          "PRIMARY KEY(tx_time, tid, stan)) WITHOUT ROWID;\nCREATE TABLE tomb"))
    conn.execute("INSERT INTO messages VALUES "
                 "('T0000001', '000041', '1015115959', '0200', 'cd', '51', '{}', NULL, 'w')")
    conn.commit()
    assert _layout(conn, "messages") == (False, ("tx_time", "tid", "stan"))
    conn.close()
    open_store(tmp_path)
    conn = sqlite3.connect(tmp_path / "ledger.sqlite3")
    assert _layout(conn, "messages") == (True, ("tx_time", "tid", "stan"))
    assert list(conn.execute("SELECT rowid, * FROM messages ORDER BY rowid")) == [
        (1, "T0000001", "000041", "1015115959", "0200", "cd", "51", "{}", None, "w"),
        (2, "T0000001", "000042", "1015120000", "0200", "ab", "00", '{"39":"00"}', 9, "x")]
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'messages'")] == [
        "messages", "messages_key"]
    conn.close()
    open_store(tmp_path)  # a second open changes nothing
    conn = sqlite3.connect(tmp_path / "ledger.sqlite3")
    assert conn.execute("SELECT COUNT(*), MAX(rowid) FROM messages").fetchone() == (2, 2)


def test_a_fresh_store_keeps_its_counters_as_moves_summed_by_views(tmp_path):
    conn = sqlite3.connect(open_store(tmp_path))
    kinds = dict(conn.execute("SELECT name, type FROM sqlite_master"))
    assert {name: kinds[name] for name in COUNTERS} == {
        "member_months": "view", "card_days": "view", "card_months": "view"}
    assert {kinds[moves] for moves, *_ in COUNTERS.values()} == {"table"}
    assert _primary_key(conn, "card_day_moves") == ()  # a rowid table: rows go to its end
    # an INSERT into a view adds a move; the view sums a key's moves
    conn.executemany("INSERT INTO card_days(card_id, day, spent) VALUES (?,?,?)",
                     [(7, "2025-10-15", 3000), (7, "2025-10-15", -1000), (8, "2025-10-15", 5)])
    conn.execute("INSERT INTO member_months(member, month, eligible) VALUES ('M1', '2025-10', 12000)")
    conn.execute("INSERT INTO card_months(card_id, month, charged) VALUES (7, '2025-10', 500000)")
    assert conn.execute("SELECT COUNT(*) FROM card_day_moves").fetchone()[0] == 3
    assert sorted(conn.execute("SELECT * FROM card_days")) == [(7, "2025-10-15", 2000), (8, "2025-10-15", 5)]
    assert conn.execute("SELECT spent FROM card_days WHERE card_id=7 AND day='2025-10-15'").fetchone() == (2000,)
    assert list(conn.execute("SELECT * FROM member_months")) == [("M1", "2025-10", 12000)]
    assert list(conn.execute("SELECT * FROM card_months")) == [(7, "2025-10", 500000)]


def test_an_older_store_is_rekeyed_on_open_with_every_row_kept(tmp_path):
    conn = sqlite3.connect(tmp_path / "ledger.sqlite3")
    conn.executescript(OLD_TABLES)
    conn.close()
    open_store(tmp_path)
    conn = sqlite3.connect(tmp_path / "ledger.sqlite3")
    assert _layout(conn, "messages") == (True, ("tx_time", "tid", "stan"))
    assert _layout(conn, "tombstones") == (False, ("tx_time", "tid", "stan"))
    kinds = dict(conn.execute("SELECT name, type FROM sqlite_master"))
    assert [kinds[name] for name in COUNTERS] == ["view", "view", "view"]
    assert sorted(conn.execute("SELECT * FROM card_day_moves")) == [("2025-10-14", 8, 1), ("2025-10-15", 7, 3000)]
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
    assert conn.execute("SELECT COUNT(*) FROM member_month_moves").fetchone()[0] == 2


def test_a_store_keyed_time_first_gets_its_counters_as_moves_too(tmp_path):
    """The counters' tables as 76542c4 to this change made them (period first)."""
    conn = sqlite3.connect(tmp_path / "ledger.sqlite3")
    conn.executescript(OLD_TABLES.replace("PRIMARY KEY(member, month)", "PRIMARY KEY(month, member)")
                       .replace("PRIMARY KEY(card_id, day)", "PRIMARY KEY(day, card_id)")
                       .replace("PRIMARY KEY(card_id, month)", "PRIMARY KEY(month, card_id)"))
    conn.close()
    open_store(tmp_path)
    conn = sqlite3.connect(tmp_path / "ledger.sqlite3")
    assert sorted(conn.execute("SELECT * FROM member_months")) == [("M1", "2025-10", 12000), ("M2", "2025-09", 5)]
    assert conn.execute("SELECT charged FROM card_months WHERE card_id=7 AND month='2025-10'").fetchone() == (500000,)
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name IN "
                                       "('member_months', 'card_days', 'card_months')")] == []


def test_each_group_appends_one_move_per_counter_key_and_the_views_sum_them(tmp_path):
    from switch.ledger.records import CardDayMoved, CardMonthCharged, Commit, MemberMonthMoved
    from switch.ledger.sqlite import commit_group, connect_writer

    conn = connect_writer(open_store(tmp_path))
    first = [Commit(changes=(CardDayMoved(7, "2025-10-15", 3_000), MemberMonthMoved("M1", "2025-10", 3_000))),
             Commit(changes=(CardDayMoved(7, "2025-10-15", 2_000), MemberMonthMoved("M1", "2025-10", 2_000),
                             CardMonthCharged(7, "2025-10", 100_000)))]
    commit_group(conn, first)
    commit_group(conn, [Commit(changes=(CardDayMoved(7, "2025-10-15", -500), CardDayMoved(8, "2025-10-15", 10)))])
    # the first group's two units on one key: one move (their sum); the second group's: one more
    assert list(conn.execute("SELECT day, card_id, spent FROM card_day_moves ORDER BY rowid")) == [
        ("2025-10-15", 7, 5_000), ("2025-10-15", 7, -500), ("2025-10-15", 8, 10)]
    assert sorted(conn.execute("SELECT * FROM card_days")) == [(7, "2025-10-15", 4_500), (8, "2025-10-15", 10)]
    assert list(conn.execute("SELECT * FROM member_months")) == [("M1", "2025-10", 5_000)]
    assert list(conn.execute("SELECT * FROM card_months")) == [(7, "2025-10", 100_000)]
    conn.close()


def test_a_null_parameter_binds_through_its_adapter_and_stays_null(tmp_path):
    """switch/ledger/store.py registers an adapter for None (`{}.get`), so sqlite3 does not
    look for `__adapt__` on its protocol type (a failed lookup that formats an AttributeError)
    for every NULL it binds. None still binds as NULL, in a multi-row INSERT as the group
    commit writes them, and no other type is adapted."""
    import switch.ledger.store  # noqa: F401 - registers the adapter

    assert sqlite3.adapters[(type(None), sqlite3.PrepareProtocol)](None) is None
    assert [key[0] for key in sqlite3.adapters if key[0] in (int, float, str, bytes, bytearray)] == []
    conn = sqlite3.connect(tmp_path / "t.sqlite3")
    conn.execute("CREATE TABLE t(a INTEGER PRIMARY KEY AUTOINCREMENT, b TEXT, c INTEGER)")
    conn.execute("INSERT INTO t(a, b, c) VALUES (?, ?, ?), (?, ?, ?)", (None, None, 7, None, "x", None))
    assert conn.execute("SELECT a, b IS NULL, c IS NULL, typeof(b), typeof(c) FROM t ORDER BY a").fetchall() == [
        (1, 1, 0, "null", "integer"), (2, 0, 1, "text", "null")]


def _events(posting_id: int) -> Commit:
    return Commit(events=tuple(OutboxEvent(event_id=f"e-{posting_id}-{kind}", topic="eum/namdong/transactions", type=kind,
                                           posting_id=posting_id, payload="{}") for kind in ("purchase", "cashback.credited")))


def test_a_fresh_store_numbers_its_outbox_by_rowid_and_keeps_no_sequence_row(tmp_path):
    """The outbox's `seq` is its rowid, not AUTOINCREMENT: each group commit takes max + 1 per
    event, 1..n in commit order, and no `sqlite_sequence` row exists to be rewritten by every
    group (docs/performance.md, "The outbox's sequence without AUTOINCREMENT (kept)")."""
    from switch.ledger.sqlite import commit_group, connect_writer

    conn = connect_writer(open_store(tmp_path))
    create = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'outbox'").fetchone()[0]
    assert "seq INTEGER PRIMARY KEY," in create and "AUTOINCREMENT" not in create.upper()
    commit_group(conn, [_events(1), _events(2)])
    commit_group(conn, [_events(3)])
    assert list(conn.execute("SELECT seq, posting_id, type FROM outbox ORDER BY rowid")) == [
        (1, 1, "purchase"), (2, 1, "cashback.credited"), (3, 2, "purchase"), (4, 2, "cashback.credited"),
        (5, 3, "purchase"), (6, 3, "cashback.credited")]
    assert conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone() == (0,)
    conn.close()


def test_an_outbox_made_with_autoincrement_is_rebuilt_on_open_with_every_row_and_its_seq_kept(tmp_path):
    """A ledger made before keeps its events, their `seq` (the relay's position names one) and
    the columns MIGRATIONS added (partition, pseq), and its next event takes max + 1; the
    (posting, type) index still refuses a second event of a kind for one posting."""
    from switch.ledger.sqlite import commit_group, connect_writer

    path = open_store(tmp_path)
    conn = sqlite3.connect(path)
    conn.executescript("""
        DROP TABLE outbox;
        CREATE TABLE outbox(seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL, topic TEXT NOT NULL,
            type TEXT NOT NULL, posting_id INTEGER NOT NULL, payload TEXT NOT NULL, committed_at REAL NOT NULL);
        ALTER TABLE outbox ADD COLUMN partition INTEGER;
        ALTER TABLE outbox ADD COLUMN pseq INTEGER;
        CREATE UNIQUE INDEX outbox_posting_type ON outbox(posting_id, type);
        INSERT INTO outbox(event_id, topic, type, posting_id, payload, committed_at, partition, pseq) VALUES
            ('a', 'eum/namdong/transactions', 'purchase', 1, '{"n":1}', 1.5, 7, 70),
            ('b', 'eum/namdong/cashback', 'cashback.credited', 1, '{"n":2}', 1.5, NULL, NULL),
            ('c', 'eum/namdong/transactions', 'charge', 2, '{"n":3}', 2.5, NULL, NULL);
        DELETE FROM outbox WHERE seq = 2;  -- a gap below max, never made by the switch: kept as it is
    """)
    before = list(conn.execute("SELECT * FROM outbox ORDER BY seq"))
    assert [row[0] for row in before] == [1, 3]
    conn.close()
    open_store(tmp_path)
    conn = connect_writer(path)
    create = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'outbox'").fetchone()[0]
    assert "AUTOINCREMENT" not in create.upper()
    assert list(conn.execute("SELECT * FROM outbox ORDER BY seq")) == before
    assert [row[1] for row in conn.execute("PRAGMA table_info(outbox)")] == [
        "seq", "event_id", "topic", "type", "posting_id", "payload", "committed_at", "partition", "pseq"]
    commit_group(conn, [_events(3)])
    assert [row[0] for row in conn.execute("SELECT seq FROM outbox ORDER BY seq")] == [1, 3, 4, 5]
    with pytest.raises(sqlite3.IntegrityError, match="outbox.posting_id, outbox.type"):
        commit_group(conn, [_events(3)])
    assert conn.execute("SELECT COUNT(*) FROM outbox").fetchone() == (4,)
    conn.close()


def test_a_fresh_store_keeps_no_index_of_entries_by_posting(tmp_path):
    """The entries are appended with no index on their posting: the group commit dirties no
    index page for them (docs/performance.md, "The entries without a posting index (kept)")."""
    conn = sqlite3.connect(open_store(tmp_path))
    assert list(conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'entries'")) == []
    conn.close()


def test_an_older_store_loses_its_entries_index_on_open_and_keeps_every_entry(tmp_path):
    """A ledger made with entries(posting_id) indexed loses the index on open; every entry, in
    its rowid order, stays, and verify still finds a posting with an amount and no entries."""
    from switch.ledger.audit import verify

    path = open_store(tmp_path)
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE INDEX entries_posting ON entries(posting_id);
        INSERT INTO postings(id, kind, at, amount) VALUES (1, 'charge', '2025-10-15T12:00:00+09:00', 5000),
            (2, 'charge', '2025-10-15T12:00:01+09:00', 700);
        INSERT INTO entries(posting_id, account, amount) VALUES
            (1, 'bank_settlement', -5000), (1, 'card:1:cash', 5000);
        INSERT INTO account_folds(name, balance) VALUES ('bank_settlement', -5000), ('card:1:cash', 5000);
        UPDATE accounts_folded SET entries_rowid = 2;
    """)
    conn.commit()
    before = list(conn.execute("SELECT rowid, * FROM entries ORDER BY rowid"))
    conn.close()
    open_store(tmp_path)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'entries_posting'").fetchone() == (0,)
    assert list(conn.execute("SELECT rowid, * FROM entries ORDER BY rowid")) == before == [
        (1, 1, "bank_settlement", -5000), (2, 1, "card:1:cash", 5000)]
    conn.close()
    result = verify(path)
    assert not result.ok and result.problem == "posting 2 has an amount but no entries"


def test_a_group_records_a_new_period_once_and_its_counters_are_read_from_there(tmp_path):
    """No moves table has an index by period: the group that first moves a period records, before
    its rows go in, the next rowid (move_periods: at or before the period's first row, here 5 for
    the row that took 6), the writer's connection remembers the last period
    committed so later groups record nothing, a late row of an older period lands after its
    start, and the reader sums a period's moves from its start on (docs/performance.md, "The
    counters' periods without an index (kept)")."""
    from switch.ledger.records import CardDayMoved, MemberMonthMoved
    from switch.ledger.sqlite import SqliteReader, commit_group, connect_writer

    path = open_store(tmp_path)
    conn = connect_writer(path)
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name IN "
                                       "('member_month_moves', 'card_day_moves', 'card_month_moves')")] == []
    commit_group(conn, [Commit(changes=(CardDayMoved(7, "2025-10-14", 300), MemberMonthMoved("M1", "2025-10", 300)))])
    commit_group(conn, [Commit(changes=(CardDayMoved(7, "2025-10-15", 3_000), CardDayMoved(8, "2025-10-15", 5)))])
    assert conn.periods == {"card_day_moves": "2025-10-15", "member_month_moves": "2025-10"}
    conn.execute("DELETE FROM move_periods WHERE period = '2025-10-15'")  # a group that records again would say so
    commit_group(conn, [Commit(changes=(CardDayMoved(7, "2025-10-15", -1_000),))])
    assert list(conn.execute("SELECT * FROM move_periods")) == [
        ("card_day_moves", "2025-10-14", 1), ("member_month_moves", "2025-10", 1)]
    conn.execute("INSERT INTO move_periods VALUES ('card_day_moves', '2025-10-15', 2)")
    commit_group(conn, [Commit(changes=(CardDayMoved(9, "2025-10-14", 40), CardDayMoved(9, "2025-10-16", 1)))])
    assert list(conn.execute("SELECT rowid, day, card_id, spent FROM card_day_moves ORDER BY rowid")) == [
        (1, "2025-10-14", 7, 300), (2, "2025-10-15", 7, 3_000), (3, "2025-10-15", 8, 5),
        (4, "2025-10-15", 7, -1_000), (5, "2025-10-14", 9, 40), (6, "2025-10-16", 9, 1)]
    assert list(conn.execute("SELECT * FROM move_periods WHERE moves = 'card_day_moves' ORDER BY period")) == [
        ("card_day_moves", "2025-10-14", 1), ("card_day_moves", "2025-10-15", 2), ("card_day_moves", "2025-10-16", 5)]
    assert conn.periods["card_day_moves"] == "2025-10-16"
    conn.close()
    reader = SqliteReader(path)
    assert reader.day_counters("2025-10-14") == [(7, 300), (9, 40)]
    assert reader.day_counters("2025-10-15") == [(7, 2_000), (8, 5)]
    assert reader.day_counters("2025-10-17") == []
    assert (reader.card_day(7, "2025-10-15"), reader.card_day(9, "2025-10-15"), reader.card_day(9, "2025-10-16")) == (
        2_000, 0, 1)
    assert reader.month_counters("2025-10") == [("M1", 300)]
    assert (reader.member_month("M1", "2025-10"), reader.member_month("M1", "2025-11")) == (300, 0)
    assert reader.month_charged("2025-10") == [] and reader.card_month_charged(7, "2025-10") == 0
    reader.close()


def test_a_group_that_fails_leaves_its_new_period_unrecorded_and_the_next_group_records_it(tmp_path):
    """A period is remembered by the writer's connection only once its group committed: a group
    rolled back (here a second event of one kind for one posting) leaves neither the period's
    row nor the memory of it, and the next group of that period records it."""
    from switch.ledger.records import CardDayMoved
    from switch.ledger.sqlite import commit_group, connect_writer

    conn = connect_writer(open_store(tmp_path))
    commit_group(conn, [_events(1)])
    failing = Commit(changes=(CardDayMoved(7, "2025-10-15", 3_000),), events=_events(1).events)
    with pytest.raises(sqlite3.IntegrityError):
        commit_group(conn, [failing])
    assert conn.periods == {}
    assert conn.execute("SELECT COUNT(*) FROM move_periods").fetchone() == (0,)
    commit_group(conn, [Commit(changes=(CardDayMoved(7, "2025-10-15", 3_000),))])
    assert list(conn.execute("SELECT * FROM move_periods")) == [("card_day_moves", "2025-10-15", 1)]
    assert conn.periods == {"card_day_moves": "2025-10-15"}
    conn.close()


def test_a_store_with_period_indexes_records_its_periods_and_drops_them_on_open(tmp_path):
    """A ledger made while the moves tables had an index by period: each period's first rowid is
    recorded from its rows, the indexes go, the views' triggers are made again (an INSERT into a
    view records a new period), and every counter reads as before."""
    from switch.ledger.sqlite import SqliteReader

    path = open_store(tmp_path)
    conn = sqlite3.connect(path)
    conn.executescript("""
        DROP TRIGGER card_days_insert;
        CREATE TRIGGER card_days_insert INSTEAD OF INSERT ON card_days BEGIN
            INSERT INTO card_day_moves(day, card_id, spent) VALUES (NEW.day, NEW.card_id, NEW.spent); END;
        CREATE INDEX member_month_moves_month ON member_month_moves(month);
        CREATE INDEX card_day_moves_day ON card_day_moves(day);
        CREATE INDEX card_month_moves_month ON card_month_moves(month);
        INSERT INTO card_day_moves VALUES ('2025-10-14', 8, 1), ('2025-10-15', 7, 3000), ('2025-10-14', 8, 2),
            ('2025-10-15', 7, -1000);
        INSERT INTO member_month_moves VALUES ('2025-09', 'M2', 5), ('2025-10', 'M1', 12000);
        INSERT INTO card_month_moves VALUES ('2025-10', 7, 500000);
    """)
    assert conn.execute("SELECT COUNT(*) FROM move_periods").fetchone() == (0,)
    conn.close()
    open_store(tmp_path)
    conn = sqlite3.connect(path)
    assert list(conn.execute("SELECT * FROM move_periods ORDER BY moves, period")) == [
        ("card_day_moves", "2025-10-14", 1), ("card_day_moves", "2025-10-15", 2),
        ("card_month_moves", "2025-10", 1), ("member_month_moves", "2025-09", 1), ("member_month_moves", "2025-10", 2)]
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name LIKE '%_moves'")] == []
    conn.execute("INSERT INTO card_days(card_id, day, spent) VALUES (9, '2025-10-16', 70)")
    conn.commit()
    assert conn.execute("SELECT * FROM move_periods WHERE period = '2025-10-16'").fetchone() == (
        "card_day_moves", "2025-10-16", 5)
    conn.close()
    reader = SqliteReader(path)
    assert reader.day_counters("2025-10-14") == [(8, 3)]
    assert reader.day_counters("2025-10-15") == [(7, 2000)]
    assert reader.day_counters("2025-10-16") == [(9, 70)]
    assert reader.month_counters("2025-09") == [("M2", 5)] and reader.month_counters("2025-10") == [("M1", 12000)]
    assert reader.month_charged("2025-10") == [(7, 500000)] and reader.card_month_charged(7, "2025-10") == 500000
    reader.close()
