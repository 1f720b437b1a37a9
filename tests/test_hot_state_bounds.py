"""The hot state's memory bounds (docs/architecture.md "Memory bounds"): outcomes and
tombstones by count and by age, the day and month counters of the current period only, and
what is dropped from memory still found in the store."""

from __future__ import annotations

import pytest

from switch.authorize.state import CardCounters, HotState, PeriodCounters
from switch.ledger.records import MessageOutcome, OriginalTombstoned
from switch.ledger.sqlite import SqliteReader
from switch.ledger.store import connect, open_store

pytestmark = pytest.mark.both_stores  # SQLite and PostgreSQL (tests/conftest.py)

KEY = ("T0000001", "000001", "1015120000")


class CountingReader(SqliteReader):
    """The real reader (on PostgreSQL the same SQL), counting the point reads the hot state makes."""

    def __init__(self, path):
        super().__init__(path)
        self.reads: list[str] = []

    def message(self, key):
        self.reads.append("message")
        return super().message(key)

    def tombstone(self, key):
        self.reads.append("tombstone")
        return super().tombstone(key)


def outcome(stan: str) -> MessageOutcome:
    return MessageOutcome(("T0000001", stan, "1015120000"), "0200", "d" * 64, "14", {"t": "0210", "39": "14"}, None,
                          "2025-10-15T12:00:00.000000+09:00")


@pytest.fixture
def store(tmp_path):
    return open_store(tmp_path)


def write(db, sql: str, rows: list[tuple]) -> None:
    """Rows committed to the store (autocommit), as the writer commits them."""
    conn = connect(db)
    try:
        conn.executemany(sql, rows)
    finally:
        conn.close()


def store_message(db, m: MessageOutcome) -> None:
    write(db, "INSERT INTO messages(tid, stan, tx_time, mti, digest, rc, response, posting_id, at) "
              "VALUES (?,?,?,?,?,?,?,?,?)", [(*m.key, m.mti, m.digest, m.rc, '{"t":"0210","39":"14"}', None, m.at)])


def test_outcomes_are_kept_up_to_the_count_then_the_oldest_dropped(store):
    state = HotState(SqliteReader(store), messages_max=3)
    for i in range(5):
        state.message_committed(outcome(f"{i:06d}"))
    assert [k[1] for k in state.messages] == ["000002", "000003", "000004"]


def test_outcomes_older_than_the_horizon_are_dropped_and_a_repeat_reads_the_store(store):
    reader = CountingReader(store)
    state = HotState(reader, messages_age_s=900.0)
    old = outcome("000001")
    store_message(store, old)           # committed, as the writer does before message_committed
    state.clock_s = 1_000.0
    state.message_committed(old)
    state.clock_s = 1_900.0             # exactly the horizon: still kept
    state.message_committed(outcome("000002"))
    assert [k[1] for k in state.messages] == ["000001", "000002"]
    state.clock_s = 1_900.5             # past it: the first goes
    state.message_committed(outcome("000003"))
    assert [k[1] for k in state.messages] == ["000002", "000003"]
    assert reader.reads == []
    again = state.load_message(old.key)  # the filter says "may be stored": the store answers
    assert (again.key, again.rc, again.response, reader.reads) == (old.key, "14", {"t": "0210", "39": "14"},
                                                                  ["message"])
    assert state.load_message(("T0000009", "000009", "1015120000")) is None
    assert reader.reads == ["message"]  # a key never stored: no read (Bloom filter)


def test_tombstones_beyond_the_count_leave_memory_and_are_still_found_in_the_store(store):
    reader = CountingReader(store)
    state = HotState(reader, tombstones_max=2)
    keys = [("T0000001", f"{i:06d}", "1015120000") for i in range(3)]
    # committed by the writer before apply()
    write(store, "INSERT INTO tombstones(tid, stan, tx_time, at) VALUES (?,?,?,'x')", keys)
    state.apply(tuple(OriginalTombstoned(k, "x") for k in keys))
    assert list(state.tombstones) == keys[1:]
    assert state.load_tombstone(keys[0]) is True and reader.reads == ["tombstone"]
    assert state.tombstoned(keys[0]) is True           # back in memory for the decision
    assert list(state.tombstones) == [keys[2], keys[0]]
    assert state.load_tombstone(("T0000001", "999999", "1015120000")) is False
    assert reader.reads == ["tombstone"]                # never tombstoned: no read


def test_tombstones_older_than_the_horizon_leave_memory(store):
    state = HotState(SqliteReader(store), messages_age_s=60.0)
    state.clock_s = 0.0
    state.apply((OriginalTombstoned(KEY, "x"),))
    state.clock_s = 61.0
    other = ("T0000002", "000002", "1015120001")
    state.apply((OriginalTombstoned(other, "x"),))
    assert list(state.tombstones) == [other]


def test_a_tombstone_in_a_restarted_switch_is_found_through_the_filter(store):
    write(store, "INSERT INTO tombstones(tid, stan, tx_time, at) VALUES (?,?,?,'x')", [KEY])
    reader = CountingReader(store)
    state = HotState(reader)
    assert len(state.tombstones) == 0                   # nothing loaded into memory at start
    assert state.load_tombstone(KEY) is True and reader.reads == ["tombstone"]


def test_period_counters_hold_one_period_and_move_only_what_they_hold():
    c = PeriodCounters()
    c.set("M1", "2025-10", 5_000)
    c.set("M2", "2025-10", 0)
    c.bump("M1", "2025-10", 1_000)
    c.bump("M3", "2025-10", 7)          # not held: the store has it
    c.bump("M1", "2025-09", 7)          # another period: the store has it
    assert dict(c.items()) == {("M1", "2025-10"): 6_000, ("M2", "2025-10"): 0}
    assert (("M1", "2025-10") in c, ("M1", "2025-09") in c, len(c)) == (True, False, 2)
    with pytest.raises(KeyError):
        c.get("M1", "2025-09")
    c.set("M2", "2025-11", 10)          # a new month drops the old one
    assert dict(c.items()) == {("M2", "2025-11"): 10} and c.period == "2025-11"


def test_card_counters_are_arrays_by_card_id_with_the_same_behaviour():
    c = CardCounters()
    c.set(5, "2025-10-15", 0)
    c.set(2, "2025-10-15", 30_000)
    c.bump(5, "2025-10-15", 1_000)
    c.bump(3, "2025-10-15", 9)          # not held
    c.bump(2, "2025-10-14", 9)          # another day
    assert dict(c.items()) == {(2, "2025-10-15"): 30_000, (5, "2025-10-15"): 1_000}
    assert set(c) == {(2, "2025-10-15"), (5, "2025-10-15")} and len(c) == 2
    assert (c.holds(3, "2025-10-15"), c.holds(99, "2025-10-15"), c.get(5, "2025-10-15")) == (False, False, 1_000)
    with pytest.raises(KeyError):
        c.get(3, "2025-10-15")
    c.set(1, "2025-10-16", 500)
    assert dict(c.items()) == {(1, "2025-10-16"): 500} and len(c) == 1


def test_the_card_table_gives_back_every_field_it_was_given():
    from switch.authorize.state import CardTable
    from switch.ledger.records import CardState

    table = CardTable()
    cards = [CardState(3, "9410000000000039", "incheon", "M000000003", "3010", "active", 12_345, 678, -90,
                       "1234", 2, False),
             CardState(7, "0410000000000071", "namdong", "M000000001", "2912", "blocked", 0, 0, 0, "", 3, True)]
    for card in cards:
        table.put(card)
    assert [table.get(3), table.get(7)] == cards
    assert table.by_pan("0410000000000071") == cards[1]      # a leading zero kept
    assert table.by_pan("410000000000071") is None            # … and not confused with the PAN without it
    assert (table.get(5), table.get(99), table.by_pan("94100000000000xx"), len(table)) == (None, None, None, 2)
    table.set_balances(3, 1, 2, 3)
    table.set_pin_tries(3, 0, True)
    table.set_status(3, "lost")
    table.set_pvv(3, "")
    assert table.get(3) == CardState(3, "9410000000000039", "incheon", "M000000003", "3010", "lost", 1, 2, 3, "", 0,
                                     True)
    table.set_balances(5, 1, 1, 1)                            # not cached: nothing to move (the store has it)
    assert table.get(5) is None
    with pytest.raises(KeyError) as err:
        table["9410000000000047"]
    assert "9410000000000047" not in str(err.value)           # a PAN never in an error


def test_the_card_table_builds_a_cards_record_once_until_its_row_changes():
    """A purchase looks its card up three times or more: the same record comes back until one of
    the card's columns changes (put, set_*), after which the next lookup reads the new row.
    Each change is made with that very card's record the last built."""
    from switch.authorize.state import CardTable
    from switch.ledger.records import CardState

    table = CardTable()
    table.put(CardState(3, "9410000000000039", "incheon", "M000000003", "3010", "active", 100, 10, 0, "1234", 0,
                        False))
    table.put(CardState(4, "9410000000000047", "namdong", "M000000004", "3010", "active", 5, 0, 0, "", 0, False))
    first = table.get(3)
    assert table.get(3) is first and table.by_pan("9410000000000039") is first
    assert table.get(4) is not first and table.get(3) is not first  # another card built between: built again
    changes = [(lambda: table.set_balances(3, 1, 2, -3), (1, 2, -3, 0, False, "active", "1234")),
               (lambda: table.set_pin_tries(3, 2, True), (1, 2, -3, 2, True, "active", "1234")),
               (lambda: table.set_status(3, "lost"), (1, 2, -3, 2, True, "lost", "1234")),
               (lambda: table.set_pvv(3, ""), (1, 2, -3, 2, True, "lost", "")),
               (lambda: table.put(CardState(3, "9410000000000039", "incheon", "M000000003", "3010", "active", 7, 0, 0,
                                            "9999", 0, False)), (7, 0, 0, 0, False, "active", "9999"))]
    for change, after in changes:
        before = table.get(3)
        change()
        card = table.get(3)
        assert card is not before
        assert (card.cash, card.cashback, card.receivable, card.pin_tries, card.pin_blocked, card.status,
                card.pvv) == after
    table.get(4)
    table.set_balances(3, 50, 0, 0)  # not the last built: it is still right, and card 3 reads the change
    assert (table.get(4).cash, table.get(3).cash) == (5, 50)


def test_the_card_table_answers_none_for_a_pan_that_is_not_ascii_digits():
    from switch.authorize.state import CardTable

    table = CardTable()
    assert [table.by_pan(p) for p in ("", "94²0", "٣٣٣٣", "9410 0000")] == [None, None, None, None]


@pytest.mark.parametrize("counters, key, other", [(PeriodCounters, "M1", "M2"), (CardCounters, 5, 7)])
def test_complete_counters_know_a_counter_not_stored_is_zero_until_the_period_changes(counters, key, other):
    c = counters()
    c.set(key, "2025-10-15", 4_000)
    assert (c.holds(other, "2025-10-15"), c.complete) == (False, False)
    c.completed("2025-10-15")           # every stored counter of the day is held (HotState.warm)
    assert (c.holds(other, "2025-10-15"), c.get(other, "2025-10-15"), c.get(key, "2025-10-15")) == (True, 0, 4_000)
    c.bump(other, "2025-10-15", 700)    # not stored, so 0 before: now 700, and held
    c.bump(key, "2025-10-15", 300)
    assert dict(c.items()) == {(key, "2025-10-15"): 4_300, (other, "2025-10-15"): 700}
    c.set(key, "2025-10-16", 1)         # another period: nothing known about the others any more
    assert (c.complete, c.holds(other, "2025-10-16")) == (False, False)
    with pytest.raises(KeyError):
        c.get(other, "2025-10-16")


def test_a_warm_hot_state_holds_every_card_and_reads_nothing_for_a_new_one(store):
    from datetime import datetime

    write(store, "INSERT INTO cards(id, pan, program, member, expiry, status, issued_at) VALUES (?,?,?,?,?,?,?)",
          [(i, f"94101000000{i:05d}", "namdong", f"M{i % 7}", "3112", "active", "2025-10-01T00:00:00+09:00")
           for i in range(1, 25_002)])  # more than two pages
    write(store, "INSERT INTO accounts(name, balance) VALUES (?, ?)", [("card:3:cash", 12_000), ("card:3:cashback", 40)])
    write(store, "INSERT INTO member_months(member, month, eligible) VALUES (?,?,?)", [("M3", "2025-10", 9_000)])
    write(store, "INSERT INTO card_days(card_id, day, spent) VALUES (?,?,?)", [(3, "2025-10-15", 2_500)])
    reader = SqliteReader(store)
    try:
        state = HotState(reader)
        now = datetime.fromisoformat("2025-10-15T12:00:00+09:00")
        assert state.warm(now) == 25_001
        reads = []
        state.reader = type("Counting", (), {"__getattr__": lambda _, name: reads.append(name)})()
        card = state.load_card_for("9410100000000003", now)
        assert (card.id, card.member, card.cash, card.cashback) == (3, "M3", 12_000, 40)
        assert (state.load_member_month("M3", "2025-10"), state.load_card_day(3, "2025-10-15")) == (9_000, 2_500)
        assert (state.load_member_month("M4", "2025-10"), state.load_card_day(4, "2025-10-15")) == (0, 0)
        assert state.load_card_for("9410100000025001", now).id == 25_001
        assert reads == []  # nothing asked of the store
    finally:
        reader.close()


def _cards(store, n: int) -> None:
    write(store, "INSERT INTO cards(id, pan, program, member, expiry, status, issued_at) VALUES (?,?,?,?,?,?,?)",
          [(i, f"94101000000{i:05d}", "namdong", f"M{i % 7}", "3112", "active", "2025-10-01T00:00:00+09:00")
           for i in range(1, n + 1)])


def test_a_warm_budget_stops_taking_cards_after_the_page_that_passes_it(store):
    from datetime import datetime

    _cards(store, 25_001)
    ticks = iter(range(100))  # a clock that moves one second at each look: a budget of 1.5 s allows one page
    reader = SqliteReader(store)
    try:
        state = HotState(reader)
        now = datetime.fromisoformat("2025-10-15T12:00:00+09:00")
        assert state.warm(now, budget_s=1.5, clock=lambda: next(ticks)) == HotState.WARM_PAGE
        assert (len(state.cards), state.member_months.complete, state.card_days.complete) == (10_000, True, True)
        assert state.cards.by_pan("9410100000010001") is None  # past the budget: read on first use
        assert state.load_card_for("9410100000010001", now).id == 10_001
    finally:
        reader.close()


def test_a_warm_budget_of_zero_takes_the_counters_and_no_card(store):
    from datetime import datetime

    _cards(store, 3)
    write(store, "INSERT INTO member_months(member, month, eligible) VALUES (?,?,?)", [("M3", "2025-10", 9_000)])
    reader = SqliteReader(store)
    try:
        state = HotState(reader)
        now = datetime.fromisoformat("2025-10-15T12:00:00+09:00")
        assert state.warm(now, budget_s=0.0) == 0
        assert (len(state.cards), state.member_months.get("M3", "2025-10"), state.member_months.get("M1", "2025-10")) \
            == (0, 9_000, 0)
    finally:
        reader.close()


@pytest.mark.parametrize("warm_s, held", [(None, 3), (5.0, 3), (0.0, 0)])
async def test_the_switch_warms_its_sqlite_hot_state_before_serving_unless_told_not_to(tmp_path, warm_s, held):
    from datetime import datetime

    from switch.clock import FixedClock
    from switch.ops.runtime import open_core

    data = tmp_path / "var"
    _cards(open_store(data), 3)
    clock = FixedClock(datetime.fromisoformat("2025-10-15T12:00:00+09:00"))
    kw = {} if warm_s == 5.0 else {"warm_s": warm_s}  # 5.0: the default (SwitchConfig.warm_s)
    async with open_core(data, clock=clock, **kw) as core:
        assert len(core.state.cards) == held
        assert core.state.card_days.complete is (held > 0)
