"""The decision core: one financial request in, one Decision out. Pure.

`decide(request, view, rules, now, …)` does no I/O, never awaits and changes nothing: it
reads the hot state through a `View` (every row it may need was loaded before: see
switch/authorize/engine.py, `prefetch`) and returns what should happen — the response, the
balanced posting, the state changes and the events that tell of it. The async shell
(switch/authorize/engine.py) does the HSM checks before it, then encodes and MACs the
response, commits the Decision and only then applies its changes to the hot state.

Spending order (an assumption: docs/domain.md, "Cashback"; docs/architecture.md): a purchase
spends the cashback balance first, then cash; cashback is earned on the full amount and
credited in the same posting. A refund or reversal of U won out of a purchase of A undoes
fee, fee support, cashback spent and cashback earned in proportion, by the cumulative floor
rule (switch/rules/cashback.py, clawback), so undoing the whole amount in any number of
steps undoes exactly what was posted. A clawback larger than the cashback balance is taken
from cash, and what cash cannot cover is recorded on the card's receivable account: card
balances never go below zero.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Protocol

from switch.domain import TWO_DIGITS, Merchant, card_accounts, day_key, kst_instant, luhn_ok, month_key, zero_padded
from switch.record import Record, replace
from switch.ledger.events import CardFacts, PostingFacts, posting_events
from switch.ledger.records import (AutoCharge, Change, CardDayMoved, CardMonthCharged, CardState, ChargeDetail, Entry,
                                   MemberMonthMoved, MessageKey,
                                   HoldDetail, MessageOutcome, OriginalTombstoned, OutboxEvent, PinTriesSet,
                                   Posting, PostingState, PostingUndone, PurchaseDetail, RefundReversalDetail,
                                   UndoDetail)
from switch.rules.cashback import clawback, proportional, quote_cashback
from switch.rules.fees import quote_fee
from switch.rules.policy import BANK_CHANNEL, CARDHOLDER, TERMINAL, Limits, Rules
from switch.wire.messages import (KIND_BALANCE, KIND_COMPLETION, KIND_DEPOSIT, KIND_PREAUTH, KIND_PURCHASE, KIND_REFUND,
                                   KIND_REVERSAL, RC_APPROVED, RESPONSE_MTI, Balances, Rc, Request, Response)

PIN_TRIES_MAX = 3
# A late original after its reversal: declined with this code and not posted.
RC_REVERSED_BEFORE_ARRIVAL = Rc.INVALID_TRANSACTION
# A channel the merchant does not take (Rules.channel_refusal): e-commerce outside the
# online mall is not permitted to the card (57); card present at the mall, to the terminal (58).
RC_CHANNEL_REFUSED = {CARDHOLDER: Rc.NOT_PERMITTED, TERMINAL: Rc.TERMINAL_NOT_PERMITTED}


class View(Protocol):
    """What a decision may read: the hot state, already loaded for this request."""

    ledger_id: str
    next_posting_id: int

    def card(self, pan: str) -> CardState | None: ...
    def card_by_id(self, card_id: int) -> CardState | None: ...
    def merchant(self, mid: str) -> Merchant | None: ...
    def member_month(self, member: str, month: str) -> int: ...
    def card_day(self, card_id: int, day: str) -> int: ...
    def card_month_charged(self, card_id: int, month: str) -> int: ...
    def auto_charge(self, card_id: int) -> AutoCharge | None: ...
    def posting(self, posting_id: int) -> PostingState | None: ...
    def posting_by_rrn(self, rrn: str) -> PostingState | None: ...
    def message(self, key: MessageKey) -> MessageOutcome | None: ...
    def tombstoned(self, key: MessageKey) -> bool: ...


class PinVerified(Record, frozen=True):
    """The HSM's verdict on the request's PIN block against the card's PVV."""

    ok: bool


class PinRefused(Record, frozen=True):
    """The HSM could not verify the PIN block (a malformed block: 55; a key fault: 63)."""

    rc: Rc
    note: str


PinCheck = PinVerified | PinRefused | None


class CardChange(Record, frozen=True):
    """A card's balances after the decision (cash, cashback, receivable), for the hot state."""

    card_id: int
    cash: int
    cashback: int
    receivable: int


class Decision(Record, frozen=True):
    response: Response
    posting: Posting | None = None
    changes: tuple[Change, ...] = ()
    cards: tuple[CardChange, ...] = ()        # balances after, applied to the hot state with the changes
    postings: tuple[PostingState, ...] = ()   # the new posting as the hot state keeps it
    events: tuple[OutboxEvent, ...] = ()
    note: str = ""
    fee: int = 0
    cashback: int = 0
    before: tuple[Posting, ...] = ()           # committed before `posting`: a purchase's auto-charge


class Decline(Exception):
    def __init__(self, rc: Rc, note: str) -> None:
        super().__init__(note)
        self.rc = rc
        self.note = note


def pin_needs_hsm(card: CardState | None) -> bool:
    """Whether a PIN block is worth sending to the HSM: not for an unknown card (14), a card
    whose PIN is blocked (75) or a card that has no PIN (55) — the decision answers those."""
    return card is not None and not card.pin_blocked and bool(card.pvv)


def response(req: Request, fields: dict[str, str], rc: Rc, *, rrn: str = "", auth_code: str = "",
             balances: Balances | None = None) -> Response:
    return Response(mti=RESPONSE_MTI[req.mti], rc=rc, echo=fields, rrn=rrn, auth_code=auth_code, balances=balances)


def decide(req: Request, fields: dict[str, str], view: View, rules: Rules, now: datetime, *,
           pin: PinCheck = None, at: str = "") -> Decision:
    """The decision on a new (not repeated) financial message. A decline still carries the
    PIN-count change it caused: a wrong PIN counts even though the purchase is refused.
    at: `iso(now)` when the caller has it already (the shell stores it in the message row
    too: one formatting a purchase, not two); computed here otherwise."""
    pin_changes: list[Change] = []
    try:
        reversal = req.kind is KIND_REVERSAL
        if not reversal and view.tombstoned(req.key):
            raise Decline(RC_REVERSED_BEFORE_ARRIVAL, "reversed before it arrived")
        if req.pin_block and not reversal:
            _pin_outcome(req, view, pin, pin_changes)
        return _Deciding(req, fields, view, rules, now, tuple(pin_changes), at).dispatch()
    except Decline as d:
        return Decision(response(req, fields, d.rc), changes=tuple(pin_changes), note=d.note)


def _pin_outcome(req: Request, view: View, pin: PinCheck, changes: list[Change]) -> None:
    """A wrong PIN counts (the third blocks the PIN), a right one resets the count. Raises
    Decline when the message must be refused."""
    card = view.card(req.pan)
    if card is None:
        return  # the decision answers 14
    if card.pin_blocked:
        raise Decline(Rc.PIN_TRIES_EXCEEDED, "PIN blocked")
    if not card.pvv:
        raise Decline(Rc.INCORRECT_PIN, "card has no PIN")
    if isinstance(pin, PinRefused):
        raise Decline(pin.rc, pin.note)
    assert isinstance(pin, PinVerified), "the shell verifies a PIN block before deciding"
    if pin.ok:
        if card.pin_tries:
            changes.append(PinTriesSet(card.id, 0, False))
        return
    tries = card.pin_tries + 1
    blocked = tries >= PIN_TRIES_MAX
    changes.append(PinTriesSet(card.id, tries, blocked))
    if blocked:
        raise Decline(Rc.PIN_TRIES_EXCEEDED, f"wrong PIN {tries} times: PIN blocked")
    raise Decline(Rc.INCORRECT_PIN, f"wrong PIN ({tries} of {PIN_TRIES_MAX})")


def iso(now: datetime) -> str:
    """`now` in KST as `isoformat(timespec="microseconds")` writes it (KST's offset is always
    +09:00): a posting's and a message row's time. Built from the date's and the time's
    fields (switch.domain.date_text): the whole isoformat, a method call with a keyword,
    formats the offset through the tzinfo and cost ≈ 1 µs (docs/performance.md, "A posting's
    time built from its parts")."""
    reading = kst_instant(now)
    local = reading.local
    return (reading.day + "T" + TWO_DIGITS[local.hour] + ":" + TWO_DIGITS[local.minute] + ":"
            + TWO_DIGITS[local.second] + "." + zero_padded(local.microsecond, 6) + "+09:00")


def _merge(*entry_lists: list[Entry]) -> tuple[Entry, ...]:
    """Entries with zero amounts dropped (they carry no meaning)."""
    return tuple((a, v) for entries in entry_lists for a, v in entries if v)


def expired(expiry: str, now: datetime) -> bool:
    """A card is valid through the last day of its expiry month (YYMM)."""
    yy, mm = int(expiry[:2]), int(expiry[2:])
    local = kst_instant(now).local
    return (local.year % 100, local.month) > (yy, mm)  # YYMM is 20YY: the platform began in 2019


class _Card:
    """A card's balances as the decision moves them (the hot state's card is not touched)."""

    __slots__ = ("state", "cash", "cashback", "receivable")

    def __init__(self, state: CardState) -> None:
        self.state = state
        self.cash, self.cashback, self.receivable = state.cash, state.cashback, state.receivable

    def change(self) -> CardChange:
        return CardChange(self.state.id, self.cash, self.cashback, self.receivable)

    def balances(self) -> Balances:
        return Balances(cash=self.cash, cashback=self.cashback)

    def settle(self, *, d_cash: int, d_cashback: int) -> list[Entry]:
        """Card-side entries for the wanted changes, keeping cash and cashback ≥ 0: a
        shortfall in one is taken from the other, then recorded as receivable."""
        cash_acc, cb_acc, recv_acc = card_accounts(self.state.id)
        new_cash, new_cb = self.cash + d_cash, self.cashback + d_cashback
        if new_cb < 0:
            new_cash += new_cb
            new_cb = 0
        if new_cash < 0:
            take = min(new_cb, -new_cash)
            new_cb -= take
            new_cash += take
        short = min(new_cash, 0)
        new_cash -= short
        entries = [(cash_acc, new_cash - self.cash), (cb_acc, new_cb - self.cashback), (recv_acc, short)]
        self.cash, self.cashback, self.receivable = new_cash, new_cb, self.receivable + short
        return entries


class _Deciding:
    """One decision in progress: reads the view, builds the Decision, mutates nothing shared."""

    def __init__(self, req: Request, fields: dict[str, str], view: View, rules: Rules, now: datetime,
                 pin_changes: tuple[Change, ...], at: str = "") -> None:
        self.req, self.fields, self.view, self.rules, self.now = req, fields, view, rules, now
        self.at = at or iso(now)
        self.pin_changes = pin_changes
        self.pid_offset = 0  # postings this decision made before its own (an auto-charge: 1)

    def dispatch(self) -> Decision:
        kind = self.req.kind
        if kind is KIND_PURCHASE:
            return self._purchase()
        if kind is KIND_REFUND:
            return self._refund()
        if kind is KIND_BALANCE:
            card = _Card(self._card())
            return self._decision(response(self.req, self.fields, Rc.APPROVED, balances=card.balances()))
        if kind is KIND_PREAUTH:
            return self._preauth()
        if kind is KIND_COMPLETION:
            return self._completion()
        if kind is KIND_DEPOSIT:
            return self._deposit()
        return self._reversal()

    # ------------------------------------------------------------------ checks

    def _card(self) -> CardState:
        req = self.req
        pan, expiry = req.pan, req.expiry  # each read once (a Struct's field: a generic lookup)
        if not luhn_ok(pan):  # a mistyped number: every issued PAN ends in its Luhn digit
            raise Decline(Rc.UNKNOWN_CARD, "PAN check digit is wrong")
        card = self.view.card(pan)
        if card is None:
            raise Decline(Rc.UNKNOWN_CARD, "card unknown")
        card_expiry = card.expiry
        if expiry and expiry != card_expiry:
            raise Decline(Rc.UNKNOWN_CARD, "expiry does not match the card")
        if expired(card_expiry, self.now):
            raise Decline(Rc.EXPIRED_CARD, "card expired")
        if card.status != "active":
            raise Decline(Rc.CARD_BLOCKED, f"card {card.status}")
        return card

    def _check_channel(self, merchant: Merchant | None) -> Merchant:
        """The merchant exists and takes this DE22 channel (online mall: e-commerce only)."""
        if merchant is None:
            raise Decline(Rc.TERMINAL_NOT_PERMITTED, "merchant unknown")
        if merchant.category == BANK_CHANNEL:
            raise Decline(Rc.TERMINAL_NOT_PERMITTED, "a bank channel's terminal sends charges only")
        refusal = self.rules.channel_refusal(merchant, self.req.entry_mode)
        if refusal is not None:
            raise Decline(RC_CHANNEL_REFUSED[refusal.party], refusal.note)
        return merchant

    def _spend_checks(self) -> tuple[CardState, Merchant, Limits]:
        """What a purchase and a pre-authorization are both checked for, in this order: the
        card (14, 54, 62), the merchant (58), the amount (13), the category (57), the channel."""
        state = self._card()
        merchant = self.view.merchant(self.req.merchant)
        if merchant is None:
            raise Decline(Rc.TERMINAL_NOT_PERMITTED, "merchant unknown")
        limits = self.rules.limits(self.now)
        if self.req.amount <= 0 or self.req.amount > limits.holding_max:
            raise Decline(Rc.INVALID_AMOUNT, "amount out of range")
        if not self.rules.accepts(merchant, self.now):
            raise Decline(Rc.NOT_PERMITTED, f"card not accepted at category {merchant.category}")
        self._check_channel(merchant)
        return state, merchant, limits

    # ------------------------------------------------------------------ purchase

    def _purchase(self) -> Decision:
        req, view, now = self.req, self.view, self.now
        state, merchant, limits = self._spend_checks()
        amount = req.amount
        if view.card_day(state.id, day_key(now)) + amount > limits.daily_spend_max:
            raise Decline(Rc.OVER_LIMIT, "daily spend limit")
        card = _Card(state)
        topped = self._auto_charge(card)
        if card.cash + card.cashback < amount:
            raise Decline(Rc.INSUFFICIENT_FUNDS, "insufficient funds" + (" after the auto-charge" if topped else ""))
        decision = self._sale(state, merchant, amount, card)
        if topped is None:
            return decision
        charge, events, changes = topped
        return replace(decision, before=(charge,), events=events + decision.events,
                       changes=changes + decision.changes)

    def _auto_charge(self, card: _Card) -> tuple[Posting, tuple[OutboxEvent, ...], tuple[Change, ...]] | None:
        """A card enrolled in auto-charge whose cash + cashback is below its threshold is
        charged its amount first, in the purchase's own commit: the top-up exists exactly when
        the purchase does (a declined purchase charges nothing; a repeat replays; a reversal of
        the purchase leaves the top-up, which was real). Within the charge limits (holding
        limit, month cap); where it would break one, there is no top-up (docs/host-interface.md,
        "Auto-charge")."""
        state = card.state
        setting = self.view.auto_charge(state.id)
        if setting is None or card.cash + card.cashback >= setting.threshold:
            return None
        limits = self.rules.limits(self.now)
        month = month_key(self.now)
        if card.cash + card.cashback + setting.amount > limits.holding_max:
            return None
        if limits.charge_month_max is not None and \
                self.view.card_month_charged(state.id, month) + setting.amount > limits.charge_month_max:
            return None
        pid = self.view.next_posting_id
        self.pid_offset = 1  # the purchase takes the next id
        cash_acc, _, recv_acc = card_accounts(state.id)
        repay = min(setting.amount, -card.receivable)
        card.cash += setting.amount - repay
        card.receivable += repay
        posting = Posting(id=pid, kind="charge", at=self.at, amount=setting.amount,
                          entries=_merge([("bank_settlement", -setting.amount), (cash_acc, setting.amount - repay),
                                          (recv_acc, repay)]),
                          card_id=state.id, tid=self.req.terminal, stan=self.req.stan, rrn=zero_padded(pid, 12),
                          detail=ChargeDetail(state.member, repay, auto=True))
        return posting, self._events(posting, card), (CardMonthCharged(state.id, month, setting.amount),)

    def _sale(self, state: CardState, merchant: Merchant, amount: int, card: _Card, *,
              hold: PostingState | None = None) -> Decision:
        """A purchase of `amount` (checked by the caller), spending cashback first, then cash.
        A completion's sale first releases its hold into cash (`hold`), in the same posting."""
        req, view, now = self.req, self.view, self.now
        day, month = day_key(now), month_key(now)
        # each record's field read once (compiled, a Struct's field costs a generic attribute
        # lookup a read: docs/performance.md, "Fields read once (kept)")
        program, member, card_id, mid = state.program, state.member, state.id, merchant.mid
        fee = quote_fee(self.rules.fees, merchant=merchant, card_program=program, amount=amount, now=now)
        cb = quote_cashback(self.rules.cashback, card_program=program, merchant=merchant, amount=amount,
                            month_spend=view.member_month(member, month), now=now)
        fee_won, support, by_funder, cb_total, eligible = fee.fee, fee.support, cb.by_funder, cb.total, cb.eligible
        cash_acc, cb_acc, _ = card_accounts(card_id)
        released: list[Entry] = []
        if hold is not None:
            released = [(state.held_account, -hold.remaining), (cash_acc, hold.remaining)]
            card.cash += hold.remaining
        cb_used = min(card.cashback, amount)
        cash_used = amount - cb_used
        pid = view.next_posting_id + self.pid_offset
        payable = f"merchant:{mid}:payable"
        entries = _merge(
            released,
            [(cb_acc, -cb_used), (cash_acc, -cash_used), (payable, amount), (payable, -fee_won), ("fee_income", fee_won)],
            [(payable, s) for _, s in support] + [(f"fee_subsidy:{f}", -s) for f, s in support],
            [(f"cashback_expense:{f}", -c) for f, c in by_funder] + [(cb_acc, cb_total)],
        )
        card.cashback += cb_total - cb_used
        card.cash -= cash_used
        detail = PurchaseDetail(member=member, month=month, day=day, cb_used=cb_used, cash_used=cash_used,
                                fee=fee_won, fee_tier=fee.tier, rate_bp=fee.rate_bp, support=tuple(support),
                                cashback=tuple(by_funder), eligible=eligible, policy=cb.policy_id)
        rrn = zero_padded(pid, 12)
        posting = Posting(id=pid, kind="purchase", at=self.at, amount=amount, entries=entries, card_id=card_id,
                          mid=mid, tid=req.terminal, stan=req.stan, rrn=rrn, fee=fee_won,
                          support=fee.support_total, cashback=cb_total,
                          original_id=hold.id if hold is not None else None, detail=detail)
        changes: tuple[Change, ...] = (MemberMonthMoved(member, month, eligible), CardDayMoved(card_id, day, amount))
        if hold is not None:
            changes = (PostingUndone(hold.id, hold.remaining), *changes)
        resp = response(req, self.fields, RC_APPROVED, rrn=rrn, auth_code=zero_padded(pid % 1_000_000, 6),
                        balances=card.balances())
        return self._decision(resp, posting=posting, changes=changes, card=card, fee=fee_won, cashback=cb_total)

    # ------------------------------------------------------------------ charge on the wire

    def _deposit(self) -> Decision:
        """0200 with processing code 21: a member's bank top-up, from a terminal of a bank
        channel (a merchant of category BANK_CHANNEL). The limits of `eum admin card charge`:
        the minimum charge (13), the holding limit and the month's charge cap (61). A charge
        first repays what a clawback left owing on the card (its receivable)."""
        req, view, now = self.req, self.view, self.now
        state = self._card()
        merchant = view.merchant(req.merchant)
        if merchant is None or merchant.category != BANK_CHANNEL:
            raise Decline(Rc.TERMINAL_NOT_PERMITTED, "charges come from a bank channel's terminals only")
        limits = self.rules.limits(now)
        amount = req.amount
        if amount < limits.charge_min or amount > limits.holding_max:
            raise Decline(Rc.INVALID_AMOUNT, f"a charge is {limits.charge_min:,}..{limits.holding_max:,} won")
        if state.cash + state.cashback + amount > limits.holding_max:
            raise Decline(Rc.OVER_LIMIT, "holding limit")
        month = month_key(now)
        if limits.charge_month_max is not None and \
                view.card_month_charged(state.id, month) + amount > limits.charge_month_max:
            raise Decline(Rc.OVER_LIMIT, "monthly charge limit")
        card = _Card(state)
        cash_acc, _, recv_acc = card_accounts(state.id)
        repay = min(amount, -card.receivable)
        card.cash += amount - repay
        card.receivable += repay
        pid = view.next_posting_id
        rrn = zero_padded(pid, 12)
        posting = Posting(id=pid, kind="charge", at=self.at, amount=amount,
                          entries=_merge([("bank_settlement", -amount), (cash_acc, amount - repay), (recv_acc, repay)]),
                          card_id=state.id, tid=req.terminal, stan=req.stan, rrn=rrn,
                          detail=ChargeDetail(state.member, repay))
        resp = response(req, self.fields, Rc.APPROVED, rrn=rrn, auth_code=zero_padded(pid % 1_000_000, 6),
                        balances=card.balances())
        return self._decision(resp, posting=posting, changes=(CardMonthCharged(state.id, month, amount),), card=card)

    def _undo_charge(self, charge: PostingState, card: _Card) -> Decision:
        """0400 of a charge: the bank's money goes back. What the card has spent of it since
        cannot be taken from cash: the rest is owed on the card's receivable (as a clawback's
        is), never taken from cashback, which is not the member's bank money."""
        if charge.undone:
            return self._decision(response(self.req, self.fields, Rc.APPROVED, balances=card.balances()),
                                  note="charge already reversed")
        amount = charge.amount
        cash_acc, _, recv_acc = card_accounts(card.state.id)
        taken = min(card.cash, amount)
        card.cash -= taken
        card.receivable -= amount - taken
        pid = self.view.next_posting_id
        posting = Posting(id=pid, kind="charge_reversal", at=self.at, amount=amount,
                          entries=_merge([("bank_settlement", amount), (cash_acc, -taken), (recv_acc, -(amount - taken))]),
                          card_id=card.state.id, tid=self.req.terminal, stan=self.req.stan, rrn=zero_padded(pid, 12),
                          original_id=charge.id)
        month = month_key(datetime.fromisoformat(charge.at))
        resp = response(self.req, self.fields, Rc.APPROVED, balances=card.balances())
        return self._decision(resp, posting=posting, card=card,
                              changes=(PostingUndone(charge.id, amount), CardMonthCharged(card.state.id, month, -amount)))

    # ------------------------------------------------------------------ pre-authorization

    def _preauth(self) -> Decision:
        """0100 (or its 0120 advice): a hold of the amount on the card's cash — never on its
        cashback, which is spent first at completion as by any purchase. Nothing moves to the
        merchant. With DE37 it is an incremental authorization of the open hold that RRN
        names: a new hold posting under the same RRN holds the total and closes the one before."""
        req, view, now = self.req, self.view, self.now
        state, merchant, limits = self._spend_checks()
        amount = req.amount
        previous = self._open_hold(state, merchant) if req.rrn else None
        if view.card_day(state.id, day_key(now)) + amount > limits.daily_spend_max:
            raise Decline(Rc.OVER_LIMIT, "daily spend limit")
        if state.cash < amount:
            raise Decline(Rc.INSUFFICIENT_FUNDS, "insufficient cash for the hold")
        card = _Card(state)
        card.cash -= amount
        pid = view.next_posting_id
        if previous is None:
            rrn, root, held_before = zero_padded(pid, 12), None, 0
            expires = iso(now + timedelta(days=self.rules.preauth.hold_days))
        else:
            assert isinstance(previous.detail, HoldDetail), f"hold {previous.id} has its detail"
            assert previous.rrn is not None, f"hold {previous.id} has its RRN"
            rrn, root, held_before = previous.rrn, previous.original_id or previous.id, previous.remaining
            expires = previous.detail.expires
        posting = Posting(id=pid, kind="hold", at=self.at, amount=held_before + amount,
                          entries=((card_accounts(state.id)[0], -amount), (state.held_account, amount)), card_id=state.id,
                          mid=merchant.mid, tid=req.terminal, stan=req.stan, rrn=rrn, original_id=root,
                          detail=HoldDetail(member=state.member, expires=expires, added=amount))
        changes = (PostingUndone(previous.id, held_before),) if previous is not None else ()
        resp = response(req, self.fields, Rc.APPROVED, rrn=rrn, auth_code=zero_padded(pid % 1_000_000, 6),
                        balances=card.balances())
        return self._decision(resp, posting=posting, changes=changes, card=card)

    def _open_hold(self, state: CardState, merchant: Merchant) -> PostingState:
        """The open hold the request's DE37 names, on this card at this merchant."""
        hold = self.view.posting_by_rrn(self.req.rrn)
        if hold is None or hold.kind != "hold" or hold.card_id != state.id:
            raise Decline(Rc.ORIGINAL_NOT_FOUND, "pre-authorization not found for this card")
        if hold.mid != merchant.mid:
            raise Decline(Rc.ORIGINAL_NOT_FOUND, "pre-authorization was at another merchant")
        if hold.remaining == 0:
            raise Decline(Rc.ORIGINAL_NOT_FOUND, "pre-authorization already completed or released")
        assert isinstance(hold.detail, HoldDetail), f"hold {hold.id} has its detail"
        if self.at > hold.detail.expires:
            raise Decline(Rc.ORIGINAL_NOT_FOUND, "pre-authorization expired")
        return hold

    def _completion(self) -> Decision:
        """0220: the sale that completes a pre-authorization, for the final amount (at most
        the hold plus the configured tolerance). The hold is released into cash and the sale
        posted as any purchase (fee and cashback on the final amount), in one posting. The
        hold was the approval: a completion is not declined for the card's status or the
        day's limit (it counts in the day), only for what makes it not this hold's."""
        req, view = self.req, self.view
        if not luhn_ok(req.pan):
            raise Decline(Rc.UNKNOWN_CARD, "PAN check digit is wrong")
        state = view.card(req.pan)
        if state is None:
            raise Decline(Rc.UNKNOWN_CARD, "card unknown")
        merchant = view.merchant(req.merchant)
        if merchant is None:
            raise Decline(Rc.TERMINAL_NOT_PERMITTED, "merchant unknown")
        hold = self._open_hold(state, merchant)
        quoted = view.message(req.original_key)
        if (quoted is None or quoted.mti not in ("0100", "0120") or quoted.rc != Rc.APPROVED.value
                or quoted.response.get("37") != hold.rrn):
            raise Decline(Rc.ORIGINAL_NOT_FOUND, "DE90 is not an approved authorization of this hold")
        amount = req.amount
        if amount <= 0 or amount > self.rules.preauth.completion_max(hold.remaining):
            raise Decline(Rc.INVALID_AMOUNT, "completion exceeds the hold")
        if state.cash + hold.remaining + state.cashback < amount:
            raise Decline(Rc.INSUFFICIENT_FUNDS, "insufficient funds beyond the hold")
        return self._sale(state, merchant, amount, _Card(state), hold=hold)

    def _release(self, original: PostingState, card: _Card) -> Decision:
        """0400 of a pre-authorization: the hold gives back what that authorization added
        (less DE95's amount that stands), up to what is still held."""
        current = self.view.posting_by_rrn(original.rrn) if original.rrn else None
        if current is None or current.kind != "hold" or current.remaining == 0:
            return self._decision(response(self.req, self.fields, Rc.APPROVED, balances=card.balances()),
                                  note="hold already completed or released")
        assert isinstance(original.detail, HoldDetail), f"hold {original.id} has its detail"
        stands = self.req.replacement_amount if self.req.replacement_amount is not None else 0
        amount = min(max(original.detail.added - stands, 0), current.remaining)
        if amount == 0:
            return self._decision(response(self.req, self.fields, Rc.APPROVED, balances=card.balances()),
                                  note="nothing held to release")
        posting = release_posting(self.view.next_posting_id, current, card.state, amount, self.at,
                                  tid=self.req.terminal, stan=self.req.stan)
        card.cash += amount
        resp = response(self.req, self.fields, Rc.APPROVED, balances=card.balances())
        return self._decision(resp, posting=posting, changes=(PostingUndone(current.id, amount),), card=card)

    # ------------------------------------------------------------------ refund / reversal

    def _refund(self) -> Decision:
        req, view = self.req, self.view
        state = self._card()
        original = view.posting_by_rrn(req.rrn)
        if original is None or original.kind != "purchase" or original.card_id != state.id:
            raise Decline(Rc.ORIGINAL_NOT_FOUND, "original purchase not found for this card")
        if original.mid != req.merchant:  # money comes out of the payable of the merchant that sold
            raise Decline(Rc.ORIGINAL_NOT_FOUND, "original purchase was at another merchant")
        self._check_channel(view.merchant(req.merchant))
        if req.amount <= 0 or req.amount > original.remaining:
            raise Decline(Rc.INVALID_AMOUNT, "refund exceeds what is left of the original")
        card = _Card(state)
        posting, changes = self._undo_purchase(original, req.amount, "refund", card)
        resp = response(req, self.fields, Rc.APPROVED, rrn=zero_padded(posting.id, 12),  # as _undo_purchase sets it
                        auth_code=zero_padded(posting.id % 1_000_000, 6),
                        balances=card.balances())
        return self._decision(resp, posting=posting, changes=changes, card=card, fee=posting.fee,
                              cashback=posting.cashback)

    def _reversal(self) -> Decision:
        req, view = self.req, self.view
        orig_key = req.original_key
        original_msg = view.message(orig_key)
        if original_msg is None:
            return self._decision(response(req, self.fields, Rc.APPROVED), note="original unknown: remembered",
                                  changes=(OriginalTombstoned(orig_key, self.at),))
        if original_msg.posting_id is None:
            return self._decision(response(req, self.fields, Rc.APPROVED), note="original had no posting")
        original = view.posting(original_msg.posting_id)
        assert original is not None and original.card_id is not None, f"posting {original_msg.posting_id} is loaded"
        state = view.card_by_id(original.card_id)
        if state is None or state.pan != req.pan:
            raise Decline(Rc.ORIGINAL_NOT_FOUND, "reversal PAN differs from the original's")
        card = _Card(state)
        if original.kind == "purchase":
            final = req.replacement_amount if req.replacement_amount is not None else 0
            undo = min(max(original.amount - original.reversed - final, 0), original.remaining)
            if undo == 0:
                return self._decision(response(req, self.fields, Rc.APPROVED, balances=card.balances()),
                                      note="nothing left to reverse")
            posting, changes = self._undo_purchase(original, undo, "reversal", card)
        elif original.kind == "hold":
            return self._release(original, card)
        elif original.kind == "charge":
            return self._undo_charge(original, card)
        elif original.kind == "refund":
            if original.undone:
                return self._decision(response(req, self.fields, Rc.APPROVED, balances=card.balances()),
                                      note="refund already reversed")
            posting, changes = self._undo_refund(original, card)
        else:
            raise Decline(Rc.INVALID_TRANSACTION, f"cannot reverse a {original.kind}")
        resp = response(req, self.fields, Rc.APPROVED, balances=card.balances())
        return self._decision(resp, posting=posting, changes=changes, card=card, fee=posting.fee,
                              cashback=posting.cashback)

    def _undo_purchase(self, p: PostingState, undo: int, kind: str, card: _Card) -> tuple[Posting, tuple[Change, ...]]:
        """Refund or (partial) reversal of `undo` won of purchase `p`, proportionally."""
        d = p.detail
        assert isinstance(d, PurchaseDetail), f"posting {p.id} is a purchase with its detail"
        share = dict(original_amount=p.amount, undone_before=p.undone, undone_now=undo)
        cb_back = proportional(d.cb_used, **share)
        fee_back = proportional(d.fee, **share)
        support_back = clawback(d.support, **share)
        claw = clawback(d.cashback, **share)
        eligible_back = proportional(d.eligible, **share)
        claw_total = sum(c for _, c in claw)
        support_total = sum(s for _, s in support_back)
        payable = f"merchant:{p.mid}:payable"
        card_entries = card.settle(d_cash=undo - cb_back, d_cashback=cb_back - claw_total)
        pid = self.view.next_posting_id
        entries = _merge(
            [(payable, -undo), (payable, fee_back), ("fee_income", -fee_back)],
            [(payable, -s) for _, s in support_back] + [(f"fee_subsidy:{f}", s) for f, s in support_back],
            [(f"cashback_expense:{f}", c) for f, c in claw],
            card_entries,
        )
        detail = UndoDetail(member=d.member, month=d.month, day=d.day, cb_back=cb_back, fee_back=fee_back,
                            support_back=tuple(support_back), claw=tuple(claw), eligible_back=eligible_back)
        posting = Posting(id=pid, kind=kind, at=self.at, amount=undo, entries=entries, card_id=card.state.id,
                          mid=p.mid, tid=self.req.terminal, stan=self.req.stan, rrn=zero_padded(pid, 12), fee=-fee_back,
                          support=-support_total, cashback=-claw_total, original_id=p.id, detail=detail)
        reversal = kind == "reversal"
        changes: list[Change] = [PostingUndone(p.id, undo, reversed=undo if reversal else 0),
                                 MemberMonthMoved(d.member, d.month, -eligible_back)]
        if reversal:  # a reversed purchase never happened: give the day's limit back
            changes.append(CardDayMoved(card.state.id, d.day, -undo))
        return posting, tuple(changes)

    def _undo_refund(self, r: PostingState, card: _Card) -> tuple[Posting, tuple[Change, ...]]:
        """Reversal of a refund: the refund's money is taken back, and fee, support and
        cashback return to the shares of what then stands of the purchase (the cumulative
        floor rule), so a later full undo still returns exactly what was posted."""
        d = r.detail
        assert r.original_id is not None, f"refund {r.id} names its purchase"
        purchase = self.view.posting(r.original_id)
        assert purchase is not None, f"purchase {r.original_id} of refund {r.id} is loaded"
        pd = purchase.detail
        assert isinstance(d, UndoDetail) and isinstance(pd, PurchaseDetail), f"refund {r.id} and its purchase"
        share = dict(original_amount=purchase.amount, undone_before=purchase.undone - r.amount, undone_now=r.amount)
        fee_back, cb_back = proportional(pd.fee, **share), proportional(pd.cb_used, **share)
        claw = clawback(pd.cashback, **share)
        support_back = clawback(pd.support, **share)
        eligible_back = proportional(pd.eligible, **share)
        claw_total = sum(c for _, c in claw)
        payable = f"merchant:{r.mid}:payable"
        card_entries = card.settle(d_cash=-(r.amount - cb_back), d_cashback=-(cb_back - claw_total))
        pid = self.view.next_posting_id
        entries = _merge(
            [(payable, r.amount), (payable, -fee_back), ("fee_income", fee_back)],
            [(payable, s) for _, s in support_back] + [(f"fee_subsidy:{f}", -s) for f, s in support_back],
            [(f"cashback_expense:{f}", -c) for f, c in claw],
            card_entries,
        )
        detail = RefundReversalDetail(member=d.member, month=d.month, day=d.day, reverses=r.id)
        posting = Posting(id=pid, kind="reversal", at=self.at, amount=r.amount, entries=entries,
                          card_id=card.state.id, mid=r.mid, tid=self.req.terminal, stan=self.req.stan,
                          rrn=zero_padded(pid, 12), fee=fee_back, support=sum(s for _, s in support_back),
                          cashback=claw_total, original_id=r.id, detail=detail)
        changes = (PostingUndone(r.id, r.amount), PostingUndone(purchase.id, -r.amount),
                   MemberMonthMoved(d.member, d.month, eligible_back))
        return posting, changes

    # ------------------------------------------------------------------ the decision

    def _decision(self, resp: Response, *, posting: Posting | None = None, changes: tuple[Change, ...] = (),
                  card: _Card | None = None, note: str = "", fee: int = 0, cashback: int = 0) -> Decision:
        if posting is None:
            return Decision(resp, changes=self.pin_changes + changes, note=note)
        pid = posting.id
        assert posting.imbalance() == 0, f"posting {pid} does not balance: {posting.imbalance()}"
        assert card is not None, f"posting {pid} names its card"
        kept = PostingState(pid, posting.kind, posting.card_id, posting.mid, posting.amount, 0, posting.at,
                            posting.rrn, posting.original_id, posting.detail)
        return Decision(resp, posting=posting, changes=self.pin_changes + changes, cards=(card.change(),),
                        postings=(kept,), events=self._events(posting, card), note=note, fee=fee,
                        cashback=cashback)

    def _events(self, posting: Posting, card: _Card) -> tuple[OutboxEvent, ...]:
        """The posting's events (docs/events.md), told from its own entries and the card's
        balances after it; they commit with the posting or not at all."""
        mid = posting.mid
        merchant = self.view.merchant(mid) if mid else None
        s = card.state
        req = self.req
        facts = PostingFacts(
            posting_id=posting.id, kind=posting.kind, at=posting.at, amount=posting.amount, entries=posting.entries,
            card=CardFacts(s.program, s.member, s.pan, card.cash, card.cashback, card.receivable),
            rrn=posting.rrn, merchant=mid.strip() if mid else None,
            district=merchant.district if merchant else None, terminal=req.terminal, stan=req.stan,
            original_posting_id=posting.original_id, extra=hold_facts(posting))
        return tuple(posting_events(self.view.ledger_id, facts))


def release_posting(pid: int, hold: PostingState, card: CardState, amount: int, at: str, *,
                    tid: str | None = None, stan: str | None = None) -> Posting:
    """`amount` of an open hold back from the card's held account to its cash."""
    return Posting(id=pid, kind="release", at=at, amount=amount,
                   entries=((card.held_account, -amount), (card_accounts(card.id)[0], amount)), card_id=card.id,
                   mid=hold.mid, tid=tid, stan=stan, original_id=hold.id)


def hold_facts(posting: Posting) -> tuple[tuple[str, int | str | bool], ...]:
    """An event's kind-specific figures: a hold's (what this authorization added, when the
    hold expires), a charge's (what it first repaid of the card's receivable)."""
    d = posting.detail
    if isinstance(d, HoldDetail):
        return (("added", d.added), ("expires", d.expires))
    if isinstance(d, ChargeDetail):
        return (("receivable_repaid", d.receivable_repaid), ("auto_charge", d.auto))
    return ()
