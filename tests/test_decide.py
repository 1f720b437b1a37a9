"""The pure decision core, driven directly: `decide(req, fields, view, rules, now, pin=...)`.

No event loop, no SQLite, no HSM: the View is a plain class over dicts (`DictView`), the rules
are the real ones (`load_rules(default_config_dir())`), `now` is fixed and the requests are
`switch.wire.messages.Request` objects built by hand. Every call goes through `decided()`,
which also proves that the decision changed nothing it was given: the view's dicts and its
CardState / PostingState objects are compared with deep copies taken before the call
(switch/authorize/decide.py: "changes nothing"; the shell applies a Decision only after its
commit, docs/architecture.md, "Hot state, members and the single writer").

Rules cited: docs/domain.md ("Worked examples", "Cashback", "Spending order and clawback
(assumptions)", "Limits"), docs/architecture.md ("Choices made where the issues are silent"),
docs/host-interface.md §4 (response codes) and §6, docs/security.md (PINs), docs/events.md.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import json
import subprocess
import sys
import uuid
from datetime import datetime
from pathlib import Path

import pytest

import switch.authorize.decide as decide_module
from switch.authorize.decide import CardChange, Decision, PinRefused, PinVerified, View, decide, pin_needs_hsm
from switch.domain import KST, Merchant, luhn_digit
from switch.ledger.records import (CardDayMoved, CardState, MemberMonthMoved, MessageOutcome, OriginalTombstoned,
                                   PinTriesSet, Posting, PostingState, PostingUndone, PurchaseDetail,
                                   RefundReversalDetail, UndoDetail)
from switch.rules.policy import default_config_dir, load_rules
from switch.wire.messages import Balances, Kind, OriginalData, Rc, Request, Response

RULES = load_rules(default_config_dir())
LEDGER_ID = "00000000-0000-0000-0000-000000000001"
LAUNCH = datetime(2019, 7, 20, 12, 0, tzinfo=KST)          # docs/domain.md, Worked examples, 1 and 2
AT_LAUNCH = "2019-07-20T12:00:00.000000+09:00"              # a posting's `at`: ISO 8601 in KST, microseconds
TID = "T0000001"
TX_TIME = "0720030000"                                      # DE7 (UTC MMDDhhmmss) of 12:00 KST on 07-20

NAMDONG_SHOP = Merchant("NAMDONG01      ", "Namdong Cafe", "namdong", 250_000_000)
YEONSU_SHOP = Merchant("YEONSU01       ", "Yeonsu Bakery", "yeonsu", 250_000_000)


def pan_of(prefix: str, card_id: int) -> str:
    """A 16-digit PAN as issuance makes it: the program's BIN prefix, the card id, the Luhn digit."""
    body = f"{prefix}{card_id:07d}"
    return body + luhn_digit(body)


NAMDONG_PAN = pan_of("94101000", 1)  # 9410100000000011: the card of docs/events.md's examples
INCHEON_PAN = pan_of("94100000", 2)


def namdong_card(**kw) -> CardState:
    values = dict(id=1, pan=NAMDONG_PAN, program="namdong", member="M000000001", expiry="2407", status="active",
                  cash=100_000)
    values.update(kw)
    return CardState(**values)


def incheon_card(**kw) -> CardState:
    values = dict(id=2, pan=INCHEON_PAN, program="incheon", member="M000000002", expiry="2407", status="active",
                  cash=100_000)
    values.update(kw)
    return CardState(**values)


def shop(mid: str, district: str, annual_sales: int, **kw) -> Merchant:
    return Merchant(mid.ljust(15), f"{mid} shop", district, annual_sales, **kw)


class DictView:
    """The View of switch/authorize/decide.py over plain dicts (what HotState holds after prefetch)."""

    def __init__(self, cards: tuple[CardState, ...] = (), merchants: tuple[Merchant, ...] = (), *,
                 next_posting_id: int = 3, member_months: dict | None = None, card_days: dict | None = None) -> None:
        self.ledger_id = LEDGER_ID
        self.next_posting_id = next_posting_id
        self.cards = {c.pan: c for c in cards}
        self.cards_by_id = {c.id: c for c in cards}
        self.merchants = {m.mid: m for m in merchants}
        self.member_months: dict[tuple[str, str], int] = dict(member_months or {})
        self.card_days: dict[tuple[int, str], int] = dict(card_days or {})
        self.card_months: dict[tuple[int, str], int] = {}
        self.postings: dict[int, PostingState] = {}
        self.rrns: dict[str, int] = {}
        self.messages: dict[tuple[str, str, str], MessageOutcome] = {}
        self.tombstones: set[tuple[str, str, str]] = set()

    def card(self, pan):
        return self.cards.get(pan)

    def card_by_id(self, card_id):
        return self.cards_by_id.get(card_id)

    def merchant(self, mid):
        return self.merchants.get(mid)

    def member_month(self, member, month):
        return self.member_months.get((member, month), 0)

    def card_day(self, card_id, day):
        return self.card_days.get((card_id, day), 0)

    def card_month_charged(self, card_id, month):
        return self.card_months.get((card_id, month), 0)

    def auto_charge(self, card_id):
        return None  # no card of these tests is enrolled (tests/test_e2e_auto_charge.py)

    def posting(self, posting_id):
        return self.postings.get(posting_id)

    def posting_by_rrn(self, rrn):
        pid = self.rrns.get(rrn)
        return None if pid is None else self.postings.get(pid)

    def message(self, key):
        return self.messages.get(key)

    def tombstoned(self, key):
        return key in self.tombstones


def decided(view: DictView, req: Request, fields: dict[str, str], *, now: datetime = LAUNCH, pin=None) -> Decision:
    """`decide`, and proof that it mutated nothing: every dict of the view and every object in
    them (CardState, PostingState, …) equals its deep copy taken before the call."""
    before = copy.deepcopy(view.__dict__)
    decision = decide(req, fields, view, RULES, now, pin=pin)
    assert view.__dict__ == before, "decide changed the view it read"
    return decision


def committed(view: DictView, req: Request, decision: Decision) -> None:
    """What the shell does after the commit (switch/authorize/engine.py, _apply), on the dict view,
    so that a later decision can build on this one (refund, reversal)."""
    for ch in decision.changes:
        if isinstance(ch, MemberMonthMoved):
            key = (ch.member, ch.month)
            view.member_months[key] = view.member_months.get(key, 0) + ch.eligible
        elif isinstance(ch, CardDayMoved):
            key = (ch.card_id, ch.day)
            view.card_days[key] = view.card_days.get(key, 0) + ch.spent
        elif isinstance(ch, PostingUndone):
            p = view.postings[ch.posting_id]
            p.undone += ch.undone
            p.reversed += ch.reversed
        elif isinstance(ch, OriginalTombstoned):
            view.tombstones.add(ch.key)
        elif isinstance(ch, PinTriesSet):
            card = view.cards_by_id[ch.card_id]
            card.pin_tries, card.pin_blocked = ch.tries, ch.blocked
    for c in decision.cards:
        card = view.cards_by_id[c.card_id]
        card.cash, card.cashback, card.receivable = c.cash, c.cashback, c.receivable
    for p in decision.postings:
        view.postings[p.id] = dataclasses.replace(p)
        if p.kind == "purchase":
            view.rrns[p.rrn] = p.id
    if decision.posting is not None:
        view.next_posting_id = decision.posting.id + 1
    posting_id = decision.posting.id if decision.posting is not None else None
    view.messages[req.key] = MessageOutcome(req.key, req.base_mti, "", decision.response.rc.value, {}, posting_id,
                                            AT_LAUNCH)


# ---------------------------------------------------------------------------- requests

def purchase(pan: str, amount: int, *, merchant: Merchant = NAMDONG_SHOP, stan: str = "000002",
             pin_block: str = "", expiry: str = "", entry_mode: str = "") -> tuple[Request, dict[str, str]]:
    req = Request(mti="0200", kind=Kind.PURCHASE, terminal=TID, stan=stan, transmission_time=TX_TIME,
                  processing_code="000000", pan=pan, expiry=expiry, amount=amount, merchant=merchant.mid,
                  entry_mode=entry_mode, pin_block=pin_block)
    fields = {"t": "0200", "2": pan, "3": "000000", "4": f"{amount:012d}", "7": TX_TIME, "11": stan,
              "41": TID, "42": merchant.mid, "49": "410"}
    return req, fields


def refund(pan: str, amount: int, rrn: str, *, merchant: Merchant = NAMDONG_SHOP,
           stan: str = "000003") -> tuple[Request, dict[str, str]]:
    req = Request(mti="0200", kind=Kind.REFUND, terminal=TID, stan=stan, transmission_time=TX_TIME,
                  processing_code="200000", pan=pan, amount=amount, merchant=merchant.mid, rrn=rrn)
    fields = {"t": "0200", "2": pan, "3": "200000", "4": f"{amount:012d}", "7": TX_TIME, "11": stan,
              "37": rrn, "41": TID, "42": merchant.mid, "49": "410"}
    return req, fields


def balance(pan: str, *, stan: str = "000009") -> tuple[Request, dict[str, str]]:
    req = Request(mti="0200", kind=Kind.BALANCE, terminal=TID, stan=stan, transmission_time=TX_TIME,
                  processing_code="310000", pan=pan, merchant=NAMDONG_SHOP.mid)
    return req, {"t": "0200", "2": pan, "3": "310000", "7": TX_TIME, "11": stan, "41": TID,
                 "42": NAMDONG_SHOP.mid, "49": "410"}


def reversal(pan: str, amount: int, original_stan: str, *, stan: str = "000005", merchant: Merchant = NAMDONG_SHOP,
             replacement: int | None = None) -> tuple[Request, dict[str, str]]:
    req = Request(mti="0400", kind=Kind.REVERSAL, terminal=TID, stan=stan, transmission_time=TX_TIME,
                  processing_code="000000", pan=pan, amount=amount, merchant=merchant.mid,
                  original=OriginalData("0200", original_stan, TX_TIME), replacement_amount=replacement)
    fields = {"t": "0400", "2": pan, "3": "000000", "4": f"{amount:012d}", "7": TX_TIME, "11": stan,
              "41": TID, "42": merchant.mid, "49": "410",
              "90": f"0200{original_stan}{TX_TIME}" + "0" * 22}
    if replacement is not None:
        fields["95"] = f"{replacement:012d}" + "0" * 30
    return req, fields


# ---------------------------------------------------------------------------- events

def event_id(posting_id: int, event_type: str) -> str:
    """docs/events.md, "event_id": uuid5(ledger_id, "<posting_id>/<type>")."""
    return str(uuid.uuid5(uuid.UUID(LEDGER_ID), f"{posting_id}/{event_type}"))


def events_of(decision: Decision) -> list[tuple[str, str, int, str]]:
    return [(e.type, e.topic, e.posting_id, e.event_id) for e in decision.events]


def payloads(decision: Decision) -> list[dict]:
    out = []
    for e in decision.events:
        payload = json.loads(e.payload)
        assert payload.pop("event_id") == e.event_id and payload.pop("type") == e.type
        out.append(payload)
    return out


def namdong_common(posting_id: int, cash: int, cashback: int, *, original: int | None) -> dict:
    """The fields every event of the Namdong card at the Namdong shop shares (docs/events.md, Schema)."""
    return {"schema": 1, "time": AT_LAUNCH, "posting_id": posting_id, "program": "namdong",
            "member": "M000000001", "pan": "941010******0011", "merchant": "NAMDONG01", "district": "namdong",
            "original_posting_id": original, "balances_after": {"cash": cash, "cashback": cashback,
                                                                   "receivable": 0}}


def entries_by_account(posting: Posting) -> dict[str, int]:
    out: dict[str, int] = {}
    for account, amount in posting.entries:
        out[account] = out.get(account, 0) + amount
    return out


# ============================================================================ worked examples (purchases)

EXAMPLE_1_DETAIL = PurchaseDetail(
    member="M000000001", month="2019-07", day="2019-07-20", cb_used=0, cash_used=20_000, fee=100, fee_tier="micro",
    rate_bp=50, support=(("namdong", 100),), cashback=(("national", 800), ("city", 400), ("namdong", 300)),
    eligible=20_000, policy="2019-04")


def example_1() -> tuple[DictView, Decision, Request, dict[str, str]]:
    view = DictView((namdong_card(),), (NAMDONG_SHOP,))
    req, fields = purchase(NAMDONG_PAN, 20_000)
    return view, decided(view, req, fields), req, fields


def bought_and_committed() -> DictView:
    """Worked example 1's purchase (posting 3, STAN 000002), committed: the card has 80,000 cash
    and 1,500 cashback."""
    view, bought, purchase_req, _ = example_1()
    committed(view, purchase_req, bought)
    return view


def test_the_luhn_digit_matches_iso_iec_7812_1_and_reads_a_non_ascii_digit_by_its_value():
    """ISO/IEC 7812-1's Luhn digit: the standard example 7992739871 → 3 (79927398713); the
    seeded test PAN 9410100000000011 ends in its digit; the empty body's is 0. A non-ASCII digit
    (str.isdigit accepts "٣", ARABIC-INDIC THREE) counts as its value, as int() reads it."""
    from switch.domain import luhn_ok

    # "9": doubled 18 → 9, so 1; "18": 8 doubled 16 → 7, plus 1 is 8, so 2
    assert [luhn_digit(b) for b in ("7992739871", "941010000000001", "", "0", "9", "18")] == ["3", "1", "0", "0", "1",
                                                                                          "2"]
    assert luhn_digit("٣") == luhn_digit("3") == "4"
    assert luhn_ok("79927398713") and not luhn_ok("79927398710") and not luhn_ok("7992739871x")


def test_worked_example_1_namdong_card_at_a_namdong_shop_posts_fee_support_and_cashback_by_funder():
    """docs/domain.md, Worked examples, 1: cashback 7.5 % = 1,500 (national 800, city 400,
    Namdong 300); fee 0.5 % = 100, all paid by Namdong's support; the merchant is paid 20,000.
    The entries are those of docs/architecture.md, "Ledger"; the events those of docs/events.md."""
    view, d, req, fields = example_1()
    payable = "merchant:NAMDONG01      :payable"
    assert d.posting == Posting(
        id=3, kind="purchase", at=AT_LAUNCH, amount=20_000,
        entries=(("card:1:cash", -20_000), (payable, 20_000), (payable, -100), ("fee_income", 100),
                 (payable, 100), ("fee_subsidy:namdong", -100),
                 ("cashback_expense:national", -800), ("cashback_expense:city", -400),
                 ("cashback_expense:namdong", -300), ("card:1:cashback", 1_500)),
        card_id=1, mid=NAMDONG_SHOP.mid, tid=TID, stan="000002", rrn="000000000003", fee=100, support=100,
        cashback=1_500, original_id=None, detail=EXAMPLE_1_DETAIL)
    assert d.posting.imbalance() == 0
    assert entries_by_account(d.posting)[payable] == 20_000  # the merchant pays 0 of the fee
    # docs/architecture.md, "RRN" (the posting id, 12 digits; DE38 its last 6 digits)
    assert d.response == Response(mti="0210", rc=Rc.APPROVED, echo=fields, rrn="000000000003",
                                  auth_code="000003", balances=Balances(cash=80_000, cashback=1_500))
    assert d.changes == (MemberMonthMoved("M000000001", "2019-07", 20_000), CardDayMoved(1, "2019-07-20", 20_000))
    assert d.cards == (CardChange(1, 80_000, 1_500, 0),)
    assert d.postings == (PostingState(3, "purchase", 1, NAMDONG_SHOP.mid, 20_000, 0, AT_LAUNCH, "000000000003",
                                       None, EXAMPLE_1_DETAIL),)
    assert (d.fee, d.cashback, d.note) == (100, 1_500, "")
    assert events_of(d) == [("purchase", "eum/namdong/transactions", 3, event_id(3, "purchase")),
                            ("cashback.credited", "eum/namdong/cashback", 3, event_id(3, "cashback.credited"))]
    common = namdong_common(3, 80_000, 1_500, original=None)
    assert payloads(d) == [
        {**common, "rrn": "000000000003", "terminal": TID, "stan": "000002", "amount": 20_000, "fee": 100,
         "fee_support": {"namdong": 100}, "cashback": 1_500,
         "cashback_by_funder": {"national": 800, "city": 400, "namdong": 300}},
        {**common, "transaction": "purchase", "amount": 20_000, "cashback": 1_500,
         "by_funder": {"national": 800, "city": 400, "namdong": 300}},
    ]


def test_the_rrn_is_the_posting_id_in_12_digits_and_the_authorization_code_its_last_6():
    """docs/architecture.md, "RRN": the posting id, 12 digits; DE38 its last 6 digits."""
    view = DictView((namdong_card(),), (NAMDONG_SHOP,), next_posting_id=91_234_567)
    req, fields = purchase(NAMDONG_PAN, 20_000)
    d = decided(view, req, fields)
    assert (d.posting.id, d.posting.rrn, d.response.rrn, d.response.auth_code) == (
        91_234_567, "000091234567", "000091234567", "234567")


def test_worked_example_2_the_same_card_at_a_yeonsu_shop_earns_the_city_base_and_the_merchant_pays_its_fee():
    """docs/domain.md, Worked examples, 2: cashback 6 % = 1,200 (national 800, city 400); fee 100
    paid by the merchant (no Yeonsu support): payout 19,900."""
    view = DictView((namdong_card(),), (YEONSU_SHOP,))
    req, fields = purchase(NAMDONG_PAN, 20_000, merchant=YEONSU_SHOP)
    d = decided(view, req, fields)
    payable = "merchant:YEONSU01       :payable"
    assert d.posting.entries == (
        ("card:1:cash", -20_000), (payable, 20_000), (payable, -100), ("fee_income", 100),
        ("cashback_expense:national", -800), ("cashback_expense:city", -400), ("card:1:cashback", 1_200))
    assert entries_by_account(d.posting)[payable] == 19_900
    assert (d.posting.fee, d.posting.support, d.posting.cashback) == (100, 0, 1_200)
    assert d.posting.detail.cashback == (("national", 800), ("city", 400))
    assert d.posting.detail.support == ()
    assert d.response.balances == Balances(80_000, 1_200)
    assert d.changes == (MemberMonthMoved("M000000001", "2019-07", 20_000), CardDayMoved(1, "2019-07-20", 20_000))
    assert [(e.type, e.topic) for e in d.events] == [("purchase", "eum/namdong/transactions"),
                                                     ("cashback.credited", "eum/namdong/cashback")]
    assert payloads(d)[0]["fee_support"] == {} and payloads(d)[0]["district"] == "yeonsu"


def test_worked_example_3_a_purchase_straddling_a_spend_tier_is_split_across_rates():
    """docs/domain.md, Worked examples, 3: 2020-01-15, an Incheon card whose member has 280,000
    of eligible spend this month buys 50,000: 20,000 × 4 % + 30,000 × 2 % = 1,400, which the
    config shares 50/50 between national and city (docs/domain.md, Policy timeline)."""
    now = datetime(2020, 1, 15, 12, 0, tzinfo=KST)
    jung = shop("JUNG01", "jung", 250_000_000)
    view = DictView((incheon_card(),), (jung,), member_months={("M000000002", "2020-01"): 280_000})
    req, fields = purchase(INCHEON_PAN, 50_000, merchant=jung)
    d = decided(view, req, fields, now=now)
    assert d.posting.detail.cashback == (("national", 700), ("city", 700))
    assert (d.posting.cashback, d.posting.fee, d.posting.detail.fee_tier, d.posting.detail.policy) == (
        1_400, 250, "micro", "2020-01")
    assert d.changes == (MemberMonthMoved("M000000002", "2020-01", 50_000), CardDayMoved(2, "2020-01-15", 50_000))
    assert d.response.balances == Balances(50_000, 1_400)
    assert [e.topic for e in d.events] == ["eum/incheon/transactions", "eum/incheon/cashback"]


@pytest.mark.parametrize("annual_sales, fee, by_funder, eligible", [
    (4_000_000_000, 300, (), 0),                                     # > 3B: no cashback; general tier 1.50 %
    (1_000_000_000, 200, (("national", 700), ("city", 700)), 20_000),  # 3–30억 band: 7 %; small2 1.00 %
    (250_000_000, 50, (("national", 1_000), ("city", 1_000)), 20_000),  # ≤ 300M: 10 %; micro 0.25 %
])
def test_worked_example_4_cashback_by_merchant_sales_band_in_october_2023(annual_sales, fee, by_funder, eligible):
    """docs/domain.md, Worked examples, 4 (2023-10-10) and "Merchant fees" (2022-01-31 check
    rates). A purchase without cashback emits no cashback event (docs/events.md) and adds nothing
    to the member's eligible spend."""
    now = datetime(2023, 10, 10, 12, 0, tzinfo=KST)
    merchant = shop("JUNG02", "jung", annual_sales)
    view = DictView((incheon_card(expiry="2810"),), (merchant,))
    req, fields = purchase(INCHEON_PAN, 20_000, merchant=merchant)
    d = decided(view, req, fields, now=now)
    total = sum(c for _, c in by_funder)
    assert (d.posting.fee, d.posting.detail.cashback, d.posting.cashback, d.posting.detail.eligible) == (
        fee, by_funder, total, eligible)
    assert d.changes == (MemberMonthMoved("M000000002", "2023-10", eligible), CardDayMoved(2, "2023-10-10", 20_000))
    assert d.response.balances == Balances(80_000, total)
    assert [e.type for e in d.events] == (["purchase", "cashback.credited"] if total else ["purchase"])


def test_worked_example_5_the_2022_check_rate_of_a_400m_merchant():
    """docs/domain.md, Worked examples, 5: 2022-03-01, 400M sales, 20,000: 0.85 % = 170."""
    now = datetime(2022, 3, 1, 12, 0, tzinfo=KST)
    merchant = shop("JUNG03", "jung", 400_000_000)
    view = DictView((incheon_card(),), (merchant,))
    req, fields = purchase(INCHEON_PAN, 20_000, merchant=merchant)
    d = decided(view, req, fields, now=now)
    assert (d.posting.fee, d.posting.detail.fee_tier, d.posting.detail.rate_bp, d.fee) == (170, "small1", 85, 170)
    assert entries_by_account(d.posting)["merchant:JUNG03         :payable"] == 19_830


# ============================================================================ spending order

def test_a_purchase_spends_the_cashback_balance_first_then_cash():
    """docs/domain.md, "Spending order and clawback (assumptions)": cashback first, then cash;
    cashback earned on the full amount, credited in the same posting."""
    view = DictView((namdong_card(cash=100_000, cashback=1_500),), (NAMDONG_SHOP,))
    req, fields = purchase(NAMDONG_PAN, 20_000)
    d = decided(view, req, fields)
    assert d.posting.entries[:2] == (("card:1:cashback", -1_500), ("card:1:cash", -18_500))
    assert entries_by_account(d.posting)["card:1:cashback"] == 0  # 1,500 spent, 1,500 earned
    assert (d.posting.detail.cb_used, d.posting.detail.cash_used) == (1_500, 18_500)
    assert d.response.balances == Balances(81_500, 1_500)
    assert d.cards == (CardChange(1, 81_500, 1_500, 0),)


def test_a_purchase_smaller_than_the_cashback_balance_takes_no_cash():
    view = DictView((namdong_card(cash=100_000, cashback=1_500),), (NAMDONG_SHOP,))
    req, fields = purchase(NAMDONG_PAN, 1_000)
    d = decided(view, req, fields)
    # 7.5 % of 1,000 = 75: national 40, city 20, Namdong 15
    assert d.posting.entries == (
        ("card:1:cashback", -1_000), ("merchant:NAMDONG01      :payable", 1_000),
        ("merchant:NAMDONG01      :payable", -5), ("fee_income", 5),
        ("merchant:NAMDONG01      :payable", 5), ("fee_subsidy:namdong", -5),
        ("cashback_expense:national", -40), ("cashback_expense:city", -20), ("cashback_expense:namdong", -15),
        ("card:1:cashback", 75))
    assert (d.posting.detail.cb_used, d.posting.detail.cash_used) == (1_000, 0)
    assert d.response.balances == Balances(100_000, 575)


def test_a_balance_inquiry_answers_the_balances_and_posts_nothing():
    view = DictView((namdong_card(cash=80_000, cashback=1_500),), (NAMDONG_SHOP,))
    req, fields = balance(NAMDONG_PAN)
    assert decided(view, req, fields) == Decision(
        Response(mti="0210", rc=Rc.APPROVED, echo=fields, balances=Balances(80_000, 1_500)))


# ============================================================================ declines

def _decline_case(name):
    """(view, request, fields, now, rc, note) for one decline of docs/host-interface.md §4."""
    card, now = namdong_card(), LAUNCH
    merchants = [NAMDONG_SHOP]
    kw: dict = {}
    amount, pan = 20_000, NAMDONG_PAN
    view_kw: dict = {}
    if name == "51 insufficient funds":
        card = namdong_card(cash=15_000, cashback=4_999)
        rc, note = Rc.INSUFFICIENT_FUNDS, "insufficient funds"
    elif name == "61 daily limit":  # docs/architecture.md, Limits: 2,000,000 per card per KST day
        view_kw["card_days"] = {(1, "2019-07-20"): 1_980_001}
        rc, note = Rc.OVER_LIMIT, "daily spend limit"
    elif name == "13 amount zero":
        amount, rc, note = 0, Rc.INVALID_AMOUNT, "amount out of range"
    elif name == "13 above the holding limit":
        amount, rc, note = 2_000_001, Rc.INVALID_AMOUNT, "amount out of range"
    elif name == "14 unknown card":
        pan, rc, note = pan_of("94101000", 7), Rc.UNKNOWN_CARD, "card unknown"
    elif name == "14 wrong check digit":
        pan = NAMDONG_PAN[:-1] + str((int(NAMDONG_PAN[-1]) + 1) % 10)
        rc, note = Rc.UNKNOWN_CARD, "PAN check digit is wrong"
    elif name == "14 expiry differs":
        kw["expiry"], rc, note = "2408", Rc.UNKNOWN_CARD, "expiry does not match the card"
    elif name == "54 expired":  # valid through the last day of its expiry month (KST)
        card, now = namdong_card(expiry="1906"), datetime(2019, 7, 1, 0, 0, tzinfo=KST)
        rc, note = Rc.EXPIRED_CARD, "card expired"
    elif name == "62 blocked":
        card, rc, note = namdong_card(status="blocked"), Rc.CARD_BLOCKED, "card blocked"
    elif name == "57 large mart":
        mart = shop("MART01", "namdong", 90_000_000_000, category="large_mart")
        merchants, kw["merchant"] = [mart], mart
        rc, note = Rc.NOT_PERMITTED, "card not accepted at category large_mart"
    elif name == "57 e-commerce outside the mall":
        kw["entry_mode"], rc = "012", Rc.NOT_PERMITTED
        note = "e-commerce entry mode 012 outside the online mall"
    elif name == "58 merchant unknown":
        merchants, rc, note = [], Rc.TERMINAL_NOT_PERMITTED, "merchant unknown"
    elif name == "12 reversed before it arrived":
        rc, note = Rc.INVALID_TRANSACTION, "reversed before it arrived"
    else:
        raise AssertionError(name)
    view = DictView((card,), tuple(merchants), **view_kw)
    req, fields = purchase(pan, amount, **kw)
    if name.startswith("12"):
        view.tombstones.add(req.key)
    return view, req, fields, now, rc, note


DECLINES = ["51 insufficient funds", "61 daily limit", "13 amount zero", "13 above the holding limit",
            "14 unknown card", "14 wrong check digit", "14 expiry differs", "54 expired", "62 blocked",
            "57 large mart", "57 e-commerce outside the mall", "58 merchant unknown", "12 reversed before it arrived"]


@pytest.mark.parametrize("case", DECLINES)
def test_a_declined_purchase_carries_its_code_and_no_posting_changes_or_events(case):
    """docs/host-interface.md §4; a decline posts nothing, moves no counter and tells no event
    (docs/events.md, "Which postings emit which events")."""
    view, req, fields, now, rc, note = _decline_case(case)
    d = decided(view, req, fields, now=now)
    assert rc.value == case[:2]
    assert d == Decision(Response(mti="0210", rc=rc, echo=fields), note=note)
    assert (d.posting, d.changes, d.cards, d.postings, d.events) == (None, (), (), (), ())


def test_the_daily_limit_admits_a_purchase_that_reaches_it_exactly():
    """docs/architecture.md, Limits: the day's spend plus this amount may equal 2,000,000."""
    view = DictView((namdong_card(),), (NAMDONG_SHOP,), card_days={(1, "2019-07-20"): 1_980_000})
    req, fields = purchase(NAMDONG_PAN, 20_000)
    d = decided(view, req, fields)
    assert d.response.rc is Rc.APPROVED and d.changes[1] == CardDayMoved(1, "2019-07-20", 20_000)


def test_funds_of_exactly_the_amount_in_cash_and_cashback_together_are_enough():
    view = DictView((namdong_card(cash=15_000, cashback=5_000),), (NAMDONG_SHOP,))
    req, fields = purchase(NAMDONG_PAN, 20_000)
    d = decided(view, req, fields)
    assert d.response.rc is Rc.APPROVED
    assert d.response.balances == Balances(0, 1_500)


def test_a_card_is_valid_through_the_last_day_of_its_expiry_month_in_kst():
    view = DictView((namdong_card(expiry="1906"),), (NAMDONG_SHOP,))
    req, fields = purchase(NAMDONG_PAN, 1_000)
    d = decided(view, req, fields, now=datetime(2019, 6, 30, 23, 59, tzinfo=KST))
    assert d.response.rc is Rc.APPROVED


# ============================================================================ refunds

def test_a_refund_undoes_a_quarter_of_fee_support_and_each_funders_cashback():
    """docs/events.md's refund of 5,000 of worked example 1: a quarter of the fee (25), of the
    fee support (25) and of each funder's cashback (200, 100, 75) comes back (docs/architecture.md,
    "Refund and partial reversal", cumulative floor rule). A refund does not give the day's
    spending limit back (docs/architecture.md, "Reversal vs refund")."""
    view = bought_and_committed()
    req, fields = refund(NAMDONG_PAN, 5_000, "000000000003")
    d = decided(view, req, fields)
    payable = "merchant:NAMDONG01      :payable"
    detail = UndoDetail(member="M000000001", month="2019-07", day="2019-07-20", cb_back=0, fee_back=25,
                        support_back=(("namdong", 25),), claw=(("national", 200), ("city", 100), ("namdong", 75)),
                        eligible_back=5_000)
    assert d.posting == Posting(
        id=4, kind="refund", at=AT_LAUNCH, amount=5_000,
        entries=((payable, -5_000), (payable, 25), ("fee_income", -25), (payable, -25), ("fee_subsidy:namdong", 25),
                 ("cashback_expense:national", 200), ("cashback_expense:city", 100),
                 ("cashback_expense:namdong", 75), ("card:1:cash", 5_000), ("card:1:cashback", -375)),
        card_id=1, mid=NAMDONG_SHOP.mid, tid=TID, stan="000003", rrn="000000000004", fee=-25, support=-25,
        cashback=-375, original_id=3, detail=detail)
    assert d.response == Response(mti="0210", rc=Rc.APPROVED, echo=fields, rrn="000000000004", auth_code="000004",
                                  balances=Balances(85_000, 1_125))
    assert d.changes == (PostingUndone(3, 5_000, reversed=0), MemberMonthMoved("M000000001", "2019-07", -5_000))
    assert d.cards == (CardChange(1, 85_000, 1_125, 0),)
    assert events_of(d) == [("refund", "eum/namdong/transactions", 4, event_id(4, "refund")),
                            ("cashback.clawed_back", "eum/namdong/cashback", 4, event_id(4, "cashback.clawed_back"))]
    common = namdong_common(4, 85_000, 1_125, original=3)
    assert payloads(d) == [
        {**common, "rrn": "000000000004", "terminal": TID, "stan": "000003", "amount": 5_000, "fee": -25,
         "fee_support": {"namdong": -25}, "cashback": -375,
         "cashback_by_funder": {"national": -200, "city": -100, "namdong": -75}},
        {**common, "transaction": "refund", "amount": 5_000, "cashback": -375,
         "by_funder": {"national": -200, "city": -100, "namdong": -75}},
    ]


def test_a_refund_in_a_later_month_takes_the_eligible_spend_out_of_the_originals_month():
    """docs/domain.md, "Spending order and clawback (assumptions)": the refunded amount leaves
    the month's cumulative eligible spend — the purchase's month (docs/architecture.md)."""
    view = bought_and_committed()
    req, fields = refund(NAMDONG_PAN, 20_000, "000000000003")
    d = decided(view, req, fields, now=datetime(2019, 8, 2, 9, 0, tzinfo=KST))
    assert d.changes == (PostingUndone(3, 20_000, reversed=0), MemberMonthMoved("M000000001", "2019-07", -20_000))
    assert d.posting.at == "2019-08-02T09:00:00.000000+09:00"
    # the whole refund gives back exactly what was posted
    assert (d.posting.fee, d.posting.support, d.posting.cashback) == (-100, -100, -1_500)
    assert d.response.balances == Balances(100_000, 0)


def test_a_clawback_beyond_the_cashback_balance_is_taken_from_cash():
    """docs/domain.md, "Spending order and clawback (assumptions)": the cashback balance never
    goes negative; a shortfall is taken from cash."""
    view = bought_and_committed()
    view.cards_by_id[1].cashback = 100  # 1,400 of the 1,500 earned has been spent since
    req, fields = refund(NAMDONG_PAN, 20_000, "000000000003")
    d = decided(view, req, fields)
    # wanted: cash +20,000, cashback −1,500; cashback can give 100, cash covers the other 1,400
    assert entries_by_account(d.posting)["card:1:cash"] == 18_600
    assert entries_by_account(d.posting)["card:1:cashback"] == -100
    assert "card:1:receivable" not in entries_by_account(d.posting)
    assert d.cards == (CardChange(1, 98_600, 0, 0),)


def test_what_neither_balance_covers_is_recorded_as_receivable_and_no_balance_goes_negative():
    """docs/domain.md, "Spending order and clawback (assumptions)": "or else recorded as a
    receivable". The reversal of a 5,000 refund takes 5,000 back and gives 375 cashback again;
    the card has spent all but 1,000 cash since: cashback 375 and cash 1,000 cover 1,375, the
    other 3,625 goes on the card's receivable account."""
    view = bought_and_committed()
    refund_req, refund_fields = refund(NAMDONG_PAN, 5_000, "000000000003")
    committed(view, refund_req, decided(view, refund_req, refund_fields))
    card = view.cards_by_id[1]
    assert (card.cash, card.cashback) == (85_000, 1_125)
    card.cash, card.cashback = 1_000, 0  # spent since
    req, fields = reversal(NAMDONG_PAN, 5_000, "000003", stan="000004")
    d = decided(view, req, fields)
    assert d.posting.entries[-2:] == (("card:1:cash", -1_000), ("card:1:receivable", -3_625))
    assert "card:1:cashback" not in entries_by_account(d.posting)  # +375 given, 375 taken for the shortfall
    assert d.cards == (CardChange(1, 0, 0, -3_625),)
    assert d.response.balances == Balances(0, 0)
    assert payloads(d)[0]["balances_after"] == {"cash": 0, "cashback": 0, "receivable": -3_625}


@pytest.mark.parametrize("case, rc, note", [
    ("unknown rrn", Rc.ORIGINAL_NOT_FOUND, "original purchase not found for this card"),
    ("another card", Rc.ORIGINAL_NOT_FOUND, "original purchase not found for this card"),
    ("another merchant", Rc.ORIGINAL_NOT_FOUND, "original purchase was at another merchant"),
    ("more than is left", Rc.INVALID_AMOUNT, "refund exceeds what is left of the original"),
])
def test_a_refund_that_cannot_be_made_is_declined_with_nothing_posted(case, rc, note):
    """docs/host-interface.md §4 (25, 13); docs/architecture.md, "Refund at the selling merchant only"."""
    view = bought_and_committed()
    view.cards[INCHEON_PAN] = view.cards_by_id[2] = incheon_card()
    view.merchants[YEONSU_SHOP.mid] = YEONSU_SHOP
    pan, amount, rrn, merchant = NAMDONG_PAN, 5_000, "000000000003", NAMDONG_SHOP
    if case == "unknown rrn":
        rrn = "000000000009"
    elif case == "another card":
        pan = INCHEON_PAN
    elif case == "another merchant":
        merchant = YEONSU_SHOP
    else:
        amount = 20_001
    req, fields = refund(pan, amount, rrn, merchant=merchant)
    assert decided(view, req, fields) == Decision(Response(mti="0210", rc=rc, echo=fields), note=note)


# ============================================================================ reversals

def test_a_full_reversal_undoes_everything_and_gives_the_days_limit_back():
    """docs/domain.md, "Spending order and clawback (assumptions)": a reversal claws back all of
    the cashback; docs/architecture.md, "Reversal vs refund": it also gives the day's spending
    limit back. A reversal's response carries no RRN of its own (docs/architecture.md, RRN)."""
    view = bought_and_committed()
    req, fields = reversal(NAMDONG_PAN, 20_000, "000002")
    d = decided(view, req, fields)
    payable = "merchant:NAMDONG01      :payable"
    assert d.posting.entries == (
        (payable, -20_000), (payable, 100), ("fee_income", -100), (payable, -100), ("fee_subsidy:namdong", 100),
        ("cashback_expense:national", 800), ("cashback_expense:city", 400), ("cashback_expense:namdong", 300),
        ("card:1:cash", 20_000), ("card:1:cashback", -1_500))
    assert (d.posting.id, d.posting.kind, d.posting.amount, d.posting.original_id) == (4, "reversal", 20_000, 3)
    assert (d.posting.fee, d.posting.support, d.posting.cashback) == (-100, -100, -1_500)
    assert d.response == Response(mti="0410", rc=Rc.APPROVED, echo=fields, balances=Balances(100_000, 0))
    assert d.changes == (PostingUndone(3, 20_000, reversed=20_000),
                         MemberMonthMoved("M000000001", "2019-07", -20_000), CardDayMoved(1, "2019-07-20", -20_000))
    assert [e.type for e in d.events] == ["reversal", "cashback.clawed_back"]


def test_a_partial_reversal_undoes_down_to_the_de95_amount_and_a_second_one_undoes_nothing_more():
    """docs/architecture.md, "Partial reversal (DE95)": the original stands at 12,000, so 8,000
    (2/5) is undone: fee 40, support 40, cashback 320 + 160 + 120; the day's limit gets 8,000
    back. A second reversal with the same DE95 undoes nothing more."""
    view = bought_and_committed()
    req, fields = reversal(NAMDONG_PAN, 20_000, "000002", replacement=12_000)
    d = decided(view, req, fields)
    assert d.posting.amount == 8_000
    assert d.posting.detail == UndoDetail(
        member="M000000001", month="2019-07", day="2019-07-20", cb_back=0, fee_back=40,
        support_back=(("namdong", 40),), claw=(("national", 320), ("city", 160), ("namdong", 120)),
        eligible_back=8_000)
    assert d.changes == (PostingUndone(3, 8_000, reversed=8_000),
                         MemberMonthMoved("M000000001", "2019-07", -8_000), CardDayMoved(1, "2019-07-20", -8_000))
    assert d.response.balances == Balances(88_000, 900)
    committed(view, req, d)

    again_req, again_fields = reversal(NAMDONG_PAN, 20_000, "000002", stan="000006", replacement=12_000)
    again = decided(view, again_req, again_fields)
    assert again == Decision(Response(mti="0410", rc=Rc.APPROVED, echo=again_fields,
                                      balances=Balances(88_000, 900)), note="nothing left to reverse")


def test_the_reversal_of_a_refund_takes_the_money_back_and_gives_the_cashback_again():
    """docs/events.md: the reversal of the 5,000 refund is a `reversal` with original_posting_id
    4, fee 25, fee_support {"namdong": 25}, cashback 375, and a `cashback.credited`; the purchase
    stands whole again (its undone amount goes back by 5,000)."""
    view = bought_and_committed()
    refund_req, refund_fields = refund(NAMDONG_PAN, 5_000, "000000000003")
    committed(view, refund_req, decided(view, refund_req, refund_fields))
    req, fields = reversal(NAMDONG_PAN, 5_000, "000003", stan="000004")
    d = decided(view, req, fields)
    payable = "merchant:NAMDONG01      :payable"
    assert d.posting == Posting(
        id=5, kind="reversal", at=AT_LAUNCH, amount=5_000,
        entries=((payable, 5_000), (payable, -25), ("fee_income", 25), (payable, 25), ("fee_subsidy:namdong", -25),
                 ("cashback_expense:national", -200), ("cashback_expense:city", -100),
                 ("cashback_expense:namdong", -75), ("card:1:cash", -5_000), ("card:1:cashback", 375)),
        card_id=1, mid=NAMDONG_SHOP.mid, tid=TID, stan="000004", rrn="000000000005", fee=25, support=25,
        cashback=375, original_id=4,
        detail=RefundReversalDetail(member="M000000001", month="2019-07", day="2019-07-20", reverses=4))
    assert d.changes == (PostingUndone(4, 5_000), PostingUndone(3, -5_000),
                         MemberMonthMoved("M000000001", "2019-07", 5_000))
    assert d.response == Response(mti="0410", rc=Rc.APPROVED, echo=fields, balances=Balances(80_000, 1_500))
    assert events_of(d) == [("reversal", "eum/namdong/transactions", 5, event_id(5, "reversal")),
                            ("cashback.credited", "eum/namdong/cashback", 5, event_id(5, "cashback.credited"))]
    transaction = payloads(d)[0]
    assert (transaction["original_posting_id"], transaction["fee"], transaction["fee_support"],
            transaction["cashback"]) == (4, 25, {"namdong": 25}, 375)
    committed(view, req, d)
    assert (view.postings[3].undone, view.postings[4].undone) == (0, 5_000)

    twice_req, twice_fields = reversal(NAMDONG_PAN, 5_000, "000003", stan="000007")
    assert decided(view, twice_req, twice_fields) == Decision(
        Response(mti="0410", rc=Rc.APPROVED, echo=twice_fields, balances=Balances(80_000, 1_500)),
        note="refund already reversed")


def test_a_reversal_of_an_unknown_original_is_acknowledged_and_tombstones_it():
    """docs/architecture.md, "Reversal before its original": acknowledged (00), remembered; no
    posting, no event. The late original is then declined 12 (see the declines above)."""
    view = DictView((namdong_card(),), (NAMDONG_SHOP,))
    req, fields = reversal(NAMDONG_PAN, 20_000, "000002")
    d = decided(view, req, fields)
    assert d == Decision(Response(mti="0410", rc=Rc.APPROVED, echo=fields),
                         changes=(OriginalTombstoned((TID, "000002", TX_TIME), AT_LAUNCH),),
                         note="original unknown: remembered")
    committed(view, req, d)
    late_req, late_fields = purchase(NAMDONG_PAN, 20_000)
    assert decided(view, late_req, late_fields) == Decision(
        Response(mti="0210", rc=Rc.INVALID_TRANSACTION, echo=late_fields), note="reversed before it arrived")


def test_a_reversal_of_a_declined_original_posts_nothing():
    view = DictView((namdong_card(cash=1_000),), (NAMDONG_SHOP,))
    req, fields = purchase(NAMDONG_PAN, 20_000)
    declined = decided(view, req, fields)
    assert declined.response.rc is Rc.INSUFFICIENT_FUNDS
    committed(view, req, declined)
    rev_req, rev_fields = reversal(NAMDONG_PAN, 20_000, "000002")
    assert decided(view, rev_req, rev_fields) == Decision(Response(mti="0410", rc=Rc.APPROVED, echo=rev_fields),
                                                          note="original had no posting")


def test_a_reversal_with_another_pan_than_the_originals_is_declined_25():
    view = bought_and_committed()
    view.cards[INCHEON_PAN] = view.cards_by_id[2] = incheon_card()
    req, fields = reversal(INCHEON_PAN, 20_000, "000002")
    assert decided(view, req, fields) == Decision(Response(mti="0410", rc=Rc.ORIGINAL_NOT_FOUND, echo=fields),
                                                  note="reversal PAN differs from the original's")


# ============================================================================ PIN (docs/security.md)

PIN_BLOCK = "0123456789ABCDEF"  # opaque to the decision: the HSM's verdict comes in `pin`


def pin_purchase(card: CardState, pin) -> tuple[Decision, dict[str, str]]:
    view = DictView((card,), (NAMDONG_SHOP,))
    req, fields = purchase(card.pan, 20_000, pin_block=PIN_BLOCK)
    return decided(view, req, fields, pin=pin), fields


def test_a_right_pin_resets_the_wrong_pin_count_in_the_same_decision():
    d, _ = pin_purchase(namdong_card(pvv="1234", pin_tries=2), PinVerified(True))
    assert d.response.rc is Rc.APPROVED
    assert d.changes == (PinTriesSet(1, 0, False), MemberMonthMoved("M000000001", "2019-07", 20_000),
                         CardDayMoved(1, "2019-07-20", 20_000))


def test_a_right_pin_with_no_wrong_tries_changes_no_pin_count():
    d, _ = pin_purchase(namdong_card(pvv="1234"), PinVerified(True))
    assert d.changes == (MemberMonthMoved("M000000001", "2019-07", 20_000), CardDayMoved(1, "2019-07-20", 20_000))


@pytest.mark.parametrize("tries_before, rc, blocked, note", [
    (0, Rc.INCORRECT_PIN, False, "wrong PIN (1 of 3)"),
    (1, Rc.INCORRECT_PIN, False, "wrong PIN (2 of 3)"),
    (2, Rc.PIN_TRIES_EXCEEDED, True, "wrong PIN 3 times: PIN blocked"),
])
def test_a_wrong_pin_is_declined_and_counted_and_the_third_blocks(tries_before, rc, blocked, note):
    """docs/security.md: a wrong PIN gets 55 and counts; the third consecutive one gets 75 and
    blocks the card's PIN. The count is a change of the declined decision (nothing posted)."""
    d, fields = pin_purchase(namdong_card(pvv="1234", pin_tries=tries_before), PinVerified(False))
    assert d == Decision(Response(mti="0210", rc=rc, echo=fields),
                         changes=(PinTriesSet(1, tries_before + 1, blocked),), note=note)


@pytest.mark.parametrize("refusal", [PinRefused(Rc.INCORRECT_PIN, "PIN: HSM error 20"),
                                     PinRefused(Rc.SECURITY_VIOLATION, "PIN: HSM error 10")])
def test_a_pin_the_hsm_refuses_is_answered_its_code_and_not_counted(refusal):
    d, fields = pin_purchase(namdong_card(pvv="1234", pin_tries=1), refusal)
    assert d == Decision(Response(mti="0210", rc=refusal.rc, echo=fields), note=refusal.note)


def test_a_card_whose_pin_is_blocked_is_declined_75_without_the_hsm():
    card = namdong_card(pvv="1234", pin_tries=3, pin_blocked=True)
    assert pin_needs_hsm(card) is False
    d, fields = pin_purchase(card, None)  # the shell asked no HSM
    assert d == Decision(Response(mti="0210", rc=Rc.PIN_TRIES_EXCEEDED, echo=fields), note="PIN blocked")


def test_a_card_without_a_pin_is_declined_55_without_the_hsm():
    card = namdong_card(pvv="")
    assert pin_needs_hsm(card) is False
    d, fields = pin_purchase(card, None)
    assert d == Decision(Response(mti="0210", rc=Rc.INCORRECT_PIN, echo=fields), note="card has no PIN")


def test_a_pin_block_for_an_unknown_card_is_declined_14_without_the_hsm():
    assert pin_needs_hsm(None) is False
    view = DictView((), (NAMDONG_SHOP,))
    req, fields = purchase(INCHEON_PAN, 20_000, pin_block=PIN_BLOCK)
    assert decided(view, req, fields) == Decision(Response(mti="0210", rc=Rc.UNKNOWN_CARD, echo=fields),
                                                  note="card unknown")


def test_a_wrong_pin_counts_even_when_the_purchase_would_be_declined_for_funds():
    d, fields = pin_purchase(namdong_card(cash=0, pvv="1234"), PinVerified(False))
    assert d == Decision(Response(mti="0210", rc=Rc.INCORRECT_PIN, echo=fields),
                         changes=(PinTriesSet(1, 1, False),), note="wrong PIN (1 of 3)")


def test_a_right_pin_on_a_declined_purchase_still_resets_the_count():
    d, fields = pin_purchase(namdong_card(cash=0, pvv="1234", pin_tries=1), PinVerified(True))
    assert d == Decision(Response(mti="0210", rc=Rc.INSUFFICIENT_FUNDS, echo=fields),
                         changes=(PinTriesSet(1, 0, False),), note="insufficient funds")


# ============================================================================ purity

DECIDE_PY = Path(decide_module.__file__).with_name("decide.py")  # the source, also beside a compiled build
IO_MODULES = ("asyncio", "sqlite3", "socket", "selectors", "subprocess")


def test_the_decision_module_imports_no_io_and_has_no_coroutine():
    """switch/authorize/decide.py: "no I/O, never awaits". Its own imports (ast) name no I/O
    module, it defines no `async def` and no `await`, and its namespace holds no I/O module."""
    tree = ast.parse(DECIDE_PY.read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported == {"__future__", "datetime", "typing", "switch"}  # records: switch.record (msgspec)
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.AsyncFunctionDef, ast.Await, ast.AsyncFor,
                                                             ast.AsyncWith))]
    modules = {name for name, value in vars(decide_module).items() if type(value) is type(sys)}
    assert not modules & set(IO_MODULES)
    switch_imports = sorted(n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                            and (n.module or "").startswith("switch"))
    assert switch_imports == ["switch.domain", "switch.ledger.events", "switch.ledger.records", "switch.record",
                              "switch.rules.cashback", "switch.rules.fees", "switch.rules.policy",
                              "switch.wire.messages"]


def test_importing_the_decision_core_loads_no_io_module_even_transitively():
    """A fresh interpreter that imports switch.authorize.decide (and everything it imports) has
    loaded none of asyncio, sqlite3, socket, selectors, subprocess."""
    probe = ("import sys; import switch.authorize.decide; "
             f"print(','.join(m for m in {IO_MODULES!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_the_dict_view_is_a_view():
    """The test double implements the Protocol the decision reads through, and nothing more is
    needed: every method of View is on it."""
    wanted = {name for name in vars(View) if not name.startswith("_")} | {"ledger_id", "next_posting_id"}
    view = DictView()
    assert all(hasattr(view, name) for name in wanted)
