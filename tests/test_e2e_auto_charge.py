"""Auto-charge (docs/host-interface.md, "Auto-charge"): a purchase that finds the card below its
threshold charges the card's amount first, in the purchase's own commit — so exactly one
charge per trigger: a repeat of the purchase replays it, a reversal of the purchase leaves
the top-up (which was real) and triggers nothing, and a purchase declined after the top-up
leaves no top-up either (the 2020–2022 duplicate charges in the news came from charging
apart from the purchase). Over real TCP, on both stores."""

from __future__ import annotations

import json

import pytest

from conftest import LAUNCH, card_id, postings, provision, query, start_switch
from switch.clock import FixedClock
from switch.ledger.audit import verify
from switch.wire.messages import Balances, decode_balances
from terminal_sim.terminal import Terminal

pytestmark = pytest.mark.both_stores


def charges_of(db, pan: str) -> list[dict]:
    cid = card_id(db, pan)
    return [p for p in postings(db, "charge") if p["card_id"] == cid]


async def test_one_top_up_per_trigger_through_repeat_and_reversal(tmp_path):
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH)) as env:
        await provision(env)  # the Namdong card holds 100,000 cash (one admin charge)
        db = env.core.db_path
        pan = env.cards["namdong"]["pan"]
        enrolled = await env.op("card-auto-charge", pan=pan, threshold=50_000, amount=100_000)
        assert enrolled["auto_charge"] == {"threshold": 50_000, "amount": 100_000}
        client, term = await env.signed_on()
        first = await client.request(term.purchase(pan, 60_000))  # 100,000 >= 50,000: no top-up
        assert decode_balances(first["54"]) == Balances(40_000, 4_500)
        assert len(charges_of(db, pan)) == 1

        trigger = term.purchase(pan, 10_000)  # 44,500 < 50,000: 100,000 first, then the purchase
        answer = await client.request(trigger)
        assert (answer["39"], decode_balances(answer["54"])) == ("00", Balances(134_500, 750))
        auto = charges_of(db, pan)[-1]
        assert (len(charges_of(db, pan)), auto["amount"], auto["tid"], auto["id"] + 1) == \
            (2, 100_000, "T0000001", postings(db, "purchase")[-1]["id"])
        (event,) = [json.loads(p) for p, in query(db, "SELECT payload FROM outbox WHERE posting_id = ?", auto["id"])]
        assert (event["type"], event["auto_charge"], event["balances_after"]) == \
            ("charge", True, {"cash": 140_000, "cashback": 4_500, "receivable": 0})

        assert await client.request(Terminal.repeat(trigger)) == answer  # replayed: no second top-up
        reversed_ = await client.request(term.reversal(trigger))
        assert decode_balances(reversed_["54"]) == Balances(140_000, 4_500)  # the top-up stays
        after = await client.request(term.purchase(pan, 1_000))  # 144,500: above the threshold
        await client.close()
        assert after["39"] == "00"
        assert len(charges_of(db, pan)) == 2  # the admin charge and exactly one top-up
        assert query(db, "SELECT charged FROM card_months WHERE card_id = ?", card_id(db, pan)) == [(200_000,)]
        assert verify(db).ok


async def test_a_purchase_declined_after_its_top_up_leaves_no_top_up(tmp_path):
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH)) as env:
        await provision(env)
        db = env.core.db_path
        pan = env.cards["incheon"]["pan"]
        await env.op("card-auto-charge", pan=pan, threshold=200_000, amount=10_000)
        client, term = await env.signed_on("T0000002", "YEONSU01")
        short = await client.request(term.purchase(pan, 150_000))  # 100,000 + 10,000 < 150,000
        assert short["39"] == "51"
        assert len(charges_of(db, pan)) == 1  # only provision's admin charge
        ok = await client.request(term.purchase(pan, 105_000))  # 100,000 + 10,000 covers it
        assert (ok["39"], decode_balances(ok["54"])) == ("00", Balances(5_000, 6_300))
        await env.op("card-auto-charge", pan=pan, threshold=200_000, amount=0)  # off
        off = await client.request(term.purchase(pan, 10_000))
        await client.close()
        assert off["39"] == "00"  # 5,000 + 6,300 cashback: enough, and no top-up
        assert [c["amount"] for c in charges_of(db, pan)] == [100_000, 10_000]
        assert verify(db).ok


async def test_auto_charge_refuses_an_amount_outside_the_charge_limits(tmp_path):
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH)) as env:
        await provision(env)
        pan = env.cards["namdong"]["pan"]
        with pytest.raises(ValueError, match=r"^--amount must be 0 \(off\) or 10,000\.\.2,000,000 won$"):
            await env.op("card-auto-charge", pan=pan, threshold=1_000, amount=5_000)
