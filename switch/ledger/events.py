"""Events: what a posting tells the city's and districts' systems (docs/events.md).

Pure module: builds the outbox rows of one posting from the posting's own entries, so an
event can never say something the ledger does not. No I/O; the ledger writer inserts the
rows in the posting's commit and the relay (switch/ledger/relay.py) publishes them.

Signs follow the postings table: `amount` is the transaction's amount (positive); `fee`,
`fee_support` and `cashback` are what this posting did to them, so a refund's are negative.
"""

from __future__ import annotations

import functools
import hashlib
import uuid

import orjson
from typing import Iterable

from switch.domain import mask_pan
from switch.record import Record
from switch.ledger.records import OutboxEvent

SCHEMA_VERSION = 1
TRANSACTION_TYPES = ("purchase", "refund", "reversal", "hold", "release", "charge", "charge_reversal")
CASHBACK_CREDITED = "cashback.credited"
CASHBACK_CLAWED_BACK = "cashback.clawed_back"
STREAMS = ("cashback", "transactions")
FEE_SUBSIDY = "fee_subsidy:"            # ledger account prefixes, one account per funder
CASHBACK_EXPENSE = "cashback_expense:"


class CardFacts(Record, frozen=True):
    """The card as it stands after the posting (balances after)."""

    program: str
    member: str
    pan: str  # masked here, never published whole
    cash: int
    cashback: int
    receivable: int


class PostingFacts(Record, frozen=True):
    posting_id: int
    kind: str                      # one of TRANSACTION_TYPES
    at: str                        # the posting's time: ISO 8601 in KST, microseconds
    card: CardFacts
    amount: int
    entries: tuple[tuple[str, int], ...]
    rrn: str | None = ""           # None for a posting without its own RRN (a release)
    merchant: str | None = None    # DE42 without padding
    district: str | None = None    # the merchant's district
    terminal: str | None = None
    stan: str | None = None
    original_posting_id: int | None = None
    extra: tuple[tuple[str, int | str | bool], ...] = ()  # kind-specific figures, e.g. receivable_repaid


def topic(program: str, stream: str) -> str:
    return f"eum/{program}/{stream}"


# The RFC 4122 variant in the first hex digit of the clock sequence: its two top bits 10, the
# low two of the digest's digit kept (0-3 → 8-b, 4-7 → 8-b, …).
_VARIANT_DIGIT = {f"{n:x}": f"{0x8 | (n & 0x3):x}" for n in range(16)}


def event_id(ledger_id: str, posting_id: int, event_type: str) -> str:
    """Stable idempotency key: the same posting's event has the same id however often it is
    sent, and two ledgers never share one (each ledger has its own id, made at creation).
    It is uuid5(ledger id, "<posting id>/<type>"), computed from a SHA-1 state of the ledger's
    namespace kept once, without building UUID objects (a third of uuid.uuid5's time), and
    from the digest's hex text in one f-string: the version digit is 5, the variant digit comes
    from a table (no bytes edited bit by bit, no second hex rendering)."""
    h = _namespace_sha1(ledger_id).copy()
    h.update(f"{posting_id}/{event_type}".encode())
    x = h.hexdigest()
    return f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{_VARIANT_DIGIT[x[16]]}{x[17:20]}-{x[20:32]}"


@functools.lru_cache(maxsize=8)
def _namespace_sha1(ledger_id: str) -> "hashlib._Hash":
    return hashlib.sha1(uuid.UUID(ledger_id).bytes)




def _encode(payload: dict) -> str:
    """Compact UTF-8 JSON, rendered once (orjson: the same text json.dumps gives with
    separators=(",", ":") and ensure_ascii=False, for the ints, strings and None events hold)."""
    return orjson.dumps(payload).decode()


def _money(entries: Iterable[tuple[str, int]]) -> tuple[int, dict[str, int], dict[str, int]]:
    """Fee, fee support by funder and cashback by funder, from the posting's entries in one
    pass. Support and cashback are counted from the funder's side turned positive (what the
    funder paid, what the card was credited); funders in first-seen order, zeros dropped."""
    fee = 0
    support: dict[str, int] = {}
    cashback: dict[str, int] = {}
    for account, amount in entries:
        if account == "fee_income":
            fee += amount
        elif account.startswith(FEE_SUBSIDY):
            funder = account[len(FEE_SUBSIDY):]
            support[funder] = support.get(funder, 0) - amount
        elif account.startswith(CASHBACK_EXPENSE):
            funder = account[len(CASHBACK_EXPENSE):]
            cashback[funder] = cashback.get(funder, 0) - amount
    return fee, {f: v for f, v in support.items() if v}, {f: v for f, v in cashback.items() if v}


def posting_events(ledger_id: str, facts: PostingFacts) -> list[OutboxEvent]:
    """The transaction event of a posting, and its cashback event when the posting credits or
    claws back cashback."""
    # each field read once (compiled, a Struct's field costs a generic attribute lookup a
    # read: docs/performance.md, "Fields read once (kept)")
    kind, posting_id, amount, original = facts.kind, facts.posting_id, facts.amount, facts.original_posting_id
    assert kind in TRANSACTION_TYPES, kind
    fee, support, cashback = _money(facts.entries)
    cashback_total = sum(cashback.values())
    card = facts.card
    program, at, member, pan = card.program, facts.at, card.member, mask_pan(card.pan)
    merchant, district = facts.merchant, facts.district
    balances = {"cash": card.cash, "cashback": card.cashback, "receivable": card.receivable}
    # each payload built whole, in its keys' order (no `{**common, …}` merges: each copied a
    # dict, ≈ 1,700 instructions; docs/performance.md, "Event payloads built whole (kept)")
    eid = event_id(ledger_id, posting_id, kind)
    transaction = {
        "event_id": eid, "type": kind, "schema": SCHEMA_VERSION,
        "time": at, "posting_id": posting_id, "program": program, "member": member, "pan": pan,
        "merchant": merchant, "district": district, "rrn": facts.rrn, "terminal": facts.terminal, "stan": facts.stan,
        "original_posting_id": original, "amount": amount, "fee": fee,
        "fee_support": support, "cashback": cashback_total, "cashback_by_funder": cashback,
    }
    for key, value in facts.extra:  # kind-specific figures, after the common ones
        transaction[key] = value
    transaction["balances_after"] = balances
    events = [_event(eid, posting_id, program, kind, "transactions", transaction)]
    if cashback:
        cashback_kind = CASHBACK_CREDITED if cashback_total > 0 else CASHBACK_CLAWED_BACK
        eid = event_id(ledger_id, posting_id, cashback_kind)
        body = {"event_id": eid, "type": cashback_kind, "schema": SCHEMA_VERSION,
                "time": at, "posting_id": posting_id, "program": program, "member": member, "pan": pan,
                "merchant": merchant, "district": district, "transaction": kind, "original_posting_id": original,
                "amount": amount, "cashback": cashback_total, "by_funder": cashback,
                "balances_after": balances}
        events.append(_event(eid, posting_id, program, cashback_kind, "cashback", body))
    return events


def _event(eid: str, posting_id: int, program: str, event_type: str, stream: str, payload: dict) -> OutboxEvent:
    return OutboxEvent(event_id=eid, topic=topic(program, stream), type=event_type, posting_id=posting_id,
                       payload=_encode(payload))
