"""The day and month counters by period (switch/authorize/state.py, "whole periods"): the
ledger's one writer reads a period whole the first time it meets it, at start or at a rollover,
and then reads no counter of it; a period met again after a later one, and every period of a
cluster's instance, is read per key. On SQLite the counters are sums of appended moves
(switch/ledger/store.py, COUNTERS), so the values checked here are sums of several moves."""

from __future__ import annotations

from datetime import datetime

import pytest

from switch.authorize.state import HotState
from switch.ledger.records import CardDayMoved, MemberMonthMoved
from switch.ledger.sqlite import SqliteReader
from switch.ledger.store import open_store
from test_hot_state_bounds import write

pytestmark = pytest.mark.both_stores  # SQLite and PostgreSQL (tests/conftest.py)

D1 = datetime.fromisoformat("2025-10-31T23:59:00+09:00")
D2 = datetime.fromisoformat("2025-11-01T00:01:00+09:00")
COUNTED = ("month_counters", "day_counters", "month_charged", "member_month", "card_day", "card_month_charged",
           "card_with_counters", "card_by_pan")


class CountingReader(SqliteReader):
    """The real reader (on PostgreSQL the same SQL), recording which counter reads are made."""

    def __init__(self, path):
        super().__init__(path)
        self.reads: list[str] = []

    def __getattribute__(self, name):
        if name in COUNTED:
            object.__getattribute__(self, "reads").append(name)
        return object.__getattribute__(self, name)


class OneBlock:
    """IdBlocks as a cluster's instance has them (switch/ops/cluster.py): one block of ids."""

    def block(self, kind: str) -> tuple[int, int]:
        return 1_000, 1 << 40


@pytest.fixture
def store(tmp_path):
    db = open_store(tmp_path)
    write(db, "INSERT INTO cards(id, pan, program, member, expiry, status, issued_at) VALUES (?,?,?,?,?,?,?)",
          [(i, f"94101000000{i:05d}", "namdong", f"M{i % 3}", "3112", "active", "2025-10-01T00:00:00+09:00")
           for i in range(1, 7)])
    # two moves of each counter: the value read is their sum (one row each on PostgreSQL's keyed tables)
    write(db, "INSERT INTO card_days(card_id, day, spent) VALUES (?,?,?)",
          [(1, "2025-10-31", 3_000), (2, "2025-11-01", 700), (1, "2025-11-01", 400)])
    write(db, "INSERT INTO member_months(member, month, eligible) VALUES (?,?,?)",
          [("M1", "2025-10", 9_000), ("M2", "2025-11", 1_200)])
    write(db, "INSERT INTO card_months(card_id, month, charged) VALUES (?,?,?)", [(4, "2025-11", 50_000)])
    return db


@pytest.fixture
def reader(store):
    r = CountingReader(store)
    yield r
    r.close()


def test_the_first_request_of_a_new_day_reads_the_day_whole_once(store, reader):
    state = HotState(reader)
    state.warm(D1, budget_s=0.0)  # the counters, no card: a card is read when first used
    assert reader.reads == ["month_counters", "day_counters", "month_charged"]
    assert (state.load_card_day(1, "2025-10-31"), state.load_member_month("M1", "2025-10")) == (3_000, 9_000)
    reader.reads.clear()
    # midnight, then a month's end too: each new period is read whole when first met
    assert state.load_card_for("9410100000000002", D2).id == 2
    assert reader.reads == ["month_counters", "day_counters", "card_by_pan"]
    assert [state.load_card_day(c, "2025-11-01") for c in (1, 2, 3)] == [400, 700, 0]
    assert [state.load_member_month(m, "2025-11") for m in ("M1", "M2")] == [0, 1_200]
    assert reader.reads == ["month_counters", "day_counters", "card_by_pan"]  # nothing more read
    assert [state.load_card_month_charged(c, "2025-11") for c in (4, 5)] == [50_000, 0]
    assert reader.reads[3:] == ["month_charged"]


def test_a_committed_unit_of_the_new_day_is_counted_once(store, reader):
    state = HotState(reader)
    state.warm(D1)
    assert (state.load_card_day(2, "2025-11-01"), state.load_member_month("M2", "2025-11")) == (700, 1_200)
    # a purchase on card 3 (member M0) decided after the periods were met: its commit, then its apply
    write(store, "INSERT INTO card_days(card_id, day, spent) VALUES (?,?,?)", [(3, "2025-11-01", 5_000)])
    write(store, "INSERT INTO member_months(member, month, eligible) VALUES (?,?,?)", [("M0", "2025-11", 5_000)])
    state.apply((CardDayMoved(3, "2025-11-01", 5_000), MemberMonthMoved("M0", "2025-11", 5_000)))
    assert (state.load_card_day(3, "2025-11-01"), state.load_member_month("M0", "2025-11")) == (5_000, 5_000)
    assert (reader.reads.count("day_counters"), reader.reads.count("month_counters")) == (2, 2)
    assert "card_day" not in reader.reads and "member_month" not in reader.reads


def test_a_day_met_again_after_a_later_one_is_read_per_key(store, reader):
    state = HotState(reader)
    state.warm(D2)
    reader.reads.clear()
    assert state.load_card_day(1, "2025-10-31") == 3_000  # the clock stepped back across midnight
    assert state.load_card_day(2, "2025-10-31") == 0
    assert reader.reads == ["card_day", "card_day"]
    assert state.load_card_day(1, "2025-11-01") == 400  # and forward again: the day was dropped, read per key
    assert reader.reads == ["card_day", "card_day", "card_day"]
    assert not state.card_days.whole("2025-11-01")


def test_a_cleared_hot_state_reads_its_period_whole_again(store, reader):
    state = HotState(reader)
    state.warm(D2)
    state.clear()  # a failed commit: decisions in flight are void, the store is read again
    reader.reads.clear()
    assert state.load_card_day(1, "2025-11-01") == 400
    assert reader.reads == ["day_counters"]
    assert state.card_days.whole("2025-11-01")


def test_a_cluster_instance_reads_every_counter_per_key(store, reader):
    state = HotState(reader)
    state.use_ids(OneBlock())
    card = state.load_card_for("9410100000000001", D2)
    assert (card.id, state.load_card_day(1, "2025-11-01"), state.load_member_month("M1", "2025-11")) == (1, 400, 0)
    assert state.load_card_day(2, "2025-11-01") == 700
    assert reader.reads == ["card_with_counters", "card_day"]
    assert not state.card_days.whole("2025-11-01")
