"""A group's rows: the typed records of a group commit turned into the rows each table gets,
in the order the group decided them, and a posting's detail as its column's JSON (both ways).

Pure (no SQL, no I/O): the SQLite adapter (switch/ledger/sqlite.py) writes these rows with its
statements and the PostgreSQL adapter (switch/ledger/postgres.py) sends the same rows as
arrays. Python: compiled with mypyc it cost more instructions, not fewer (docs/performance.md,
"A group's rows compiled (measured, not kept)").
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Callable, Iterable

import orjson

from switch.ledger.records import (CardDayMoved, CardIssued, CardMonthCharged, CardPvvSet, CardStatusSet,
                                   ChargeDetail, Commit, Detail, HoldDetail, KeyGroupAdded, KsnAccepted,
                                   MemberMonthMoved, MerchantAdded, MerchantUpdated, MetaSet, OriginalTombstoned,
                                   PinTriesSet, Posting, PostingUndone, PurchaseDetail, RefundReversalDetail,
                                   RelayMarked, TerminalAdded, TerminalStatusSet, UndoDetail)

# ---------------------------------------------------------------------------- posting detail as JSON
# The column keeps the shape earlier versions wrote (dicts with these keys), so an older
# store's postings can still be refunded and reversed.


def detail_json(detail: Detail) -> str:
    if detail is None:
        return "{}"
    if isinstance(detail, PurchaseDetail):
        d = {"member": detail.member, "month": detail.month, "day": detail.day, "cb_used": detail.cb_used,
             "cash_used": detail.cash_used, "fee": detail.fee, "fee_tier": detail.fee_tier,
             "rate_bp": detail.rate_bp, "support": detail.support, "cashback": detail.cashback,
             "eligible": detail.eligible, "policy": detail.policy}
    elif isinstance(detail, UndoDetail):
        d = {"cb_back": detail.cb_back, "fee_back": detail.fee_back, "support_back": detail.support_back,
             "claw": detail.claw, "eligible_back": detail.eligible_back, "member": detail.member,
             "month": detail.month, "day": detail.day}
    elif isinstance(detail, RefundReversalDetail):
        d = {"reverses": detail.reverses, "member": detail.member, "month": detail.month, "day": detail.day}
    elif isinstance(detail, HoldDetail):
        d = {"member": detail.member, "expires": detail.expires, "added": detail.added}
    else:
        d = {"member": detail.member, "receivable_repaid": detail.receivable_repaid}
        if detail.auto:
            d["auto"] = True
    return orjson.dumps(d).decode()


def _shares(value: list) -> tuple[tuple[str, int], ...]:
    return tuple((str(f), int(w)) for f, w in value)


def parse_detail(text: str) -> Detail:
    d = json.loads(text or "{}")
    if "cb_used" in d:
        return PurchaseDetail(member=d["member"], month=d["month"], day=d["day"], cb_used=d["cb_used"],
                              cash_used=d["cash_used"], fee=d["fee"], fee_tier=d["fee_tier"], rate_bp=d["rate_bp"],
                              support=_shares(d["support"]), cashback=_shares(d["cashback"]),
                              eligible=d["eligible"], policy=d["policy"])
    if "cb_back" in d:
        return UndoDetail(member=d["member"], month=d["month"], day=d["day"], cb_back=d["cb_back"],
                          fee_back=d["fee_back"], support_back=_shares(d["support_back"]), claw=_shares(d["claw"]),
                          eligible_back=d["eligible_back"])
    if "reverses" in d:
        return RefundReversalDetail(member=d["member"], month=d["month"], day=d["day"], reverses=d["reverses"])
    if "expires" in d:
        return HoldDetail(member=d["member"], expires=d["expires"], added=d["added"])
    if "receivable_repaid" in d:
        return ChargeDetail(member=d["member"], receivable_repaid=d["receivable_repaid"], auto=d.get("auto", False))
    return None


# ---------------------------------------------------------------------------- a group's rows


class _Rows:
    """A group's rows, table by table, in the order the group decided them."""

    def __init__(self, pseq: Callable[[int], int] | None = None) -> None:
        """pseq: the next place in a partition's event sequence (a cluster's writer:
        switch/ledger/postgres.py); None: events carry no partition sequence."""
        self.pseq = pseq
        self.postings: list[tuple] = []
        self.entries: list[tuple] = []
        self.messages: list[tuple] = []
        self.events: list[tuple] = []
        self.accounts: dict[str, int] = defaultdict(int)
        self.card_postings: list[tuple[int, int]] = []  # SQLite: a card's postings that have no entries
        self.member_months: dict[tuple[str, str], int] = defaultdict(int)
        self.card_days: dict[tuple[int, str], int] = defaultdict(int)
        self.card_months: dict[tuple[int, str], int] = defaultdict(int)
        self.undone: dict[int, list[int]] = {}
        self.tombstones: list[tuple] = []
        self.pin_tries: dict[int, tuple] = {}
        self.ksn: dict[str, int] = {}
        self.status: dict[int, str] = {}
        self.pvv: dict[int, str] = {}
        self.cards: list[tuple] = []
        self.merchants: list[tuple] = []
        self.terminals: list[tuple] = []
        self.meta: dict[str, str] = {}
        self.key_groups: list[tuple] = []
        self.relay: dict[str, tuple] = {}
        self.terminal_status: dict[str, str] = {}
        self.merchant_update: dict[str, tuple] = {}

    def add(self, c: Commit, committed_at: float) -> None:
        for p in c.before:  # a purchase's auto-charge: written before the purchase, in the same group
            self._posting(p, c)
        if c.posting is not None:
            self._posting(c.posting, c)
        m = c.message
        if m is not None:
            self.messages.append((*m.key, m.mti, m.digest, m.rc, orjson.dumps(m.response).decode(), m.posting_id, m.at))
        for ev in c.events:
            seq = self.pseq(c.partition) if self.pseq is not None and c.partition is not None else None
            self.events.append((ev.event_id, ev.topic, ev.type, ev.posting_id, ev.payload, committed_at,
                                c.partition, seq))
        for ch in c.changes:
            self._change(ch)

    def _posting(self, p: Posting, c: Commit) -> None:
        # a posting that does not balance, or is told by no event, is our bug: fail loudly
        assert p.imbalance() == 0, f"posting {p.id} does not balance: {p.imbalance()}"
        assert c.events or p.kind == "seed_charge", f"posting {p.id} has no events"
        self.postings.append((p.id, p.kind, p.at, p.card_id, p.mid, p.tid, p.stan, p.rrn, p.amount, p.fee,
                              p.support, p.cashback, p.original_id, detail_json(p.detail)))
        for account, amount in p.entries:
            self.entries.append((p.id, account, amount))
            self.accounts[account] += amount
        if not p.entries and p.card_id is not None:  # no entry to fold it by (fold_accounts)
            self.card_postings.append((p.card_id, p.id))

    def _change(self, ch) -> None:  # noqa: C901 - one branch per record type, flat on purpose
        if isinstance(ch, MemberMonthMoved):
            self.member_months[(ch.member, ch.month)] += ch.eligible
        elif isinstance(ch, CardDayMoved):
            self.card_days[(ch.card_id, ch.day)] += ch.spent
        elif isinstance(ch, CardMonthCharged):
            self.card_months[(ch.card_id, ch.month)] += ch.charged
        elif isinstance(ch, PostingUndone):
            moved = self.undone.setdefault(ch.posting_id, [0, 0])
            moved[0] += ch.undone
            moved[1] += ch.reversed
        elif isinstance(ch, OriginalTombstoned):
            self.tombstones.append((*ch.key, ch.at))
        elif isinstance(ch, PinTriesSet):
            self.pin_tries[ch.card_id] = (ch.tries, int(ch.blocked), ch.card_id)
        elif isinstance(ch, KsnAccepted):
            self.ksn[ch.tid] = max(self.ksn.get(ch.tid, 0), ch.counter)
        elif isinstance(ch, CardStatusSet):
            self.status[ch.card_id] = ch.status
        elif isinstance(ch, CardPvvSet):
            self.pvv[ch.card_id] = ch.pvv
        elif isinstance(ch, CardIssued):
            k = ch.card
            self.cards.append((k.id, k.pan, k.program, k.member, k.expiry, k.status, ch.issued_at, k.pvv))
        elif isinstance(ch, MerchantAdded):
            m = ch.merchant
            self.merchants.append((m.mid, m.name, m.district, m.annual_sales, m.category, int(m.online_mall)))
        elif isinstance(ch, TerminalAdded):
            t = ch.terminal
            self.terminals.append((t.tid, t.mid, t.security, t.key_lmk, t.ksn_initial))
        elif isinstance(ch, MetaSet):
            self.meta[ch.key] = ch.value
        elif isinstance(ch, KeyGroupAdded):
            self.key_groups.append((ch.name, ch.profile, ch.bdk, ch.kcv))
        elif isinstance(ch, RelayMarked):
            self.relay[ch.name] = (ch.name, ch.seq, ch.at)
        elif isinstance(ch, TerminalStatusSet):
            self.terminal_status[ch.tid] = ch.status
        elif isinstance(ch, MerchantUpdated):  # the fields an operator changes (Operations.op_merchant_update)
            m = ch.merchant
            self.merchant_update[m.mid] = (m.name, m.annual_sales, m.category, m.mid)
        else:  # a record type this adapter does not know: our bug
            raise TypeError(f"unknown change {type(ch).__name__}")

    def tables(self) -> dict[str, list[tuple]]:
        """The group's rows by table, in the order they are written (reference rows first: a
        posting may be a new card's first charge); the PostgreSQL adapter sends the same rows."""
        return {
            "merchants": self.merchants,
            "terminals": self.terminals,
            "cards": self.cards,
            "postings": self.postings,
            "entries": self.entries,
            "messages": self.messages,
            "outbox": self.events,
            "accounts": sorted(self.accounts.items()),  # sorted: writers lock house accounts in one order
            "card_postings": self.card_postings,  # SQLite only (PostgreSQL indexes postings(card_id))
            "member_months": [(m, mo, v) for (m, mo), v in self.member_months.items()],
            "card_days": [(c, d, v) for (c, d), v in self.card_days.items()],
            "card_months": [(c, mo, v) for (c, mo), v in self.card_months.items()],
            "undone": [(u, r, pid) for pid, (u, r) in self.undone.items()],
            "tombstones": self.tombstones,
            "pin_tries": list(self.pin_tries.values()),
            "ksn": [(v, tid) for tid, v in sorted(self.ksn.items())],  # terminals are shared by instances: one order
            "status": [(s, cid) for cid, s in self.status.items()],
            "pvv": [(v, cid) for cid, v in self.pvv.items()],
            "meta": list(self.meta.items()),
            "key_groups": self.key_groups,
            "relay": list(self.relay.values()),
            # after the inserts above: a row added and changed in one group is changed
            "terminal_status": [(s, tid) for tid, s in sorted(self.terminal_status.items())],
            "merchant_update": [self.merchant_update[mid] for mid in sorted(self.merchant_update)],
        }


def group_rows(commits: Iterable[Commit], committed_at: float,
               pseq: Callable[[int], int] | None = None) -> dict[str, list[tuple]]:
    """A group's rows by table (both adapters write these)."""
    rows = _Rows(pseq)
    for c in commits:
        rows.add(c, committed_at)
    return rows.tables()
