"""The authorization engine: typed request → checks → decision → ledger unit → response.

Decisions run synchronously on the event loop thread against the hot state (no await
between reading a balance and updating it), then the unit goes to the single ledger writer
and the response is released only once that unit is durable.

Spending order (an assumption: docs/domain.md, "Cashback"; docs/architecture.md): a purchase
spends the cashback balance first, then cash; cashback is earned on the full amount and
credited in the same posting. A refund or reversal of U won out of a purchase of A undoes
fee, fee support, cashback spent and cashback earned in proportion, by the cumulative floor
rule (see cashback.clawback), so undoing the whole amount in any number of steps undoes
exactly what was posted. A clawback larger than the cashback balance is taken from cash,
and what cash cannot cover is recorded on the card's receivable account: card balances
never go below zero.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import datetime

import structlog

from switch.rules.cashback import clawback, proportional, quote_cashback
from switch.clock import Clock
from switch.wire.codec import response_fields
from switch.domain import KST, Merchant, luhn_ok, month_key
from switch.rules.fees import quote_fee
from switch.ledger.events import CardFacts, PostingFacts, posting_events
from switch.ledger.store import LedgerUnavailable, LedgerWriter, Unit
from switch.wire.messages import RESPONSE_MTI, Balances, Kind, Rc, Request, Response
from switch.authorize.hsm_client import HsmUnavailable
from switch.rules.policy import CARDHOLDER, TERMINAL, Rules
from switch.authorize.security import DUKPT, PIN_TRIES_MAX, SECURED, KsnGuard, Security, SecurityError, TerminalKeys, ksn_parts
from switch.authorize.state import CardState, HotState, MessageState, PostingState, Terminal

log = structlog.get_logger()

# A late original after its reversal: declined with this code and not posted.
RC_REVERSED_BEFORE_ARRIVAL = Rc.INVALID_TRANSACTION
# A channel the merchant does not take (Rules.channel_refusal): e-commerce outside the
# online mall is not permitted to the card (57); card present at the mall, to the terminal (58).
RC_CHANNEL_REFUSED = {CARDHOLDER: Rc.NOT_PERMITTED, TERMINAL: Rc.TERMINAL_NOT_PERMITTED}


@dataclass(slots=True)
class Outcome:
    """What the server writes back and what the canonical log line says."""

    response: Response | dict[str, str]
    posting_id: int | None = None
    fee: int = 0
    cashback: int = 0
    note: str = ""
    replayed: bool = False
    sign: tuple[TerminalKeys, str] | None = None  # the response gets a MAC under these keys and KSN


class Decline(Exception):
    def __init__(self, rc: Rc, note: str) -> None:
        super().__init__(note)
        self.rc = rc
        self.note = note


def _iso(now: datetime) -> str:
    return now.astimezone(KST).isoformat(timespec="microseconds")


def _merge(*entry_lists: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Entries with zero amounts dropped (they carry no meaning)."""
    return [(a, v) for entries in entry_lists for a, v in entries if v]


class Engine:
    def __init__(self, *, rules: Rules, state: HotState, writer: LedgerWriter, clock: Clock,
                 security: Security | None = None) -> None:
        self.rules = rules
        self.state = state
        self.writer = writer
        self.clock = clock
        self.security = security
        self.ksn_guard = KsnGuard()
        self.signed_on: set[str] = set()

    # ------------------------------------------------------------------ entry point

    async def handle(self, req: Request, fields: dict[str, str], raw: bytes = b"") -> Outcome:
        if req.kind is Kind.NETWORK:
            return self._network(req, fields)
        terminal = self.state.terminal(req.terminal)
        if terminal is None or req.terminal not in self.signed_on:
            note = "terminal unknown" if terminal is None else "terminal not signed on"
            return Outcome(self._response(req, fields, Rc.TERMINAL_NOT_PERMITTED), note=note)
        if req.merchant != terminal.mid:
            return Outcome(self._response(req, fields, Rc.TERMINAL_NOT_PERMITTED), note="DE42 is not the terminal's merchant")
        sign = None
        if terminal.security in SECURED:
            keys = TerminalKeys(terminal.security, terminal.key_lmk, terminal.ksn_initial)
            refused = await self._check_mac(req, fields, raw, keys)
            if refused is not None:
                return refused
            sign = (keys, req.ksn)
        if req.pin_block and terminal.security not in DUKPT:
            return Outcome(self._response(req, fields, Rc.NOT_PERMITTED),
                           note=f"PIN from a terminal whose profile ({terminal.security}) carries no PIN key")
        outcome = await self._handle_financial(req, fields, terminal)
        outcome.sign = sign
        return outcome

    async def _handle_financial(self, req: Request, fields: dict[str, str], terminal: Terminal) -> Outcome:
        prior = self.state.message(req.key)
        if prior is not None:
            return await self._replay(req, fields, prior)
        ksn_counter = None
        if terminal.security in DUKPT:  # a new message: its KSN must not have been used before
            ksn_counter = ksn_parts(terminal.security, req.ksn)[1]
            if not self.ksn_guard.claim(terminal.tid, ksn_counter, floor=terminal.ksn_max):
                return Outcome(self._response(req, fields, Rc.SECURITY_VIOLATION), note="KSN counter used before")
        pending = MessageState(req.base_mti, req.digest, None, None, asyncio.get_running_loop().create_future())
        self.state.remember_message(req.key, pending)
        try:
            pin = await self._check_pin(req, terminal) if req.pin_block and req.kind is not Kind.REVERSAL else None
            outcome, unit = await self._decide(req, fields, pin)
            if ksn_counter is not None:
                unit.statements.append(("UPDATE terminals SET ksn_max = MAX(ksn_max, ?) WHERE tid = ?",
                                        (ksn_counter, terminal.tid)))
        except BaseException:
            del self.state.messages[req.key]
            pending.done.set_result(None)
            raise
        return await self._commit(req, pending, outcome, unit)

    # ------------------------------------------------------------------ security (through the HSM)

    async def _check_mac(self, req: Request, fields: dict[str, str], raw: bytes, keys: TerminalKeys) -> Outcome | None:
        """A secured terminal's request must carry its KSN (DE53) and a MAC (DE64) over every
        byte of the message before the MAC; a bad MAC is answered 63 and nothing is done."""
        ksn_size = {"dukpt-tdes": 20, "dukpt-aes": 24}.get(keys.profile, 0)
        if not req.mac or len(req.ksn) != ksn_size:
            field_no = "64" if not req.mac else "53"
            return Outcome(self._response(req, fields, Rc.FORMAT_ERROR), note=f"DE{field_no} required by the "
                           f"terminal's {keys.profile} profile")
        if keys.profile in DUKPT and ksn_parts(keys.profile, req.ksn)[0] != ksn_parts(keys.profile, keys.ksn_initial)[0]:
            return Outcome(self._response(req, fields, Rc.SECURITY_VIOLATION), note="KSN of another device")
        if raw[-8:].hex().upper() != req.mac.upper():
            return Outcome(self._response(req, fields, Rc.FORMAT_ERROR), note="DE64 must be the last field")
        if self.security is None:
            return Outcome(self._response(req, fields, Rc.HSM_UNAVAILABLE), note="no HSM configured")
        try:
            ok = await self.security.verify_mac(keys, req.ksn, raw[:-8], req.mac)
        except HsmUnavailable:
            return Outcome(self._response(req, fields, Rc.HSM_UNAVAILABLE), note="HSM unavailable")
        except SecurityError as exc:
            return Outcome(self._response(req, fields, Rc.SECURITY_VIOLATION), note=f"MAC: HSM error {exc.error}")
        if not ok:
            return Outcome(self._response(req, fields, Rc.SECURITY_VIOLATION), note="MAC does not verify")
        return None

    async def _check_pin(self, req: Request, terminal: Terminal) -> Decline | tuple[CardState, bool] | None:
        """Verify the PIN block through the HSM. Returns a Decline to answer with, or the card
        and whether the PIN was right (the decision then updates the wrong-PIN count)."""
        card = self.state.card(req.pan)
        if card is None:
            return None  # the decision answers 14
        if card.pin_blocked:
            return Decline(Rc.PIN_TRIES_EXCEEDED, "PIN blocked")
        if not card.pvv:
            return Decline(Rc.INCORRECT_PIN, "card has no PIN")
        keys = TerminalKeys(terminal.security, terminal.key_lmk, terminal.ksn_initial)
        try:
            ok = await self.security.verify_pin(keys, req.ksn, req.pin_block, req.pan, card.pvv)
        except HsmUnavailable:
            return Decline(Rc.HSM_UNAVAILABLE, "HSM unavailable")
        except SecurityError as exc:
            return Decline(Rc.INCORRECT_PIN if exc.error in ("20", "23", "24") else Rc.SECURITY_VIOLATION,
                           f"PIN: HSM error {exc.error}")
        return card, ok

    def _pin_outcome(self, pin: Decline | tuple[CardState, bool] | None, unit: Unit) -> None:
        """Apply a PIN verification: a wrong PIN counts (the third blocks the PIN), a right one
        resets the count. Raises Decline when the message must be refused."""
        if pin is None:
            return
        if isinstance(pin, Decline):
            raise pin
        card, ok = pin
        if ok:
            if card.pin_tries:
                card.pin_tries = 0
                unit.statements.append(("UPDATE cards SET pin_tries = 0 WHERE id = ?", (card.id,)))
            return
        card.pin_tries += 1
        card.pin_blocked = card.pin_tries >= PIN_TRIES_MAX
        unit.statements.append(("UPDATE cards SET pin_tries = ?, pin_blocked = ? WHERE id = ?",
                                (card.pin_tries, int(card.pin_blocked), card.id)))
        if card.pin_blocked:
            raise Decline(Rc.PIN_TRIES_EXCEEDED, f"wrong PIN {card.pin_tries} times: PIN blocked")
        raise Decline(Rc.INCORRECT_PIN, f"wrong PIN ({card.pin_tries} of {PIN_TRIES_MAX})")

    async def _decide(self, req: Request, fields: dict[str, str], pin=None) -> tuple[Outcome, Unit]:
        now = self.clock.now()
        unit = Unit()
        if req.kind is Kind.REVERSAL:
            original = self.state.message((req.terminal, req.original.stan, req.original.transmission_time))
            if original is not None and original.done is not None and not original.done.done():
                await asyncio.shield(original.done)  # reverse only what is settled
                now = self.clock.now()
        try:
            if self.state.tombstoned(req.key) and req.kind is not Kind.REVERSAL:
                raise Decline(RC_REVERSED_BEFORE_ARRIVAL, "reversed before it arrived")
            self._pin_outcome(pin, unit)
            outcome = self._dispatch(req, fields, unit, now)
        except Decline as d:
            unit = Unit(statements=[s for s in unit.statements if s[0].startswith("UPDATE cards SET pin_")],
                        pinned=unit.pinned)
            outcome = Outcome(self._response(req, fields, d.rc), note=d.note)
        return outcome, unit

    def _dispatch(self, req: Request, fields: dict[str, str], unit: Unit, now: datetime) -> Outcome:
        if req.kind is Kind.PURCHASE:
            return self._purchase(req, fields, unit, now)
        if req.kind is Kind.REFUND:
            return self._refund(req, fields, unit, now)
        if req.kind is Kind.BALANCE:
            card = self._card(req, now)
            return Outcome(self._response(req, fields, Rc.APPROVED, balances=self._balances(card)))
        return self._reversal(req, fields, unit, now)

    async def _commit(self, req: Request, pending: MessageState, outcome: Outcome, unit: Unit) -> Outcome:
        resp = outcome.response
        stored = resp if isinstance(resp, dict) else response_fields(resp)
        pending.response = stored
        pending.posting_id = outcome.posting_id
        unit.statements.append((
            "INSERT INTO messages(tid, stan, tx_time, mti, digest, rc, response, posting_id, at) VALUES (?,?,?,?,?,?,?,?,?)",
            (*req.key, req.base_mti, req.digest, stored["39"], json.dumps(stored), outcome.posting_id, _iso(self.clock.now())),
        ))
        try:
            await self.writer.submit(unit)
        except LedgerUnavailable:
            self.state.messages.pop(req.key, None)
            return Outcome(_system_error(stored), note="ledger unavailable")
        finally:
            self.state.unpin(unit.pinned)
            pending.done.set_result(None)
            pending.done = None
        outcome.response = stored
        return outcome

    async def _replay(self, req: Request, fields: dict[str, str], prior: MessageState) -> Outcome:
        if prior.digest != req.digest or prior.mti != req.base_mti:
            resp = self._response(req, fields, Rc.DUPLICATE)
            return Outcome(resp, note="same key, different content")
        if prior.done is not None:
            await asyncio.shield(prior.done)
            current = self.state.messages.get(req.key)
            if current is None:  # the original failed to commit: treat this one as new
                return await self._handle_financial(req, fields, self.state.terminal(req.terminal))
            prior = current
        return Outcome(dict(prior.response), posting_id=prior.posting_id, replayed=True, note="repeat")

    # ------------------------------------------------------------------ network

    def _network(self, req: Request, fields: dict[str, str]) -> Outcome:
        terminal = self.state.terminal(req.terminal)
        if terminal is None:
            return Outcome(self._response(req, fields, Rc.TERMINAL_NOT_PERMITTED), note="terminal unknown")
        if req.network_code == "001":
            self.signed_on.add(req.terminal)
        elif req.network_code == "002":
            self.signed_on.discard(req.terminal)
        elif req.terminal not in self.signed_on:
            return Outcome(self._response(req, fields, Rc.TERMINAL_NOT_PERMITTED), note="echo before sign-on")
        return Outcome(self._response(req, fields, Rc.APPROVED))

    # ------------------------------------------------------------------ checks

    def _card(self, req: Request, now: datetime) -> CardState:
        if not luhn_ok(req.pan):  # a mistyped number: every issued PAN ends in its Luhn digit
            raise Decline(Rc.UNKNOWN_CARD, "PAN check digit is wrong")
        card = self.state.card(req.pan)
        if card is None:
            raise Decline(Rc.UNKNOWN_CARD, "card unknown")
        if req.expiry and req.expiry != card.expiry:
            raise Decline(Rc.UNKNOWN_CARD, "expiry does not match the card")
        if _expired(card.expiry, now):
            raise Decline(Rc.EXPIRED_CARD, "card expired")
        if card.status != "active":
            raise Decline(Rc.CARD_BLOCKED, f"card {card.status}")
        return card

    def _check_channel(self, req: Request, merchant: Merchant | None) -> Merchant:
        """The merchant exists and takes this DE22 channel (online mall: e-commerce only)."""
        if merchant is None:
            raise Decline(Rc.TERMINAL_NOT_PERMITTED, "merchant unknown")
        refusal = self.rules.channel_refusal(merchant, req.entry_mode)
        if refusal is not None:
            raise Decline(RC_CHANNEL_REFUSED[refusal.party], refusal.note)
        return merchant

    # ------------------------------------------------------------------ purchase

    def _purchase(self, req: Request, fields: dict[str, str], unit: Unit, now: datetime) -> Outcome:
        card = self._card(req, now)
        merchant = self.state.merchant(req.merchant)
        if merchant is None:
            raise Decline(Rc.TERMINAL_NOT_PERMITTED, "merchant unknown")
        limits = self.rules.limits(now)
        amount = req.amount
        if amount <= 0 or amount > limits.holding_max:
            raise Decline(Rc.INVALID_AMOUNT, "amount out of range")
        if not self.rules.accepts(merchant, now):
            raise Decline(Rc.NOT_PERMITTED, f"card not accepted at category {merchant.category}")
        self._check_channel(req, merchant)
        day = now.astimezone(KST).strftime("%Y-%m-%d")
        spent_today = self.state.card_day(card.id, day)
        if spent_today + amount > limits.daily_spend_max:
            raise Decline(Rc.OVER_LIMIT, "daily spend limit")
        if card.cash + card.cashback < amount:
            raise Decline(Rc.INSUFFICIENT_FUNDS, "insufficient funds")
        month = month_key(now)
        month_spend = self.state.member_month(card.member, month)
        fee = quote_fee(self.rules.fees, merchant=merchant, card_program=card.program, amount=amount, now=now)
        cb = quote_cashback(self.rules.cashback, card_program=card.program, merchant=merchant,
                            amount=amount, month_spend=month_spend, now=now)
        cb_used = min(card.cashback, amount)
        cash_used = amount - cb_used
        pid = self._next_posting_id()
        cash_acc, cb_acc, _ = card.accounts()
        payable = f"merchant:{merchant.mid}:payable"
        unit.posting_id = pid
        unit.entries = _merge(
            [(cb_acc, -cb_used), (cash_acc, -cash_used), (payable, amount), (payable, -fee.fee), ("fee_income", fee.fee)],
            [(payable, s) for _, s in fee.support] + [(f"fee_subsidy:{f}", -s) for f, s in fee.support],
            [(f"cashback_expense:{f}", -c) for f, c in cb.by_funder] + [(cb_acc, cb.total)],
        )
        detail = {
            "member": card.member, "month": month, "day": day, "cb_used": cb_used, "cash_used": cash_used,
            "fee": fee.fee,
            "fee_tier": fee.tier, "rate_bp": fee.rate_bp, "support": fee.support,
            "cashback": cb.by_funder, "eligible": cb.eligible, "policy": cb.policy_id,
        }
        rrn = f"{pid:012d}"
        unit.statements += [
            _insert_posting(pid, "purchase", now, card.id, merchant.mid, req, rrn, amount, fee.fee,
                            fee.support_total, cb.total, None, detail),
            _upsert_member_month(card.member, month, cb.eligible),
            _upsert_card_day(card.id, day, amount),
        ]
        # hot state moves with the unit
        card.cashback += cb.total - cb_used
        card.cash -= cash_used
        self.state.member_months[(card.member, month)] = month_spend + cb.eligible
        self.state.card_days[(card.id, day)] = spent_today + amount
        self.state.remember_posting(PostingState(pid, "purchase", card.id, merchant.mid, amount, 0, _iso(now),
                                                 json.loads(json.dumps(detail)), rrn, None))
        self._emit(unit, "purchase", now, card, merchant.mid, req, rrn, amount)
        resp = self._response(req, fields, Rc.APPROVED, rrn=rrn, auth_code=f"{pid % 1_000_000:06d}",
                              balances=self._balances(card))
        return Outcome(resp, posting_id=pid, fee=fee.fee, cashback=cb.total)

    # ------------------------------------------------------------------ refund / reversal

    def _refund(self, req: Request, fields: dict[str, str], unit: Unit, now: datetime) -> Outcome:
        card = self._card(req, now)
        original = self.state.posting_by_rrn(req.rrn)
        if original is None or original.kind != "purchase" or original.card_id != card.id:
            raise Decline(Rc.ORIGINAL_NOT_FOUND, "original purchase not found for this card")
        if original.mid != req.merchant:  # money comes out of the payable of the merchant that sold
            raise Decline(Rc.ORIGINAL_NOT_FOUND, "original purchase was at another merchant")
        self._check_channel(req, self.state.merchant(req.merchant))
        if req.amount <= 0 or req.amount > original.remaining:
            raise Decline(Rc.INVALID_AMOUNT, "refund exceeds what is left of the original")
        pid = self._undo_purchase(original, req.amount, "refund", req, unit, now)
        rrn = f"{pid:012d}"
        resp = self._response(req, fields, Rc.APPROVED, rrn=rrn, auth_code=f"{pid % 1_000_000:06d}",
                              balances=self._balances(card))
        return Outcome(resp, posting_id=pid, fee=-unit_fee(unit), cashback=-unit_cashback(unit))

    def _reversal(self, req: Request, fields: dict[str, str], unit: Unit, now: datetime) -> Outcome:
        orig_key = (req.terminal, req.original.stan, req.original.transmission_time)
        original_msg = self.state.message(orig_key)
        if original_msg is None:
            self.state.tombstones.add(orig_key)
            unit.statements.append(("INSERT OR IGNORE INTO tombstones(tid, stan, tx_time, at) VALUES (?,?,?,?)",
                                    (*orig_key, _iso(now))))
            return Outcome(self._response(req, fields, Rc.APPROVED), note="original unknown: remembered")
        if original_msg.posting_id is None:
            return Outcome(self._response(req, fields, Rc.APPROVED), note="original had no posting")
        original = self.state.posting(original_msg.posting_id)
        card = self.state.card_by_id(original.card_id)
        if card is None or card.pan != req.pan:
            raise Decline(Rc.ORIGINAL_NOT_FOUND, "reversal PAN differs from the original's")
        if original.kind == "purchase":
            final = req.replacement_amount if req.replacement_amount is not None else 0
            undo = min(max(original.amount - original.detail.get("reversed", 0) - final, 0), original.remaining)
            if undo == 0:
                return Outcome(self._response(req, fields, Rc.APPROVED, balances=self._balances(card)),
                               note="nothing left to reverse")
            pid = self._undo_purchase(original, undo, "reversal", req, unit, now)
        elif original.kind == "refund":
            if original.undone:
                return Outcome(self._response(req, fields, Rc.APPROVED, balances=self._balances(card)),
                               note="refund already reversed")
            pid = self._undo_refund(original, req, unit, now)
        else:
            raise Decline(Rc.INVALID_TRANSACTION, f"cannot reverse a {original.kind}")
        resp = self._response(req, fields, Rc.APPROVED, balances=self._balances(card))
        return Outcome(resp, posting_id=pid, fee=-unit_fee(unit), cashback=-unit_cashback(unit))

    def _undo_purchase(self, p: PostingState, undo: int, kind: str, req: Request, unit: Unit, now: datetime) -> int:
        """Refund or (partial) reversal of `undo` won of purchase `p`, proportionally."""
        self._pin(unit, p.id)
        d = p.detail
        before = p.undone
        share = dict(original_amount=p.amount, undone_before=before, undone_now=undo)
        cb_back = proportional(d["cb_used"], **share)
        fee_back = proportional(d["fee"], **share)
        support_back = clawback(tuple(map(tuple, d["support"])), **share)
        claw = clawback(tuple(map(tuple, d["cashback"])), **share)
        eligible_back = proportional(d["eligible"], **share)
        claw_total = sum(c for _, c in claw)
        support_total = sum(s for _, s in support_back)
        card = self.state.card_by_id(p.card_id)
        payable = f"merchant:{p.mid}:payable"
        card_entries = self._settle(card, d_cash=undo - cb_back, d_cashback=cb_back - claw_total)
        pid = self._next_posting_id()
        unit.posting_id = pid
        unit.entries = _merge(
            [(payable, -undo), (payable, fee_back), ("fee_income", -fee_back)],
            [(payable, -s) for _, s in support_back] + [(f"fee_subsidy:{f}", s) for f, s in support_back],
            [(f"cashback_expense:{f}", c) for f, c in claw],
            card_entries,
        )
        detail = {"cb_back": cb_back, "fee_back": fee_back, "support_back": support_back, "claw": claw,
                  "eligible_back": eligible_back, "member": d["member"], "month": d["month"], "day": d["day"]}
        rrn = f"{pid:012d}"
        unit.statements += [
            _insert_posting(pid, kind, now, card.id, p.mid, req, rrn, undo, -fee_back, -support_total,
                            -claw_total, p.id, detail),
            ("UPDATE postings SET undone = undone + ? WHERE id = ?", (undo, p.id)),
            _upsert_member_month(d["member"], d["month"], -eligible_back),
        ]
        p.undone += undo
        mm = (d["member"], d["month"])
        self.state.member_months[mm] = self.state.member_month(*mm) - eligible_back
        if kind == "reversal":  # a reversed purchase never happened: give the day's limit back
            spent = self.state.card_day(card.id, d["day"])
            self.state.card_days[(card.id, d["day"])] = spent - undo
            unit.statements.append(_upsert_card_day(card.id, d["day"], -undo))
            d["reversed"] = d.get("reversed", 0) + undo
            unit.statements.append(("UPDATE postings SET detail = ? WHERE id = ?", (json.dumps(d), p.id)))
        self.state.remember_posting(PostingState(pid, kind, card.id, p.mid, undo, 0, _iso(now),
                                                 json.loads(json.dumps(detail)), rrn, p.id))
        self._emit(unit, kind, now, card, p.mid, req, rrn, undo, original_id=p.id)
        return pid

    def _undo_refund(self, r: PostingState, req: Request, unit: Unit, now: datetime) -> int:
        """Reversal of a refund: the refund's money is taken back, and fee, support and
        cashback return to the shares of what then stands of the purchase (the cumulative
        floor rule), so a later full undo still returns exactly what was posted."""
        self._pin(unit, r.id)
        d = r.detail
        purchase = self.state.posting(r.original_id)
        self._pin(unit, purchase.id)
        pd = purchase.detail
        share = dict(original_amount=purchase.amount, undone_before=purchase.undone - r.amount, undone_now=r.amount)
        fee_back, cb_back = proportional(pd["fee"], **share), proportional(pd["cb_used"], **share)
        claw = list(clawback(tuple(map(tuple, pd["cashback"])), **share))
        support_back = list(clawback(tuple(map(tuple, pd["support"])), **share))
        eligible_back = proportional(pd["eligible"], **share)
        claw_total = sum(c for _, c in claw)
        card = self.state.card_by_id(r.card_id)
        payable = f"merchant:{r.mid}:payable"
        card_entries = self._settle(card, d_cash=-(r.amount - cb_back), d_cashback=-(cb_back - claw_total))
        pid = self._next_posting_id()
        unit.posting_id = pid
        unit.entries = _merge(
            [(payable, r.amount), (payable, -fee_back), ("fee_income", fee_back)],
            [(payable, s) for _, s in support_back] + [(f"fee_subsidy:{f}", -s) for f, s in support_back],
            [(f"cashback_expense:{f}", -c) for f, c in claw],
            card_entries,
        )
        detail = {"reverses": r.id, "member": d["member"], "month": d["month"], "day": d["day"]}
        unit.statements += [
            _insert_posting(pid, "reversal", now, card.id, r.mid, req, f"{pid:012d}", r.amount, fee_back,
                            sum(s for _, s in support_back), claw_total, r.id, detail),
            ("UPDATE postings SET undone = amount WHERE id = ?", (r.id,)),
            ("UPDATE postings SET undone = undone - ? WHERE id = ?", (r.amount, purchase.id)),
            _upsert_member_month(d["member"], d["month"], eligible_back),
        ]
        r.undone = r.amount
        purchase.undone -= r.amount
        mm = (d["member"], d["month"])
        self.state.member_months[mm] = self.state.member_month(*mm) + eligible_back
        self.state.remember_posting(PostingState(pid, "reversal", card.id, r.mid, r.amount, 0, _iso(now), detail,
                                                 f"{pid:012d}", r.id))
        self._emit(unit, "reversal", now, card, r.mid, req, f"{pid:012d}", r.amount, original_id=r.id)
        return pid

    def _settle(self, card: CardState, *, d_cash: int, d_cashback: int) -> list[tuple[str, int]]:
        """Card-side entries for the wanted changes, keeping cash and cashback ≥ 0: a
        shortfall in one is taken from the other, then recorded as receivable."""
        cash_acc, cb_acc, recv_acc = card.accounts()
        new_cash, new_cb = card.cash + d_cash, card.cashback + d_cashback
        if new_cb < 0:
            new_cash += new_cb
            new_cb = 0
        if new_cash < 0:
            take = min(new_cb, -new_cash)
            new_cb -= take
            new_cash += take
        short = min(new_cash, 0)
        new_cash -= short
        entries = [(cash_acc, new_cash - card.cash), (cb_acc, new_cb - card.cashback), (recv_acc, short)]
        card.cash, card.cashback, card.receivable = new_cash, new_cb, card.receivable + short
        return entries

    # ------------------------------------------------------------------ helpers

    def _emit(self, unit: Unit, kind: str, now: datetime, card: CardState, mid: str, req: Request, rrn: str,
              amount: int, *, original_id: int | None = None) -> None:
        """The posting's events (docs/events.md), told from its own entries and the card's
        balances after it; they commit with the posting or not at all."""
        merchant = self.state.merchant(mid)
        facts = PostingFacts(
            posting_id=unit.posting_id, kind=kind, at=_iso(now), amount=amount, entries=tuple(unit.entries),
            card=CardFacts(card.program, card.member, card.pan, card.cash, card.cashback, card.receivable),
            rrn=rrn, merchant=mid.strip(), district=merchant.district if merchant else None,
            terminal=req.terminal, stan=req.stan, original_posting_id=original_id)
        unit.events = posting_events(self.writer.ledger_id, facts)

    def _pin(self, unit: Unit, posting_id: int) -> None:
        """The cached posting stays cached until this unit is durable (see HotState)."""
        unit.pinned.append(posting_id)
        self.state.pin([posting_id])

    def _next_posting_id(self) -> int:
        pid = self.state.next_posting_id
        self.state.next_posting_id += 1
        return pid

    @staticmethod
    def _balances(card: CardState) -> Balances:
        return Balances(cash=card.cash, cashback=card.cashback)

    @staticmethod
    def _response(req: Request, fields: dict[str, str], rc: Rc, *, rrn: str = "", auth_code: str = "",
                  balances: Balances | None = None) -> Response:
        return Response(mti=RESPONSE_MTI[req.mti], rc=rc, echo=fields, rrn=rrn, auth_code=auth_code, balances=balances)


def _expired(expiry: str, now: datetime) -> bool:
    """A card is valid through the last day of its expiry month (YYMM)."""
    yy, mm = int(expiry[:2]), int(expiry[2:])
    local = now.astimezone(KST)
    return (local.year % 100, local.month) > (yy, mm)  # YYMM is 20YY: the platform began in 2019


def unit_fee(unit: Unit) -> int:
    return sum(-a for acc, a in unit.entries if acc == "fee_income")


def unit_cashback(unit: Unit) -> int:
    return sum(a for acc, a in unit.entries if acc.startswith("cashback_expense:"))


def _insert_posting(pid: int, kind: str, now: datetime, card_id: int, mid: str, req: Request, rrn: str, amount: int,
                    fee: int, support: int, cashback: int, original_id: int | None, detail: dict) -> tuple[str, tuple]:
    return (
        "INSERT INTO postings(id, kind, at, card_id, mid, tid, stan, rrn, amount, fee, support, cashback, original_id, detail)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (pid, kind, _iso(now), card_id, mid, req.terminal, req.stan, rrn, amount, fee, support, cashback, original_id,
         json.dumps(detail)),
    )


def _upsert_member_month(member: str, month: str, delta: int) -> tuple[str, tuple]:
    return ("INSERT INTO member_months(member, month, eligible) VALUES (?,?,?) "
            "ON CONFLICT(member, month) DO UPDATE SET eligible = eligible + excluded.eligible", (member, month, delta))


def _upsert_card_day(card_id: int, day: str, delta: int) -> tuple[str, tuple]:
    return ("INSERT INTO card_days(card_id, day, spent) VALUES (?,?,?) "
            "ON CONFLICT(card_id, day) DO UPDATE SET spent = spent + excluded.spent", (card_id, day, delta))


def _system_error(stored: dict[str, str]) -> dict[str, str]:
    out = {k: v for k, v in stored.items() if k not in ("37", "38", "54")}
    out["39"] = Rc.SYSTEM_ERROR.value
    return out
