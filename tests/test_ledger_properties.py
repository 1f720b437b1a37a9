"""Ledger conservation under random traffic, against an independent model.

Hypothesis draws sequences of charges, purchases, refunds (partial, full, too large, of
another card, of an unknown RRN), reversals (full, partial via DE95, advice, of refunds, of
reversals, with a wrong PAN, of originals that never arrived, followed by the late
original), repeats, exact duplicates and same-key conflicts. Each message goes through the
real codec, Processor, Engine and SQLite ledger (in process, no TCP, for speed) on a fresh
data dir. The model below computes every response code, every DE54 balance and every
account balance from the published rules (2019-07-20: 6 % city base, +1.5 % Namdong card
in Namdong, fee 0.5 % for micro merchants, Namdong support 0.5 pp; cashback spent first;
clawback and fee give-back by the cumulative floor rule), and the ledger must agree to the
won, pass verify(), sum to zero and never post a key twice.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import LAUNCH, account_balances, query
from switch.audit import verify
from switch.clock import FixedClock
from switch.codec import decode_fields, encode_fields, load_dialect
from switch.framing import Frame
from switch.messages import decode_balances
from switch.operations import OperationError
from switch.runtime import open_core
from switch.server import Processor
from terminal_sim.terminal import Terminal

HOLDING_MAX = 2_000_000
DAILY_MAX = 2_000_000
MERCHANTS = {"T0000001": ("NAMDONG01", "namdong"), "T0000002": ("YEONSU01", "yeonsu")}
PROGRAMS = ("namdong", "incheon", "namdong")
UNKNOWN_RRN = "999999999999"


# ---------------------------------------------------------------------------- the model

def cum(total: int, undone: int, amount: int) -> int:
    """Cumulative share of `total` once `undone` of `amount` is undone (floor)."""
    return total * undone // amount


def share(total: int, before: int, now: int, amount: int) -> int:
    return cum(total, before + now, amount) - cum(total, before, amount)


@dataclass
class Card:
    pan: str
    id: int
    program: str
    cash: int = 0
    cashback: int = 0
    receivable: int = 0
    charged: int = 0
    spent: int = 0
    refunded: int = 0
    credited: int = 0
    clawed: int = 0
    day_spent: int = 0

    @property
    def identity(self) -> int:
        return self.charged - self.spent + self.refunded + self.credited - self.clawed


@dataclass
class Purchase:
    card: Card
    mid: str
    amount: int
    rrn: str
    fields: dict[str, str]
    cb_used: int
    fee: int
    support: dict[str, int]
    cashback: dict[str, int]
    undone: int = 0
    reversed: int = 0


@dataclass
class Refund:
    purchase: Purchase
    amount: int
    fields: dict[str, str]
    reversed: bool = False


@dataclass
class Sent:
    fields: dict[str, str]
    response: dict[str, str]
    posting: Purchase | Refund | str | None  # "reversal" for a reversal that posted


@dataclass
class Model:
    cards: list[Card]
    accounts: dict[str, int] = field(default_factory=dict)
    purchases: list[Purchase] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    lost: list[dict[str, str]] = field(default_factory=list)
    postings: int = 0

    def post(self, entries: list[tuple[str, int]]) -> None:
        assert sum(a for _, a in entries) == 0
        for name, amount in entries:
            self.accounts[name] = self.accounts.get(name, 0) + amount

    def settle(self, card: Card, d_cash: int, d_cashback: int) -> list[tuple[str, int]]:
        """Cash and cashback never below zero: a cashback shortfall comes from cash, a cash
        shortfall from cashback, and what neither covers goes to the receivable."""
        cash, cb = card.cash + d_cash, card.cashback + d_cashback
        if cb < 0:
            cash, cb = cash + cb, 0
        if cash < 0:
            take = min(cb, -cash)
            cb, cash = cb - take, cash + take
        short = min(cash, 0)
        cash -= short
        entries = [(f"card:{card.id}:cash", cash - card.cash), (f"card:{card.id}:cashback", cb - card.cashback),
                   (f"card:{card.id}:receivable", short)]
        card.cash, card.cashback, card.receivable = cash, cb, card.receivable + short
        return entries

    def charge(self, card: Card, amount: int) -> bool:
        if card.cash + card.cashback + amount > HOLDING_MAX:
            return False
        repay = min(amount, -card.receivable)  # a charge settles the receivable first
        self.post([("bank_settlement", -amount), (f"card:{card.id}:cash", amount - repay),
                   (f"card:{card.id}:receivable", repay)])
        card.cash += amount - repay
        card.receivable += repay
        card.charged += amount
        self.postings += 1
        return True

    def purchase(self, card: Card, tid: str, amount: int) -> tuple[str, Purchase | None]:
        mid, district = MERCHANTS[tid]
        if amount <= 0 or amount > HOLDING_MAX:
            return "13", None
        if card.day_spent + amount > DAILY_MAX:
            return "61", None
        if card.cash + card.cashback < amount:
            return "51", None
        fee = amount * 50 // 10_000
        support = {"namdong": fee} if district == "namdong" and fee else {}
        cashback = {"national": amount * 400 // 10_000, "city": amount * 200 // 10_000}
        if card.program == "namdong" and district == "namdong":
            cashback["namdong"] = amount * 150 // 10_000
        cb_total = sum(cashback.values())
        cb_used = min(card.cashback, amount)
        payable = f"merchant:{mid.ljust(15)}:payable"
        self.post([(f"card:{card.id}:cashback", cb_total - cb_used), (f"card:{card.id}:cash", -(amount - cb_used)),
                   (payable, amount - fee + sum(support.values())), ("fee_income", fee)]
                  + [(f"fee_subsidy:{f}", -s) for f, s in support.items()]
                  + [(f"cashback_expense:{f}", -c) for f, c in cashback.items()])
        card.cashback += cb_total - cb_used
        card.cash -= amount - cb_used
        card.spent += amount
        card.credited += cb_total
        card.day_spent += amount
        self.postings += 1
        return "00", Purchase(card, mid, amount, "", {}, cb_used, fee, support, cashback)

    def undo(self, p: Purchase, amount: int, *, reversal: bool) -> None:
        before = p.undone
        cb_back = share(p.cb_used, before, amount, p.amount)
        fee_back = share(p.fee, before, amount, p.amount)
        support = {f: share(s, before, amount, p.amount) for f, s in p.support.items()}
        claw = {f: share(c, before, amount, p.amount) for f, c in p.cashback.items()}
        claw_total = sum(claw.values())
        payable = f"merchant:{p.mid.ljust(15)}:payable"
        card_entries = self.settle(p.card, amount - cb_back, cb_back - claw_total)
        self.post([(payable, -amount + fee_back - sum(support.values())), ("fee_income", -fee_back)]
                  + [(f"fee_subsidy:{f}", s) for f, s in support.items()]
                  + [(f"cashback_expense:{f}", c) for f, c in claw.items()] + card_entries)
        p.undone += amount
        p.card.refunded += amount
        p.card.clawed += claw_total
        if reversal:
            p.reversed += amount
            p.card.day_spent -= amount
        self.postings += 1

    def undo_refund(self, r: Refund) -> None:
        p = r.purchase
        before = p.undone - r.amount
        cb_back = share(p.cb_used, before, r.amount, p.amount)
        fee_back = share(p.fee, before, r.amount, p.amount)
        support = {f: share(s, before, r.amount, p.amount) for f, s in p.support.items()}
        claw = {f: share(c, before, r.amount, p.amount) for f, c in p.cashback.items()}
        claw_total = sum(claw.values())
        payable = f"merchant:{p.mid.ljust(15)}:payable"
        card_entries = self.settle(p.card, -(r.amount - cb_back), -(cb_back - claw_total))
        self.post([(payable, r.amount - fee_back + sum(support.values())), ("fee_income", fee_back)]
                  + [(f"fee_subsidy:{f}", -s) for f, s in support.items()]
                  + [(f"cashback_expense:{f}", -c) for f, c in claw.items()] + card_entries)
        p.undone -= r.amount
        p.card.refunded -= r.amount
        p.card.clawed -= claw_total
        r.reversed = True
        self.postings += 1


# ---------------------------------------------------------------------------- the driver

class Driver:
    def __init__(self, core, processor: Processor, model: Model) -> None:
        self.core = core
        self.processor = processor
        self.dialect = processor.dialect
        self.model = model
        self.terminals = {tid: Terminal(tid, mid, now=lambda: LAUNCH) for tid, (mid, _) in MERCHANTS.items()}

    async def send(self, fields: dict[str, str]) -> dict[str, str]:
        data = await self.processor.process(Frame(payload=encode_fields(fields, self.dialect)), "property")
        return decode_fields(data[self.dialect.framing.header_size:], self.dialect)

    def check_balances(self, resp: dict[str, str], card: Card) -> None:
        b = decode_balances(resp["54"])
        assert (b.cash, b.cashback) == (card.cash, card.cashback)

    def card_of(self, pan: str) -> Card:
        return next(c for c in self.model.cards if c.pan == pan)

    async def step(self, kind: str, a: int, b: int, c: int) -> None:
        m = self.model
        card = m.cards[a % len(m.cards)]
        tid = ("T0000001", "T0000002")[b % 2]
        term = self.terminals[tid]
        if kind == "charge":
            amount = 10_000 * (1 + c % 40)
            try:
                await self.core.ops.run("card-charge", {"pan": card.pan, "amount": amount})
                ok = True
            except OperationError:
                ok = False
            assert ok == m.charge(card, amount)
        elif kind == "purchase":
            fields = term.purchase(card.pan, 1 + c % 120_000)
            resp = await self.send(fields)
            rc, p = m.purchase(card, tid, int(fields["4"]))
            assert resp["39"] == rc
            if p is not None:
                p.rrn, p.fields = resp["37"], fields
                m.purchases.append(p)
                self.check_balances(resp, card)
            m.sent.append(Sent(fields, resp, p))
        elif kind == "balance":
            resp = await self.send(term.balance(card.pan))
            assert resp["39"] == "00"
            self.check_balances(resp, card)
        elif kind == "refund":
            await self.refund(term, a, b, c)
        elif kind == "reverse":
            await self.reverse(a, b, c)
        elif kind == "lost":
            fields = term.purchase(card.pan, 1 + c % 50_000)
            resp = await self.send(term.reversal(fields, advice=bool(b % 3 == 0)))
            assert resp["39"] == "00" and "54" not in resp
            m.lost.append(fields)
        elif kind == "late" and m.lost:
            fields = m.lost.pop(a % len(m.lost))
            resp = await self.send(fields)
            assert resp["39"] == "12"
            m.sent.append(Sent(fields, resp, None))
        elif kind in ("repeat", "duplicate", "conflict") and m.sent:
            prior = m.sent[a % len(m.sent)]
            if kind == "repeat":
                resp = await self.send(Terminal.repeat(prior.fields))
                assert resp == prior.response
            elif kind == "duplicate":
                assert await self.send(prior.fields) == prior.response
            else:
                other = f"{int(prior.fields['4']) + 1 + c % 100:012d}"
                resp = await self.send({**prior.fields, "4": other})
                assert resp["39"] == "94"

    async def refund(self, term: Terminal, a: int, b: int, c: int) -> None:
        m = self.model
        if not m.purchases:
            return
        p = m.purchases[a % len(m.purchases)]
        mode = b % 8
        remaining = p.amount - p.undone
        pan, rrn = p.card.pan, p.rrn
        if mode == 0:
            rrn = UNKNOWN_RRN
        elif mode == 1:
            pan = next((x.pan for x in m.cards if x.pan != p.card.pan))
        amount = remaining if mode == 2 else 1 + c % (max(remaining, 1) if mode in (3, 4) else p.amount + 1_000)
        fields = term.refund(pan, amount, rrn)
        resp = await self.send(fields)
        if mode in (0, 1) or term.mid.strip() != p.mid.strip():  # unknown, other card, other merchant
            assert resp["39"] == "25"
            m.sent.append(Sent(fields, resp, None))
            return
        if amount <= 0 or amount > remaining:
            assert resp["39"] == "13"
            m.sent.append(Sent(fields, resp, None))
            return
        assert resp["39"] == "00"
        m.undo(p, amount, reversal=False)
        self.check_balances(resp, p.card)
        refund = Refund(p, amount, fields)
        m.sent.append(Sent(fields, resp, refund))

    async def reverse(self, a: int, b: int, c: int) -> None:
        m = self.model
        if not m.sent:
            return
        prior = m.sent[a % len(m.sent)]
        original = prior.fields
        if original["t"] != "0200" or original["3"].startswith("31"):
            return
        term = self.terminals[original["41"]]
        mode = b % 6
        replacement = c % (int(original["4"]) + 1) if mode == 0 else None
        fields = term.reversal(original, replacement_amount=replacement, advice=mode == 1)
        wrong_pan = mode == 2
        if wrong_pan:
            fields["2"] = next(x.pan for x in m.cards if x.pan != original["2"])
        resp = await self.send(fields)
        target = prior.posting
        posted: str | None = None
        if target is None:
            assert resp["39"] == "00"
        elif wrong_pan:
            assert resp["39"] == "25"
        elif isinstance(target, Purchase):
            assert resp["39"] == "00"
            undo = min(max(target.amount - target.reversed - (replacement or 0), 0), target.amount - target.undone)
            if undo:
                m.undo(target, undo, reversal=True)
                posted = "reversal"
            self.check_balances(resp, target.card)
        else:
            assert resp["39"] == "00"
            if not target.reversed:
                m.undo_refund(target)
                posted = "reversal"
            self.check_balances(resp, target.purchase.card)
        m.sent.append(Sent(fields, resp, posted))


# ---------------------------------------------------------------------------- the property

KINDS = ("charge", "purchase", "purchase", "purchase", "purchase", "balance", "refund", "refund", "refund",
         "reverse", "reverse", "reverse", "lost", "late", "repeat", "duplicate", "conflict")
steps = st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 10**6), st.integers(0, 10**6),
                           st.integers(0, 10**6)), min_size=1, max_size=50)


async def run_sequence(data_dir: Path, sequence: list[tuple[str, int, int, int]]) -> None:
    clock = FixedClock(LAUNCH)
    async with open_core(data_dir, clock=clock, commit_interval_ms_max=0.2) as core:
        ops = core.ops
        for mid, district in MERCHANTS.values():
            await ops.run("merchant-add", {"mid": mid, "name": mid, "district": district,
                                           "annual_sales": 250_000_000})
        for tid, (mid, _) in MERCHANTS.items():
            await ops.run("terminal-add", {"tid": tid, "mid": mid})
        cards = []
        for program in PROGRAMS:
            issued = await ops.run("card-issue", {"program": program})
            cards.append(Card(issued["pan"], core.state.card(issued["pan"]).id, program))
        model = Model(cards)
        driver = Driver(core, Processor(core.engine, load_dialect("default")), model)
        for card in cards:
            await ops.run("card-charge", {"pan": card.pan, "amount": 100_000})
            model.charge(card, 100_000)
        for term in driver.terminals.values():
            assert (await driver.send(term.sign_on()))["39"] == "00"

        for step in sequence:
            await driver.step(*step)

        await core.writer.drain()
        db = core.db_path
        result = verify(db)
        assert result.ok, result.problem
        ledger = {k: v for k, v in account_balances(db).items() if v}
        assert ledger == {k: v for k, v in model.accounts.items() if v}
        assert sum(ledger.values()) == 0
        for card in cards:
            assert card.cash >= 0 and card.cashback >= 0
            assert card.cash + card.cashback + card.receivable == card.identity
        assert query(db, "SELECT COUNT(*) FROM postings")[0][0] == model.postings
        posted_keys = query(db, "SELECT COUNT(*), COUNT(DISTINCT posting_id) FROM messages WHERE posting_id IS NOT NULL")
        assert posted_keys[0][0] == posted_keys[0][1]
        assert posted_keys[0][0] == query(
            db, "SELECT COUNT(*) FROM postings WHERE kind IN ('purchase', 'refund', 'reversal')")[0][0]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequence=steps)
def test_random_traffic_conserves_money_and_matches_the_model(sequence):
    with tempfile.TemporaryDirectory(prefix="eum-prop-") as tmp:
        asyncio.run(run_sequence(Path(tmp) / "var", sequence))


def test_a_long_fixed_sequence_exercises_every_branch(tmp_path):
    """A deterministic sequence that reaches the rarer branches every run: spending cashback,
    refund after the cashback is spent (shortfall from cash), reversal of a refund after the
    money is spent (receivable), partial reversals, late originals."""
    sequence = [
        ("purchase", 0, 0, 99_999), ("purchase", 0, 1, 7_499), ("refund", 0, 2, 0),
        ("reverse", 2, 3, 0), ("purchase", 0, 0, 99_000), ("reverse", 3, 0, 5_000), ("reverse", 3, 0, 5_000),
        ("lost", 1, 0, 3_000), ("late", 0, 0, 0), ("repeat", 1, 0, 0), ("duplicate", 2, 0, 0),
        ("conflict", 0, 0, 5), ("refund", 1, 4, 12_345), ("refund", 1, 5, 1), ("reverse", 6, 4, 0),
        ("charge", 2, 0, 5), ("purchase", 2, 0, 50_000), ("refund", 4, 3, 777), ("reverse", 0, 1, 0),
        ("balance", 0, 0, 0), ("balance", 2, 0, 0), ("reverse", 9, 2, 0), ("refund", 2, 6, 10**6),
    ]
    asyncio.run(run_sequence(tmp_path / "var", sequence))


def test_reversing_a_refund_whose_money_was_spent_leaves_a_receivable(tmp_path):
    """Buy 20,000, refund it, spend everything, then the refund is reversed: the card's cash
    and cashback go to zero and the rest is recorded on its receivable account."""
    sequence = [("purchase", 0, 0, 19_999), ("refund", 0, 2, 0), ("purchase", 0, 0, 99_999),
                ("purchase", 0, 0, 7_499), ("reverse", 1, 3, 0), ("balance", 0, 0, 0), ("repeat", 4, 0, 0)]
    asyncio.run(run_sequence(tmp_path / "a", sequence))
    receivable = query(tmp_path / "a" / "ledger.sqlite3",
                       "SELECT balance FROM accounts WHERE name LIKE 'card:%:receivable'")
    assert receivable == [(-(20_000 - 1_500 - 562),)]
    # the next charge (40,000) settles the 17,938 owed first; the rest is spendable cash
    asyncio.run(run_sequence(tmp_path / "b", sequence + [("charge", 0, 0, 3), ("purchase", 0, 1, 1_000)]))
    receivable = query(tmp_path / "b" / "ledger.sqlite3",
                       "SELECT balance FROM accounts WHERE name LIKE 'card:%:receivable'")
    assert receivable == [(0,)]
    charge = query(tmp_path / "b" / "ledger.sqlite3",
                   "SELECT account, amount FROM entries WHERE posting_id = "
                   "(SELECT MAX(id) FROM postings WHERE kind = 'charge') ORDER BY account")
    assert charge == [("bank_settlement", -40_000), ("card:1:cash", 22_062), ("card:1:receivable", 17_938)]
