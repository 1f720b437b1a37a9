"""A group's rows (switch/ledger/rows.py): every record type of the ledger port turned into the
rows its table gets, exactly, in the order the group decided them: both adapters (SQLite and
PostgreSQL) write these rows."""

from __future__ import annotations

import pytest

from switch.domain import Merchant
from switch.ledger.records import (CardDayMoved, CardIssued, CardMonthCharged, CardPvvSet, CardState, CardStatusSet,
                                   ChargeDetail, Commit, HoldDetail, KeyGroupAdded, KsnAccepted, MemberMonthMoved,
                                   MerchantAdded, MerchantUpdated, MessageOutcome, MetaSet, OriginalTombstoned,
                                   OutboxEvent, PinTriesSet, Posting, PostingUndone, PurchaseDetail,
                                   RefundReversalDetail, RelayMarked, Terminal, TerminalAdded, TerminalStatusSet,
                                   UndoDetail)
from switch.ledger.rows import detail_json, group_rows

AT = "2025-10-15T12:00:00.000000+09:00"


def purchase(posting_id: int, card_id: int, amount: int) -> Posting:
    detail = PurchaseDetail(member="M1", month="2025-10", day="2025-10-15", cb_used=0, cash_used=amount, fee=5,
                            fee_tier="small", rate_bp=50, support=(("city", 2),), cashback=(("city", 100),),
                            eligible=amount, policy="p1")
    return Posting(id=posting_id, kind="purchase", at=AT, amount=amount, card_id=card_id, mid="MID1", tid="T1",
                   stan="000001", rrn="000000000001", fee=5, support=2, cashback=100, detail=detail,
                   entries=((f"card:{card_id}", -amount), ("merchant:MID1", amount - 5), ("fee_income", 3),
                            ("fee_subsidy:city", -2), ("cashback_expense:city", -100), (f"cashback:{card_id}", 100),
                            ("fee_income", 4)))


def event(posting_id: int, kind: str) -> OutboxEvent:
    return OutboxEvent(event_id=f"e-{posting_id}-{kind}", topic="eum/namdong/transactions", type=kind,
                       posting_id=posting_id, payload='{"x":1}')


def test_a_purchase_unit_gives_its_posting_entries_message_event_and_counters():
    p = purchase(7, 3, 1000)
    message = MessageOutcome(("T1", "000001", "1015120000"), "0200", "d1g", "00", {"t": "0210", "39": "00"}, 7, AT)
    unit = Commit(posting=p, message=message, events=(event(7, "purchase"),),
                  changes=(MemberMonthMoved("M1", "2025-10", 1000), CardDayMoved(3, "2025-10-15", 1000),
                           KsnAccepted("T1", 12)))
    rows = group_rows([unit], 1700000000.5)
    assert rows["postings"] == [(7, "purchase", AT, 3, "MID1", "T1", "000001", "000000000001", 1000, 5, 2, 100, None,
                                 detail_json(p.detail))]
    assert rows["entries"] == [(7, "card:3", -1000), (7, "merchant:MID1", 995), (7, "fee_income", 3),
                               (7, "fee_subsidy:city", -2), (7, "cashback_expense:city", -100), (7, "cashback:3", 100),
                               (7, "fee_income", 4)]
    assert rows["accounts"] == [("card:3", -1000), ("cashback:3", 100), ("cashback_expense:city", -100),
                                ("fee_income", 7), ("fee_subsidy:city", -2), ("merchant:MID1", 995)]
    assert rows["messages"] == [("T1", "000001", "1015120000", "0200", "d1g", "00", '{"t":"0210","39":"00"}', 7, AT)]
    assert rows["outbox"] == [("e-7-purchase", "eum/namdong/transactions", "purchase", 7, '{"x":1}', 1700000000.5,
                               None, None)]
    assert rows["member_months"] == [("M1", "2025-10", 1000)]
    assert rows["card_days"] == [(3, "2025-10-15", 1000)]
    assert rows["ksn"] == [(12, "T1")]
    assert rows["card_postings"] == []  # a posting with entries is found through them (fold_accounts)


def test_a_group_sums_its_counters_keeps_the_highest_ksn_and_orders_shared_rows():
    units = [Commit(posting=purchase(1, 1, 100), events=(event(1, "purchase"),),
                    changes=(MemberMonthMoved("M1", "2025-10", 100), CardDayMoved(1, "2025-10-15", 100),
                             KsnAccepted("T2", 9), KsnAccepted("T1", 4), PostingUndone(5, 30, 30))),
             Commit(posting=purchase(2, 1, 250), events=(event(2, "purchase"),),
                    changes=(MemberMonthMoved("M1", "2025-10", 250), CardDayMoved(1, "2025-10-15", 250),
                             KsnAccepted("T1", 3), PostingUndone(5, 20, 0), CardMonthCharged(1, "2025-10", 70)))]
    rows = group_rows(units, 0.0)
    assert [r[0] for r in rows["postings"]] == [1, 2]
    assert rows["member_months"] == [("M1", "2025-10", 350)]
    assert rows["card_days"] == [(1, "2025-10-15", 350)]
    assert rows["card_months"] == [(1, "2025-10", 70)]
    assert rows["ksn"] == [(4, "T1"), (9, "T2")]  # the highest per terminal, terminals in one order
    assert rows["undone"] == [(50, 30, 5)]
    assert ("card:1", -350) in rows["accounts"] and ("merchant:MID1", 340) in rows["accounts"]


def test_every_change_type_has_its_row():
    card = CardState(id=9, pan="9410100000009999", program="namdong", member="M9", expiry="2912", status="active",
                     pvv="1234")
    merchant = Merchant(mid="MID9", name="Shop", district="namdong", annual_sales=100_000_000)
    changes = (OriginalTombstoned(("T1", "000002", "1015120001"), AT), PinTriesSet(9, 3, True),
               CardStatusSet(9, "lost"), CardPvvSet(9, "4321"), CardIssued(card, AT), MerchantAdded(merchant),
               TerminalAdded(Terminal("T9", "MID9", "dukpt-tdes", "UKEY", "FFFF9876540000000000")),
               MetaSet("k", "v"), KeyGroupAdded("g1", "dukpt-tdes", "UBDK", "ABC123"), RelayMarked("mqtt", 42, AT),
               TerminalStatusSet("T9", "disabled"),
               MerchantUpdated(Merchant(mid="MID9", name="Shop 2", district="namdong", annual_sales=200_000_000,
                                        category="food")))
    rows = group_rows([Commit(changes=changes)], 0.0)
    assert rows["tombstones"] == [("T1", "000002", "1015120001", AT)]
    assert rows["pin_tries"] == [(3, 1, 9)]
    assert rows["status"] == [("lost", 9)]
    assert rows["pvv"] == [("4321", 9)]
    assert rows["cards"] == [(9, "9410100000009999", "namdong", "M9", "2912", "active", AT, "1234")]
    assert rows["merchants"] == [("MID9", "Shop", "namdong", 100_000_000, "general", 0)]
    assert rows["terminals"] == [("T9", "MID9", "dukpt-tdes", "UKEY", "FFFF9876540000000000")]
    assert rows["meta"] == [("k", "v")]
    assert rows["key_groups"] == [("g1", "dukpt-tdes", "UBDK", "ABC123")]
    assert rows["relay"] == [("mqtt", 42, AT)]
    assert rows["terminal_status"] == [("disabled", "T9")]
    assert rows["merchant_update"] == [("Shop 2", 200_000_000, "food", "MID9")]
    assert rows["postings"] == rows["entries"] == rows["outbox"] == []


def test_a_posting_without_entries_is_listed_by_card_and_an_auto_charge_comes_first():
    release = Posting(id=11, kind="release", at=AT, amount=0, entries=(), card_id=4, detail=HoldDetail("M4", AT, 0))
    charge = Posting(id=12, kind="charge", at=AT, amount=500, card_id=4,
                     entries=(("card:4", 500), ("float", -500)), detail=ChargeDetail("M4", 0, auto=True))
    rows = group_rows([Commit(posting=release, events=(event(11, "release"),)),
                       Commit(posting=purchase(13, 4, 300), before=(charge,), events=(event(13, "purchase"),))], 0.0)
    assert rows["card_postings"] == [(4, 11)]
    assert [r[0] for r in rows["postings"]] == [11, 12, 13]
    assert rows["postings"][1][-1] == '{"member":"M4","receivable_repaid":0,"auto":true}'


def test_events_carry_their_partition_sequence_when_the_writer_keeps_one():
    seqs = iter(range(100, 200))
    unit = Commit(posting=purchase(3, 2, 10), events=(event(3, "purchase"), event(3, "cashback.credited")), partition=17)
    rows = group_rows([unit], 5.0, pseq=lambda partition: next(seqs) + partition)
    assert [(r[6], r[7]) for r in rows["outbox"]] == [(17, 117), (17, 118)]


def test_detail_json_keeps_the_column_shape_of_each_detail():
    assert detail_json(None) == "{}"
    assert detail_json(UndoDetail(member="M", month="2025-10", day="2025-10-15", cb_back=1, fee_back=2,
                                  support_back=(("city", 1),), claw=(), eligible_back=3)) == (
        '{"cb_back":1,"fee_back":2,"support_back":[["city",1]],"claw":[],"eligible_back":3,'
        '"member":"M","month":"2025-10","day":"2025-10-15"}')
    assert detail_json(RefundReversalDetail(member="M", month="2025-10", day="2025-10-15", reverses=8)) == (
        '{"reverses":8,"member":"M","month":"2025-10","day":"2025-10-15"}')


def test_a_posting_that_does_not_balance_is_refused():
    bad = Posting(id=1, kind="purchase", at=AT, amount=10, card_id=1, entries=(("card:1", -10), ("merchant:M", 9)))
    with pytest.raises(AssertionError, match="does not balance"):
        group_rows([Commit(posting=bad, events=(event(1, "purchase"),))], 0.0)


def test_an_unknown_change_type_is_our_bug_and_said_so():
    with pytest.raises(TypeError, match="unknown change str"):
        group_rows([Commit(changes=("not a change",))], 0.0)  # type: ignore[arg-type]
