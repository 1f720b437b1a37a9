"""Hot state: an in-memory cache of the store, owned by the event loop thread.

The shell (switch/authorize/engine.py) loads what a request needs (`prefetch`, the only
place a cache miss reads the store) and then the pure decision reads it through the View
methods, which never touch the store. A Decision's changes are applied here only after its
commit (`apply`), while the member's lock is held, so the cache is always the committed
store: a row not cached can be read from the store at any time. Bounds: committed message
outcomes and postings (`messages_max`, `postings_max`, 200,000 each) are kept in insertion
order and the oldest are dropped (the store has them); cards, merchants, terminals and the
day/month counters are bounded by the population and the calendar.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime

from switch.domain import Merchant, day_key, month_key
from switch.ledger.records import (CardDayMoved, CardIssued, CardMonthCharged, CardPvvSet, CardState, CardStatusSet,
                                   Change, MemberMonthMoved, MerchantAdded, MessageKey, MessageOutcome,
                                   OriginalTombstoned, PinTriesSet, PostingState, PostingUndone, Terminal,
                                   TerminalAdded)
from switch.authorize.seen import SeenKeys
from switch.ledger.sqlite import SqliteReader
from switch.wire.messages import Kind, Request


class HotState:
    """Caches keyed like the store; the View of switch/authorize/decide.py."""

    def __init__(self, reader: SqliteReader, *, ledger_id: str = "", messages_max: int = 200_000,
                 postings_max: int = 200_000) -> None:
        self.reader = reader
        self.ledger_id = ledger_id
        self.messages_max = messages_max  # committed outcomes kept in memory; older ones are re-read
        self.postings_max = postings_max  # likewise postings a refund or reversal may need
        self.epoch = 0                    # moves on clear(): a decision made before it is void
        self.clear()

    def clear(self) -> None:
        """Forget everything (after a failed commit): the next requests reload from the store."""
        self.epoch += 1
        self.cards: dict[str, CardState] = {}
        self.cards_by_id: dict[int, CardState] = {}
        self.merchants: dict[str, Merchant] = {}
        self.terminals: dict[str, Terminal] = {}
        self.member_months: dict[tuple[str, str], int] = {}
        self.card_days: dict[tuple[int, str], int] = {}
        self.card_months: dict[tuple[int, str], int] = {}
        self.postings: OrderedDict[int, PostingState] = OrderedDict()
        self.rrns: dict[str, int] = {}
        self.messages: OrderedDict[MessageKey, MessageOutcome] = OrderedDict()
        # which keys the store holds, known without a query (switch/authorize/seen.py), and
        # every tombstone (few): a new message reads nothing from the store to learn it is new
        self.seen = self._seen_keys()
        self.tombstones: set[MessageKey] = self.reader.tombstone_keys()
        self.next_posting_id = self.reader.max_posting_id() + 1
        self.next_card_id = self.reader.max_card_id() + 1

    # ------------------------------------------------------------------ loading (may read the store)

    def load_card(self, pan: str) -> CardState | None:
        card = self.cards.get(pan)
        if card is None:
            card = self.reader.card_by_pan(pan)
            if card is not None:
                self._cache_card(card)
        return card

    def load_card_by_id(self, card_id: int) -> CardState | None:
        card = self.cards_by_id.get(card_id)
        if card is None:
            card = self.reader.card_by_id(card_id)
            if card is not None:
                self._cache_card(card)
        return card

    def _cache_card(self, card: CardState) -> None:
        self.cards[card.pan] = card
        self.cards_by_id[card.id] = card

    def load_merchant(self, mid: str) -> Merchant | None:
        m = self.merchants.get(mid)
        if m is None:
            m = self.reader.merchant(mid)
            if m is not None:
                self.merchants[mid] = m
        return m

    def load_terminal(self, tid: str) -> Terminal | None:
        t = self.terminals.get(tid)
        if t is None:
            t = self.reader.terminal(tid)
            if t is not None:
                self.terminals[tid] = t
        return t

    def load_member_month(self, member: str, month: str) -> int:
        key = (member, month)
        if key not in self.member_months:
            self.member_months[key] = self.reader.member_month(member, month)
        return self.member_months[key]

    def load_card_day(self, card_id: int, day: str) -> int:
        key = (card_id, day)
        if key not in self.card_days:
            self.card_days[key] = self.reader.card_day(card_id, day)
        return self.card_days[key]

    def load_card_month_charged(self, card_id: int, month: str) -> int:
        key = (card_id, month)
        if key not in self.card_months:
            self.card_months[key] = self.reader.card_month_charged(card_id, month)
        return self.card_months[key]

    def load_posting(self, posting_id: int) -> PostingState | None:
        p = self.postings.get(posting_id)
        if p is None:
            p = self.reader.posting(posting_id)
            if p is not None:
                self.remember_posting(p)
        return p

    def load_posting_by_rrn(self, rrn: str) -> PostingState | None:
        pid = self.rrns.get(rrn)
        if pid is not None:
            return self.load_posting(pid)
        p = self.reader.posting_by_rrn(rrn)
        if p is not None:
            p = self.postings.get(p.id) or p
            self.remember_posting(p)
        return p

    def _seen_keys(self) -> SeenKeys:
        return SeenKeys.of(self.reader.message_keys(), stored=self.reader.message_count())

    def load_message(self, key: MessageKey) -> MessageOutcome | None:
        m = self.messages.get(key)
        if m is None and self.seen.may_hold(key):
            m = self.reader.message(key)
            if m is not None:
                self.remember_message(m)
        return m

    def load_tombstone(self, key: MessageKey) -> bool:
        return key in self.tombstones  # all of them are in memory

    def prefetch(self, req: Request, now: datetime) -> None:
        """Load every row the decision on `req` at `now` may read, so that deciding reads
        memory only (switch/authorize/decide.py, View)."""
        card = self.load_card(req.pan) if req.pan else None
        if req.merchant:
            self.load_merchant(req.merchant)
        if card is not None:
            self.load_member_month(card.member, month_key(now))
            self.load_card_day(card.id, day_key(now))
        if req.kind is Kind.REVERSAL:
            original = self.load_message((req.terminal, req.original.stan, req.original.transmission_time))
            if original is not None and original.posting_id is not None:
                self._load_undo_chain(original.posting_id)
        else:
            self.load_tombstone(req.key)
            if req.kind is Kind.REFUND and req.rrn:
                p = self.load_posting_by_rrn(req.rrn)
                if p is not None:
                    self._load_undo_chain(p.id)

    def _load_undo_chain(self, posting_id: int) -> None:
        """A posting to undo, its original (a refund's purchase), their card, merchant and
        the member's month counters that undoing it moves."""
        p = self.load_posting(posting_id)
        if p is None:
            return
        if p.original_id is not None:
            self.load_posting(p.original_id)
        if p.card_id is not None:
            self.load_card_by_id(p.card_id)
        if p.mid:
            self.load_merchant(p.mid)

    # ------------------------------------------------------------------ the View (memory only)

    def card(self, pan: str) -> CardState | None:
        return self.cards.get(pan)

    def card_by_id(self, card_id: int) -> CardState | None:
        return self.cards_by_id.get(card_id)

    def merchant(self, mid: str) -> Merchant | None:
        return self.merchants.get(mid)

    def member_month(self, member: str, month: str) -> int:
        return self.member_months[(member, month)]

    def card_day(self, card_id: int, day: str) -> int:
        return self.card_days[(card_id, day)]

    def posting(self, posting_id: int) -> PostingState | None:
        return self.postings.get(posting_id)

    def posting_by_rrn(self, rrn: str) -> PostingState | None:
        pid = self.rrns.get(rrn)
        return None if pid is None else self.postings.get(pid)

    def message(self, key: MessageKey) -> MessageOutcome | None:
        return self.messages.get(key)

    def tombstoned(self, key: MessageKey) -> bool:
        return key in self.tombstones

    # ------------------------------------------------------------------ after a commit

    def apply(self, changes: tuple[Change, ...]) -> None:
        """A committed unit's changes. Only cached rows move: a row not cached is read from
        the store, which already has them."""
        for ch in changes:
            if isinstance(ch, MemberMonthMoved):
                _bump(self.member_months, (ch.member, ch.month), ch.eligible)
            elif isinstance(ch, CardDayMoved):
                _bump(self.card_days, (ch.card_id, ch.day), ch.spent)
            elif isinstance(ch, CardMonthCharged):
                _bump(self.card_months, (ch.card_id, ch.month), ch.charged)
            elif isinstance(ch, PostingUndone):
                p = self.postings.get(ch.posting_id)
                if p is not None:
                    p.undone += ch.undone
                    p.reversed += ch.reversed
            elif isinstance(ch, OriginalTombstoned):
                self.tombstones.add(ch.key)
            elif isinstance(ch, PinTriesSet):
                card = self.cards_by_id.get(ch.card_id)
                if card is not None:
                    card.pin_tries, card.pin_blocked = ch.tries, ch.blocked
            elif isinstance(ch, CardStatusSet):
                card = self.cards_by_id.get(ch.card_id)
                if card is not None:
                    card.status = ch.status
            elif isinstance(ch, CardPvvSet):
                card = self.cards_by_id.get(ch.card_id)
                if card is not None:
                    card.pvv = ch.pvv
            elif isinstance(ch, CardIssued):
                self._cache_card(ch.card)
            elif isinstance(ch, MerchantAdded):
                self.merchants[ch.merchant.mid] = ch.merchant
            elif isinstance(ch, TerminalAdded):
                self.terminals[ch.terminal.tid] = ch.terminal

    def set_balances(self, card_id: int, cash: int, cashback: int, receivable: int) -> None:
        card = self.cards_by_id.get(card_id)
        if card is not None:
            card.cash, card.cashback, card.receivable = cash, cashback, receivable

    def remember_posting(self, p: PostingState) -> None:
        """Cache a posting (purchases also by RRN); beyond postings_max forget the oldest
        (the store has them, as committed: the cache never holds an uncommitted change)."""
        self.postings[p.id] = p
        if p.kind == "purchase" and p.rrn:
            self.rrns[p.rrn] = p.id
        while len(self.postings) > self.postings_max:
            old_id, old = self.postings.popitem(last=False)
            if old.rrn and self.rrns.get(old.rrn) == old_id:
                del self.rrns[old.rrn]

    def message_committed(self, m: MessageOutcome) -> None:
        """A new outcome is durable: the store holds its key from now on."""
        self.seen.add(m.key)
        if self.seen.full:  # double the filter, from the store (which has this key too)
            self.seen = self._seen_keys()
        self.remember_message(m)

    def remember_message(self, m: MessageOutcome) -> None:
        """Cache a committed outcome; beyond messages_max forget the oldest (the store has them)."""
        self.messages[m.key] = m
        while len(self.messages) > self.messages_max:
            self.messages.popitem(last=False)


def _bump(counters: dict, key: object, delta: int) -> None:
    if key in counters:
        counters[key] += delta
