"""Charges on the wire (docs/host-interface.md, "Charges from a bank channel"): a member's bank
top-up arrives as a 0200 with processing code 21 from a terminal of a bank channel (a
merchant of category bank_channel), with the limits of `eum admin card charge` — the minimum
charge, the holding limit, the month's charge cap — and its reversal gives the bank its money
back without ever taking cashback. Over real TCP, on both stores."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from conftest import LAUNCH, account, card_id, postings, provision, query, start_switch
from switch.clock import FixedClock
from switch.ledger.audit import verify
from switch.ledger.reports import Period, build_report
from switch.ledger.store import locate
from switch.wire.messages import Balances, decode_balances
from terminal_sim.terminal import Terminal

pytestmark = pytest.mark.both_stores

BANK_TID = "BANK0001"


async def with_bank(env) -> tuple:
    """A bank channel (merchant BANKCH01, category bank_channel) and its terminal, signed on."""
    await env.op("merchant-add", mid="BANKCH01", name="Shinhan top-up", district="namdong", annual_sales=0,
                 category="bank_channel")
    await env.op("terminal-add", tid=BANK_TID, mid="BANKCH01")
    return await env.signed_on(BANK_TID, "BANKCH01")


def charge(term: Terminal, pan: str, amount: int) -> dict[str, str]:
    return {**term.purchase(pan, amount), "3": "210000"}


async def test_a_bank_top_up_on_the_wire_is_a_charge_and_its_reversal_gives_it_back(tmp_path):
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH)) as env:
        await provision(env)
        db = env.core.db_path
        client, bank = await with_bank(env)
        pan = env.cards["namdong"]["pan"]
        cid = card_id(db, pan)
        top_up = charge(bank, pan, 50_000)
        resp = await client.request(top_up)
        assert (resp["t"], resp["39"], decode_balances(resp["54"])) == ("0210", "00", Balances(150_000, 0))
        again = await client.request(Terminal.repeat(top_up))
        assert again == resp  # the repeat replays the stored answer: one charge
        posted = postings(db, "charge")[-1]
        assert (posted["amount"], posted["tid"], posted["mid"], posted["rrn"]) == (50_000, BANK_TID, None, resp["37"])
        assert query(db, "SELECT charged FROM card_months WHERE card_id=?", cid) == [(150_000,)]
        (event,) = [json.loads(p) for p, in query(db, "SELECT payload FROM outbox WHERE posting_id=?", posted["id"])]
        assert (event["type"], event["amount"], event["terminal"], event["receivable_repaid"]) == \
            ("charge", 50_000, BANK_TID, 0)

        reversed_ = await client.request(bank.reversal(top_up))
        assert (reversed_["t"], reversed_["39"], decode_balances(reversed_["54"])) == ("0410", "00", Balances(100_000, 0))
        assert (await client.request(bank.reversal(top_up)))["39"] == "00"  # a second reversal: nothing more
        (undo,) = postings(db, "charge_reversal")
        assert (undo["amount"], undo["original_id"]) == (50_000, posted["id"])
        assert query(db, "SELECT charged FROM card_months WHERE card_id=?", cid) == [(100_000,)]
        assert account(db, "bank_settlement") == -200_000  # the two admin charges of provision()
        await client.close()
        assert verify(db).ok
        report = build_report(locate(env.data_dir), Period.day("2019-07-20"), verify=True)
        assert report.ok, report.failed
        assert {p.program: p.charged for p in report.programs}["namdong"] == 100_000


async def test_the_charge_limits_and_who_may_send_a_charge(tmp_path):
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH)) as env:
        await provision(env)
        client, bank = await with_bank(env)
        pan = env.cards["namdong"]["pan"]
        assert (await client.request(charge(bank, pan, 9_999)))["39"] == "13"  # below the minimum charge
        assert (await client.request(charge(bank, pan, 1_900_001)))["39"] == "61"  # 100,000 held: over 2,000,000
        assert (await client.request(charge(bank, pan, 1_900_000)))["39"] == "00"
        assert (await client.request(bank.purchase(pan, 1_000)))["39"] == "58"  # a bank channel does not sell
        shop, term = await env.signed_on()
        assert (await shop.request(charge(term, pan, 10_000)))["39"] == "58"  # a shop does not charge
        await client.close()
        await shop.close()
        assert len(postings(env.core.db_path, "charge")) == 3  # provision's two, and the one approved
        assert verify(env.core.db_path).ok


async def test_the_months_charge_cap_counts_wire_charges_and_their_reversals(tmp_path):
    clock = FixedClock(datetime.fromisoformat("2023-10-05T12:00:00+09:00"))  # cap 1,500,000 from 2023-09
    async with start_switch(tmp_path / "var", clock=clock) as env:
        await provision(env)  # charged 100,000 this month
        client, bank = await with_bank(env)
        pan = env.cards["namdong"]["pan"]
        first = charge(bank, pan, 1_000_000)
        assert (await client.request(first))["39"] == "00"
        assert (await client.request(charge(bank, pan, 400_001)))["39"] == "61"  # 1,500,001 this month
        assert (await client.request(bank.reversal(first)))["39"] == "00"
        assert (await client.request(charge(bank, pan, 400_001)))["39"] == "00"  # the reversal gave the cap back
        await client.close()
        assert verify(env.core.db_path).ok


async def test_a_reversed_charge_already_spent_is_owed_never_taken_from_cashback(tmp_path):
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH)) as env:
        await provision(env)
        client, bank = await with_bank(env)
        pan = env.cards["namdong"]["pan"]
        top_up = charge(bank, pan, 50_000)
        assert (await client.request(top_up))["39"] == "00"
        shop, term = await env.signed_on()
        bought = await shop.request(term.purchase(pan, 140_000))  # spends 140,000 of 150,000; earns cashback
        assert decode_balances(bought["54"]) == Balances(10_000, 10_500)
        answer = await client.request(bank.reversal(top_up))
        await client.close()
        await shop.close()
        assert (answer["39"], decode_balances(answer["54"])) == ("00", Balances(0, 10_500))
        db = env.core.db_path
        cid = card_id(db, pan)
        assert (account(db, f"card:{cid}:cash"), account(db, f"card:{cid}:cashback"),
                account(db, f"card:{cid}:receivable")) == (0, 10_500, -40_000)
        assert verify(db).ok


async def test_an_api_charge_with_a_request_id_charges_once_however_often_it_is_called(tmp_path):
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH)) as env:
        await provision(env)
        db = env.core.db_path
        pan = env.cards["namdong"]["pan"]
        first = await env.op("card-charge", pan=pan, amount=30_000, request_id="bank-7f3a-0001")
        again = await env.op("card-charge", pan=pan, amount=30_000, request_id="bank-7f3a-0001")
        assert (first["charged"], first["cash"]) == (30_000, 130_000)
        assert again == {**first, "replayed": True}
        with pytest.raises(ValueError, match="^--request-id bank-7f3a-0001 was used for another charge$"):
            await env.op("card-charge", pan=pan, amount=40_000, request_id="bank-7f3a-0001")
        other = await env.op("card-charge", pan=pan, amount=30_000, request_id="bank-7f3a-0002")
        assert other["cash"] == 160_000
        assert [p["amount"] for p in postings(db, "charge") if p["card_id"] == card_id(db, pan)] == \
            [100_000, 30_000, 30_000]
        assert query(db, "SELECT mti, rc, posting_id FROM messages WHERE tid = '@api' ORDER BY stan") == [
            ("charge", "00", first["posting"]), ("charge", "00", other["posting"])]
        assert verify(db).ok
