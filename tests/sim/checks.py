"""The simulation's invariants: checked at every answer a terminal receives (a step) and once
the run is quiet.

At every step (`Checks.answer`), against the real ledger (a read-only SQLite connection);
`switch.ledger.audit.verify` at every `VERIFY_EVERY` steps (10; EUM_SIM_VERIFY_EVERY=1 for
every step, about 1 ms each):
- an answer belongs to a message the terminal sent, with the response MTI of that message;
- an approval (00) to a secured terminal carries a response MAC that verifies under the
  terminal's key, and no answer carries a MAC that does not verify;
- no well-formed message of a provisioned, signed-on terminal is refused as malformed,
  unknown or duplicate (30, 58, 63, 94);
- every stored answer (anything but 91/96) equals every other stored answer of the same
  message key, field for field (DE39, DE38, DE37, DE4, DE54 and all the echoes; not the
  bitmap or the MAC): a repeat or a duplicate gets the stored response;
- a stored answer is in the ledger's messages table under its key, with the same fields;
  an approved purchase or refund is a posting there with the answer's RRN, amount, terminal
  and STAN;
- all accounts sum to 0.

When the run is quiet (`Checks.final`):
- `switch.ledger.audit.verify` passes (every posting balances, accounts equal their
  entries, no negative card balance, no message key posted twice, outbox agrees);
- each transaction's postings match what its terminal was told: an approved purchase's
  posting is undone by exactly what the terminal refunded or reversed of it; a purchase or
  refund whose reversal was acknowledged is absent or fully undone; a declined one has no
  posting; no (terminal, STAN) has two postings of one kind, and no posting is one no
  terminal asked for;
- each card's money (cash + cashback + receivable) equals its seeded balance plus the
  terminals' own model (− approved purchases + approved refunds + what the customer
  reversed) plus what the operator charged, plus the cashback the ledger credited net of clawbacks (the rules decide
  cashback; the terminals cannot);
- a balance inquiry through the switch, after all that, answers each card's ledger
  balances in DE54 (the hot state is the committed store);
- no log line carries a full PAN.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from switch.domain import mask_pan
from switch.ledger.audit import verify
from switch.wire.messages import RESPONSE_MTI

if TYPE_CHECKING:
    from .terminal import Answer, SimTerminal, Txn
    from .world import World

UNSTORED = ("91", "96")
VERIFY_EVERY = int(os.environ.get("EUM_SIM_VERIFY_EVERY", 10))
NEVER = {"30": "format error", "58": "terminal not permitted", "63": "security violation", "94": "duplicate"}
NOT_COMPARED = ("p", "1", "64", "128")  # bitmaps and MACs


class Violation(AssertionError):
    """An invariant of the simulation does not hold."""


def comparable(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if k not in NOT_COMPARED}


def shown(fields: Any) -> Any:
    """Fields for a failure message: the PAN masked (test cards, but the habit holds)."""
    if isinstance(fields, tuple):
        return tuple(shown(f) for f in fields)
    if isinstance(fields, dict) and "2" in fields:
        return {**fields, "2": mask_pan(fields["2"])}
    return fields


class Ledger:
    """Read-only looks at the world's ledger (WAL: each query sees the last commit)."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)

    def close(self) -> None:
        self.conn.close()

    def one(self, sql: str, *args: Any) -> Any:
        return self.conn.execute(sql, args).fetchone()

    def all(self, sql: str, *args: Any) -> list[tuple]:
        return self.conn.execute(sql, args).fetchall()

    def message(self, key: tuple[str, str, str]) -> tuple[str, dict[str, Any]] | None:
        row = self.one("SELECT rc, response FROM messages WHERE tid=? AND stan=? AND tx_time=?", *key)
        return None if row is None else (row[0], orjson.loads(row[1]))

    def accounts_sum(self) -> int:
        return self.one("SELECT COALESCE(SUM(balance), 0) FROM accounts")[0]

    def card_accounts(self, card_id: int) -> tuple[int, int, int]:
        names = [f"card:{card_id}:{part}" for part in ("cash", "cashback", "receivable")]
        rows = dict(self.all("SELECT name, balance FROM accounts WHERE name IN (?,?,?)", *names))
        return tuple(rows.get(n, 0) for n in names)  # type: ignore[return-value]

    def cashback_net(self, card_id: int) -> int:
        """Cashback the ledger credited the card, net of clawbacks: what its funders paid."""
        row = self.one("SELECT COALESCE(SUM(e.amount), 0) FROM entries e JOIN postings p ON p.id = e.posting_id "
                       "WHERE p.card_id=? AND e.account LIKE 'cashback_expense:%'", card_id)
        return -row[0]

    def postings(self) -> list[dict[str, Any]]:
        cols = ("id", "kind", "card_id", "tid", "stan", "rrn", "amount", "original_id", "undone")
        return [dict(zip(cols, r)) for r in self.all(f"SELECT {', '.join(cols)} FROM postings WHERE tid IS NOT NULL "
                                                      "ORDER BY id")]


class Checks:
    def __init__(self, world: "World") -> None:
        self.world = world
        self.ledger = Ledger(world.db)
        self.steps = 0

    def fail(self, what: str) -> None:
        raise Violation(what)

    # ------------------------------------------------------------------ every step

    def answer(self, term: "SimTerminal", txn: "Txn | None", sent: dict[str, str], answer: "Answer") -> None:
        self.steps += 1
        f = answer.fields
        rc, where = f.get("39", ""), f"{term.tid} {sent.get('t')} STAN {sent.get('11')}"
        if txn is None:
            self.fail(f"{where}: an answer for a message the terminal never sent")
        if f.get("t") != RESPONSE_MTI.get(sent["t"]):
            self.fail(f"{where}: answered with MTI {f.get('t')}")
        if answer.mac_ok is False:
            self.fail(f"{where}: an answer (rc {rc}) whose MAC does not verify")
        if rc == "00" and term.client.security is not None and answer.mac_ok is not True and txn.kind != "network":
            self.fail(f"{where}: an approval without a valid response MAC (mac_ok={answer.mac_ok})")
        if rc in NEVER:
            self.fail(f"{where}: a well-formed message of a signed-on terminal answered {rc} ({NEVER[rc]})")
        if txn.kind != "network" and rc not in UNSTORED:
            self._stored(where, txn, answer)
        total = self.ledger.accounts_sum()
        if total != 0:
            self.fail(f"{where}: the accounts sum to {total}, not 0")
        if self.steps % VERIFY_EVERY == 0:
            self._verify(f"{where}: verify")

    def _stored(self, where: str, txn: "Txn", answer: "Answer") -> None:
        mine = comparable(answer.fields)
        for earlier in txn.answers:
            if earlier.fields.get("39") not in UNSTORED and comparable(earlier.fields) != mine:
                self.fail(f"{where}: a stored answer differs from the one given before for the same key: "
                          f"before {shown(comparable(earlier.fields))}, now {shown(mine)}")
        stored = self.ledger.message(txn.key)
        if stored is None:
            self.fail(f"{where}: answered {mine.get('39')} but the ledger holds no message for its key {txn.key}")
        if stored[0] != mine.get("39") or comparable(stored[1]) != mine:
            self.fail(f"{where}: the answer differs from the ledger's stored response: ledger {shown(stored)}, "
                      f"answer {shown(mine)}")
        if mine.get("39") == "00" and txn.kind in ("purchase", "refund"):
            row = self.ledger.one("SELECT kind, amount, tid, stan FROM postings WHERE rrn=?", mine.get("37", ""))
            want = (txn.kind, txn.amount, txn.tid, txn.fields["11"])
            if row != want:
                self.fail(f"{where}: approved with RRN {mine.get('37')!r} but the ledger's posting is {row}, "
                          f"not {want}")

    def network_answer(self, term: "SimTerminal", txn: "Txn", answer: "Answer") -> None:
        if answer.fields.get("39") != "00":
            self.fail(f"{term.tid} 0800/{txn.fields.get('70')}: answered {answer.fields.get('39')}, not 00")

    def reversal_answer(self, term: "SimTerminal", txn: "Txn", answer: "Answer") -> None:
        if answer.fields.get("39") != "00":
            self.fail(f"{term.tid} reversal STAN {txn.fields['11']}: answered {answer.fields.get('39')}, "
                      "not acknowledged 00")

    # ------------------------------------------------------------------ once quiet

    def _verify(self, what: str) -> None:
        result = verify(self.world.db)
        if not result.ok:
            self.fail(f"{what}: {result.problem}")

    def final(self, inquiries: dict[str, dict[str, str]]) -> None:
        self._verify("verify once quiet")
        self._postings()
        self._money()
        for card in self.world.cards:
            cash, cashback, _ = self.ledger.card_accounts(card["id"])
            want = f"0002410C{cash:012d}0091410C{cashback:012d}"
            got = inquiries[card["pan"]]
            if got.get("39") != "00" or got.get("54") != want:
                self.fail(f"card {card['id']}: the final balance inquiry answered rc {got.get('39')} DE54 "
                          f"{got.get('54')}, the ledger holds {want}")
        self._logs()

    def _postings(self) -> None:
        txns = {(t.tid, t.fields["11"]): t for term in self.world.terminals for t in term.txns}
        seen: dict[tuple[str, str, str], dict[str, Any]] = {}
        for p in self.ledger.postings():
            key = (p["kind"], p["tid"], p["stan"])
            if key in seen:
                self.fail(f"terminal {p['tid']} STAN {p['stan']}: two {p['kind']} postings ({seen[key]['id']}, "
                          f"{p['id']})")
            seen[key] = p
            txn = txns.get((p["tid"], p["stan"]))
            if txn is None or txn.kind != p["kind"]:
                self.fail(f"posting {p['id']} ({p['kind']}, {p['tid']} STAN {p['stan']}): no terminal asked for it")
        from .terminal import REVERSED, Answer
        for (tid, stan), t in txns.items():
            if t.kind not in ("purchase", "refund"):
                continue
            p = seen.get((t.kind, tid, stan))
            where = f"{t.kind} {tid} STAN {stan}"
            if t.final == REVERSED:
                if p is not None and p["undone"] != p["amount"]:
                    self.fail(f"{where}: its reversal was acknowledged, yet its posting {p['id']} stands at "
                              f"{p['amount'] - p['undone']} of {p['amount']}")
            elif isinstance(t.final, Answer) and t.approved:
                undone = t.refunded + self._voided(t)
                if p is None or p["rrn"] != t.final.fields.get("37") or p["undone"] != undone:
                    self.fail(f"{where}: approved (RRN {t.final.fields.get('37')}), undone {undone} by the terminal; "
                              f"the ledger's posting is {p}")
            elif p is not None:
                self.fail(f"{where}: answered {getattr(t.final, 'fields', {}).get('39')} yet posted ({p['id']})")

    @staticmethod
    def _voided(t: "Txn") -> int:
        r = t.reversal
        if r is None or not t.voided or r.final is None:
            return 0
        return t.amount - (r.standing or 0)

    def _money(self) -> None:
        for card in self.world.cards:
            cash, cashback, receivable = self.ledger.card_accounts(card["id"])
            expected = card["balance"] + self.world.model.delta(card["pan"]) + self.ledger.cashback_net(card["id"])
            if cash + cashback + receivable != expected:
                self.fail(f"card {card['id']}: the ledger holds {cash + cashback + receivable} (cash {cash}, cashback "
                          f"{cashback}, receivable {receivable}); the terminals' model says {expected} (seeded "
                          f"{card['balance']}, moved {self.world.model.delta(card['pan'])}, cashback net "
                          f"{self.ledger.cashback_net(card['id'])})")

    def _logs(self) -> None:
        pans = [c["pan"] for c in self.world.cards]
        for event in self.world.log_events:
            text = repr(event)
            for pan in pans:
                if pan in text:
                    self.fail(f"a log event carries a full PAN: {event.get('event')}")


class Model:
    """The terminals' own account of each card's money: what they were told moved."""

    def __init__(self) -> None:
        self.moved: dict[str, int] = {}

    def delta(self, pan: str) -> int:
        return self.moved.get(pan, 0)

    def settled(self, txn: "Txn") -> None:
        from .terminal import Answer

        if txn.kind == "reversal":
            original = txn.of
            if original is not None and original.approved and original.voided:
                self._move(txn.pan, original.amount - (txn.standing or 0))
            return
        if not (isinstance(txn.final, Answer) and txn.approved):
            return
        if txn.kind == "purchase":
            self._move(txn.pan, -txn.amount)
        elif txn.kind == "refund":
            self._move(txn.pan, txn.amount)

    def charged(self, pan: str, amount: int) -> None:
        self._move(pan, amount)

    def _move(self, pan: str, amount: int) -> None:
        self.moved[pan] = self.moved.get(pan, 0) + amount
