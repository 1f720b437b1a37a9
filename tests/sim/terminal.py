"""A simulated POS terminal that follows the host rules (docs/host-interface.md §2 and §6) over
the simulated network, and keeps its own model of what it was told.

It builds requests with terminal_sim's sans-I/O `Terminal` (and `TerminalSecurity` /
`TakSecurity` for the `dukpt-tdes` and `mac` profiles), one transaction at a time:

- sign on (0800/001) until answered 00;
- a financial request (purchase, refund, balance inquiry) waits `response_timeout_s`; with no
  answer, or an answer nothing was stored for (91, 96: §6), it is repeated as 0201 up to
  its repeat budget, after a pause; once the budget is spent a purchase or refund is reversed
  (0400, the original's amount) and the reversal repeated as 0401 until acknowledged, as an
  acquirer that times out does (§6, the IFSF rule: repeat the reversal until answered); an
  inquiry is abandoned (it moves no money);
- a reversal the customer asks for (full, or partial with DE95) of an approved purchase, also
  repeated until acknowledged.

The model: a transaction's outcome is the stored answer the terminal took (00 or a stored
decline), or REVERSED (its reversal was acknowledged: it left no money moved, whatever the
switch did with it). Every answer that arrives for any of its messages is kept, late ones
and duplicates included, for the invariants.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from switch.wire.codec import Dialect, decode_fields
from switch.wire.framing import FrameBuffer
from terminal_sim.client import TerminalClient
from terminal_sim.security import SECURED_MTIS, TakSecurity, TerminalSecurity, mac_field
from terminal_sim.terminal import Terminal

if TYPE_CHECKING:
    from .world import World

UNSTORED = ("91", "96")   # answers nothing was stored for: the request may be sent again (§6)
REVERSED = "reversed"


@dataclass
class Answer:
    fields: dict[str, str]
    mac_ok: bool | None       # None: no MAC expected (unsecured terminal or network message)
    at: float


@dataclass
class Txn:
    """One transaction of this terminal: its original request and everything it was told."""

    tid: str
    kind: str                 # purchase, refund, balance, reversal, network
    fields: dict[str, str]    # the original request as built (before security)
    pan: str = ""
    amount: int = 0
    pin: str | None = None
    of: "Txn | None" = None   # refund: the purchase; reversal: what it reverses
    standing: int | None = None  # reversal: the DE95 amount (None: full)
    answers: list[Answer] = field(default_factory=list)
    final: Any = None         # the stored answer taken (Answer), REVERSED, or None (abandoned inquiry)
    reversal: "Txn | None" = None
    refunded: int = 0         # purchases: approved refunds against it
    voided: bool = False      # purchases: the customer reversed it (full or partial)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.tid, self.fields["11"], self.fields["7"])

    @property
    def approved(self) -> bool:
        return isinstance(self.final, Answer) and self.final.fields.get("39") == "00"


class SimTerminal:
    def __init__(self, world: "World", tid: str, mid: str, profile: str, ksn: str, rng: random.Random) -> None:
        self.world = world
        self.tid = tid
        self.profile = profile
        self.rng = rng
        self.term = Terminal(tid, mid, now=world.clock.now)
        security: TerminalSecurity | TakSecurity | None = None
        if profile == "mac":
            security = TakSecurity.for_test_keys()
        elif profile in ("dukpt-tdes", "dukpt-aes"):
            security = TerminalSecurity.for_test_keys(profile, ksn)
            security.iso4_fill = rng.randbytes(8)  # the ISO-4 PIN block's random fill, from the seed
        # used only sans I/O: to secure requests (DE52/DE53/MAC); never connected
        self.client = TerminalClient("127.0.0.1", 0, world.dialect, security=security)
        self.dialect: Dialect = world.dialect
        self.buffer = FrameBuffer(world.dialect.framing)
        self.response_timeout_s = world.plan.response_timeout_s
        self.txns: list[Txn] = []
        self.by_key: dict[tuple[str, str], Txn] = {}
        self.waiting: dict[tuple[str, str], asyncio.Future[Answer | None]] = {}
        self.state = "idle"
        self.done = False

    # ------------------------------------------------------------------ the script

    async def run(self, actions: int) -> None:
        self.state = "signing on"
        await self.sign_on()
        for _ in range(actions):
            await asyncio.sleep(self.rng.uniform(0.0, 0.3))
            await self.act()
        self.state = "done"
        self.done = True

    async def act(self) -> None:
        w, r = self.world, self.rng
        card = r.choice(w.cards)
        approved = [t for t in self.txns if t.kind == "purchase" and t.approved and not t.voided
                    and t.refunded < t.amount]
        untouched = [t for t in approved if t.refunded == 0]
        roll = r.random()
        if roll < 0.12 and approved:
            original = r.choice(approved)
            left = original.amount - original.refunded
            await self.refund(original, r.randint(1, left) if r.random() < 0.6 else left)
        elif roll < 0.22 and untouched:
            original = r.choice(untouched)
            partial = r.random() < 0.4 and original.amount > 1
            await self.void(original, r.randint(1, original.amount - 1) if partial else None)
        elif roll < 0.32:
            await self.financial("balance", self.term.balance(card["pan"]), card["pan"], 0)
        elif roll < 0.36:
            await self.network(self.term.echo())
        else:
            amount = r.choice((1_000, 5_000, 12_345, 20_000, 55_000, r.randint(1, 150_000)))
            pin = None
            if self.profile.startswith("dukpt") and card["pin"]:
                pin = card["pin"] if r.random() < 0.85 else "9999"
            await self.financial("purchase", self.term.purchase(card["pan"], amount), card["pan"], amount, pin=pin)

    # ------------------------------------------------------------------ transactions

    async def sign_on(self) -> None:
        while True:
            txn = await self.network(self.term.sign_on())
            if isinstance(txn.final, Answer) and txn.final.fields.get("39") == "00":
                return
            await asyncio.sleep(self.rng.uniform(0.05, 0.5))

    async def network(self, fields: dict[str, str]) -> Txn:
        """An 0800: no repeat MTI, nothing stored; one try (the caller tries again with a new STAN)."""
        txn = self._new("network", fields)
        secured, payload = self.client.secure(fields)
        answer = await self.exchange(txn, secured, payload)
        txn.final = answer
        if answer is not None:
            self.world.check.network_answer(self, txn, answer)
        return txn

    async def financial(self, kind: str, fields: dict[str, str], pan: str, amount: int, *, pin: str | None = None,
                        of: Txn | None = None) -> Txn:
        txn = self._new(kind, fields, pan=pan, amount=amount, pin=pin, of=of)
        self.state = f"{kind} {fields['11']}"
        original, payload = self.client.secure(fields, pin=pin, pan=pan if pin else None)
        secured = original
        budget = self.rng.choice((0, 1, 2, 3, 5))
        tries = 0
        while True:
            answer = await self.exchange(txn, secured, payload)
            if answer is not None and answer.fields.get("39") not in UNSTORED:
                txn.final = answer
                self.world.model.settled(txn)
                return txn
            tries += 1
            if tries > budget:
                break
            await asyncio.sleep(self.rng.uniform(0.05, 0.5))
            secured, payload = self.client.secure(Terminal.repeat(original))
        if kind == "balance":
            return txn  # an inquiry moves no money: abandoned
        await self.reverse(txn, None)
        return txn

    async def refund(self, original: Txn, amount: int) -> None:
        rrn = original.final.fields["37"]
        txn = await self.financial("refund", self.term.refund(original.pan, amount, rrn), original.pan, amount,
                                   of=original)
        if txn.approved:
            original.refunded += amount

    async def void(self, original: Txn, standing: int | None) -> None:
        """The customer cancels an approved purchase: a reversal (0400), partial with DE95."""
        original.voided = True
        await self.reverse(original, standing)

    async def reverse(self, original: Txn, standing: int | None) -> Txn:
        fields = self.term.reversal(original.fields, replacement_amount=standing)
        txn = self._new("reversal", fields, pan=original.pan, amount=original.amount, of=original)
        txn.standing = standing
        original.reversal = txn
        self.state = f"reversal {fields['11']} of {original.fields['11']}"
        first, payload = self.client.secure(fields)
        secured = first
        while True:
            answer = await self.exchange(txn, secured, payload)
            if answer is not None and answer.fields.get("39") not in UNSTORED:
                txn.final = answer
                self.world.check.reversal_answer(self, txn, answer)
                break
            await asyncio.sleep(self.rng.uniform(0.05, 0.5))
            secured, payload = self.client.secure(Terminal.repeat(first))
        if original.final is None:  # an acquirer's reversal: whatever happened to the original, nothing stands
            original.final = REVERSED
        self.world.model.settled(txn)
        return txn

    def _new(self, kind: str, fields: dict[str, str], **kw: Any) -> Txn:
        txn = Txn(self.tid, kind, fields, **kw)
        self.txns.append(txn)
        self.by_key[(fields["11"], fields["7"])] = txn
        return txn

    # ------------------------------------------------------------------ the wire

    async def exchange(self, txn: Txn, secured: dict[str, str], payload: bytes) -> Answer | None:
        """Send one message and wait for its answer up to the response timeout."""
        loop = asyncio.get_running_loop()
        key = (secured["11"], secured["7"])
        fut: asyncio.Future[Answer | None] = loop.create_future()
        self.waiting[key] = fut
        self.world.send(self, secured, payload)
        timer = loop.call_later(self.response_timeout_s, lambda: fut.done() or fut.set_result(None))
        try:
            answer = await fut
        finally:
            timer.cancel()
            self.waiting.pop(key, None)
        if answer is None:
            self.world.faults.trace(f"{self.tid} timeout {secured['t']} {secured['11']}")
        return answer

    def received(self, data: bytes, sent: dict[str, str]) -> None:
        """An answer frame off the network: decoded, its MAC checked, checked against the
        invariants, and handed to the transaction waiting for it (if any still is)."""
        self.buffer.receive_data(data)
        fr = self.buffer.next_frame()
        fields = decode_fields(fr.payload, self.dialect)
        mac_ok = None
        if self.client.security is not None and sent.get("t") in SECURED_MTIS:
            mac_ok = self._mac_ok(fields, fr.payload, sent.get("53"))
        answer = Answer(fields, mac_ok, asyncio.get_running_loop().time())
        txn = self.by_key.get((fields.get("11", ""), fields.get("7", "")))
        self.world.faults.trace(f"{self.tid} got {fields.get('t')} {fields.get('11')} rc={fields.get('39')} "
                                f"rrn={fields.get('37', '')} de54={fields.get('54', '')} mac={mac_ok}")
        self.world.check.answer(self, txn, sent, answer)
        txn.answers.append(answer)
        fut = self.waiting.get((fields["11"], fields["7"]))
        if fut is not None and not fut.done():
            fut.set_result(answer)

    def _mac_ok(self, fields: dict[str, str], payload: bytes, ksn: str | None) -> bool | None:
        where = mac_field(fields)
        if where not in fields:
            return False if ("64" in fields or "128" in fields) else None
        return self.client.security.verify_response(payload, ksn=ksn)
