"""Certification mode's start: the matrix provisioned into the data dir, then the journal on.

Idempotent: every start creates what is missing (the merchant, the certified terminals, the
cards) and puts each card back in the state that produces its code: charged up to its
`charge_to`, blocked or active, PIN tries reset, the day's spend made. All of it goes through
the switch's own operations (switch/ops/operations.py) and, for the day's spend, through its
own message processing: real state, nothing written behind the switch's back.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import structlog

from switch.cert.journal import JOURNAL_DIR, CertJournal
from switch.cert.matrix import SECURED_PROFILES, CertCard, CertConfig
from switch.domain import KST, day_key, mask_pan
from switch.ledger.records import CardPvvSet, Commit
from switch.ops.operations import OperationError, card_pan
from switch.wire.codec import decode_fields, encode_fields
from switch.wire.framing import Frame, FrameBuffer

log = structlog.get_logger()
TERMINALS_FILE = "terminals.json"


class CertSetupError(ValueError):
    """The data dir cannot hold the certification population: one line for the operator."""


async def start_certification(core: Any, server: Any, config: CertConfig, terminals: dict[str, str]) -> list[dict]:
    """Provision (idempotently), write `<data-dir>/cert/terminals.json`, open a journal session
    and turn the Processor's cert hook on. terminals: TID → security profile. Returns what a
    vendor needs per terminal (TID, merchant, profile, initial KSN)."""
    if core.ops.security is None and any(p in SECURED_PROFILES for p in terminals.values()):
        raise CertSetupError("a secured terminal profile needs an HSM: start with --hsm HOST:PORT (eum hsm)")
    provisioned = await provision(core, server.processor, config, terminals)
    data_dir = Path(server.config.data_dir)
    (data_dir / JOURNAL_DIR).mkdir(parents=True, exist_ok=True)
    (data_dir / JOURNAL_DIR / TERMINALS_FILE).write_text(json.dumps(provisioned, indent=1) + "\n")
    journal = CertJournal(data_dir, terminals, hold_pans=frozenset({config.card(config.timeout.card).pan}),
                          hold_ms=config.timeout.hold_ms)
    journal.begin_session()
    server.processor.cert = journal
    log.info("cert_ready", terminals=provisioned, journal=str(data_dir / JOURNAL_DIR))
    return provisioned


async def provision(core: Any, processor: Any, config: CertConfig, terminals: dict[str, str]) -> list[dict]:
    ops, state = core.ops, core.state
    merchant = config.merchant
    if state.load_merchant(merchant.mid.ljust(15)) is None:
        await ops.op_merchant_add(mid=merchant.mid, name=merchant.name, district=merchant.district,
                                  annual_sales=merchant.annual_sales, category=merchant.category)
    out = [await _terminal(ops, state, tid, merchant.mid, profile) for tid, profile in terminals.items()]
    for card in config.cards.values():
        if card.issued:
            await _card(core, card)
    spenders = [card for card in config.cards.values() if card.spent_today]
    if spenders:
        await _terminal(ops, state, config.provisioning_terminal, merchant.mid, "none")
        for card in spenders:
            await _spend_today(core, processor, config, card)
    return out


async def _terminal(ops: Any, state: Any, tid: str, mid: str, profile: str) -> dict[str, str]:
    found = state.load_terminal(tid)
    if found is None:
        added = await ops.op_terminal_add(tid=tid, mid=mid, security=profile, keys="test")
        return {"tid": tid, "mid": mid, "security": profile, "ksn": added.get("ksn", "")}
    if found.mid.strip() != mid or found.security != profile:
        raise CertSetupError(f"terminal {tid} exists as {found.security} at {found.mid.strip()}, not {profile} at "
                             f"{mid}: certify it under another TID or in a data dir of its own")
    return {"tid": tid, "mid": mid, "security": profile, "ksn": found.ksn_initial}


async def _card(core: Any, spec: CertCard) -> None:
    ops, state = core.ops, core.state
    card = state.load_card(spec.pan)
    if card is None:
        program = core.rules.programs[spec.program]
        next_pan = card_pan(program.bins[0][0], state.next_card_id, program.pan_length)
        if next_pan != spec.pan:
            raise CertSetupError(f"the next {spec.program} card would be {mask_pan(next_pan)}, not the matrix's "
                                 f"{spec.masked} ({spec.name}): eum cert serve needs a data dir of its own "
                                 "(empty, or made by eum cert serve)")
        pin = spec.pin if ops.security is not None else None
        await ops.op_card_issue(program=spec.program, expiry=spec.expiry, pin=pin)
        card = state.load_card(spec.pan)
    if spec.pin is not None and not card.pvv and ops.security is not None:  # issued before an HSM was given
        change = CardPvvSet(card.id, await ops.security.pvv_for(spec.pin, spec.pan))
        await core.writer.submit(Commit(changes=(change,)))
        state.apply((change,))
    if card.status != "active" and spec.status == "active":
        await ops.op_card_unblock(pan=spec.pan)
    card = state.load_card(spec.pan)
    if card.status == "active" and card.cash + card.cashback < spec.charge_to:
        amount = max(spec.charge_to - card.cash - card.cashback, core.rules.limits(core.engine.clock.now()).charge_min)
        try:
            await ops.op_card_charge(pan=spec.pan, amount=amount)
        except OperationError as exc:  # the monthly charge cap, say: the cases that need it will say so
            log.warning("cert_charge_refused", card=spec.name, pan=spec.masked, reason=str(exc))
    if spec.status == "blocked" and card.status != "blocked":
        await ops.op_card_block(pan=spec.pan)
    if card.pin_tries or card.pin_blocked:
        await ops.op_card_unblock_pin(pan=spec.pan)


async def _spend_today(core: Any, processor: Any, config: CertConfig, spec: CertCard) -> None:
    """The card's spend of the day made real: the provisioning terminal buys what is missing,
    through the switch's own message processing (sign-on, then a 0200)."""
    now = core.engine.clock.now()
    card = core.state.load_card(spec.pan)
    missing = spec.spent_today - core.state.load_card_day(card.id, day_key(now))
    if missing <= 0:
        return
    tid, mid = config.provisioning_terminal, config.merchant.mid.ljust(15)
    stan = int(time.time()) % 999_990  # a new STAN and DE7 at every start
    utc, local = datetime.now(timezone.utc), now.astimezone(KST)
    head = {"7": utc.strftime("%m%d%H%M%S"), "41": tid}
    sign_on = {"t": "0800", **head, "11": f"{stan + 1:06d}", "70": "001"}
    purchase = {"t": "0200", **head, "11": f"{stan + 2:06d}", "2": spec.pan, "3": "000000", "4": f"{missing:012d}",
                "12": local.strftime("%H%M%S"), "13": local.strftime("%m%d"), "14": spec.expiry, "22": "051",
                "42": mid, "49": "410"}
    for fields in (sign_on, purchase):
        answer = await _exchange(processor, fields)
        if answer.get("39") != "00":
            raise CertSetupError(f"the {spec.name} card's spend of the day could not be made: MTI {fields['t']} "
                                 f"answered {answer.get('39')}")


async def _exchange(processor: Any, fields: dict[str, str]) -> dict[str, str]:
    data = await processor.process(Frame(encode_fields(fields, processor.dialect)), "cert-provisioning")
    buffer = FrameBuffer(processor.dialect.framing)
    buffer.receive_data(data or b"")
    frame = buffer.next_frame()
    return decode_fields(frame.payload, processor.dialect) if frame is not None else {}
