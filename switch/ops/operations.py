"""Operator actions on data (merchants, terminals, cards, charges, blocks).

They run inside whichever process owns the data dir: the running switch (reached over its
control socket) or, when no switch runs, the `eum admin` process itself. Either way they go
through the same hot state and single ledger writer as authorizations, so a running switch
honours them at once and nothing writes behind its back.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

import structlog

from switch.clock import Clock
from switch.domain import DISTRICTS, KST, Merchant, card_accounts, luhn_digit, mask_pan, month_key, partition_of
from switch.authorize.engine import MemberLocks
from switch.ledger.events import CardFacts, PostingFacts, posting_events
from switch.authorize.decide import iso, release_posting
from switch.wire.codec import idempotency_digest
from switch.ledger.records import (AUTO_CHARGE_META, MessageKey, MessageOutcome, CardIssued, CardMonthCharged, CardState, CardStatusSet, ChargeDetail,
                                   Commit, KeyGroupAdded, MerchantAdded, MerchantUpdated, MetaSet, PinTriesSet,
                                   Posting, PostingState, PostingUndone, Terminal, TerminalAdded,
                                   TerminalStatusSet)
from switch.ledger.writer import LedgerWriter
from switch.rules.fees import tier_for
from switch.rules.policy import Rules
from switch.authorize.security import DUKPT, PROFILES, SECURED, Security, SecurityError, initial_ksn, provision_test_keys
from switch.authorize.state import HotState

KEY_SETS = ("test", "generated")
log = structlog.get_logger()


# The fields of an operation's result its `admin_action` log line repeats (docs/operations.md, "Logs").
_LOGGED_RESULT = frozenset({"tid", "mid", "name", "district", "annual_sales", "category", "security", "keys", "group",
                            "pan", "program", "member", "expiry", "status", "charged", "receivable_repaid", "cash",
                            "cashback", "posting", "released", "amount", "enabled", "disabled", "fee_tier",
                            "auto_charge"})


class OperationError(ValueError):
    """A clear, operator-facing refusal (bad argument, unknown id, limit)."""


def default_expiry(now: datetime) -> str:
    """Charged money and cashback are valid for 5 years (docs/domain.md, "Cashback"): so is the card."""
    local = now.astimezone(KST)
    return f"{(local.year + 5) % 100:02d}{local.month:02d}"


class Operations:
    def __init__(self, *, rules: Rules, state: HotState, writer: LedgerWriter, clock: Clock,
                 security: Security | None = None, locks: MemberLocks | None = None) -> None:
        self.rules = rules
        self.locks = locks if locks is not None else MemberLocks()  # shared with the engine: one decision per member at a time
        self.state = state
        self.writer = writer
        self.clock = clock
        self.security = security
        self.cluster: Any = None  # several instances: switch/ops/cluster.py (set by switch/ops/runtime.py)
        self._device_count: int | None = None

    def _next_device(self) -> int:
        """DUKPT device ids, one per secured terminal: counted from the store once, then
        handed out synchronously, so two concurrent provisionings never share one."""
        if self._device_count is None:
            self._device_count = self.state.reader.dukpt_terminals()
        self._device_count += 1
        return self._device_count

    async def run(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        handler = getattr(self, "op_" + op.replace("-", "_"), None)
        if handler is None:
            raise OperationError(f"unknown operation {op!r}")
        result = await handler(**args)
        # what changed, for the operator's log: named fields only (a result may carry a key
        # under a ZMK, which no log holds); a PAN is masked by the log processor
        log.info("admin_action", op=op, **{k: v for k, v in result.items() if k in _LOGGED_RESULT})
        return result

    # ------------------------------------------------------------------ merchants, terminals

    async def op_merchant_add(self, *, mid: str, name: str, district: str, annual_sales: int,
                              category: str = "general", online_mall: bool = False) -> dict[str, Any]:
        if not mid or len(mid) > 15:
            raise OperationError("--mid must be 1..15 characters (DE42)")
        if district not in DISTRICTS:
            raise OperationError(f"--district must be one of {', '.join(DISTRICTS)}")
        if annual_sales < 0:
            raise OperationError("--annual-sales must be ≥ 0 won")
        mid = mid.ljust(15)
        if self.state.load_merchant(mid) is not None:
            raise OperationError(f"merchant {mid.strip()} already exists")
        m = Merchant(mid=mid, name=name, district=district, annual_sales=annual_sales,
                     category=category, online_mall=online_mall)
        await self._commit(MerchantAdded(m))
        return {"mid": mid.strip(), "name": name, "district": district, "annual_sales": annual_sales,
                "category": category, "online_mall": online_mall}

    async def op_terminal_add(self, *, tid: str, mid: str, security: str = "none", keys: str = "test",
                              group: str = "default") -> dict[str, Any]:
        if len(tid) != 8:
            raise OperationError("--tid must be exactly 8 characters (DE41)")
        if security not in PROFILES:
            raise OperationError(f"--security must be one of {', '.join(PROFILES)}")
        if keys not in KEY_SETS:
            raise OperationError(f"--keys must be one of {', '.join(KEY_SETS)}")
        if keys == "generated" and security not in DUKPT:
            raise OperationError("--keys generated provisions DUKPT terminals (dukpt-tdes, dukpt-aes)")
        mid = mid.ljust(15)
        if self.state.load_merchant(mid) is None:
            raise OperationError(f"merchant {mid.strip()} not found")
        if self.state.load_terminal(tid) is not None:
            raise OperationError(f"terminal {tid} already exists")
        out: dict[str, Any] = {"tid": tid, "mid": mid.strip(), "security": security}
        key = ksn = ""
        if keys == "generated":
            key, ksn, injection = await self._generated_keys(security, group)
            out.update(keys=keys, group=group, ksn=ksn, **injection)
        elif security in SECURED:
            provisioned = provision_test_keys(security, self._next_device() if security in DUKPT else 0)
            key, ksn = provisioned.key, provisioned.ksn_initial
            out["keys"] = keys
            if security in DUKPT:
                out["ksn"] = ksn
        else:
            log.warning("terminal_without_security", tid=tid, note="no PIN, no MAC: certification/legacy only")
        await self._commit(TerminalAdded(Terminal(tid=tid, mid=mid, security=security, key_lmk=key, ksn_initial=ksn)))
        return out

    async def op_merchant_update(self, *, mid: str, name: str | None = None, annual_sales: int | None = None,
                                 category: str | None = None) -> dict[str, Any]:
        """What a platform operator changes on a merchant (docs/operations.md, "Inventory"): its
        annual sales each year (the fee tier follows), its trade name, its category. Not its
        district or online-mall channel: a merchant that moves or changes channel is registered
        anew (district support and the mall's e-commerce rule hang on them). The next
        authorization at the merchant decides on the new row."""
        if name is None and annual_sales is None and category is None:
            raise OperationError("merchant update: give --name, --annual-sales or --category")
        if annual_sales is not None and annual_sales < 0:
            raise OperationError("--annual-sales must be ≥ 0 won")
        if name == "" or category == "":
            raise OperationError("--name and --category cannot be empty")
        m = self.state.load_merchant(mid.ljust(15))
        if m is None:
            raise OperationError(f"merchant {mid.strip()} not found")
        updated = replace(m, name=m.name if name is None else name,
                          annual_sales=m.annual_sales if annual_sales is None else annual_sales,
                          category=m.category if category is None else category)
        if updated != m:
            await self._commit(MerchantUpdated(updated))
        return {"mid": m.mid.strip(), "name": updated.name, "district": updated.district,
                "annual_sales": updated.annual_sales, "category": updated.category, "online_mall": updated.online_mall,
                "fee_tier": tier_for(self.rules.fees.tiers, updated.annual_sales)}

    async def op_terminal_disable(self, *, tid: str) -> dict[str, Any]:
        return await self._terminal_status(tid, "disabled")

    async def op_terminal_enable(self, *, tid: str) -> dict[str, Any]:
        return await self._terminal_status(tid, "active")

    async def _terminal_status(self, tid: str, status: str) -> dict[str, Any]:
        """Honoured by the terminal's very next message (58 while disabled, its sign-on too):
        the engine reads the status on the terminal row it already holds."""
        terminal = self.state.load_terminal(tid)
        if terminal is None:
            raise OperationError(f"terminal {tid} not found")
        if terminal.status != status:
            await self._commit(TerminalStatusSet(tid, status))
        return {"tid": tid, "mid": terminal.mid.strip(), "status": status}

    async def _generated_keys(self, profile: str, group: str) -> tuple[str, str, dict[str, str]]:
        """A production-style key set: the group's BDK is generated in the HSM and never leaves
        it; the terminal's initial key is derived there and leaves only under the KIF's ZMK."""
        if self.security is None:
            raise OperationError("--keys generated needs an HSM: pass --hsm HOST:PORT (or run the switch with --hsm)")
        kif_zmk = self.state.reader.meta("kif_zmk")
        if kif_zmk is None:
            raise OperationError("no key-injection ZMK yet: custodians form it with `eum admin kif-zmk --component …`")
        found = self.state.reader.key_group(group, profile)
        if found is None:
            bdk, kcv = await self.security.generate_bdk(profile)
            await self._commit(KeyGroupAdded(group, profile, bdk, kcv))
        else:
            bdk, kcv = found
        ksn = initial_ksn(profile, self._next_device())
        under_zmk, ikcv = await self.security.export_initial_key(profile, bdk, ksn, kif_zmk)
        return bdk, ksn, {"bdk_kcv": kcv, "initial_key_under_kif_zmk": under_zmk, "initial_key_kcv": ikcv}

    async def op_kif_zmk(self, *, components: list[str]) -> dict[str, Any]:
        """Custodians' clear components → the key-injection facility's ZMK, formed in the HSM
        and kept under the LMK. The components are never stored or logged."""
        if self.security is None:
            raise OperationError("kif-zmk needs an HSM: pass --hsm HOST:PORT (or run the switch with --hsm)")
        if len(components) < 2 or any(len(c) != 32 for c in components):
            raise OperationError("--component: at least two, each 32 hex digits")
        try:
            zmk, kcv = await self.security.form_kif_zmk([c.upper() for c in components])
        except SecurityError as exc:
            raise OperationError(f"the HSM refused the components (error {exc.error})") from None
        await self._commit(MetaSet("kif_zmk", zmk))
        return {"kif_zmk_kcv": kcv}

    # ------------------------------------------------------------------ cards

    async def op_card_issue(self, *, program: str, member: str | None = None, expiry: str | None = None,
                            pin: str | None = None, live_only: bool = False) -> dict[str, Any]:
        """`live_only`: refuse a program not launched yet at the switch's clock (config
        `launched`). Asked for by `eum replay`'s sign-ups only: the tests' population issues
        Namdong cards at 2019-07-20, before Namdong's launch (docs/replay.md, "Launch dates")."""
        prog = self.rules.programs.get(program)
        if prog is None:
            raise OperationError(f"--program must be one of {', '.join(self.rules.programs)}")
        now = self.clock.now()
        if live_only and not prog.live(now):
            raise OperationError(f"program {program} is not live on {now.astimezone(KST).date()}: "
                                 f"it launches on {prog.launched}")
        expiry = expiry or default_expiry(now)
        if len(expiry) != 4 or not expiry.isdigit() or not 1 <= int(expiry[2:]) <= 12:
            raise OperationError("--expiry must be YYMM")
        if pin is not None and (not pin.isdigit() or not 4 <= len(pin) <= 12):
            raise OperationError("--pin must be 4 to 12 digits")
        if pin is not None and self.security is None:
            raise OperationError("--pin needs an HSM: pass --hsm HOST:PORT (or run the switch with --hsm)")
        card_id = self.state.next_card_id
        self.state.card_id_used(card_id)
        pan = card_pan(prog.bins[0][0], card_id, prog.pan_length)
        member = member or f"M{card_id:09d}"
        self._owned(member, f"card {mask_pan(pan)}")
        pvv = await self.security.pvv_for(pin, pan) if pin is not None else ""  # only the PVV is kept
        await self._commit(CardIssued(CardState(card_id, pan, program, member, expiry, "active", pvv=pvv),
                                      now.isoformat()), member=member)
        return {"pan": pan, "expiry": expiry, "member": member, "program": program}

    def _card(self, pan: str) -> CardState:
        if self.cluster is not None:  # whose card first, from the store: a card another instance
            found = self.state.reader.card_by_pan(pan)  # decides must never sit in this one's memory
            if found is not None:
                self._owned(found.member, f"card {mask_pan(pan)}")
        card = self.state.load_card(pan)
        if card is None:
            raise OperationError(f"card {mask_pan(pan)} not found")
        return card

    def _owned(self, member: str, what: str) -> None:
        """With several instances, a member's cards are changed only by the instance holding the
        member's partition (switch/ops/cluster.py)."""
        cluster = self.cluster
        if cluster is None:
            return
        partition = partition_of(member)
        if not cluster.owns(partition):
            route = cluster.route(partition)
            owner = f"instance {route[0]}" if route is not None else "no instance at the moment"
            raise OperationError(f"{what}: its member's partition {partition} is held by {owner}; "
                                 "run the command against that instance's data dir")

    async def _commit(self, *changes, posting: Posting | None = None, events=(), member: str | None = None,
                      message: MessageOutcome | None = None) -> None:
        """Make the changes durable, then show them to the hot state (never before)."""
        await self.writer.submit(Commit(posting, message, tuple(changes), tuple(events),
                                        partition=partition_of(member) if member is not None else None))
        self.state.apply(tuple(changes))
        if message is not None:
            self.state.message_committed(message)

    async def op_card_charge(self, *, pan: str, amount: int, request_id: str | None = None) -> dict[str, Any]:
        """A charge through the operator's API. With `request_id` it is idempotent: the same id
        again (a retried call) answers what the first call did and charges nothing; the same id
        for another card or amount is refused (docs/host-interface.md, "Charges from a bank
        channel"). The id is kept as a message key (`@api`, id), with the charge, in one commit."""
        member = self._card(pan).member  # a card's member never changes
        await self.locks.acquire(member)  # a purchase of this member decides on the balance after it
        try:
            key = digest = None
            if request_id is not None:
                if not (1 <= len(request_id) <= 40 and request_id.isascii() and request_id.isprintable()
                        and " " not in request_id):
                    raise OperationError("--request-id must be 1..40 printable ASCII characters without spaces")
                key, digest = ("@api", request_id, ""), idempotency_digest({"t": "charge", "2": pan, "4": str(amount)})
                prior = self.state.load_message(key)
                if prior is not None:
                    if prior.digest != digest:
                        raise OperationError(f"--request-id {request_id} was used for another charge")
                    return {**prior.response, "replayed": True}
            # read under the lock: the hot state hands out a snapshot of the card, and a purchase
            # of the member may have committed while this waited
            return await self._charge(self._card(pan), pan, amount, key=key, digest=digest)
        finally:
            self.locks.release(member)

    async def _charge(self, card: CardState, pan: str, amount: int, *, key: MessageKey | None = None,
                      digest: str | None = None) -> dict[str, Any]:
        now = self.clock.now()
        limits = self.rules.limits(now)
        if amount < limits.charge_min:
            raise OperationError(f"--amount {amount:,} is below the minimum charge of {limits.charge_min:,} won")
        held = card.cash + card.cashback
        if held + amount > limits.holding_max:
            raise OperationError(f"charge would hold {held + amount:,} won, over the holding limit of "
                                 f"{limits.holding_max:,} won (room: {limits.holding_max - held:,})")
        month = month_key(now)
        charged = self.state.load_card_month_charged(card.id, month)
        if limits.charge_month_max is not None and charged + amount > limits.charge_month_max:
            raise OperationError(f"charge would exceed the monthly charge limit of {limits.charge_month_max:,} won "
                                 f"(charged this month: {charged:,})")
        if card.status != "active":
            raise OperationError(f"card {mask_pan(pan)} is {card.status}")
        pid = self.state.next_posting_id
        self.state.posting_id_used(pid)
        repay = min(amount, -card.receivable)  # a charge first settles what a clawback left owing
        cash_account, _, receivable_account = card_accounts(card.id)
        entries = tuple(e for e in (("bank_settlement", -amount), (cash_account, amount - repay),
                                    (receivable_account, repay)) if e[1])
        posting = Posting(id=pid, kind="charge", at=now.isoformat(), amount=amount, entries=entries, card_id=card.id,
                          rrn=f"{pid:012d}", detail=ChargeDetail(card.member, repay))
        cash, receivable = card.cash + amount - repay, card.receivable + repay
        events = posting_events(self.writer.ledger_id, PostingFacts(
            posting_id=pid, kind="charge", at=now.astimezone(KST).isoformat(timespec="microseconds"), amount=amount,
            entries=entries, card=CardFacts(card.program, card.member, card.pan, cash, card.cashback, receivable),
            rrn=f"{pid:012d}", extra=(("receivable_repaid", repay),)))
        result = {"pan": mask_pan(pan), "charged": amount, "receivable_repaid": repay, "cash": cash,
                  "cashback": card.cashback, "posting": pid}
        message = None if key is None else MessageOutcome(key, "charge", digest, "00", result, pid,
                                                          now.astimezone(KST).isoformat(timespec="microseconds"))
        await self._commit(CardMonthCharged(card.id, month, amount), posting=posting, events=events,
                           member=card.member, message=message)
        self.state.set_balances(card.id, cash, card.cashback, receivable)
        return result

    async def op_card_auto_charge(self, *, pan: str, threshold: int, amount: int) -> dict[str, Any]:
        """Enrol a card in auto-charge (docs/host-interface.md, "Auto-charge"): when a purchase
        finds its cash + cashback below `threshold`, `amount` is charged first, in the same
        commit. amount 0 ends it."""
        card = self._card(pan)
        limits = self.rules.limits(self.clock.now())
        if amount and not limits.charge_min <= amount <= limits.holding_max:
            raise OperationError(f"--amount must be 0 (off) or {limits.charge_min:,}..{limits.holding_max:,} won")
        if not 0 <= threshold <= limits.holding_max:
            raise OperationError(f"--threshold must be 0..{limits.holding_max:,} won")
        await self._commit(MetaSet(f"{AUTO_CHARGE_META}{card.id}", f"{threshold},{amount}"), member=card.member)
        return {"pan": mask_pan(pan), "auto_charge": {"threshold": threshold, "amount": amount} if amount else None}

    async def _set_status(self, pan: str, status: str) -> dict[str, Any]:
        card = self._card(pan)
        await self._commit(CardStatusSet(card.id, status), member=card.member)  # honoured by the very next authorization
        return {"pan": mask_pan(pan), "status": status}

    async def op_card_block(self, *, pan: str) -> dict[str, Any]:
        return await self._set_status(pan, "blocked")

    async def op_card_unblock(self, *, pan: str) -> dict[str, Any]:
        return await self._set_status(pan, "active")

    async def op_card_unblock_pin(self, *, pan: str) -> dict[str, Any]:
        card = self._card(pan)
        await self._commit(PinTriesSet(card.id, 0, False), member=card.member)
        return {"pan": mask_pan(pan), "pin": "unblocked"}


    # ------------------------------------------------------------------ pre-authorization holds

    async def op_holds_expire(self) -> dict[str, Any]:
        """Release every open hold past its expiry ([preauth] hold_days): the switch runs this
        every minute (switch/ops/runtime.py), `eum admin holds expire` on demand. Each release
        is a posting of its own, under the member's lock, as an authorization would be."""
        released, amount = 0, 0
        at = iso(self.clock.now())
        for hold_id, card_id in self.state.reader.holds_expired(at):
            card = self.state.load_card_by_id(card_id)
            if card is None or (self.cluster is not None and not self.cluster.owns(partition_of(card.member))):
                continue  # another instance's member: that instance releases it
            await self.locks.acquire(card.member)
            try:
                hold = self.state.load_posting(hold_id)  # under the lock: a completion may have closed it
                card = self.state.load_card_by_id(card_id)
                if hold is None or card is None or hold.remaining == 0:
                    continue
                amount += await self._release(hold, card, hold.remaining, "expired")
                released += 1
            finally:
                self.locks.release(card.member)
        return {"released": released, "amount": amount}

    async def _release(self, hold: PostingState, card: CardState, amount: int, reason: str) -> int:
        now = self.clock.now()
        at = iso(now)
        pid = self.state.next_posting_id
        self.state.posting_id_used(pid)
        posting = release_posting(pid, hold, card, amount, at)
        cash = card.cash + amount
        events = posting_events(self.writer.ledger_id, PostingFacts(
            posting_id=pid, kind="release", at=at, amount=amount, entries=posting.entries,
            card=CardFacts(card.program, card.member, card.pan, cash, card.cashback, card.receivable),
            merchant=hold.mid.strip() if hold.mid else None, original_posting_id=hold.id, extra=(("reason", reason),)))
        await self._commit(PostingUndone(hold.id, amount), posting=posting, events=events, member=card.member)
        self.state.set_balances(card.id, cash, card.cashback, card.receivable)
        log.info("hold_released", posting=pid, hold=hold.id, amount=amount, reason=reason, pan=mask_pan(card.pan))
        return amount


def card_pan(bin_prefix: str, card_id: int, pan_length: int) -> str:
    body_len = pan_length - 1 - len(bin_prefix)
    if card_id >= 10**body_len:
        raise OperationError(f"BIN range {bin_prefix} is exhausted")
    body = bin_prefix + f"{card_id:0{body_len}d}"
    return body + luhn_digit(body)
