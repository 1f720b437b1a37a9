"""Hot state: an in-memory cache of the store, owned by the event loop thread.

The shell (switch/authorize/engine.py) loads what a request needs (`prefetch`, the only
place a cache miss reads the store) and then the pure decision reads it through the View
methods, which never touch the store. A Decision's changes are applied here only after its
commit (`apply`), while the member's lock is held, so the cache is always the committed
store: a row not cached can be read from the store at any time.

Bounds (docs/architecture.md "Memory bounds"): committed message outcomes (`messages_max`
2,000, `messages_age_s` 900 s), early-reversal tombstones (`tombstones_max` 10,000, the same
age) and postings (`postings_max` 20,000) are kept in insertion order, the oldest dropped by
count and by age (the store has them: a repeat, tombstone or posting not in memory is read
from it, found through the Bloom filters of switch/authorize/seen.py); cards, merchants and
terminals are bounded by the population; the day and month counters keep only the current
day and month (an older period is read from the store, which is how a late reversal finds it).
"""

from __future__ import annotations

import time
from array import array
from collections import OrderedDict
from datetime import datetime
from typing import Any, Callable, ClassVar

from switch.domain import Merchant, day_key, kst_instant, month_key
from switch.ledger.records import (AUTO_CHARGE_META, AutoCharge, CardDayMoved, CardIssued, CardMonthCharged,
                                   CardPvvSet, CardState, CardStatusSet, Change, MemberMonthMoved, MerchantAdded,
                                   MerchantUpdated, MessageKey, MetaSet,
                                   MessageOutcome, OriginalTombstoned, PinTriesSet, PostingState, PostingUndone,
                                   Terminal, TerminalAdded, TerminalStatusSet)
from switch.authorize.seen import SeenKeys
from switch.ledger.sqlite import SqliteReader
from switch.record import replace
from switch.wire.messages import KIND_COMPLETION, KIND_DEPOSIT, KIND_PURCHASE, KIND_REVERSAL, Request


TOMBSTONES_CAPACITY_MIN = 65_536  # the tombstones' filter starts at 80 KiB


class PeriodCounters:
    """Counters of one period (a KST day or month) keyed by card id or member: the only
    period held in memory. Counting another period drops the one held (the store has it);
    read and iterated as {(key, period): value}, the store's key."""

    __slots__ = ("period", "values", "complete", "latest")

    def __init__(self) -> None:
        self.period = ""
        self.values: Any = {}  # a dict here; CardCounters keeps an array("q") indexed by card id
        self.complete = False  # every stored counter of `period` is held: one not held is 0 (HotState.warm)
        self.latest = ""       # the latest period ever held complete (HotState._whole_month …)

    def whole(self, period: str) -> bool:
        """Every stored counter of `period` is held."""
        return self.complete and period == self.period

    def holds(self, key: object, period: str) -> bool:
        return period == self.period and (self.complete or key in self.values)

    def set(self, key: object, period: str, value: int) -> None:
        if period != self.period:
            self.period, self.values, self.complete = period, {}, False
        self.values[key] = value

    def get(self, key: object, period: str) -> int:
        if period != self.period:
            raise KeyError((key, period))
        return self.values.get(key, 0) if self.complete else self.values[key]

    def bump(self, key: object, period: str, delta: int) -> None:
        """Only a held counter moves: one not held is read from the store, which has it."""
        if period == self.period and (key in self.values or self.complete):
            self.values[key] = self.values.get(key, 0) + delta

    def completed(self, period: str) -> None:
        """Every stored counter of `period` has been set: any other is 0."""
        if period != self.period:
            self.period, self.values = period, {}
        self.complete = True
        self.latest = max(self.latest, period)

    def __contains__(self, item: tuple) -> bool:
        return self.holds(*item)

    def __iter__(self):
        return ((k, self.period) for k in self.values)

    def items(self):
        return (((k, self.period), v) for k, v in self.values.items())

    def __len__(self) -> int:
        return len(self.values)


class CardCounters(PeriodCounters):
    """PeriodCounters keyed by card id, held in arrays indexed by the id (card ids are dense):
    9 bytes a card instead of a dict entry and an int object (≈ 130 bytes)."""

    __slots__ = ("held", "count")

    def __init__(self) -> None:
        super().__init__()
        self.values = array("q")
        self.held = bytearray()
        self.count = 0

    def holds(self, key: int, period: str) -> bool:  # type: ignore[override]
        return period == self.period and (self.complete or (key < len(self.held) and self.held[key] == 1))

    def set(self, key: int, period: str, value: int) -> None:  # type: ignore[override]
        if period != self.period:
            self.period, self.values, self.held, self.count, self.complete = period, array("q"), bytearray(), 0, False
        if key >= len(self.held):
            grow = key + 1 - len(self.held)
            self.values.extend(array("q", bytes(8 * grow)))
            self.held.extend(bytes(grow))
        if not self.held[key]:
            self.held[key] = 1
            self.count += 1
        self.values[key] = value

    def get(self, key: int, period: str) -> int:  # type: ignore[override]
        if not self.holds(key, period):
            raise KeyError((key, period))
        return self.values[key] if key < len(self.held) and self.held[key] else 0

    def bump(self, key: int, period: str, delta: int) -> None:  # type: ignore[override]
        if self.holds(key, period):
            self.set(key, period, self.get(key, period) + delta)

    def completed(self, period: str) -> None:  # type: ignore[override]
        if period != self.period:
            self.period, self.values, self.held, self.count = period, array("q"), bytearray(), 0
        self.complete = True
        self.latest = max(self.latest, period)

    def __iter__(self):
        return ((k, self.period) for k, h in enumerate(self.held) if h)

    def items(self):
        values = self.values
        return (((k, self.period), values[k]) for k, h in enumerate(self.held) if h)

    def __len__(self) -> int:
        return self.count


class _Codes:
    """The few distinct values of a column (program, expiry month, status) as small codes."""

    __slots__ = ("values", "codes")

    def __init__(self) -> None:
        self.values: list[str] = []
        self.codes: dict[str, int] = {}

    def code(self, value: str) -> int:
        code = self.codes.get(value)
        if code is None:
            code = self.codes[value] = len(self.values)
            self.values.append(value)
        return code


class CardTable:
    """The cached cards, in columns indexed by card id (card ids are dense: 1, 2, …), a
    CardState built for whoever asks. A hot card costs ≈ 200 bytes (its PAN as an int key, a
    dict entry, eight bytes each of cash, cashback and receivable, a few of codes), where a
    CardState object with its strings and two dict entries cost ≈ 450 (docs/architecture.md
    "Memory bounds"). A card's row changes only here (set_*), after its commit."""

    __slots__ = ("ids", "keys", "cash", "cashback", "receivable", "tries", "blocked", "status", "program",
                 "expiry", "member", "pvv", "members", "member_codes", "codes", "_last_pan", "_last_key",
                 "_last_id", "_last_card")

    def __init__(self) -> None:
        self.ids: dict[int, int] = {}                 # PAN key → card id
        self.keys: list[int | None] = []              # card id → PAN key (None: not cached)
        self.cash, self.cashback, self.receivable = array("q"), array("q"), array("q")
        self.tries, self.blocked = bytearray(), bytearray()
        self.status, self.program = bytearray(), bytearray()
        self.expiry = array("H")
        self.member = array("l")                      # card id → member code
        self.pvv: dict[int, str] = {}                 # card id → PVV, for cards that have one
        self.members: list[str] = []                  # member code → member id
        self.member_codes: dict[str, int] = {}
        self.codes = (_Codes(), _Codes(), _Codes())   # status, program, expiry
        # the last PAN looked up and its key: a purchase looks its card up three times or more
        # (the shell, the prefetch, the decision), each an int() of 17 digits without it. A pure
        # function's last result, so nothing can make it stale (docs/performance.md, "The card
        # table's last key (kept)").
        self._last_pan = ""
        self._last_key = -1  # no card's key (int("1" + pan) ≥ 10): "" finds nothing, as before
        # the last CardState built and its card id: the same three or more lookups of a purchase
        # get one record, built once (docs/performance.md, "The card table's last card"). Every
        # change of a card's row (put, set_*) forgets it first; callers never mutate a CardState.
        self._last_id = -1
        self._last_card: CardState | None = None

    @staticmethod
    def key(pan: str) -> int:
        """A PAN as an int (half the memory of its string); the leading 1 keeps leading zeros."""
        return int("1" + pan)

    def put(self, card: CardState) -> None:
        cid = card.id
        self._last_id = -1
        if cid >= len(self.keys):
            grow = cid + 1 - len(self.keys)
            self.keys.extend([None] * grow)
            zeros = bytes(8 * grow)
            for counts in (self.cash, self.cashback, self.receivable):
                counts.frombytes(zeros)
            for flags in (self.tries, self.blocked, self.status, self.program):
                flags.extend(bytes(grow))
            self.expiry.frombytes(bytes(2 * grow))
            self.member.frombytes(bytes(self.member.itemsize * grow))
        key = self.key(card.pan)
        self.ids[key] = cid
        self.keys[cid] = key
        self.cash[cid], self.cashback[cid], self.receivable[cid] = card.cash, card.cashback, card.receivable
        self.tries[cid], self.blocked[cid] = card.pin_tries, int(card.pin_blocked)
        status, program, expiry = self.codes
        self.status[cid], self.program[cid] = status.code(card.status), program.code(card.program)
        self.expiry[cid] = expiry.code(card.expiry)
        code = self.member_codes.get(card.member)
        if code is None:
            code = self.member_codes[card.member] = len(self.members)
            self.members.append(card.member)
        self.member[cid] = code
        if card.pvv:
            self.pvv[cid] = card.pvv
        else:
            self.pvv.pop(cid, None)

    def get(self, card_id: int) -> CardState | None:
        if card_id == self._last_id:
            return self._last_card
        keys = self.keys
        if not 0 <= card_id < len(keys) or keys[card_id] is None:
            return None
        status, program, expiry = self.codes
        card = CardState(card_id, str(keys[card_id])[1:], program.values[self.program[card_id]],
                         self.members[self.member[card_id]], expiry.values[self.expiry[card_id]],
                         status.values[self.status[card_id]], self.cash[card_id], self.cashback[card_id],
                         self.receivable[card_id], self.pvv.get(card_id, ""), self.tries[card_id],
                         bool(self.blocked[card_id]))
        self._last_id, self._last_card = card_id, card
        return card

    def by_pan(self, pan: str) -> CardState | None:
        if pan == self._last_pan:
            key = self._last_key
        else:
            if not (pan.isascii() and pan.isdigit()):
                return None
            key = self.key(pan)
            self._last_pan, self._last_key = pan, key
        cid = self.ids.get(key)
        return None if cid is None else self.get(cid)

    def holds(self, card_id: int) -> bool:
        return 0 <= card_id < len(self.keys) and self.keys[card_id] is not None

    def set_balances(self, card_id: int, cash: int, cashback: int, receivable: int) -> None:
        if card_id == self._last_id:
            self._last_id = -1
        if self.holds(card_id):
            self.cash[card_id], self.cashback[card_id], self.receivable[card_id] = cash, cashback, receivable

    def set_pin_tries(self, card_id: int, tries: int, blocked: bool) -> None:
        if card_id == self._last_id:
            self._last_id = -1
        if self.holds(card_id):
            self.tries[card_id], self.blocked[card_id] = tries, int(blocked)

    def set_status(self, card_id: int, status: str) -> None:
        if card_id == self._last_id:
            self._last_id = -1
        if self.holds(card_id):
            self.status[card_id] = self.codes[0].code(status)

    def set_pvv(self, card_id: int, pvv: str) -> None:
        if card_id == self._last_id:
            self._last_id = -1
        if self.holds(card_id):
            if pvv:
                self.pvv[card_id] = pvv
            else:
                self.pvv.pop(card_id, None)

    def __getitem__(self, pan: str) -> CardState:
        card = self.by_pan(pan)
        if card is None:
            raise KeyError("card not cached")  # never the PAN itself in an error
        return card

    def __len__(self) -> int:
        return len(self.ids)


class HotState:
    """Caches keyed like the store; the View of switch/authorize/decide.py."""

    def __init__(self, reader: SqliteReader, *, ledger_id: str = "", messages_max: int = 2_000,
                 messages_age_s: float = 900.0, tombstones_max: int = 10_000, postings_max: int = 20_000) -> None:
        self.reader = reader
        self.ledger_id = ledger_id
        self.messages_max = messages_max      # committed outcomes kept in memory; older ones are re-read
        self.messages_age_s = messages_age_s  # … and none older than this (the repeat horizon)
        self.tombstones_max = tombstones_max  # early reversals kept in memory (same age bound)
        self.postings_max = postings_max      # postings a refund or reversal may need
        self.epoch = 0                        # moves on clear(): a decision made before it is void
        self.ids: Any = None                  # several instances: ids from sequences (switch/ops/cluster.py)
        self.clear()

    def clear(self) -> None:
        """Forget everything (after a failed commit): the next requests reload from the store."""
        self.epoch += 1
        self.cards = CardTable()
        self.merchants: dict[str, Merchant] = {}
        self.terminals: dict[str, Terminal] = {}
        # the current day's and month's counters only (PeriodCounters)
        self.member_months = PeriodCounters()   # member → eligible spend this month
        self.card_days = CardCounters()         # card id → spent today
        self.card_months = CardCounters()       # card id → charged this month
        self.postings: OrderedDict[int, PostingState] = OrderedDict()
        self.rrns: dict[str, int] = {}
        # every enrolled card's auto-charge (few: one entry per enrolled card, read at start and
        # kept by the commits that change it; docs/architecture.md, "Memory bounds")
        self.auto_charges: dict[int, AutoCharge] = self.reader.auto_charges()
        # key → (outcome, when it was cached, in clock seconds): the age bound's clock
        self.messages: OrderedDict[MessageKey, tuple[MessageOutcome, float]] = OrderedDict()
        # which keys the store holds, known without a query (switch/authorize/seen.py), for
        # messages and tombstones alike: a new message reads nothing from the store to learn
        # it is new; the recent tombstones are held exactly (key → clock seconds)
        self.seen = self._seen_keys()
        self.tombstones_seen = self._seen_tombstones()
        self.tombstones: OrderedDict[MessageKey, float] = OrderedDict()
        self.clock_s = 0.0  # the latest decision's time (clock seconds): ages are measured on it
        if self.ids is None:  # the one writer: the next free ids
            self.next_posting_id = self.reader.max_posting_id() + 1
            self.next_card_id = self.reader.max_card_id() + 1
            self.posting_ids_end = self.card_ids_end = 1 << 62
        else:  # one of several: fresh blocks (what is left of the old ones is never used)
            self.next_posting_id, self.posting_ids_end = self.ids.block("posting")
            self.next_card_id, self.card_ids_end = self.ids.block("card")

    def use_ids(self, ids: Any) -> None:
        """Take ids from `ids` (IdBlocks) from now on."""
        self.ids = ids
        self.next_posting_id, self.posting_ids_end = ids.block("posting")
        self.next_card_id, self.card_ids_end = ids.block("card")

    def posting_id_used(self, posting_id: int) -> None:
        self.next_posting_id = posting_id + 1
        if self.next_posting_id >= self.posting_ids_end:
            self.next_posting_id, self.posting_ids_end = self.ids.block("posting")

    def card_id_used(self, card_id: int) -> None:
        self.next_card_id = card_id + 1
        if self.next_card_id >= self.card_ids_end:
            self.next_card_id, self.card_ids_end = self.ids.block("card")

    WARM_PAGE: ClassVar[int] = 10_000

    def warm(self, now: datetime, *, budget_s: float | None = None,
             clock: Callable[[], float] = time.perf_counter) -> int:
        """The current month's and day's counters, then the cards in id order, into memory (a
        few statements instead of one read per new card: docs/performance.md, "PostgreSQL: a
        warm hot state", "A warm hot state on SQLite"). Only for the ledger's one writer, before
        it serves: a counter not stored for `now`'s period is then known to be 0
        (PeriodCounters.complete), and a later period is read whole when first met (below,
        "whole periods"). budget_s: stop taking cards after the page
        that passes this many seconds (the rest are read on first use, as without warming), so
        a large ledger still starts in bounded time. Returns the number of cards taken; memory
        is what every card being used once costs anyway (docs/architecture.md, "Memory bounds")."""
        month, day = month_key(now), day_key(now)
        self._whole_month(month)
        self._whole_day(day)
        self._whole_charged(month)
        deadline = None if budget_s is None else clock() + budget_s
        last, n = 0, 0
        while deadline is None or clock() < deadline:
            page = self.reader.cards_page(last, self.WARM_PAGE)
            for card in page:
                self.cards.put(card)
            n += len(page)
            if len(page) < self.WARM_PAGE:
                break
            last = page[-1].id
        return n

    def refresh_filters(self) -> None:
        """Learn every message key and early reversal the store holds (another instance of a
        cluster committed some: switch/ops/cluster.py). One synchronous read: nothing runs
        between the read and the swap."""
        self.seen = self._seen_keys()
        self.tombstones_seen = self._seen_tombstones()
        self.auto_charges = self.reader.auto_charges()  # a gained member's card may have been enrolled elsewhere

    # ------------------------------------------------------------------ loading (may read the store)

    def load_card(self, pan: str) -> CardState | None:
        card = self.cards.by_pan(pan)
        if card is None:
            card = self.reader.card_by_pan(pan)
            if card is not None:
                self.cards.put(card)
        return card

    # ------------------------------------------------------------------ whole periods (the one writer)
    # The ledger's one writer (no IdBlocks: not one of a cluster's instances) is the only one to
    # write counters, so the store holds of a period no more than this process committed. It
    # reads a period whole when it first meets it (at start, HotState.warm; at a day's or
    # month's rollover, with the first request of the new one) and from then on never reads one
    # counter of it: one not held is 0 (PeriodCounters.complete). Only a period later than every
    # one met before is read so: nothing of it can be in flight (a decision's counters are
    # loaded, prefetch, before it is made, and an undo moves the period of a posting already
    # made), so the read cannot count a unit that its commit's `apply` will count again. A
    # period met again after an earlier one (the clock stepped back) is read per key, under the
    # member's lock, as a cluster's instance reads every counter (other instances write too).
    # On SQLite a counter is a sum of appended moves (switch/ledger/store.py, COUNTERS): a
    # period's one read sums them at once, where a read per key sums the period's moves of
    # the key.

    @staticmethod
    def _hold_whole(counters: PeriodCounters, period: str, rows: list[tuple[Any, int]]) -> None:
        for key, value in rows:
            counters.set(key, period, value)
        counters.completed(period)

    def _whole_month(self, month: str) -> None:
        if self.ids is None and month > self.member_months.latest:
            self._hold_whole(self.member_months, month, self.reader.month_counters(month))

    def _whole_day(self, day: str) -> None:
        if self.ids is None and day > self.card_days.latest:
            self._hold_whole(self.card_days, day, self.reader.day_counters(day))

    def _whole_charged(self, month: str) -> None:
        if self.ids is None and month > self.card_months.latest:
            self._hold_whole(self.card_months, month, self.reader.month_charged(month))

    def load_card_for(self, pan: str, now: datetime) -> CardState | None:
        """A card not in memory comes with this month's and day's counters, in one read, unless
        both periods are held whole; a counter already held (another card of the member, a
        pending change) is kept."""
        card = self.cards.by_pan(pan)
        if card is not None:
            return card
        month, day = month_key(now), day_key(now)
        self._whole_month(month)
        self._whole_day(day)
        if self.member_months.whole(month) and self.card_days.whole(day):
            return self.load_card(pan)
        card, eligible, spent = self.reader.card_with_counters(pan, month, day)
        if card is not None:
            self.cards.put(card)
            if not self.member_months.holds(card.member, month):
                self.member_months.set(card.member, month, eligible)
            if not self.card_days.holds(card.id, day):
                self.card_days.set(card.id, day, spent)
        return card

    def load_card_by_id(self, card_id: int) -> CardState | None:
        card = self.cards.get(card_id)
        if card is None:
            card = self.reader.card_by_id(card_id)
            if card is not None:
                self.cards.put(card)
        return card

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
        self._whole_month(month)
        counters = self.member_months
        if not counters.holds(member, month):
            counters.set(member, month, self.reader.member_month(member, month))
        return counters.get(member, month)

    def load_card_day(self, card_id: int, day: str) -> int:
        self._whole_day(day)
        counters = self.card_days
        if not counters.holds(card_id, day):
            counters.set(card_id, day, self.reader.card_day(card_id, day))
        return counters.get(card_id, day)

    def load_card_month_charged(self, card_id: int, month: str) -> int:
        self._whole_charged(month)
        counters = self.card_months
        if not counters.holds(card_id, month):
            counters.set(card_id, month, self.reader.card_month_charged(card_id, month))
        return counters.get(card_id, month)

    def load_posting(self, posting_id: int) -> PostingState | None:
        p = self.postings.get(posting_id)
        if p is None:
            p = self.reader.posting(posting_id)
            if p is not None:  # a hold read by id may be one its RRN has moved past: not indexed by RRN
                self.remember_posting(p, by_rrn=p.kind != "hold")
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

    def _seen_tombstones(self) -> SeenKeys:
        return SeenKeys.of(self.reader.tombstone_keys(), stored=self.reader.tombstone_count(),
                           capacity_min=TOMBSTONES_CAPACITY_MIN)

    def load_message(self, key: MessageKey) -> MessageOutcome | None:
        cached = self.messages.get(key)
        if cached is not None:
            return cached[0]
        if self.seen.may_hold(key):
            m = self.reader.message(key)
            if m is not None:
                self.remember_message(m)
            return m
        return None

    def load_tombstone(self, key: MessageKey) -> bool:
        if key in self.tombstones:
            return True
        if self.tombstones_seen.may_hold(key) and self.reader.tombstone(key):
            self._remember_tombstone(key)  # an old one, back in memory for the decision to see
            return True
        return False

    def prefetch(self, req: Request, now: datetime) -> None:
        """Load every row the decision on `req` at `now` may read, so that deciding reads
        memory only (switch/authorize/decide.py, View)."""
        self.clock_s = kst_instant(now).seconds
        pan, merchant, kind = req.pan, req.merchant, req.kind  # each read once (a Struct's field: a generic lookup)
        card = self.load_card_for(pan, now) if pan else None
        if merchant:
            self.load_merchant(merchant)
        if card is not None:
            card_id = card.id
            self.load_member_month(card.member, month_key(now))
            self.load_card_day(card_id, day_key(now))
            if kind is KIND_DEPOSIT or (kind is KIND_PURCHASE and card_id in self.auto_charges):
                self.load_card_month_charged(card_id, month_key(now))
        if kind is KIND_REVERSAL:
            original = self.load_message(req.original_key)
            if original is not None and original.posting_id is not None:
                self._load_undo_chain(original.posting_id)
                p = self.postings.get(original.posting_id)
                if p is not None and p.kind == "hold" and p.rrn:  # a pre-authorization's hold as it stands
                    self.load_posting_by_rrn(p.rrn)
        else:
            self.load_tombstone(req.key)
            rrn = req.rrn
            if rrn:  # a refund's purchase, the hold an incremental authorization or a completion quotes
                p = self.load_posting_by_rrn(rrn)
                if p is not None:
                    self._load_undo_chain(p.id)
            if kind is KIND_COMPLETION:  # DE90: the pre-authorization it completes
                self.load_message(req.original_key)

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
        return self.cards.by_pan(pan)

    def card_by_id(self, card_id: int) -> CardState | None:
        return self.cards.get(card_id)

    def merchant(self, mid: str) -> Merchant | None:
        return self.merchants.get(mid)

    def member_month(self, member: str, month: str) -> int:
        return self.member_months.get(member, month)

    def card_day(self, card_id: int, day: str) -> int:
        return self.card_days.get(card_id, day)

    def card_month_charged(self, card_id: int, month: str) -> int:
        return self.card_months.get(card_id, month)

    def auto_charge(self, card_id: int) -> AutoCharge | None:
        return self.auto_charges.get(card_id)

    def posting(self, posting_id: int) -> PostingState | None:
        return self.postings.get(posting_id)

    def posting_by_rrn(self, rrn: str) -> PostingState | None:
        pid = self.rrns.get(rrn)
        return None if pid is None else self.postings.get(pid)

    def message(self, key: MessageKey) -> MessageOutcome | None:
        cached = self.messages.get(key)
        return None if cached is None else cached[0]

    def tombstoned(self, key: MessageKey) -> bool:
        return key in self.tombstones

    # ------------------------------------------------------------------ after a commit

    def apply(self, changes: tuple[Change, ...]) -> None:
        """A committed unit's changes. Only cached rows move: a row not cached is read from
        the store, which already has them."""
        for ch in changes:
            if isinstance(ch, MemberMonthMoved):
                self.member_months.bump(ch.member, ch.month, ch.eligible)
            elif isinstance(ch, CardDayMoved):
                self.card_days.bump(ch.card_id, ch.day, ch.spent)
            elif isinstance(ch, CardMonthCharged):
                self.card_months.bump(ch.card_id, ch.month, ch.charged)
            elif isinstance(ch, PostingUndone):
                p = self.postings.get(ch.posting_id)
                if p is not None:
                    p.undone += ch.undone
                    p.reversed += ch.reversed
            elif isinstance(ch, OriginalTombstoned):
                self.tombstones_seen.add(ch.key)
                if self.tombstones_seen.full:
                    self.tombstones_seen = self._seen_tombstones()
                self._remember_tombstone(ch.key)
            elif isinstance(ch, PinTriesSet):
                self.cards.set_pin_tries(ch.card_id, ch.tries, ch.blocked)
            elif isinstance(ch, CardStatusSet):
                self.cards.set_status(ch.card_id, ch.status)
            elif isinstance(ch, CardPvvSet):
                self.cards.set_pvv(ch.card_id, ch.pvv)
            elif isinstance(ch, CardIssued):
                self.cards.put(ch.card)
            elif isinstance(ch, MerchantAdded):
                self.merchants[ch.merchant.mid] = ch.merchant
            elif isinstance(ch, MetaSet) and ch.key.startswith(AUTO_CHARGE_META):
                card_id = int(ch.key[len(AUTO_CHARGE_META):])
                threshold, amount = (int(x) for x in ch.value.split(","))
                if amount:
                    self.auto_charges[card_id] = AutoCharge(threshold, amount)
                else:
                    self.auto_charges.pop(card_id, None)
            elif isinstance(ch, TerminalAdded):
                self.terminals[ch.terminal.tid] = ch.terminal
            elif isinstance(ch, TerminalStatusSet):  # the status rides on the cached row: no extra look-up
                t = self.terminals.get(ch.tid)
                if t is not None:
                    self.terminals[ch.tid] = replace(t, status=ch.status)
            elif isinstance(ch, MerchantUpdated):  # the next authorization at this merchant sees it
                self.merchants[ch.merchant.mid] = ch.merchant

    def set_balances(self, card_id: int, cash: int, cashback: int, receivable: int) -> None:
        self.cards.set_balances(card_id, cash, cashback, receivable)

    def remember_posting(self, p: PostingState, *, by_rrn: bool = True) -> None:
        """Cache a posting (purchases and holds also by RRN); beyond postings_max forget the
        oldest (the store has them, as committed: the cache never holds an uncommitted
        change). The postings of a hold's chain share its RRN: the RRN names the latest, so
        only the latest is indexed by it (by_rrn: the caller knows `p` is the latest)."""
        pid, rrn = p.id, p.rrn  # each read once (a record's field: a generic lookup)
        self.postings[pid] = p
        if by_rrn and rrn and p.kind in ("purchase", "hold") and self.rrns.get(rrn, -1) < pid:
            self.rrns[rrn] = pid
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
        """Cache a committed outcome; beyond messages_max, or older than messages_age_s,
        forget the oldest (the store has them)."""
        messages, key = self.messages, m.key
        messages[key] = (m, self.clock_s)
        messages.move_to_end(key)
        horizon = self.clock_s - self.messages_age_s
        while messages and (len(messages) > self.messages_max or next(iter(messages.values()))[1] < horizon):
            messages.popitem(last=False)

    def _remember_tombstone(self, key: MessageKey) -> None:
        tombstones = self.tombstones
        tombstones[key] = self.clock_s
        tombstones.move_to_end(key)
        horizon = self.clock_s - self.messages_age_s
        while tombstones and (len(tombstones) > self.tombstones_max or next(iter(tombstones.values())) < horizon):
            tombstones.popitem(last=False)
