"""The authorization shell: the I/O around the pure decision, in flow order.

For one financial request: terminal checks → the request's MAC through the HSM (with a
TDES-DUKPT PIN, the PIN in the same command: GQ, the PIN assumed right until it answers);
the check runs beside the steps that follow, and the commit waits for its verdict
(`_decided_while_checked`) → idempotency (a repeat is answered from the store) → the PIN
through the HSM when not checked with the MAC (G0 + EC, after the MAC's verdict) → the
member's lock → load what the decision reads → `decide` (pure,
switch/authorize/decide.py) → the response encoded and MAC'd → commit (posting, message,
changes and events in one group commit) → the changes applied to the hot state → unlock →
send. Whatever can fail (HSM, encoding, the response MAC) fails before the commit: such a
request is answered 91 or 96 and nothing of it is stored, so its repeat is processed
afresh. After the commit only sending remains.

Two decisions on the same member never overlap: a member's monthly cashback tiers span all
of their cards, and a decision must see every committed decision before it. Members are
independent, so their requests proceed in parallel and share the group commit.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Coroutine

import structlog

from switch.authorize.answer import Answerer, AnswerFailed
from switch.authorize.decide import (Decision, PinCheck, PinRefused, PinVerified, decide, iso, pin_needs_hsm,
                                     response)
from switch.authorize.hsm_client import HsmUnavailable, Sent
from switch.authorize.security import (DUKPT, HSM_FAILURE_ERRORS, SECURED, KsnGuard, Security, SecurityError, TerminalKeys,
                                      ksn_counter, same_device)
from switch.authorize.state import HotState
from switch.clock import Clock
from switch.domain import partition_of
from switch.ledger.records import Commit, KsnAccepted, MessageOutcome
from switch.ledger.store import LedgerUnavailable
from switch.ledger.writer import LedgerWriter
from switch.rules.policy import Rules
from switch.wire.codec import Dialect, mac_location, mac_span, response_fields
from switch.wire.messages import KIND_NETWORK, KIND_REVERSAL, Rc, Request

log = structlog.get_logger()

Sign = tuple[TerminalKeys, str]
PIN_ASSUMED = PinVerified(True)  # what a request is decided on while its GQ is out (`_decided_while_checked`)


@dataclass(slots=True)
class Outcome:
    """What the server writes back (`payload`, encoded and MAC'd) and what the canonical
    log line says."""

    response: dict[str, str]
    payload: bytes | None
    posting_id: int | None = None
    fee: int = 0
    cashback: int = 0
    note: str = ""
    replayed: bool = False
    stored: bool = False


COMMAND_DISABLED = "68"
KSN_SIZE = {"dukpt-tdes": 20, "dukpt-aes": 24}  # DE53's hex digits by profile  # payShield: the command is disabled (or unknown to this HSM)


class Check:
    """A request's security check sent to the HSM before the request is decided
    (`_decided_while_checked`): its verdict, awaited once and kept, is (the refusal or None,
    the PIN's verdict or None when no PIN was checked). Refusals: 63 (the MAC does not
    verify), 91 (no HSM could check it), as when the check ran first."""

    __slots__ = ("_verdict", "_result")

    def __init__(self, verdict: Coroutine[Any, Any, tuple[tuple[Rc, str] | None, PinCheck]]) -> None:
        self._verdict = verdict  # awaited by the first `result`
        self._result: tuple[tuple[Rc, str] | None, PinCheck] | None = None

    async def result(self) -> tuple[tuple[Rc, str] | None, PinCheck]:
        if self._result is None:
            self._result = await self._verdict
        return self._result

    def abandon(self) -> None:
        """The request ended without its verdict (a bug, a cancel): the reply is still taken,
        so its in-flight slot is given back and no timeout goes unread."""
        if self._result is None:
            asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            await self.result()
        except Exception:  # noqa: BLE001 - nobody waits for this verdict any more
            pass


class _Refused(Exception):
    """A request the security checks refuse before anything is stored."""

    def __init__(self, rc: Rc, note: str) -> None:
        super().__init__(note)
        self.rc = rc
        self.note = note


def _pin_refused(code: str) -> PinRefused:
    """An HSM error on a PIN check that is about the data (not in HSM_FAILURE_ERRORS, which
    are answered 91 with nothing stored), for G0 + EC and GQ alike: a block that does not
    decode (20, 23, 24) is an incorrect PIN (55), any other error a key fault (63)."""
    rc = Rc.INCORRECT_PIN if code in ("20", "23", "24") else Rc.SECURITY_VIOLATION
    return PinRefused(rc, f"PIN: HSM error {code}")


class MemberLocks:
    """One decision at a time per member (or per PAN of an unknown card), first come first
    served. An uncontended acquire creates nothing (the key maps to None); a waiter queues a
    future and is handed the lock by release."""

    def __init__(self) -> None:
        self._held: dict[str, list[asyncio.Future[None]] | None] = {}

    def acquire_now(self, key: str) -> bool:
        """`acquire`'s uncontended case, in the caller's step (no coroutine): True, the lock
        is held; False, it is taken (then `await acquire`, which queues)."""
        if key not in self._held:
            self._held[key] = None
            return True
        return False

    async def acquire(self, key: str) -> None:
        if key not in self._held:
            self._held[key] = None
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._held[key]
        if waiters is None:
            self._held[key] = [fut]
        else:
            waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # handed the lock, then cancelled: pass it on
                self.release(key)
            raise

    def release(self, key: str) -> None:
        waiters = self._held[key]
        while waiters:
            fut = waiters.pop(0)
            if not fut.done():  # the lock passes to the first waiter still waiting
                fut.set_result(None)
                return
        del self._held[key]

    def __len__(self) -> int:
        return len(self._held)


class Pending:
    """Message keys being decided. A request with the same key (a repeat that overtook its
    original) or a reversal of it waits until that decision is over; nothing is created
    for a key nobody waits on."""

    def __init__(self) -> None:
        self._keys: dict[tuple[str, str, str], list[asyncio.Future[None]] | None] = {}

    def __contains__(self, key: tuple[str, str, str]) -> bool:
        return key in self._keys

    def start(self, key: tuple[str, str, str]) -> None:
        self._keys[key] = None

    def finish(self, key: tuple[str, str, str]) -> None:
        for fut in self._keys.pop(key) or ():
            if not fut.done():
                fut.set_result(None)

    async def wait(self, key: tuple[str, str, str]) -> None:
        """Return once no decision of `key` is in progress."""
        while key in self._keys:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            waiters = self._keys[key]
            if waiters is None:
                self._keys[key] = [fut]
            else:
                waiters.append(fut)
            await fut


class Engine:
    def __init__(self, *, rules: Rules, state: HotState, writer: LedgerWriter, clock: Clock,
                 security: Security | None = None, locks: MemberLocks | None = None) -> None:
        self.rules = rules
        self.state = state
        self.writer = writer
        self.clock = clock
        self.security = security
        self.locks = locks if locks is not None else MemberLocks()  # shared: may be empty
        self.ksn_guard = KsnGuard()
        self.signed_on: set[str] = set()
        self.signons: Any = None  # a cluster's shared sign-ons (switch/ledger/leases.py, SignOns)
        self.pending = Pending()  # keys being decided

    # ------------------------------------------------------------------ entry point

    async def handle(self, req: Request, fields: dict[str, str], raw: bytes, a: Answerer, *,
                     trusted: bool = False) -> Outcome:
        """`a` builds the answer's bytes in the connection's dialect (switch/authorize/answer.py).
        trusted: sent by another instance of the cluster, which checked the terminal's sign-on
        (switch/ops/cluster.py)."""
        if req.kind is KIND_NETWORK:
            rc, note = self._network(req)
            if self.signons is not None and rc is Rc.APPROVED and req.network_code in ("001", "002"):
                await self.signons.record(req.terminal, req.network_code == "001")
            return await self._unstored(a, req, fields, rc, note)
        terminal = self.state.load_terminal(req.terminal)
        if terminal is None or (req.terminal not in self.signed_on and not trusted
                                and not await self.signed_on_elsewhere(req.terminal)):
            note = "terminal unknown" if terminal is None else "terminal not signed on"
            return await self._unstored(a, req, fields, Rc.TERMINAL_NOT_PERMITTED, note)
        if terminal.status != "active":  # eum admin terminal disable: the cached row says so
            return await self._unstored(a, req, fields, Rc.TERMINAL_NOT_PERMITTED, "terminal disabled")
        if req.merchant != terminal.mid:
            return await self._unstored(a, req, fields, Rc.TERMINAL_NOT_PERMITTED, "DE42 is not the terminal's merchant")
        sign = None
        if terminal.security in SECURED:
            keys = TerminalKeys(terminal.security, terminal.key_lmk, terminal.ksn_initial)
            try:
                covered, mac = self._mac_input(req, raw, keys, a.dialect)
            except _Refused as exc:
                return await self._unstored(a, req, fields, exc.rc, exc.note)
            sign = (keys, req.ksn)
            security = self.security
            if not req.pin_block:  # nothing but the commit waits for the MAC's verdict
                check = Check(self._mac_verdict(security.send_verify_mac(keys, req.ksn, covered, mac)))
                return await self._decided_while_checked(a, req, fields, terminal, sign, check, None)
            card = self._combined_card(req, keys)
            if card is not None:  # GQ: the PIN with the MAC, checked while the PIN is assumed right
                sent = security.send_verify_pin_and_mac(keys, req.ksn, req.pin_block, req.pan, card.pvv, covered, mac)
                check = Check(self._gq_verdict(sent, req, keys, card.pvv, covered, mac))
                return await self._decided_while_checked(a, req, fields, terminal, sign, check, PIN_ASSUMED)
            refused = (await self._mac_verdict(security.send_verify_mac(keys, req.ksn, covered, mac)))[0]
            if refused is not None:
                return await self._unstored(a, req, fields, *refused)
        if req.pin_block and terminal.security not in DUKPT:
            return await self._unstored(a, req, fields, Rc.NOT_PERMITTED, "PIN from a terminal whose profile "
                                        f"({terminal.security}) carries no PIN key", sign)
        return await self._financial(a, req, fields, terminal, sign)

    async def signed_on_elsewhere(self, tid: str) -> bool:
        """Signed on at another instance of the cluster (then here too, from now on)."""
        if self.signons is None or not await self.signons.holds(tid):
            return False
        self.signed_on.add(tid)
        return True

    async def _decided_while_checked(self, a: Answerer, req: Request, fields: dict[str, str], terminal, sign: Sign,
                                     check: Check, assumed: PinCheck) -> Outcome:
        """A secured request whose check the HSM answers while the request is decided and its
        response built: the check (the MAC; with GQ, the PIN too) and the response's MAC leave
        for the HSM in one write and come back in one read (one round trip, not two). The check
        was queued first, in this turn (HsmPool.send); the commit waits for its verdict
        (`_decide_and_commit`), so nothing is stored for a request it refuses, and a PIN
        decided as right (`assumed`) that the HSM finds wrong is decided again with the HSM's
        verdict, and MAC'd again. A refusal overrides whatever was decided meanwhile (a replay,
        a decline): the answer is the refusal, unMAC'd, as without the overlap
        (docs/host-interface.md, "The MAC check and the response MAC in one round trip")."""
        try:
            outcome = await self._financial(a, req, fields, terminal, sign, assumed, check=check)
        except BaseException:
            check.abandon()
            raise
        refused = (await check.result())[0]
        if refused is not None:
            return await self._unstored(a, req, fields, *refused)
        return outcome

    async def _financial(self, a: Answerer, req: Request, fields: dict[str, str], terminal, sign: Sign | None,
                         pin: PinCheck = None, *, check: Check | None = None) -> Outcome:
        """pin: the PIN's verdict when the HSM gave it with the request's MAC (GQ), or the
        assumption a check still running will confirm. check: the request's check when it runs
        beside the decision (`_decided_while_checked`)."""
        key = req.key  # a property: built once here
        if key in self.pending:  # the same key in progress: its outcome first
            await self.pending.wait(key)
        prior = self.state.load_message(key)
        if prior is not None:
            return await self._replay(a, req, fields, prior, sign)
        counter = None
        if terminal.security in DUKPT:  # a new message: its KSN must not have been used before
            counter = ksn_counter(terminal.security, req.ksn)
            if not self.ksn_guard.claim(terminal.tid, counter, floor=terminal.ksn_max):
                return await self._unstored(a, req, fields, Rc.SECURITY_VIOLATION, "KSN counter used before", sign)
        self.pending.start(key)
        try:
            outcome = await self._new(a, req, fields, terminal, sign, counter, pin, check)
        finally:
            self.pending.finish(key)
        if counter is not None and not outcome.stored:  # nothing stored: the KSN may come again (a repeat)
            self.ksn_guard.release(terminal.tid, counter)
        return outcome

    async def _new(self, a: Answerer, req: Request, fields: dict[str, str], terminal, sign: Sign | None,
                   counter: int | None, checked: PinCheck = None, check: Check | None = None) -> Outcome:
        card = self.state.load_card_for(req.pan, self.clock.now()) if req.pan else None
        pin = None
        if checked is not None and pin_needs_hsm(card):  # verified with the MAC (GQ), for this card
            pin = checked
        elif req.pin_block and req.kind is not KIND_REVERSAL and pin_needs_hsm(card):
            keys = TerminalKeys(terminal.security, terminal.key_lmk, terminal.ksn_initial)
            refused, pin = await self._pin_verdict(keys, req, card.pvv)
            if refused is not None:
                return await self._unstored(a, req, fields, *refused, sign)
        if req.kind is KIND_REVERSAL:  # reverse only what is settled
            original_key = req.original_key
            if original_key in self.pending:
                await self.pending.wait(original_key)
        lock = card.member if card is not None else "pan:" + req.pan
        if not self.locks.acquire_now(lock):  # uncontended: no coroutine
            await self.locks.acquire(lock)
        try:
            return await self._decide_and_commit(a, req, fields, sign, counter, pin,
                                                 card.member if card is not None else None, check)
        finally:
            self.locks.release(lock)

    async def _decide_and_commit(self, a: Answerer, req: Request, fields: dict[str, str], sign: Sign | None,
                                 counter: int | None, pin, member: str | None = None,
                                 check: Check | None = None) -> Outcome:
        """member: the card's, whose partition fences the commit when the writer is one of a
        cluster's (switch/ops/cluster.py); not computed otherwise. check: the request's check
        still running (`_decided_while_checked`): the commit waits for it; a refusal commits
        nothing (the caller answers the refusal), and a PIN verdict other than the one decided
        on (`pin`, assumed right) is decided again."""
        state = self.state
        epoch = state.epoch
        now = self.clock.now()
        state.prefetch(req, now)
        at = iso(now)  # the posting's time and the message row's: formatted once
        writer = self.writer
        partition = partition_of(member) if member is not None and writer.partitioned else None
        writer.expect()  # a group forming now may wait for this unit while its response is MACed
        while True:
            decision = decide(req, fields, state, self.rules, now, pin=pin, at=at)
            if decision.posting is not None:
                state.posting_id_used(decision.posting.id)
            stored = response_fields(decision.response)
            try:
                payload = a.encode_unsigned(stored) if sign is None else await a.encode(stored, sign)
            except AnswerFailed as failed:
                writer.withdraw()
                return await self._unstored(a, req, fields, failed.rc, failed.note, None)
            except BaseException:
                writer.withdraw()
                raise
            if check is None:
                break
            refused, verdict = await check.result()
            check = None
            if refused is not None:  # nothing of this is stored
                writer.withdraw()
                self._unused(decision)
                return Outcome(stored, None, note="refused by its check")
            if verdict is None or pin is None or verdict == pin:
                break
            self._unused(decision)  # decided on a PIN assumed right, which the HSM did not verify
            pin = verdict
        posting_id = decision.posting.id if decision.posting is not None else None
        message = MessageOutcome(req.key, req.base_mti, req.digest, stored["39"], stored, posting_id, at)
        changes = decision.changes if counter is None else decision.changes + (KsnAccepted(req.terminal, counter),)
        if state.epoch != epoch:  # a commit failed meanwhile: this was decided on state now void
            writer.withdraw()
            return await self._unstored(a, req, fields, Rc.SYSTEM_ERROR, "ledger unavailable", None)
        try:
            await writer.submit(Commit(decision.posting, message, changes, decision.events, partition=partition,
                                       before=decision.before), expected=True)
        except LedgerUnavailable:
            return await self._unstored(a, req, fields, Rc.SYSTEM_ERROR, "ledger unavailable", None)
        self._apply(decision, message)
        return Outcome(stored, payload, posting_id=posting_id, fee=decision.fee, cashback=decision.cashback,
                       note=decision.note, stored=True)

    def _unused(self, decision: Decision) -> None:
        """A decision dropped before its commit gives its posting id back when no later one was
        taken meanwhile (else the id is left unused: DE37's ids are unique, not dense)."""
        state = self.state
        if decision.posting is not None and state.next_posting_id == decision.posting.id + 1:
            state.next_posting_id = decision.posting.id

    def _apply(self, decision: Decision, message: MessageOutcome) -> None:
        state = self.state
        state.apply(decision.changes)
        for card in decision.cards:
            state.set_balances(card.card_id, card.cash, card.cashback, card.receivable)
        for posting in decision.postings:
            state.remember_posting(posting)
        state.message_committed(message)

    async def _replay(self, a: Answerer, req: Request, fields: dict[str, str], prior: MessageOutcome,
                      sign: Sign | None) -> Outcome:
        if prior.digest != req.digest or prior.mti != req.base_mti:
            return await self._unstored(a, req, fields, Rc.DUPLICATE, "same key, different content", sign)
        try:
            payload = await a.encode(prior.response, sign)
        except AnswerFailed as failed:
            return await self._unstored(a, req, fields, failed.rc, failed.note, None)
        return Outcome(dict(prior.response), payload, posting_id=prior.posting_id, replayed=True, note="repeat",
                       stored=True)

    async def _unstored(self, a: Answerer, req: Request, fields: dict[str, str], rc: Rc, note: str,
                        sign: Sign | None = None) -> Outcome:
        """An answer nothing is stored for (a decline before the message was taken, or a
        failure before its commit): a repeat of it is processed afresh."""
        out = response_fields(response(req, fields, rc))
        payload = await a.encode_best_effort(out, sign)
        return Outcome(out, payload, note=note)

    # ------------------------------------------------------------------ security (through the HSM)

    def _mac_input(self, req: Request, raw: bytes, keys: TerminalKeys, dialect: Dialect) -> tuple[bytes, str]:
        """A secured terminal's request must carry its KSN (DE53) and a MAC (DE64, or the
        dialect's MAC field, in its form) over every byte of the message before the MAC's data
        (codec `mac_span`): (the bytes the MAC covers, the MAC), or _Refused without asking the
        HSM."""
        profile, ksn = keys.profile, req.ksn
        if not req.mac or len(ksn) != KSN_SIZE.get(profile, 0):
            field_no = "64" if not req.mac else "53"
            raise _Refused(Rc.FORMAT_ERROR, f"DE{field_no} required by the terminal's {profile} profile")
        if profile in DUKPT and not same_device(profile, ksn, keys.ksn_initial):
            raise _Refused(Rc.SECURITY_VIOLATION, "KSN of another device")
        span = mac_span(raw, dialect)
        if span is None or span[1] != req.mac.upper():
            raise _Refused(Rc.FORMAT_ERROR, f"{mac_location(dialect)} must be the last field")
        if self.security is None:
            raise _Refused(Rc.HSM_UNAVAILABLE, "no HSM configured")
        return span

    def _combined_card(self, req: Request, keys: TerminalKeys):
        """The card whose PIN the HSM checks with the request's MAC (GQ), or None: a TDES-DUKPT
        request with a PIN block, not a reversal, for a card the PIN is worth checking for."""
        security = self.security
        if (keys.profile != "dukpt-tdes" or not req.pin_block or req.kind is KIND_REVERSAL or not req.pan
                or security is None or not security.combined_pin_check):
            return None
        card = self.state.load_card_for(req.pan, self.clock.now())
        return card if pin_needs_hsm(card) else None

    async def _mac_verdict(self, sent: Sent) -> tuple[tuple[Rc, str] | None, PinCheck]:
        """The HSM's verdict on a request's MAC (GW 11, M8, Z2): (None, None) when it verified,
        else (the refusal, None)."""
        try:
            ok = await self.security.mac_verified(sent)
        except HsmUnavailable:
            return (Rc.HSM_UNAVAILABLE, "HSM unavailable"), None
        except SecurityError as exc:
            rc = Rc.HSM_UNAVAILABLE if exc.error in HSM_FAILURE_ERRORS else Rc.SECURITY_VIOLATION
            return (rc, f"MAC: HSM error {exc.error}"), None  # 91: the HSM could not check it
        return (None if ok else (Rc.SECURITY_VIOLATION, "MAC does not verify")), None

    async def _gq_verdict(self, sent: Sent, req: Request, keys: TerminalKeys, pvv: str, covered: bytes, mac: str
                          ) -> tuple[tuple[Rc, str] | None, PinCheck]:
        """The HSM's verdict on a request's MAC and PIN in one GQ: (None, the PIN's verdict)
        when the MAC verified, else (the refusal, None). An HSM without GQ (68) is asked the
        two-command way (GW, then G0 and EC), now and from then on."""
        security = self.security
        try:
            pin_code, mac_code = await security.pin_and_mac_verified(sent)
        except HsmUnavailable:
            return (Rc.HSM_UNAVAILABLE, "HSM unavailable"), None
        except SecurityError as exc:
            if exc.error == COMMAND_DISABLED:
                security.gq_disabled()
                log.warning("hsm_gq_disabled", error=exc.error, pin_verify="g0-ec")
                return await self._gw_g0_ec_verdict(req, keys, pvv, covered, mac)
            rc = Rc.HSM_UNAVAILABLE if exc.error in HSM_FAILURE_ERRORS else Rc.SECURITY_VIOLATION
            return (rc, f"MAC and PIN: HSM error {exc.error}"), None  # "MAC…": switch/cert/journal.py
        if mac_code != "00":
            return (Rc.SECURITY_VIOLATION, "MAC does not verify"), None
        if pin_code in ("00", "01"):  # the PIN's code of the GQ, mapped as G0 + EC's are (`_new`)
            return None, PinVerified(pin_code == "00")
        if pin_code in HSM_FAILURE_ERRORS:  # the MAC verified; the HSM could not check the PIN
            return (Rc.HSM_UNAVAILABLE, f"PIN: HSM error {pin_code}"), None
        return None, _pin_refused(pin_code)

    async def _gw_g0_ec_verdict(self, req: Request, keys: TerminalKeys, pvv: str, covered: bytes, mac: str
                                ) -> tuple[tuple[Rc, str] | None, PinCheck]:
        security = self.security
        refused = (await self._mac_verdict(security.send_verify_mac(keys, req.ksn, covered, mac)))[0]
        if refused is not None:
            return refused, None
        return await self._pin_verdict(keys, req, pvv)

    async def _pin_verdict(self, keys: TerminalKeys, req: Request, pvv: str) -> tuple[tuple[Rc, str] | None, PinCheck]:
        """The PIN the two-command way (G0 or Z0, then EC), after the MAC verified: (None, the
        PIN's verdict), or (91, None) when no HSM could check it."""
        try:
            return None, PinVerified(await self.security.verify_pin(keys, req.ksn, req.pin_block, req.pan, pvv))
        except HsmUnavailable:
            return (Rc.HSM_UNAVAILABLE, "HSM unavailable"), None
        except SecurityError as exc:
            if exc.error in HSM_FAILURE_ERRORS:  # the HSM could not check it: as if none answered
                return (Rc.HSM_UNAVAILABLE, f"PIN: HSM error {exc.error}"), None
            return None, _pin_refused(exc.error)

    # ------------------------------------------------------------------ network

    def _network(self, req: Request) -> tuple[Rc, str]:
        terminal = self.state.load_terminal(req.terminal)
        if terminal is None:
            return Rc.TERMINAL_NOT_PERMITTED, "terminal unknown"
        if terminal.status != "active":  # a disabled terminal cannot sign on either
            return Rc.TERMINAL_NOT_PERMITTED, "terminal disabled"
        if req.network_code == "001":
            self.signed_on.add(req.terminal)
        elif req.network_code == "002":
            self.signed_on.discard(req.terminal)
        elif req.terminal not in self.signed_on:
            return Rc.TERMINAL_NOT_PERMITTED, "echo before sign-on"
        return Rc.APPROVED, ""
