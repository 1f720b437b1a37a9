"""Operator reports: merchant settlement, program figures and the city's published figures
for a KST day or month, read from one snapshot of the ledger and reconciled with it.

Read-only: one `BEGIN` on a query-only connection, so a report runs while a switch writes
and every figure comes from the same instant. docs/reports.md defines each figure.

Day basis: a posting counts on the KST calendar day it was posted (`postings.at`). A
refund or reversal posted on day D of a purchase made on day D-1 counts on day D, against
the merchant and program of its original. Postings are never changed after the fact, so a
closed day's report never changes, the days of a month add up to the month, and all days
add up to the ledger's balances.

Every figure is a sum of ledger entries or posting amounts, in integer won. The report
carries its own proof (`Report.checks`): each total equals the movement of the ledger
accounts it stands for in the period, and opening + movement + later movement equals the
accounts' balances now. A failed check means the report (or the ledger) is wrong.
"""

from __future__ import annotations

import re
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from switch.domain import DISTRICTS, KST
from switch.ledger.store import PgDsn, Store, connect

FUNDER_ORDER = ("national", "city", "merchant", *DISTRICTS)

# Account groups of the reconciliation, in display order (funder accounts come after).
GROUP_CARD_CASH = "card cash"
GROUP_CARD_CASHBACK = "card cashback"
GROUP_CARD_RECEIVABLE = "card receivable"
GROUP_CARD_HELD = "card held"
GROUP_PAYABLES = "merchant payables"
_GROUP_SQL = (
    "CASE WHEN {a} LIKE 'card:%:cashback' THEN 'card cashback' "
    "WHEN {a} LIKE 'card:%:held' THEN 'card held' "
    "WHEN {a} LIKE 'card:%:receivable' THEN 'card receivable' "
    "WHEN {a} LIKE 'card:%:cash' THEN 'card cash' "
    "WHEN {a} LIKE 'merchant:%:payable' THEN 'merchant payables' ELSE {a} END"
)
CARD_GROUPS = (GROUP_CARD_CASH, GROUP_CARD_CASHBACK, GROUP_CARD_RECEIVABLE, GROUP_CARD_HELD)

# How a posting counts, by (kind, kind of its original).
SALE = "sale"
REVERSAL = "reversal"            # a purchase (partly) reversed
REFUND = "refund"
REFUND_REVERSED = "refund_reversed"  # a refund reversed: the sale stands again
CHARGE = "charge"
_CLASS = {
    ("purchase", None): SALE,
    ("purchase", "hold"): SALE,     # a pre-authorization's completion (0220)
    ("reversal", "purchase"): REVERSAL,
    ("refund", "purchase"): REFUND,
    ("reversal", "refund"): REFUND_REVERSED,
    ("charge", None): CHARGE,
    ("charge_reversal", None): CHARGE,  # a bank top-up reversed (0400 of a 21xxxx): charged less
    ("seed_charge", None): CHARGE,
}


class ReportError(ValueError):
    """An operator-facing problem: bad date, no ledger."""


# ---------------------------------------------------------------------------- periods

@dataclass(frozen=True, slots=True)
class Period:
    """KST calendar days first..last inclusive."""

    kind: str  # "day" | "month"
    label: str
    first: date
    last: date

    @classmethod
    def day(cls, text: str) -> Period:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            raise ReportError(f"--date must be YYYY-MM-DD, got {text!r}")
        try:
            d = date.fromisoformat(text)
        except ValueError:
            raise ReportError(f"--date {text!r} is not a calendar date") from None
        return cls("day", text, d, d)

    @classmethod
    def month(cls, text: str) -> Period:
        m = re.fullmatch(r"(\d{4})-(\d{2})", text)
        if not m or not 1 <= int(m.group(2)) <= 12:
            raise ReportError(f"--month must be YYYY-MM, got {text!r}")
        first = date(int(m.group(1)), int(m.group(2)), 1)
        following = date(first.year + first.month // 12, first.month % 12 + 1, 1)
        return cls("month", text, first, following - timedelta(days=1))

    def days(self) -> list[str]:
        n = (self.last - self.first).days + 1
        return [(self.first + timedelta(days=i)).isoformat() for i in range(n)]


def kst_day(at: str | None) -> str | None:
    """The KST calendar day of a stored ISO timestamp. The switch stores KST (+09:00), the
    fast path; any other offset is converted exactly (SQLite's own date functions round
    fractional seconds and can move 23:59:59.9995 to the next day)."""
    if at is None:
        return None
    if at.endswith("+09:00"):
        return at[:10]
    parsed = datetime.fromisoformat(at)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=KST)  # assumption: a naive stamp is Korean local time
    return parsed.astimezone(KST).date().isoformat()


# ---------------------------------------------------------------------------- figures

@dataclass
class MerchantSettlement:
    """What one merchant is owed for the period's postings (all amounts won)."""

    mid: str
    name: str
    district: str
    online_mall: bool
    purchases: int = 0          # number of purchases
    gross_sales: int = 0        # purchase amounts
    reversals: int = 0          # purchase amounts reversed (0400/0420)
    refunds: int = 0            # refunds, less refunds that were reversed
    fee: int = 0                # fee income: fees less fees given back
    support: dict[str, int] = field(default_factory=dict)  # fee support by funder
    payout: int = 0             # movement of the merchant's payable account

    @property
    def channel(self) -> str:
        return "mall" if self.online_mall else "shop"

    @property
    def net_sales(self) -> int:
        return self.gross_sales - self.reversals - self.refunds

    @property
    def support_total(self) -> int:
        return sum(self.support.values())

    @property
    def merchant_fee(self) -> int:
        """The part of the fee the merchant pays itself."""
        return self.fee - self.support_total


@dataclass
class ProgramFigures:
    """One card program: its members and what its cards did in the period."""

    program: str
    members: int = 0            # distinct members holding a card of it at the end of the period
    new_members: int = 0        # of those, members whose first card of it was issued in the period
    charged: int = 0            # money charged onto its cards (issued)
    purchases: int = 0          # number of purchases
    spent_gross: int = 0        # purchase amounts
    undone: int = 0             # reversals + refunds (less reversed refunds)
    cashback: dict[str, int] = field(default_factory=dict)  # net cashback by funder
    card_movement: int = 0      # movement of its cards' cash + cashback + receivable accounts

    @property
    def spent(self) -> int:
        return self.spent_gross - self.undone

    @property
    def cashback_total(self) -> int:
        return sum(self.cashback.values())


@dataclass
class HoldFigures:
    """One program's pre-authorization holds in the period (docs/reports.md, "Pre-authorization holds (`holds`)")."""

    program: str
    placed: int = 0             # authorizations that placed or raised a hold (0100/0120 approved)
    placed_amount: int = 0      # what they held
    completed: int = 0          # completions (0220) of holds
    completed_released: int = 0  # the holds those completions closed (the sale itself is in spent)
    released: int = 0           # releases: a 0400 of the authorization, or expiry
    released_amount: int = 0
    held_at_end: int = 0        # what the program's cards still held at the end of the period


@dataclass
class CityDay:
    """The platform-wide figures the city publishes, for one day (or the whole period)."""

    day: str
    subscribers: int = 0        # distinct members at the end of the day
    new_subscribers: int = 0    # members whose first card was issued that day
    issued: int = 0             # charged
    spent: int = 0              # purchases less reversals and refunds
    cashback: int = 0           # net cashback, all funders


@dataclass
class AccountLine:
    """A ledger account group: balance at the start, movement in the period, at its end,
    movement after it, and the balance now (the view accounts)."""

    account: str
    opening: int
    movement: int
    closing: int
    after: int
    balance: int


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    report: int
    ledger: int

    @property
    def ok(self) -> bool:
        return self.report == self.ledger


@dataclass
class Report:
    period: Period
    merchants: list[MerchantSettlement]
    programs: list[ProgramFigures]
    city_days: list[CityDay]
    city: CityDay
    members: int                 # platform: distinct members at the end of the period
    new_members: int
    accounts: list[AccountLine]
    checks: list[Check]
    support_funders: list[str]
    cashback_funders: list[str]
    holds: list[HoldFigures] = field(default_factory=list)
    verified: Any = None         # audit.VerifyResult on the same snapshot, when asked for

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks) and (self.verified is None or self.verified.ok)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


# ---------------------------------------------------------------------------- building

def build_report(db_path: Store, period: Period, *, verify: bool = False) -> Report:
    if not isinstance(db_path, PgDsn) and not db_path.exists():
        raise ReportError(f"no ledger at {db_path}")
    conn = connect(db_path, readonly=True)
    try:
        conn.create_function("kst_day", 1, kst_day, deterministic=True)
        conn.execute("BEGIN")  # one snapshot for every figure
        try:
            report = _build(conn, period)
            if verify:
                from switch.ledger.audit import _verify  # the same proof as `eum admin verify`, same snapshot

                report.verified = _verify(conn)
            return report
        finally:
            conn.execute("COMMIT")
    finally:
        conn.close()


class _Window:
    """SQL that selects the period's postings. The string bounds are a cheap pre-filter
    (a stamp's own date is within a day of its KST date); kst_day decides exactly."""

    def __init__(self, period: Period) -> None:
        self.first, self.last = period.first.isoformat(), period.last.isoformat()
        self.lo = (period.first - timedelta(days=1)).isoformat()
        self.hi = (period.last + timedelta(days=2)).isoformat()

    def where(self, alias: str = "p") -> str:
        return (f"{alias}.at >= :lo AND {alias}.at < :hi "
                f"AND kst_day({alias}.at) BETWEEN :first AND :last")

    @property
    def params(self) -> dict[str, str]:
        return {"lo": self.lo, "hi": self.hi, "first": self.first, "last": self.last}


def _build(conn: sqlite3.Connection, period: Period) -> Report:
    w = _Window(period)
    merchants = _merchants(conn, w)
    programs = _programs(conn, w)
    members, new_members, firsts = _platform_members(conn, w)
    city_days = _city_days(conn, w, period, firsts)
    city = CityDay(period.label, subscribers=members, new_subscribers=new_members,
                   issued=sum(d.issued for d in city_days), spent=sum(d.spent for d in city_days),
                   cashback=sum(d.cashback for d in city_days))
    accounts = _accounts(conn, w)
    support_funders = _ordered({f for m in merchants for f in m.support})
    cashback_funders = _ordered({f for p in programs for f in p.cashback})
    report = Report(period, merchants, programs, city_days, city, members, new_members, accounts, [],
                    support_funders, cashback_funders, _holds(conn, w))
    report.checks = _checks(report)
    return report


def _ordered(funders: set[str]) -> list[str]:
    rank = {f: i for i, f in enumerate(FUNDER_ORDER)}
    return sorted(funders, key=lambda f: (rank.get(f, len(rank)), f))


def _merchants(conn: sqlite3.Connection, w: _Window) -> list[MerchantSettlement]:
    out: dict[str, MerchantSettlement] = {}

    def settlement(mid: str) -> MerchantSettlement:
        if mid not in out:
            row = conn.execute("SELECT name, district, online_mall FROM merchants WHERE mid = ?", (mid,)).fetchone()
            name, district, mall = row if row else ("(unknown merchant)", "", 0)
            out[mid] = MerchantSettlement(mid.strip(), name, district, bool(mall))
        return out[mid]

    rows = conn.execute(
        "SELECT p.mid, p.kind, o.kind, COUNT(*), SUM(p.amount) FROM postings p "
        "LEFT JOIN postings o ON o.id = p.original_id "
        f"WHERE p.mid IS NOT NULL AND {w.where()} GROUP BY 1, 2, 3", w.params)
    for mid, kind, okind, count, amount in rows:
        m = settlement(mid)
        cls = _CLASS.get((kind, okind))
        if cls == SALE:
            m.purchases += count
            m.gross_sales += amount
        elif cls == REVERSAL:
            m.reversals += amount
        elif cls == REFUND:
            m.refunds += amount
        elif cls == REFUND_REVERSED:
            m.refunds -= amount
        # any other kind at a merchant shows up as a payout that does not add up (checks)
    rows = conn.execute(
        "SELECT p.mid, e.account, SUM(e.amount) FROM postings p JOIN entries e ON e.posting_id = p.id "
        f"WHERE p.mid IS NOT NULL AND e.account NOT LIKE 'card:%' AND {w.where()} GROUP BY 1, 2", w.params)
    for mid, account, amount in rows:
        m = settlement(mid)
        if account == "fee_income":
            m.fee += amount
        elif account.startswith("fee_subsidy:"):
            funder = account.split(":", 1)[1]
            m.support[funder] = m.support.get(funder, 0) - amount
        elif account == f"merchant:{mid}:payable":
            m.payout += amount
    for m in out.values():
        m.support = {f: v for f, v in m.support.items() if v}
    return sorted(out.values(), key=lambda m: m.mid)


def _programs(conn: sqlite3.Connection, w: _Window) -> list[ProgramFigures]:
    out: dict[str, ProgramFigures] = {}

    def figures(program: str) -> ProgramFigures:
        if program not in out:
            out[program] = ProgramFigures(program)
        return out[program]

    for program, members, new in conn.execute(
            "WITH firsts AS (SELECT program, member, MIN(kst_day(issued_at)) AS d FROM cards GROUP BY 1, 2) "
            "SELECT program, SUM(CASE WHEN d <= :last THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN d BETWEEN :first AND :last THEN 1 ELSE 0 END) FROM firsts GROUP BY 1", w.params):
        if members:
            p = figures(program)
            p.members, p.new_members = members, new

    rows = conn.execute(
        "SELECT c.program, p.kind, o.kind, COUNT(*), SUM(p.amount) FROM postings p "
        "JOIN cards c ON c.id = p.card_id LEFT JOIN postings o ON o.id = p.original_id "
        f"WHERE {w.where()} GROUP BY 1, 2, 3", w.params)
    for program, kind, okind, count, amount in rows:
        p = figures(program)
        cls = _CLASS.get((kind, okind))
        if cls == SALE:
            p.purchases += count
            p.spent_gross += amount
        elif cls in (REVERSAL, REFUND):
            p.undone += amount
        elif cls == REFUND_REVERSED:
            p.undone -= amount

    # Card entries carry their card in the account name (seeded opening charges have no
    # posting card); cashback expense belongs to the posting's card.
    # the card id between 'card:' and the next ':' (portable: PostgreSQL's schema defines instr)
    card_of_entry = ("CASE WHEN e.account LIKE 'card:%' THEN "
                     "CAST(substr(e.account, 6, instr(substr(e.account, 6), ':') - 1) AS INTEGER) END")
    rows = conn.execute(
        f"SELECT c.program, p.kind, {_GROUP_SQL.format(a='e.account')} AS g, SUM(e.amount) "
        "FROM postings p JOIN entries e ON e.posting_id = p.id "
        f"JOIN cards c ON c.id = COALESCE({card_of_entry}, p.card_id) "
        f"WHERE (e.account LIKE 'card:%' OR e.account LIKE 'cashback_expense:%') AND {w.where()} "
        "GROUP BY 1, 2, 3", w.params)
    for program, kind, group, amount in rows:
        p = figures(program)
        if group in CARD_GROUPS:
            p.card_movement += amount
            if _CLASS.get((kind, None)) == CHARGE:
                p.charged += amount
        else:
            funder = group.split(":", 1)[1]
            p.cashback[funder] = p.cashback.get(funder, 0) - amount
    for p in out.values():
        p.cashback = {f: v for f, v in p.cashback.items() if v}
    return sorted(out.values(), key=lambda p: p.program)


def _holds(conn: sqlite3.Connection, w: _Window) -> list[HoldFigures]:
    """Holds placed, completed and released in the period, by the held accounts' entries,
    and what each program's cards held at its end."""
    out: dict[str, HoldFigures] = {}

    def figures(program: str) -> HoldFigures:
        if program not in out:
            out[program] = HoldFigures(program)
        return out[program]

    rows = conn.execute(
        "SELECT c.program, p.kind, COUNT(DISTINCT p.id), SUM(e.amount) FROM postings p "
        "JOIN entries e ON e.posting_id = p.id JOIN cards c ON c.id = p.card_id "
        f"WHERE e.account LIKE 'card:%:held' AND {w.where()} GROUP BY 1, 2", w.params)
    for program, kind, count, amount in rows:
        h = figures(program)
        if kind == "hold":
            h.placed, h.placed_amount = count, amount
        elif kind == "purchase":
            h.completed, h.completed_released = count, -amount
        elif kind == "release":
            h.released, h.released_amount = count, -amount
    for program, amount in conn.execute(
            "SELECT c.program, SUM(e.amount) FROM postings p JOIN entries e ON e.posting_id = p.id "
            "JOIN cards c ON c.id = p.card_id WHERE e.account LIKE 'card:%:held' AND kst_day(p.at) <= :last "
            "GROUP BY 1", w.params):
        if amount:
            figures(program).held_at_end = amount
    return sorted(out.values(), key=lambda h: h.program)


def _platform_members(conn: sqlite3.Connection, w: _Window) -> tuple[int, int, dict[str, int]]:
    """Distinct members at the end of the period, new in it, and members by first day."""
    firsts = dict(conn.execute(
        "SELECT d, COUNT(*) FROM (SELECT member, MIN(kst_day(issued_at)) AS d FROM cards GROUP BY member) AS f "
        "WHERE d <= :last GROUP BY d", w.params).fetchall())
    members = sum(firsts.values())
    new = sum(n for d, n in firsts.items() if d >= w.first)
    return members, new, firsts


def _city_days(conn: sqlite3.Connection, w: _Window, period: Period, firsts: dict[str, int]) -> list[CityDay]:
    days = {d: CityDay(d) for d in period.days()}
    before = sum(n for d, n in firsts.items() if d < w.first)
    running = before
    for d, day in days.items():
        day.new_subscribers = firsts.get(d, 0)
        running += day.new_subscribers
        day.subscribers = running
    rows = conn.execute(
        "SELECT kst_day(p.at), p.kind, o.kind, SUM(p.amount) FROM postings p "
        "LEFT JOIN postings o ON o.id = p.original_id "
        f"WHERE p.card_id IS NOT NULL AND {w.where()} GROUP BY 1, 2, 3", w.params)
    for d, kind, okind, amount in rows:
        cls = _CLASS.get((kind, okind))
        sign = {SALE: 1, REVERSAL: -1, REFUND: -1, REFUND_REVERSED: 1}.get(cls, 0)
        days[d].spent += sign * amount
    rows = conn.execute(
        "SELECT kst_day(p.at), e.account, SUM(e.amount) FROM postings p JOIN entries e ON e.posting_id = p.id "
        f"WHERE (e.account = 'bank_settlement' OR e.account LIKE 'cashback_expense:%') AND {w.where()} "
        "GROUP BY 1, 2", w.params)
    for d, account, amount in rows:
        if account == "bank_settlement":
            days[d].issued -= amount
        else:
            days[d].cashback -= amount
    return list(days.values())


def _accounts(conn: sqlite3.Connection, w: _Window) -> list[AccountLine]:
    balances = dict(conn.execute(
        f"SELECT {_GROUP_SQL.format(a='name')} AS g, SUM(balance) FROM accounts GROUP BY g").fetchall())
    totals = dict(conn.execute(
        f"SELECT {_GROUP_SQL.format(a='account')} AS g, SUM(amount) FROM entries GROUP BY g").fetchall())
    movement: dict[str, int] = defaultdict(int)
    after: dict[str, int] = defaultdict(int)
    rows = conn.execute(
        f"SELECT kst_day(p.at) > :last, {_GROUP_SQL.format(a='e.account')} AS g, SUM(e.amount) "
        "FROM postings p JOIN entries e ON e.posting_id = p.id "
        "WHERE p.at >= :lo AND kst_day(p.at) >= :first GROUP BY 1, 2", w.params)
    for is_after, g, amount in rows:
        (after if is_after else movement)[g] += amount
    names = set(balances) | set(totals)
    lines = []
    for name in sorted(names, key=_account_rank):
        total = totals.get(name, 0)
        closing = total - after[name]
        lines.append(AccountLine(name, closing - movement[name], movement[name], closing, after[name],
                                 balances.get(name, 0)))
    return lines


def _account_rank(name: str) -> tuple[int, str]:
    fixed = (GROUP_CARD_CASH, GROUP_CARD_CASHBACK, GROUP_CARD_RECEIVABLE, GROUP_CARD_HELD, GROUP_PAYABLES, "fee_income",
             "bank_settlement")
    if name in fixed:
        return fixed.index(name), ""
    prefix, _, funder = name.partition(":")
    rank = {f: i for i, f in enumerate(FUNDER_ORDER)}
    return (10 if prefix == "fee_subsidy" else 20 if prefix == "cashback_expense" else 30), \
        f"{rank.get(funder, 99):02d}{funder}"


# ---------------------------------------------------------------------------- checks

def _checks(r: Report) -> list[Check]:
    move = {a.account: a.movement for a in r.accounts}

    def moved(name: str) -> int:
        return move.get(name, 0)

    checks = [Check(f"merchant {m.mid}: payout = net sales - fee + support", m.net_sales - m.fee + m.support_total,
                    m.payout) for m in r.merchants]
    checks += [
        Check("merchant payouts = movement of merchant payables", sum(m.payout for m in r.merchants),
              moved(GROUP_PAYABLES)),
        Check("merchant fees = movement of fee_income", sum(m.fee for m in r.merchants), moved("fee_income")),
        Check("charged = bank_settlement paid in", sum(p.charged for p in r.programs), -moved("bank_settlement")),
        Check("spent by programs = net sales of merchants", sum(p.spent for p in r.programs),
              sum(m.net_sales for m in r.merchants)),
        Check("card accounts: movement = charged - spent + cashback",
              sum(p.charged - p.spent + p.cashback_total for p in r.programs),
              sum(moved(g) for g in CARD_GROUPS)),
        Check("all accounts: movement sums to 0", sum(move.values()), 0),
        Check("city: issued = charged", r.city.issued, sum(p.charged for p in r.programs)),
        Check("city: spent = spent by programs", r.city.spent, sum(p.spent for p in r.programs)),
        Check("city: cashback = cashback by programs", r.city.cashback, sum(p.cashback_total for p in r.programs)),
        Check("city: subscribers at the end = members", r.city_days[-1].subscribers if r.city_days else 0, r.members),
    ]
    checks += [Check(f"program {p.program}: card movement = charged - spent + cashback",
                     p.charged - p.spent + p.cashback_total, p.card_movement) for p in r.programs]
    for funder in _ordered({a.account.split(":", 1)[1] for a in r.accounts if a.account.startswith("fee_subsidy:")}
                           | set(r.support_funders)):
        checks.append(Check(f"fee support {funder} = fee_subsidy:{funder} paid",
                            sum(m.support.get(funder, 0) for m in r.merchants), -moved(f"fee_subsidy:{funder}")))
    for funder in _ordered({a.account.split(":", 1)[1] for a in r.accounts
                            if a.account.startswith("cashback_expense:")} | set(r.cashback_funders)):
        checks.append(Check(f"cashback {funder} = cashback_expense:{funder} paid",
                            sum(p.cashback.get(funder, 0) for p in r.programs), -moved(f"cashback_expense:{funder}")))
    checks += [Check(f"{a.account}: closing + later movement = ledger balance", a.closing + a.after, a.balance)
               for a in r.accounts]
    if r.holds:
        checks += [
            Check("holds: movement of card held = placed - released - completed",
                  sum(h.placed_amount - h.released_amount - h.completed_released for h in r.holds),
                  moved(GROUP_CARD_HELD)),
            Check("holds: held at the end = closing of card held", sum(h.held_at_end for h in r.holds),
                  next((a.closing for a in r.accounts if a.account == GROUP_CARD_HELD), 0)),
        ]
    return checks


# ---------------------------------------------------------------------------- tables (CSV and terminal)

TABLES = ("merchants", "programs", "holds", "city", "accounts")


def table(report: Report, name: str, *, totals: bool = False) -> tuple[list[str], list[list[Any]]]:
    """(header, rows) of one table, integers in won. `totals` adds the TOTAL row the
    terminal shows; CSV leaves it out so a spreadsheet can sum the columns itself."""
    if name == "merchants":
        return _merchant_table(report, totals)
    if name == "programs":
        return _program_table(report, totals)
    if name == "city":
        return _city_table(report, totals)
    if name == "holds":
        header = ["program", "placed", "placed_amount", "completed", "completed_released", "released",
                  "released_amount", "held_at_end"]
        rows = [[h.program, h.placed, h.placed_amount, h.completed, h.completed_released, h.released,
                 h.released_amount, h.held_at_end] for h in report.holds]
        if totals and rows:
            rows.append(["TOTAL"] + [sum(row[i] for row in rows) for i in range(1, len(header))])
        return header, rows
    if name == "accounts":
        header = ["account", "opening", "movement", "closing", "after_period", "ledger_balance"]
        return header, [[a.account, a.opening, a.movement, a.closing, a.after, a.balance] for a in report.accounts]
    raise ReportError(f"unknown table {name!r}: one of {', '.join(TABLES)}")


def _merchant_table(r: Report, totals: bool) -> tuple[list[str], list[list[Any]]]:
    funders = r.support_funders
    header = ["mid", "name", "district", "channel", "purchases", "gross_sales", "reversals", "refunds",
              "net_sales", "fee", *(f"support_{f}" for f in funders), "support_total", "merchant_fee", "payout"]
    rows = [[m.mid, m.name, m.district, m.channel, m.purchases, m.gross_sales, m.reversals, m.refunds,
             m.net_sales, m.fee, *(m.support.get(f, 0) for f in funders), m.support_total, m.merchant_fee,
             m.payout] for m in r.merchants]
    if totals:
        rows.append(["TOTAL", "", "", ""] + [sum(row[i] for row in rows) for i in range(4, len(header))])
    return header, rows


def _program_table(r: Report, totals: bool) -> tuple[list[str], list[list[Any]]]:
    funders = r.cashback_funders
    header = ["program", "members", "new_members", "charged", "purchases", "spent_gross", "refunds_reversals",
              "spent", *(f"cashback_{f}" for f in funders), "cashback_total"]
    rows = [[p.program, p.members, p.new_members, p.charged, p.purchases, p.spent_gross, p.undone, p.spent,
             *(p.cashback.get(f, 0) for f in funders), p.cashback_total] for p in r.programs]
    if totals:  # members are distinct across programs: the platform's count, not the column sum
        sums = [sum(row[i] for row in rows) for i in range(3, len(header))]
        rows.append(["ALL (distinct members)", r.members, r.new_members, *sums])
    return header, rows


def _city_table(r: Report, totals: bool) -> tuple[list[str], list[list[Any]]]:
    header = ["date", "subscribers", "new_subscribers", "issued", "spent", "cashback"]
    rows = [[d.day, d.subscribers, d.new_subscribers, d.issued, d.spent, d.cashback] for d in r.city_days]
    if totals and len(rows) > 1:
        c = r.city
        rows.append([c.day, c.subscribers, c.new_subscribers, c.issued, c.spent, c.cashback])
    return header, rows
