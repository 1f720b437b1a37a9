"""Balances folded (SQLite): the group commit appends entries only; about once a second it
folds the entries past the mark into each account's row (switch/ledger/sqlite.py,
fold_accounts), and every reader sees a balance as its folded row plus its entries past the
mark (the view `accounts`, SqliteReader). Folding moves no balance: these tests read every
balance, exactly, before and after each fold, after a group that failed, after a start that
follows a crash, after a bulk load, and on a store made before the folds
(docs/performance.md, "The balances folded once a second (kept)"). A card's postings (the card
statement's) are folded with them, in place of an index on postings(card_id)
(docs/performance.md, "A card's postings folded with the balances (kept)")."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from switch.ledger.audit import card_statement, verify
from switch.ledger.bulk import BulkLoad
from switch.ledger.records import CardIssued, CardState, Commit, Posting
from switch.ledger.sqlite import SqliteReader, commit_group, connect_writer, fold_now
from switch.ledger.store import open_store
from switch.ledger.writer import LedgerWriter

AT = "2025-10-15T12:00:00.000000+09:00"
DUE = 1e18  # a connection's folded_at, in time.monotonic() seconds: -DUE, a fold is due; DUE, none is


def charge(posting_id: int, card_id: int, amount: int) -> Commit:
    """A balanced posting: `amount` onto the card's cash, from bank_settlement (a seed charge:
    the one kind told by no event, so a unit needs nothing else)."""
    return Commit(posting=Posting(posting_id, "seed_charge", AT, amount,
                                  ((f"card:{card_id}:cash", amount), ("bank_settlement", -amount)), card_id=card_id))


def issue(card_id: int) -> Commit:
    return Commit(changes=(CardIssued(CardState(card_id, f"94100000000000{card_id:02d}", "namdong", f"M{card_id}",
                                                "2912", "active"), AT),))


def folded(conn: sqlite3.Connection) -> tuple[dict[str, int], int]:
    """(the folded rows, the mark)."""
    return (dict(conn.execute("SELECT name, balance FROM account_folds")),
            conn.execute("SELECT entries_rowid FROM accounts_folded").fetchone()[0])


def balances(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT name, balance FROM accounts"))


@pytest.fixture
def store(tmp_path):
    return open_store(tmp_path)


@pytest.fixture
def writer(store):
    conn = connect_writer(store)
    yield conn
    conn.close()


def test_a_fresh_store_reads_its_balances_through_a_view_of_folded_rows(store):
    conn = sqlite3.connect(store, isolation_level=None)
    kinds = dict(conn.execute("SELECT name, type FROM sqlite_master WHERE name LIKE 'account%'"))
    assert kinds == {"accounts": "view", "account_folds": "table", "accounts_folded": "table",
                     "accounts_insert": "trigger", "accounts_update": "trigger"}
    # an INSERT through the view adds a folded row; an UPDATE moves it by the change
    conn.execute("INSERT INTO accounts(name, balance) VALUES ('fee_income', 500)")
    conn.execute("UPDATE accounts SET balance = balance - 120 WHERE name = 'fee_income'")
    assert folded(conn) == ({"fee_income": 380}, 0)
    # an entry past the mark moves the balance at once, and names an account with no row yet
    conn.execute("INSERT INTO entries(posting_id, account, amount) VALUES (1, 'fee_income', 20), "
                 "(1, 'card:1:cash', -20)")
    assert balances(conn) == {"fee_income": 400, "card:1:cash": -20}
    assert conn.execute("SELECT balance FROM accounts WHERE name = 'card:1:cash'").fetchone() == (-20,)
    # an UPDATE of an account known only by its entries gives it a row of the change
    conn.execute("UPDATE accounts SET balance = balance + 5 WHERE name = 'card:1:cash'")
    assert folded(conn) == ({"fee_income": 380, "card:1:cash": 5}, 0)
    assert balances(conn) == {"fee_income": 400, "card:1:cash": -15}


def test_groups_append_entries_and_a_fold_due_folds_them_all_with_the_mark(writer):
    writer.folded_at = DUE  # no fold due until the test says so
    commit_group(writer, [issue(1), issue(2), charge(1, 1, 50_000), charge(2, 2, 7_000)])
    commit_group(writer, [charge(3, 1, 1_000)])
    assert folded(writer) == ({}, 0)  # nothing folded: no account row written by either group
    assert balances(writer) == {"card:1:cash": 51_000, "card:2:cash": 7_000, "bank_settlement": -58_000}
    writer.folded_at = -DUE  # the fold is due: the next group folds, its own entries too
    commit_group(writer, [charge(4, 2, 300)])
    assert folded(writer) == ({"card:1:cash": 51_000, "card:2:cash": 7_300, "bank_settlement": -58_300}, 8)
    assert writer.folded_at > 0.0
    commit_group(writer, [charge(5, 1, 2)])  # the next second's entries: past the mark again
    assert folded(writer)[1] == 8
    assert balances(writer) == {"card:1:cash": 51_002, "card:2:cash": 7_300, "bank_settlement": -58_302}


def test_the_reader_adds_the_entries_past_the_mark_to_each_folded_row(store, writer):
    writer.folded_at, writer.fold_every_s = -DUE, 0.0  # every group folds
    commit_group(writer, [issue(1), charge(1, 1, 50_000)])
    writer.folded_at = DUE  # and now none does
    commit_group(writer, [charge(2, 1, 1_500), charge(3, 1, -200)])
    assert folded(writer) == ({"card:1:cash": 50_000, "bank_settlement": -50_000}, 2)
    reader = SqliteReader(store)
    try:
        card = reader.card_by_id(1)
        assert (card.cash, card.cashback, card.receivable) == (51_300, 0, 0)
        assert reader.card_by_pan("9410000000000001").cash == 51_300
        assert [c.cash for c in reader.cards_page(0, 10)] == [51_300]
        assert reader.account_balance("bank_settlement") == -51_300
        assert reader.account_balance("card:1:cash") == 51_300
        assert reader.account_balance("card:9:cash") == 0
        # one read each: the folded row by its key, the entries by rowid from the mark (no scan of either)
        plan = [row[3] for row in reader.conn.execute("EXPLAIN QUERY PLAN " + reader._BALANCE, ("card:1:cash",))]
        assert "SEARCH account_folds USING PRIMARY KEY (name=?)" in plan
        assert "SEARCH entries USING INTEGER PRIMARY KEY (rowid>?)" in plan
        assert [step for step in plan if step.startswith("SCAN")] == ["SCAN CONSTANT ROW", "SCAN accounts_folded"]
    finally:
        reader.close()


def test_a_group_that_fails_folds_nothing_and_the_next_one_folds(writer):
    writer.folded_at, writer.fold_every_s = -DUE, 0.0
    commit_group(writer, [issue(1), charge(1, 1, 10_000)])
    writer.fold_every_s = 1.0
    writer.folded_at = -DUE
    with pytest.raises(sqlite3.IntegrityError):  # posting 1 again: the whole group rolls back, its fold too
        commit_group(writer, [charge(2, 1, 500), charge(1, 1, 9)])
    assert folded(writer) == ({"card:1:cash": 10_000, "bank_settlement": -10_000}, 2)
    assert writer.folded_at == -DUE
    commit_group(writer, [charge(2, 1, 500)])
    assert folded(writer) == ({"card:1:cash": 10_500, "bank_settlement": -10_500}, 4)


def test_a_writer_starting_after_a_crash_folds_what_was_left_and_folds_as_it_stops(store, writer):
    writer.folded_at = DUE  # never folds: the entries a crash leaves past the mark
    commit_group(writer, [issue(1), charge(1, 1, 20_000), charge(2, 1, 5)])
    writer.close()
    start = LedgerWriter(store)  # SQLite: its connection opens, folds, then anyone reads
    conn = sqlite3.connect(store)
    assert folded(conn) == ({"card:1:cash": 20_005, "bank_settlement": -20_005}, 4)
    start._conn.folded_at = DUE
    start._write_group([charge(3, 1, 1)])
    assert folded(conn)[1] == 4

    asyncio.run(start.close())
    assert folded(conn) == ({"card:1:cash": 20_006, "bank_settlement": -20_006}, 6)
    conn.close()


def test_a_bulk_load_leaves_its_entries_folded(store):
    with BulkLoad(store) as load:
        load.cards([(1, "9410000000000001", "namdong", "M1", "2912", "active", AT),
                    (2, "9410000000000002", "yeonsu", "M2", "2912", "active", AT)])
        assert load.opening_charges(1, AT, [(1, 30_000), (2, 40_000)], {"seed": True}) == 70_000
    conn = sqlite3.connect(store)
    assert folded(conn) == ({"card:1:cash": 30_000, "card:2:cash": 40_000, "bank_settlement": -70_000}, 3)
    assert balances(conn) == folded(conn)[0]
    conn.close()


def test_fold_now_on_a_folded_ledger_changes_nothing(writer):
    writer.folded_at, writer.fold_every_s = -DUE, 0.0
    commit_group(writer, [issue(1), charge(1, 1, 10_000)])
    before = folded(writer)
    assert fold_now(writer) == 0
    assert folded(writer) == before


def test_a_store_from_before_the_folds_keeps_its_balances_all_folded(tmp_path):
    path = tmp_path / "ledger.sqlite3"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE accounts(name TEXT PRIMARY KEY, balance INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
        CREATE TABLE entries(posting_id INTEGER NOT NULL, account TEXT NOT NULL, amount INTEGER NOT NULL);
        INSERT INTO entries VALUES (1, 'card:1:cash', 9000), (1, 'bank_settlement', -9000),
                                   (2, 'card:1:cash', -100), (2, 'merchant:M1:payable', 100);
        INSERT INTO accounts VALUES ('card:1:cash', 8900), ('bank_settlement', -9000), ('merchant:M1:payable', 100);
    """)
    old.close()
    assert open_store(tmp_path) == path
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT type FROM sqlite_master WHERE name = 'accounts'").fetchone() == ("view",)
    assert folded(conn) == ({"card:1:cash": 8900, "bank_settlement": -9000, "merchant:M1:payable": 100}, 4)
    assert balances(conn) == {"card:1:cash": 8900, "bank_settlement": -9000, "merchant:M1:payable": 100}
    conn.close()
    open_store(tmp_path)  # a second open changes nothing
    conn = sqlite3.connect(path)
    assert folded(conn)[1] == 4 and balances(conn)["card:1:cash"] == 8900
    conn.close()


# ---------------------------------------------------------------------------- a card's postings, folded

def card_postings(conn: sqlite3.Connection) -> list[tuple[int, int]]:
    return sorted(conn.execute("SELECT card_id, posting_id FROM card_postings"))


def statement_ids(store, pan: str, recent: int = 10) -> list[int]:
    return [p["id"] for p in card_statement(store, pan, recent=recent)["postings"]]


def test_a_cards_postings_are_folded_with_its_balances_and_the_statement_reads_both(store, writer):
    writer.folded_at = DUE
    commit_group(writer, [issue(1), issue(2), charge(1, 1, 50_000), charge(2, 2, 7_000), charge(3, 1, 10)])
    assert card_postings(writer) == []  # no row written per group: no index on postings(card_id) either
    assert writer.execute("SELECT name FROM sqlite_master WHERE name = 'postings_card'").fetchone() is None
    assert statement_ids(store, "9410000000000001") == [3, 1]  # from the entries past the mark
    writer.folded_at = -DUE
    commit_group(writer, [charge(4, 2, 5)])
    assert card_postings(writer) == [(1, 1), (1, 3), (2, 2), (2, 4)]
    writer.folded_at = DUE
    commit_group(writer, [charge(5, 1, 1), charge(6, 2, 1)])
    assert statement_ids(store, "9410000000000001") == [5, 3, 1]  # folded and past the mark, newest first
    assert statement_ids(store, "9410000000000002", recent=2) == [6, 4]
    assert verify(store).ok


def test_a_posting_with_no_entries_gets_its_cards_row_in_its_own_group(store, writer):
    writer.folded_at = DUE
    empty = Commit(posting=Posting(7, "seed_charge", AT, 0, (), card_id=1))  # nothing to fold it by
    commit_group(writer, [issue(1), charge(1, 1, 100), empty])
    assert card_postings(writer) == [(1, 7)]
    assert statement_ids(store, "9410000000000001") == [7, 1]
    assert verify(store).ok


def test_verify_names_a_folded_posting_missing_from_its_cards_postings_and_a_row_of_another_card(store, writer):
    writer.folded_at, writer.fold_every_s = -DUE, 0.0
    commit_group(writer, [issue(1), issue(2), charge(1, 1, 100), charge(2, 2, 200)])
    assert verify(store).ok
    writer.execute("DELETE FROM card_postings WHERE posting_id = 2")
    assert verify(store).problem == "posting 2 of card 2 is missing from its card's postings"
    writer.execute("INSERT INTO card_postings VALUES (2, 2), (2, 1)")
    assert verify(store).problem == "card 2's postings name posting 1, which is not the card's"


def test_a_store_with_the_card_index_gets_every_cards_posting_and_loses_the_index(tmp_path):
    store = open_store(tmp_path)
    conn = sqlite3.connect(store)
    conn.execute("DROP TABLE card_postings")  # as before card_postings, with the index it replaces
    conn.execute("CREATE INDEX postings_card ON postings(card_id)")
    conn.execute("INSERT INTO postings(id, kind, at, card_id, amount) VALUES (1, 'charge', 'x', 4, 10), "
                 "(2, 'charge', 'x', 3, 10), (3, 'charge', 'x', NULL, 0), (4, 'charge', 'x', 4, 10)")
    conn.commit()
    conn.close()
    open_store(tmp_path)
    conn = sqlite3.connect(store)
    assert card_postings(conn) == [(3, 2), (4, 1), (4, 4)]
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'postings_card'").fetchone() is None
    conn.close()
