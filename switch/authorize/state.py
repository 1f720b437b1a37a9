"""Hot state: an in-memory cache of the store, filled lazily, owned by the event loop thread.

Every write passes through this process's engine, which updates the cache and hands a unit
to the ledger writer in the same step (no await in between), so the cache is always the
store plus the units still in flight. A row not yet cached is read from the store: it
cannot have uncommitted changes, because changing it would have cached it first.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from switch.domain import Merchant
from switch.ledger.store import connect


class CardState:
    __slots__ = ("id", "pan", "program", "member", "expiry", "status", "cash", "cashback", "receivable",
                 "pvv", "pin_tries", "pin_blocked")

    def __init__(self, id: int, pan: str, program: str, member: str, expiry: str, status: str,
                 cash: int, cashback: int, receivable: int, pvv: str = "", pin_tries: int = 0,
                 pin_blocked: bool = False) -> None:
        self.id = id
        self.pan = pan
        self.program = program
        self.member = member
        self.expiry = expiry
        self.status = status
        self.cash = cash
        self.cashback = cashback
        self.receivable = receivable
        self.pvv = pvv
        self.pin_tries = pin_tries
        self.pin_blocked = pin_blocked

    def accounts(self) -> tuple[str, str, str]:
        return (f"card:{self.id}:cash", f"card:{self.id}:cashback", f"card:{self.id}:receivable")


class PostingState:
    """What a refund or reversal needs to know about an earlier posting."""

    __slots__ = ("id", "kind", "card_id", "mid", "amount", "undone", "at", "detail", "rrn", "original_id")

    def __init__(self, id: int, kind: str, card_id: int | None, mid: str | None, amount: int,
                 undone: int, at: str, detail: dict, rrn: str | None, original_id: int | None) -> None:
        self.id = id
        self.kind = kind
        self.card_id = card_id
        self.mid = mid
        self.amount = amount
        self.undone = undone
        self.at = at
        self.detail = detail
        self.rrn = rrn
        self.original_id = original_id

    @property
    def remaining(self) -> int:
        return self.amount - self.undone


class MessageState:
    """The stored outcome of one financial message, by idempotency key."""

    __slots__ = ("mti", "digest", "response", "posting_id", "done")

    def __init__(self, mti: str, digest: str, response: dict[str, str] | None, posting_id: int | None,
                 done: asyncio.Future[None] | None) -> None:
        self.mti = mti
        self.digest = digest
        self.response = response
        self.posting_id = posting_id
        self.done = done  # resolved when durable; None when loaded from the store


@dataclass(frozen=True, slots=True)
class Terminal:
    tid: str
    mid: str
    security: str
    key_lmk: str = ""      # BDK (DUKPT profiles) or TAK (mac) under the LMK; empty for none
    ksn_initial: str = ""
    ksn_max: int = 0       # highest DUKPT counter accepted before this process started


class StoreReader:
    """Point reads on a read-only connection (WAL: readers never block the writer)."""

    def __init__(self, path: Path) -> None:
        self.conn: sqlite3.Connection = connect(path, readonly=True)

    def close(self) -> None:
        self.conn.close()

    def _balance(self, name: str) -> int:
        row = self.conn.execute("SELECT balance FROM accounts WHERE name=?", (name,)).fetchone()
        return row[0] if row else 0

    def card_by_pan(self, pan: str) -> CardState | None:
        row = self.conn.execute(
            "SELECT id, pan, program, member, expiry, status, pvv, pin_tries, pin_blocked FROM cards WHERE pan=?",
            (pan,)).fetchone()
        if row is None:
            return None
        cid = row[0]
        return CardState(*row[:6], cash=self._balance(f"card:{cid}:cash"),
                         cashback=self._balance(f"card:{cid}:cashback"),
                         receivable=self._balance(f"card:{cid}:receivable"),
                         pvv=row[6], pin_tries=row[7], pin_blocked=bool(row[8]))

    def merchant(self, mid: str) -> Merchant | None:
        row = self.conn.execute(
            "SELECT mid, name, district, annual_sales, category, online_mall FROM merchants WHERE mid=?",
            (mid,),
        ).fetchone()
        if row is None:
            return None
        return Merchant(mid=row[0], name=row[1], district=row[2], annual_sales=row[3],
                        category=row[4], online_mall=bool(row[5]))

    def terminal(self, tid: str) -> Terminal | None:
        row = self.conn.execute("SELECT tid, mid, security, key_lmk, ksn_initial, ksn_max FROM terminals WHERE tid=?",
                                (tid,)).fetchone()
        return Terminal(*row) if row else None

    def member_month(self, member: str, month: str) -> int:
        row = self.conn.execute(
            "SELECT eligible FROM member_months WHERE member=? AND month=?", (member, month)
        ).fetchone()
        return row[0] if row else 0

    def card_day(self, card_id: int, day: str) -> int:
        row = self.conn.execute("SELECT spent FROM card_days WHERE card_id=? AND day=?", (card_id, day)).fetchone()
        return row[0] if row else 0

    def card_month_charged(self, card_id: int, month: str) -> int:
        row = self.conn.execute(
            "SELECT charged FROM card_months WHERE card_id=? AND month=?", (card_id, month)
        ).fetchone()
        return row[0] if row else 0

    def _posting(self, where: str, arg: object) -> PostingState | None:
        row = self.conn.execute(
            f"SELECT id, kind, card_id, mid, amount, undone, at, detail, rrn, original_id FROM postings WHERE {where}",
            (arg,),
        ).fetchone()
        if row is None:
            return None
        return PostingState(*row[:7], json.loads(row[7]), row[8], row[9])

    def posting(self, posting_id: int) -> PostingState | None:
        return self._posting("id=?", posting_id)

    def posting_by_rrn(self, rrn: str) -> PostingState | None:
        return self._posting("rrn=?", rrn)

    def message(self, key: tuple[str, str, str]) -> MessageState | None:
        row = self.conn.execute(
            "SELECT mti, digest, response, posting_id FROM messages WHERE tid=? AND stan=? AND tx_time=?", key
        ).fetchone()
        if row is None:
            return None
        return MessageState(row[0], row[1], json.loads(row[2]), row[3], None)

    def tombstone(self, key: tuple[str, str, str]) -> bool:
        row = self.conn.execute("SELECT 1 FROM tombstones WHERE tid=? AND stan=? AND tx_time=?", key).fetchone()
        return row is not None

    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def key_group(self, name: str, profile: str) -> tuple[str, str] | None:
        row = self.conn.execute("SELECT bdk, kcv FROM key_groups WHERE name=? AND profile=?", (name, profile)).fetchone()
        return (row[0], row[1]) if row else None

    def dukpt_terminals(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM terminals WHERE security LIKE 'dukpt-%'").fetchone()[0]

    def max_posting_id(self) -> int:
        return self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM postings").fetchone()[0]

    def max_card_id(self) -> int:
        return self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM cards").fetchone()[0]


class HotState:
    """Caches keyed like the store. `clear()` after a failed commit: reload from the store."""

    def __init__(self, reader: StoreReader, *, messages_max: int = 200_000, postings_max: int = 200_000) -> None:
        self.reader = reader
        self.messages_max = messages_max  # committed outcomes kept in memory; older ones are re-read
        self.postings_max = postings_max  # likewise postings a refund or reversal may need
        self.clear()

    def clear(self) -> None:
        self.cards: dict[str, CardState] = {}
        self.cards_by_id: dict[int, CardState] = {}
        self.merchants: dict[str, Merchant] = {}
        self.terminals: dict[str, Terminal] = {}
        self.member_months: dict[tuple[str, str], int] = {}
        self.card_days: dict[tuple[int, str], int] = {}
        self.card_months: dict[tuple[int, str], int] = {}
        self.postings: OrderedDict[int, PostingState] = OrderedDict()
        self.pinned: dict[int, int] = {}  # posting id → units in flight that changed it
        self.rrns: dict[str, int] = {}
        self.messages: OrderedDict[tuple[str, str, str], MessageState] = OrderedDict()
        self.tombstones: set[tuple[str, str, str]] = set()
        self.next_posting_id = self.reader.max_posting_id() + 1
        self.next_card_id = self.reader.max_card_id() + 1

    def card(self, pan: str) -> CardState | None:
        card = self.cards.get(pan)
        if card is None:
            card = self.reader.card_by_pan(pan)
            if card is not None:
                self.cards[pan] = card
                self.cards_by_id[card.id] = card
        return card

    def card_by_id(self, card_id: int) -> CardState | None:
        card = self.cards_by_id.get(card_id)
        if card is None:
            row = self.reader.conn.execute("SELECT pan FROM cards WHERE id=?", (card_id,)).fetchone()
            return self.card(row[0]) if row else None
        return card

    def merchant(self, mid: str) -> Merchant | None:
        m = self.merchants.get(mid)
        if m is None:
            m = self.reader.merchant(mid)
            if m is not None:
                self.merchants[mid] = m
        return m

    def terminal(self, tid: str) -> Terminal | None:
        t = self.terminals.get(tid)
        if t is None:
            t = self.reader.terminal(tid)
            if t is not None:
                self.terminals[tid] = t
        return t

    def member_month(self, member: str, month: str) -> int:
        key = (member, month)
        if key not in self.member_months:
            self.member_months[key] = self.reader.member_month(member, month)
        return self.member_months[key]

    def card_day(self, card_id: int, day: str) -> int:
        key = (card_id, day)
        if key not in self.card_days:
            self.card_days[key] = self.reader.card_day(card_id, day)
        return self.card_days[key]

    def card_month_charged(self, card_id: int, month: str) -> int:
        key = (card_id, month)
        if key not in self.card_months:
            self.card_months[key] = self.reader.card_month_charged(card_id, month)
        return self.card_months[key]

    def posting(self, posting_id: int) -> PostingState | None:
        p = self.postings.get(posting_id)
        if p is None:
            p = self.reader.posting(posting_id)
            if p is not None:
                self.remember_posting(p)
        return p

    def posting_by_rrn(self, rrn: str) -> PostingState | None:
        pid = self.rrns.get(rrn)
        if pid is not None:
            return self.posting(pid)
        p = self.reader.posting_by_rrn(rrn)
        if p is not None:
            p = self.postings.get(p.id) or p
            self.remember_posting(p)
        return p

    def remember_posting(self, p: PostingState) -> None:
        """Cache a posting (purchases also by RRN); beyond postings_max forget the oldest that
        no unit in flight has changed (the store has them, as committed)."""
        self.postings[p.id] = p
        if p.kind == "purchase" and p.rrn:
            self.rrns[p.rrn] = p.id
        for _ in range(len(self.postings) - self.postings_max):
            old_id, old = next(iter(self.postings.items()))
            if old_id in self.pinned:  # changed by a unit not yet durable: keep it, look again later
                self.postings.move_to_end(old_id)
                break
            del self.postings[old_id]
            if old.rrn and self.rrns.get(old.rrn) == old_id:
                del self.rrns[old.rrn]

    def pin(self, posting_ids: list[int]) -> None:
        for pid in posting_ids:
            self.pinned[pid] = self.pinned.get(pid, 0) + 1

    def unpin(self, posting_ids: list[int]) -> None:
        for pid in posting_ids:
            left = self.pinned.get(pid, 0) - 1
            if left > 0:
                self.pinned[pid] = left
            else:
                self.pinned.pop(pid, None)

    def message(self, key: tuple[str, str, str]) -> MessageState | None:
        m = self.messages.get(key)
        if m is None:
            m = self.reader.message(key)
            if m is not None:
                self.remember_message(key, m)
        return m

    def remember_message(self, key: tuple[str, str, str], m: MessageState) -> None:
        """Cache an outcome; beyond messages_max, forget the oldest committed ones (the store
        has them). An outcome still being committed is never forgotten."""
        self.messages[key] = m
        for _ in range(len(self.messages) - self.messages_max):
            old_key, old = next(iter(self.messages.items()))
            if old.done is not None:  # still in flight: keep it, look again next time
                self.messages.move_to_end(old_key)
                break
            del self.messages[old_key]

    def tombstoned(self, key: tuple[str, str, str]) -> bool:
        return key in self.tombstones or self.reader.tombstone(key)
