"""Read-only views of the ledger: the whole-ledger proof, a card's statement and the
inventory (terminals, merchants, cards, page by page).

They read on read-only connections (one consistent WAL snapshot for verify and the
statement), so they run while a switch is writing, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any, Callable

from switch.domain import Merchant, card_accounts, card_held_account, mask_pan
from switch.ledger.records import CardState, Terminal
from switch.ledger.store import FOLD_MARK, Store, connect


@dataclass
class VerifyResult:
    ok: bool
    problem: str = ""
    stats: dict[str, int] = field(default_factory=dict)


def verify(db_path: Store) -> VerifyResult:
    """Prove the ledger: every posting balances, all accounts sum to zero, every account's
    balance equals its entries (so each card's cash and cashback do), no card balance is
    negative, every entry belongs to a posting, no message key posted twice, and the event
    outbox agrees with the postings (_verify_outbox). On SQLite also what is folded: every
    entry folded has its account's row, every folded posting of a card its card's row."""
    conn = connect(db_path, readonly=True)
    try:
        conn.execute("BEGIN")  # one snapshot for every check
        return _verify(conn)
    finally:
        conn.execute("COMMIT")
        conn.close()


def _verify(conn: sqlite3.Connection) -> VerifyResult:
    stats = {
        "postings": conn.execute("SELECT COUNT(*) FROM postings").fetchone()[0],
        "entries": conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0],
        "accounts": conn.execute("SELECT COUNT(*) FROM accounts").fetchone()[0],
        "cards": conn.execute("SELECT COUNT(*) FROM cards").fetchone()[0],
    }
    row = conn.execute(
        "SELECT posting_id, SUM(amount) FROM entries GROUP BY posting_id HAVING SUM(amount) != 0 "
        "ORDER BY posting_id LIMIT 1").fetchone()
    if row:
        return VerifyResult(False, f"posting {row[0]} does not balance: entries sum to {row[1]}", stats)
    row = conn.execute(
        "SELECT e.posting_id FROM entries e LEFT JOIN postings p ON p.id = e.posting_id "
        "WHERE p.id IS NULL LIMIT 1").fetchone()
    if row:
        return VerifyResult(False, f"entries reference posting {row[0]}, which does not exist", stats)
    total = conn.execute("SELECT COALESCE(SUM(balance), 0) FROM accounts").fetchone()[0]
    if total != 0:
        return VerifyResult(False, f"accounts sum to {total}, not 0", stats)
    row = conn.execute(
        "SELECT a.name, a.balance, COALESCE(e.total, 0) FROM accounts a "
        "LEFT JOIN (SELECT account, SUM(amount) AS total FROM entries GROUP BY account) e ON e.account = a.name "
        "WHERE a.balance != COALESCE(e.total, 0) ORDER BY a.name LIMIT 1").fetchone()
    if row:
        return VerifyResult(False, f"account {row[0]} balance {row[1]} != its entries {row[2]}", stats)
    # SQLite: an entry at or before the fold mark is in its account's folded row, so that row must
    # exist (past the mark, the view `accounts` shows every account its entries name)
    row = conn.execute(
        "SELECT e.account FROM entries e LEFT JOIN account_folds a ON a.name = e.account "
        f"WHERE e.rowid <= {FOLD_MARK} AND a.name IS NULL LIMIT 1"
        if isinstance(conn, sqlite3.Connection) else
        "SELECT e.account FROM entries e LEFT JOIN accounts a ON a.name = e.account WHERE a.name IS NULL LIMIT 1"
    ).fetchone()
    if row:
        return VerifyResult(False, f"entries post to account {row[0]}, which does not exist", stats)
    if isinstance(conn, sqlite3.Connection):  # a card's postings, folded (switch/ledger/store.py, card_postings)
        problem = _verify_card_postings(conn)
        if problem:
            return VerifyResult(False, problem, stats)
    row = conn.execute(
        "SELECT name, balance FROM accounts WHERE (name LIKE 'card:%:cash' OR name LIKE 'card:%:cashback') "
        "AND balance < 0 ORDER BY name LIMIT 1").fetchone()
    if row:
        return VerifyResult(False, f"card account {row[0]} is negative: {row[1]}", stats)
    row = conn.execute(
        "SELECT p.id FROM postings p LEFT JOIN entries e ON e.posting_id = p.id "
        "WHERE e.posting_id IS NULL AND p.amount != 0 LIMIT 1").fetchone()
    if row:
        return VerifyResult(False, f"posting {row[0]} has an amount but no entries", stats)
    row = conn.execute(
        "SELECT posting_id, COUNT(*) FROM messages WHERE posting_id IS NOT NULL GROUP BY posting_id "
        "HAVING COUNT(*) > 1 LIMIT 1").fetchone()
    if row:
        return VerifyResult(False, f"posting {row[0]} answers {row[1]} messages", stats)
    row = conn.execute(
        "SELECT p.id, p.amount, p.undone FROM postings p WHERE p.kind IN ('purchase', 'refund', 'hold') "
        "AND (p.undone < 0 OR p.undone > p.amount) LIMIT 1").fetchone()
    if row:
        return VerifyResult(False, f"posting {row[0]} undone {row[2]} outside 0..{row[1]}", stats)
    problem = _verify_holds(conn, stats)
    if problem:
        return VerifyResult(False, problem, stats)
    problem = _verify_outbox(conn, stats)
    if problem:
        return VerifyResult(False, problem, stats)
    return VerifyResult(True, "", stats)


def _verify_holds(conn: sqlite3.Connection, stats: dict[str, int]) -> str:
    """Pre-authorizations (docs/host-interface.md, "0100 / 0110 pre-authorization"): each
    card's held account holds exactly what its open holds say (a hold posting's amount less
    what was completed or released of it), and every open hold's card has that account."""
    open_count = conn.execute("SELECT COUNT(*) FROM postings WHERE kind = 'hold' AND undone < amount").fetchone()[0]
    if open_count:  # said only where there are some: a ledger without pre-authorizations reads as before
        stats["holds_open"] = open_count
    held = {name: balance for name, balance in conn.execute(
        "SELECT name, balance FROM accounts WHERE name LIKE 'card:%:held' AND balance != 0 ORDER BY name")}
    open_holds = {card_held_account(card_id): total for card_id, total in conn.execute(
        "SELECT card_id, SUM(amount - undone) FROM postings WHERE kind = 'hold' AND undone < amount "
        "GROUP BY card_id ORDER BY card_id")}
    for name in sorted(held.keys() | open_holds.keys()):
        if held.get(name, 0) != open_holds.get(name, 0):
            return (f"account {name} holds {held.get(name, 0)} but its card's open holds come to "
                    f"{open_holds.get(name, 0)}")
    return ""


# The posting kinds that are told by a transaction event of the same name (switch/ledger/events.py).
_TOLD = ("purchase", "refund", "reversal", "hold", "release", "charge", "charge_reversal")


def _verify_outbox(conn: sqlite3.Connection, stats: dict[str, int]) -> str:
    """Events and postings agree (docs/events.md): no event without its posting; every
    purchase, refund, reversal and charge since the outbox began has its transaction event;
    a posting moves cashback exactly when it has a cashback event, which carries that amount."""
    stats["events"] = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    row = conn.execute("SELECT value FROM meta WHERE key = 'outbox_since_posting'").fetchone()
    since = int(row[0]) if row else None
    row = conn.execute("SELECT o.seq, o.posting_id FROM outbox o LEFT JOIN postings p ON p.id = o.posting_id "
                       "WHERE p.id IS NULL LIMIT 1").fetchone()
    if row:
        return f"event {row[0]} tells of posting {row[1]}, which does not exist"
    if since is None:  # a store no switch with an outbox has opened: nothing to hold it to
        return ""
    told = ",".join("?" * len(_TOLD))
    row = conn.execute(
        f"SELECT p.id, p.kind FROM postings p LEFT JOIN outbox o ON o.posting_id = p.id AND o.type = p.kind "
        f"WHERE p.id > ? AND p.kind IN ({told}) AND o.seq IS NULL ORDER BY p.id LIMIT 1", (since, *_TOLD)).fetchone()
    if row:
        return f"posting {row[0]} ({row[1]}) has no {row[1]} event"
    row = conn.execute(
        f"SELECT p.id, COALESCE(c.moved, 0), json_extract(o.payload, '$.cashback') FROM postings p "
        "LEFT JOIN (SELECT posting_id, -SUM(amount) AS moved FROM entries WHERE account LIKE 'cashback_expense:%' "
        "           GROUP BY posting_id) c ON c.posting_id = p.id "
        "LEFT JOIN outbox o ON o.posting_id = p.id AND o.type IN ('cashback.credited', 'cashback.clawed_back') "
        f"WHERE p.id > ? AND p.kind IN ({told}) "
        "AND COALESCE(json_extract(o.payload, '$.cashback'), 0) != COALESCE(c.moved, 0) ORDER BY p.id LIMIT 1",
        (since, *_TOLD)).fetchone()
    if row:
        return f"posting {row[0]} moved {row[1]} won of cashback, its cashback event says {row[2] or 0}"
    return ""


_STATEMENT = "SELECT id, kind, at, amount, fee, cashback, rrn, mid FROM postings "
_CARD_POSTINGS = _STATEMENT + "WHERE card_id = ? ORDER BY id DESC LIMIT ?"  # PostgreSQL: postings(card_id) indexed
# SQLite: the card's folded postings, and the postings of the entries past the fold mark
# (switch/ledger/store.py, card_postings), a card's own kept by card_id
_CARD_POSTINGS_FOLDED = (_STATEMENT + "WHERE id IN (SELECT posting_id FROM card_postings WHERE card_id = ?1 UNION "
                         f"SELECT posting_id FROM entries WHERE rowid > {FOLD_MARK}) "
                         "AND card_id = ?1 ORDER BY id DESC LIMIT ?2")


def _verify_card_postings(conn: sqlite3.Connection) -> str:
    """SQLite: the card statement's table holds each posting of a card once folded (all its
    entries at or before the mark, or none at all), and names no other."""
    row = conn.execute(
        "SELECT p.id, p.card_id FROM postings p WHERE p.card_id IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM card_postings c WHERE c.card_id = p.card_id AND c.posting_id = p.id) "
        f"AND p.id NOT IN (SELECT posting_id FROM entries WHERE rowid > {FOLD_MARK}) "
        "ORDER BY p.id LIMIT 1").fetchone()
    if row:
        return f"posting {row[0]} of card {row[1]} is missing from its card's postings"
    row = conn.execute(
        "SELECT c.posting_id, c.card_id FROM card_postings c LEFT JOIN postings p ON p.id = c.posting_id "
        "WHERE p.card_id IS NOT c.card_id ORDER BY c.posting_id LIMIT 1").fetchone()
    if row:
        return f"card {row[1]}'s postings name posting {row[0]}, which is not the card's"
    return ""


def card_statement(db_path: Store, pan: str, *, recent: int = 10) -> dict[str, Any] | None:
    conn = connect(db_path, readonly=True)
    try:
        row = conn.execute("SELECT id, program, member, expiry, status, pin_tries, pin_blocked FROM cards WHERE pan=?",
                           (pan,)).fetchone()
        if row is None:
            return None
        cid, program, member, expiry, status, pin_tries, pin_blocked = row

        folded = isinstance(conn, sqlite3.Connection)  # SQLite: switch/ledger/store.py, card_postings

        def bal(account: str) -> int:
            r = conn.execute("SELECT balance FROM accounts WHERE name=?", (account,)).fetchone()
            return r[0] if r else 0

        cash, cashback, receivable = card_accounts(cid)

        postings = [
            {"id": p[0], "kind": p[1], "at": p[2], "amount": p[3], "fee": p[4], "cashback": p[5], "rrn": p[6],
             "merchant": (p[7] or "").strip()}
            for p in conn.execute(_CARD_POSTINGS_FOLDED if folded else _CARD_POSTINGS, (cid, recent))
        ]
        return {"pan": mask_pan(pan), "program": program, "member": member, "expiry": expiry, "status": status,
                # pin_blocked: wrong PINs reached the limit (eum admin card unblock-pin clears it)
                "pin_blocked": bool(pin_blocked), "pin_tries": pin_tries,
                "cash": bal(cash), "cashback": bal(cashback), "receivable": bal(receivable),
                "held": bal(card_held_account(cid)), "postings": postings}  # held: by open pre-authorizations, out of cash
    finally:
        conn.close()


# ---------------------------------------------------------------------------- inventory
# `eum admin terminal|merchant list|show`, `card list|find`: keyset pages (the rows after a key,
# in key order), so a page costs the same at the millionth card as at the first. Never a full
# PAN and never a key: a terminal's keys stay in the ledger.

PAGE_LIMIT_DEFAULT = 50
PAGE_LIMIT_MAX = 1_000


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    next_after: str | None  # --after for the next page; None: this page is the last


def _page(rows: list[Any], limit: int, key: Any, row: Any) -> Page:
    """`rows` read with limit + 1: one more than shown says whether another page follows."""
    shown = rows[:limit]
    return Page([row(r) for r in shown], str(key(shown[-1])) if len(rows) > limit else None)


def _reader(db_path: Store) -> Any:
    from switch.ledger.sqlite import SqliteReader  # its SQL runs on both stores

    return SqliteReader(db_path)


def check_limit(limit: int) -> int:
    if not 1 <= limit <= PAGE_LIMIT_MAX:
        raise ValueError(f"--limit must be 1..{PAGE_LIMIT_MAX:,}, got {limit}")
    return limit


def _terminal_row(t: Terminal) -> dict[str, Any]:
    return {"tid": t.tid, "mid": t.mid.strip(), "security": t.security, "status": t.status}


def terminal_page(db_path: Store, *, after: str = "", limit: int = PAGE_LIMIT_DEFAULT,
                  mid: str | None = None) -> Page:
    reader = _reader(db_path)
    try:
        rows = reader.terminals_page(after, check_limit(limit) + 1, mid=mid.ljust(15) if mid else None)
    finally:
        reader.close()
    return _page(rows, limit, lambda t: t.tid, _terminal_row)


def terminal_view(db_path: Store, tid: str) -> dict[str, Any] | None:
    reader = _reader(db_path)
    try:
        t = reader.terminal(tid)
        if t is None:
            return None
        merchant = reader.merchant(t.mid)
    finally:
        reader.close()
    out = {**_terminal_row(t), "merchant": merchant.name if merchant is not None else ""}
    if t.ksn_initial:  # DUKPT: the initial KSN (public, as on the wire) and the highest counter stored
        out.update(ksn_initial=t.ksn_initial, ksn_max=t.ksn_max)
    return out


def _merchant_row(m: Merchant) -> dict[str, Any]:
    return {"mid": m.mid.strip(), "name": m.name, "district": m.district, "annual_sales": m.annual_sales,
            "category": m.category, "online_mall": m.online_mall}


def merchant_page(db_path: Store, *, after: str = "", limit: int = PAGE_LIMIT_DEFAULT) -> Page:
    reader = _reader(db_path)
    try:
        rows = reader.merchants_page(after.ljust(15) if after else "", check_limit(limit) + 1)
    finally:
        reader.close()
    return _page(rows, limit, lambda m: m.mid.strip(), _merchant_row)


def merchant_view(db_path: Store, mid: str, *, fee_tier: Callable[[int], str]) -> dict[str, Any] | None:
    """The merchant, the fee tier its annual sales put it in, its terminals and what the
    platform owes it (its payable account)."""
    reader = _reader(db_path)
    try:
        m = reader.merchant(mid.ljust(15))
        if m is None:
            return None
        terminals = reader.terminal_count(m.mid)
        payable = reader.account_balance(f"merchant:{m.mid}:payable")
    finally:
        reader.close()
    return {**_merchant_row(m), "fee_tier": fee_tier(m.annual_sales), "terminals": terminals, "payable": payable}


def _card_row(c: CardState) -> dict[str, Any]:
    return {"id": c.id, "pan": mask_pan(c.pan), "program": c.program, "member": c.member, "expiry": c.expiry,
            "status": c.status, "pin_blocked": c.pin_blocked, "cash": c.cash, "cashback": c.cashback}


def card_page(db_path: Store, *, after: int = 0, limit: int = PAGE_LIMIT_DEFAULT, program: str | None = None,
              member: str | None = None, status: str | None = None) -> Page:
    """Cards in id order (the id is the page key: a PAN is never one)."""
    reader = _reader(db_path)
    try:
        rows = reader.cards_page(after, check_limit(limit) + 1, program=program, member=member, status=status)
    finally:
        reader.close()
    return _page(rows, limit, lambda c: c.id, _card_row)
