"""Pre-authorization decisions without an event loop or a database (switch/authorize/decide.py):
the hold, the completion (its tolerance, what it may and may not be declined for), and that a
completion posts exactly the sale a purchase of the final amount would, plus the release of
its hold. The View is tests/test_decide.py's DictView."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from switch.authorize.decide import decide
from switch.ledger.records import CardDayMoved, HoldDetail, PostingUndone
from switch.record import replace
from switch.rules.policy import Preauth
from switch.wire.codec import response_fields
from switch.wire.messages import Balances, Kind, OriginalData, Rc, Request

from test_decide import (LAUNCH, NAMDONG_SHOP, RULES, TID, TX_TIME, DictView, committed, decided, namdong_card,
                         purchase)

HOLD_STAN, COMPLETION_STAN = "000010", "000011"


def preauth(pan: str, amount: int, *, rrn: str = "", stan: str = HOLD_STAN, mti: str = "0100"):
    req = Request(mti=mti, kind=Kind.PREAUTH, terminal=TID, stan=stan, transmission_time=TX_TIME,
                  processing_code="000000", pan=pan, amount=amount, merchant=NAMDONG_SHOP.mid, rrn=rrn)
    fields = {"t": mti, "2": pan, "3": "000000", "4": f"{amount:012d}", "7": TX_TIME, "11": stan, "41": TID,
              "42": NAMDONG_SHOP.mid, "49": "410", **({"37": rrn} if rrn else {})}
    return req, fields


def completion(pan: str, amount: int, rrn: str, *, stan: str = COMPLETION_STAN):
    req = Request(mti="0220", kind=Kind.COMPLETION, terminal=TID, stan=stan, transmission_time=TX_TIME,
                  processing_code="000000", pan=pan, amount=amount, merchant=NAMDONG_SHOP.mid, rrn=rrn,
                  original=OriginalData("0100", HOLD_STAN, TX_TIME))
    fields = {"t": "0220", "2": pan, "3": "000000", "4": f"{amount:012d}", "7": TX_TIME, "11": stan, "37": rrn,
              "41": TID, "42": NAMDONG_SHOP.mid, "49": "410", "90": "0100" + HOLD_STAN + TX_TIME + "0" * 22}
    return req, fields


def held(view: DictView, amount: int = 30_000) -> str:
    """A committed hold of `amount` on the Namdong card; its RRN."""
    req, fields = preauth(view.card_by_id(1).pan, amount)
    decision = decided(view, req, fields)
    assert decision.response.rc is Rc.APPROVED, decision.note
    commit(view, req, decision)
    return decision.response.rrn


def commit(view: DictView, req: Request, decision) -> None:
    """test_decide's `committed`, plus what it leaves out for holds: the RRN index and the
    stored response (a completion checks its DE90 against the 0110 it quotes)."""
    committed(view, req, decision)
    for p in decision.postings:
        if p.kind == "hold":
            view.rrns[p.rrn] = p.id
    stored = view.messages[req.key]
    view.messages[req.key] = replace(stored, response=response_fields(decision.response))


def test_a_hold_moves_cash_to_the_held_account_and_nothing_else():
    view = DictView((namdong_card(),), (NAMDONG_SHOP,))
    req, fields = preauth(view.card_by_id(1).pan, 30_000)
    d = decided(view, req, fields)
    assert (d.response.mti, d.response.rc, d.response.rrn, d.response.balances) == \
        ("0110", Rc.APPROVED, "000000000003", Balances(cash=70_000, cashback=0))
    assert (d.posting.kind, d.posting.amount, d.posting.entries, d.posting.original_id) == \
        ("hold", 30_000, (("card:1:cash", -30_000), ("card:1:held", 30_000)), None)
    assert d.posting.detail == HoldDetail(member="M000000001", expires="2019-07-27T12:00:00.000000+09:00",
                                          added=30_000)
    assert d.changes == ()  # a hold is not spending: no day or month counter moves
    assert [e.type for e in d.events] == ["hold"]


def test_a_completion_posts_the_purchase_of_its_amount_plus_the_release_of_its_hold():
    view = DictView((namdong_card(),), (NAMDONG_SHOP,))
    rrn = held(view)
    d = decided(view, *completion(view.card_by_id(1).pan, 20_000, rrn))
    # the same card and merchant as it was before the hold, buying 20,000 outright
    plain = DictView((namdong_card(),), (NAMDONG_SHOP,), next_posting_id=4)
    p = decided(plain, *purchase(plain.card_by_id(1).pan, 20_000))
    assert d.posting.entries == (("card:1:held", -30_000), ("card:1:cash", 30_000)) + p.posting.entries
    assert (d.posting.fee, d.posting.support, d.posting.cashback, d.posting.detail) == \
        (p.posting.fee, p.posting.support, p.posting.cashback, p.posting.detail)
    assert d.response.balances == p.response.balances == Balances(cash=80_000, cashback=1_500)
    assert d.changes == (PostingUndone(3, 30_000),) + p.changes
    assert (d.response.mti, d.posting.original_id) == ("0230", 3)


def test_the_tolerance_lets_a_completion_exceed_its_hold_from_the_available_cash():
    rules = dataclasses.replace(RULES, preauth=Preauth(hold_days=7, completion_tolerance_pct=20))
    view = DictView((namdong_card(),), (NAMDONG_SHOP,))
    rrn = held(view)
    over = decide(*completion(view.card_by_id(1).pan, 36_001, rrn), view, rules, LAUNCH)
    assert (over.response.rc, over.note, over.posting) == (Rc.INVALID_AMOUNT, "completion exceeds the hold", None)
    d = decide(*completion(view.card_by_id(1).pan, 36_000, rrn), view, rules, LAUNCH)
    assert d.response.rc is Rc.APPROVED
    # 100,000 cash: 30,000 held and released, 36,000 spent; cashback 7.5 % of 36,000
    assert d.response.balances == Balances(cash=64_000, cashback=2_700)


def test_a_completion_is_honoured_for_a_card_blocked_since_and_over_the_days_limit():
    view = DictView((namdong_card(),), (NAMDONG_SHOP,))
    rrn = held(view)
    view.cards_by_id[1].status = "blocked"
    day = LAUNCH.strftime("%Y-%m-%d")
    view.card_days[(1, day)] = RULES.limits(LAUNCH).daily_spend_max  # spent the day's limit meanwhile
    d = decided(view, *completion(view.card_by_id(1).pan, 20_000, rrn))
    assert d.response.rc is Rc.APPROVED
    assert CardDayMoved(1, day, 20_000) in d.changes  # it still counts in the day
    blocked = decided(view, *purchase(view.card_by_id(1).pan, 1_000, stan="000012"))
    assert blocked.response.rc is Rc.CARD_BLOCKED


def test_an_incremental_authorization_closes_the_hold_before_and_holds_the_total():
    view = DictView((namdong_card(),), (NAMDONG_SHOP,))
    rrn = held(view)
    d = decided(view, *preauth(view.card_by_id(1).pan, 10_000, rrn=rrn, stan="000012"))
    assert (d.response.rc, d.response.rrn) == (Rc.APPROVED, rrn)
    assert (d.posting.kind, d.posting.amount, d.posting.rrn, d.posting.original_id, d.posting.entries) == \
        ("hold", 40_000, rrn, 3, (("card:1:cash", -10_000), ("card:1:held", 10_000)))
    assert d.posting.detail.added == 10_000 and d.posting.detail.expires == "2019-07-27T12:00:00.000000+09:00"
    assert d.changes == (PostingUndone(3, 30_000),)


def test_holds_are_checked_like_purchases_before_they_are_placed():
    view = DictView((namdong_card(cash=10_000, cashback=5_000),), (NAMDONG_SHOP,))
    pan = view.card_by_id(1).pan
    short = decided(view, *preauth(pan, 10_001))
    assert (short.response.rc, short.note) == (Rc.INSUFFICIENT_FUNDS, "insufficient cash for the hold")
    assert decided(view, *preauth(pan, 0)).response.rc is Rc.INVALID_AMOUNT
    unknown = decided(view, *preauth(pan, 1_000, rrn="000000000099"))
    assert (unknown.response.rc, unknown.note) == (Rc.ORIGINAL_NOT_FOUND, "pre-authorization not found for this card")
    view.cards_by_id[1].status = "lost"
    assert decided(view, *preauth(pan, 1_000)).response.rc is Rc.CARD_BLOCKED


def test_a_hold_past_its_expiry_cannot_be_raised_or_completed():
    view = DictView((namdong_card(),), (NAMDONG_SHOP,))
    rrn = held(view)
    later = LAUNCH + timedelta(days=7, microseconds=1)
    for req, fields in (completion(view.card_by_id(1).pan, 1_000, rrn),
                        preauth(view.card_by_id(1).pan, 1_000, rrn=rrn, stan="000012")):
        d = decided(view, req, fields, now=later)
        assert (d.response.rc, d.note, d.posting) == (Rc.ORIGINAL_NOT_FOUND, "pre-authorization expired", None)
    on_time = decided(view, *completion(view.card_by_id(1).pan, 1_000, rrn), now=LAUNCH + timedelta(days=7))
    assert on_time.response.rc is Rc.APPROVED
