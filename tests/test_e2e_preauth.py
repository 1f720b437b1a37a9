"""Pre-authorization and completion over real TCP (docs/host-interface.md, "0100 / 0110
pre-authorization" and "0220 / 0230 completion"): a hold takes cash out of the available
balance and moves nothing to the merchant; the completion posts the sale on the final amount
and releases the rest; a 0400 of the authorization, or its expiry, releases the hold; an
incremental authorization raises it. The ledger proves the holds (verify) and the reports and
events tell of them."""

from __future__ import annotations

import json

import pytest

from conftest import (LAUNCH, account, card_id, payable, posting_entries, postings, provision, query,
                      start_switch)
from switch.clock import FixedClock
from switch.ledger.audit import card_statement, verify
from switch.ledger.reports import Period, build_report, table
from switch.ledger.store import connect, locate
from switch.wire.messages import Balances, decode_balances

pytestmark = pytest.mark.both_stores

# A purchase of 20,000 with the Namdong card at the Namdong cafe on LAUNCH day posts fee 100,
# Namdong's fee support 100 and cashback 1,500 (tests/test_e2e_purchase.py): a completion of
# 20,000 must post exactly those.


def held(env, pan: str) -> int:
    return account(env.core.db_path, f"card:{card_id(env.core.db_path, pan)}:held")


def cash(env, pan: str) -> int:
    return account(env.core.db_path, f"card:{card_id(env.core.db_path, pan)}:cash")


def outbox_types(env) -> list[tuple[int, str]]:
    return [(pid, t) for pid, t in query(env.core.db_path, "SELECT posting_id, type FROM outbox ORDER BY seq")]


async def test_a_hold_takes_cash_out_of_the_available_balance_and_the_completion_posts_the_sale(tmp_path):
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH)) as env:
        await provision(env)
        db = env.core.db_path
        client, term = await env.signed_on()
        pan = env.cards["namdong"]["pan"]
        auth = term.preauth(pan, 30_000)
        resp = await client.request(auth)
        assert (resp["t"], resp["39"]) == ("0110", "00")
        hold = postings(db, "hold")
        assert [(h["amount"], h["undone"], h["rrn"], h["original_id"]) for h in hold] == \
            [(30_000, 0, f"{hold[0]['id']:012d}", None)]
        assert resp["37"] == hold[0]["rrn"]
        assert decode_balances(resp["54"]) == Balances(cash=70_000, cashback=0)
        assert (cash(env, pan), held(env, pan)) == (70_000, 30_000)
        assert account(db, payable("NAMDONG01")) == 0  # nothing moved to the merchant
        assert posting_entries(db, hold[0]["id"]) == {f"card:{card_id(db, pan)}:cash": -30_000,
                                                      f"card:{card_id(db, pan)}:held": 30_000}

        inquiry = await client.request(term.balance(pan))
        assert decode_balances(inquiry["54"]) == Balances(cash=70_000, cashback=0)  # net of the hold
        shown = card_statement(locate(env.data_dir), pan)  # eum admin card show
        assert (shown["cash"], shown["held"], [p["kind"] for p in shown["postings"]][:1]) == (70_000, 30_000, ["hold"])

        done = await client.request(term.completion(auth, resp["37"], 20_000))
        assert (done["t"], done["39"], done["90"]) == ("0230", "00", auth["t"] + auth["11"] + auth["7"] + "0" * 22)
        sale = postings(db, "purchase")
        assert len(sale) == 1 and done["37"] == sale[0]["rrn"] != resp["37"]
        assert (sale[0]["amount"], sale[0]["original_id"], sale[0]["fee"], sale[0]["support"],
                sale[0]["cashback"]) == (20_000, hold[0]["id"], 100, 100, 1_500)
        # the hold is closed, its cash back, the sale spent from it as a purchase would
        assert decode_balances(done["54"]) == Balances(cash=80_000, cashback=1_500)
        assert (cash(env, pan), held(env, pan)) == (80_000, 0)
        assert postings(db, "hold")[0]["undone"] == 30_000
        assert account(db, payable("NAMDONG01")) == 20_000
        assert verify(db).ok
        types = [t for _, t in outbox_types(env)]
        assert types[-3:] == ["hold", "purchase", "cashback.credited"]
        # a completion cannot complete twice: the hold is closed (a new STAN, same content)
        again = await client.request(term.completion(auth, resp["37"], 20_000))
        assert (again["t"], again["39"]) == ("0230", "25")
        await client.close()
        assert len(postings(db, "purchase")) == 1


async def test_the_hold_event_says_what_was_added_and_when_the_hold_expires(tmp_path):
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH)) as env:
        await provision(env)
        client, term = await env.signed_on()
        resp = await client.request(term.preauth(env.cards["namdong"]["pan"], 30_000))
        await client.close()
        (payload,) = [json.loads(p) for p, in query(env.core.db_path, "SELECT payload FROM outbox WHERE type = 'hold'")]
        assert (payload["amount"], payload["added"], payload["expires"], payload["rrn"], payload["fee"],
                payload["cashback"], payload["balances_after"]) == \
            (30_000, 30_000, "2019-07-27T12:00:00.000000+09:00", resp["37"], 0, 0,
             {"cash": 70_000, "cashback": 0, "receivable": 0})


async def test_an_incremental_authorization_raises_the_hold_under_the_same_rrn(tmp_path):
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH)) as env:
        await provision(env)
        db = env.core.db_path
        client, term = await env.signed_on()
        pan = env.cards["namdong"]["pan"]
        auth = term.preauth(pan, 30_000)
        first = await client.request(auth)
        more = await client.request(term.preauth(pan, 10_000, rrn=first["37"]))
        assert (more["39"], more["37"]) == ("00", first["37"])
        assert decode_balances(more["54"]) == Balances(cash=60_000, cashback=0)
        assert [(h["amount"], h["undone"], h["rrn"]) for h in postings(db, "hold")] == \
            [(30_000, 30_000, first["37"]), (40_000, 0, first["37"])]
        assert held(env, pan) == 40_000
        assert verify(db).ok
        over = await client.request(term.completion(auth, first["37"], 40_001))
        assert over["39"] == "13"  # beyond the hold (no tolerance configured)
        done = await client.request(term.completion(auth, first["37"], 40_000))
        assert done["39"] == "00"
        assert (cash(env, pan), held(env, pan)) == (60_000, 0)
        await client.close()
        assert verify(db).ok


async def test_a_reversal_of_the_authorization_releases_the_hold_once(tmp_path):
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH)) as env:
        await provision(env)
        db = env.core.db_path
        client, term = await env.signed_on()
        pan = env.cards["namdong"]["pan"]
        auth = term.preauth(pan, 30_000)
        resp = await client.request(auth)
        rev = term.reversal(auth)
        assert rev["90"][:4] == "0100"
        answer = await client.request(rev)
        assert (answer["t"], answer["39"]) == ("0410", "00")
        assert decode_balances(answer["54"]) == Balances(cash=100_000, cashback=0)
        repeat = await client.request(term.repeat(rev))
        assert repeat["39"] == "00"
        (release,) = postings(db, "release")
        assert (release["amount"], release["original_id"], release["rrn"]) == (30_000, postings(db, "hold")[0]["id"], None)
        assert (cash(env, pan), held(env, pan)) == (100_000, 0)
        # completing a released hold: 25, nothing posted
        late = await client.request(term.completion(auth, resp["37"], 10_000))
        assert late["39"] == "25"
        await client.close()
        assert postings(db, "purchase") == []
        assert verify(db).ok
        assert [t for _, t in outbox_types(env)][-2:] == ["hold", "release"]


async def test_a_partial_reversal_of_the_authorization_keeps_what_stands(tmp_path):
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH)) as env:
        await provision(env)
        client, term = await env.signed_on()
        pan = env.cards["namdong"]["pan"]
        auth = term.preauth(pan, 30_000)
        await client.request(auth)
        answer = await client.request(term.reversal(auth, replacement_amount=12_000))
        await client.close()
        assert answer["39"] == "00"
        assert (cash(env, pan), held(env, pan)) == (88_000, 12_000)  # 18,000 of the 30,000 released
        assert verify(env.core.db_path).ok


async def test_a_hold_past_its_expiry_is_released_and_cannot_be_completed(tmp_path):
    clock = FixedClock(LAUNCH)
    async with start_switch(tmp_path / "var", clock=clock) as env:
        await provision(env)
        db = env.core.db_path
        client, term = await env.signed_on()
        pan = env.cards["namdong"]["pan"]
        auth = term.preauth(pan, 30_000)
        resp = await client.request(auth)
        clock.advance(days=6, hours=23)
        assert await env.op("holds-expire") == {"released": 0, "amount": 0}
        clock.advance(hours=1, seconds=1)  # 7 days ([preauth] hold_days) and a second
        late = await client.request(term.completion(auth, resp["37"], 10_000))
        assert late["39"] == "25"  # expired: never completed, even before the sweep ran
        assert await env.op("holds-expire") == {"released": 1, "amount": 30_000}
        assert await env.op("holds-expire") == {"released": 0, "amount": 0}
        await client.close()
        assert (cash(env, pan), held(env, pan)) == (100_000, 0)
        (release,) = postings(db, "release")
        assert release["amount"] == 30_000
        (payload,) = [json.loads(p) for p, in query(db, "SELECT payload FROM outbox WHERE type = 'release'")]
        assert (payload["reason"], payload["original_posting_id"]) == ("expired", postings(db, "hold")[0]["id"])
        assert verify(db).ok


async def test_a_hold_takes_cash_only_and_a_card_short_of_cash_is_declined(tmp_path):
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH)) as env:
        await provision(env)
        client, term = await env.signed_on()
        pan = env.cards["namdong"]["pan"]
        bought = await client.request(term.purchase(pan, 20_000))  # 80,000 cash, 1,500 cashback left
        assert decode_balances(bought["54"]) == Balances(cash=80_000, cashback=1_500)
        short = await client.request(term.preauth(pan, 81_000))
        assert (short["t"], short["39"]) == ("0110", "51")
        auth = term.preauth(pan, 80_000)
        exact = await client.request(auth)
        assert exact["39"] == "00"
        assert decode_balances(exact["54"]) == Balances(cash=0, cashback=1_500)
        # the completion spends the cashback first, as any purchase: 1,500 cashback + 78,500 of the
        # held cash; 1,500 of the hold goes back to cash; cashback is earned on the 80,000
        done = await client.request(term.completion(auth, exact["37"], 80_000))
        assert done["39"] == "00"
        assert decode_balances(done["54"]) == Balances(cash=1_500, cashback=6_000)
        await client.close()
        assert verify(env.core.db_path).ok


async def test_the_completion_must_quote_its_authorization(tmp_path):
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH)) as env:
        await provision(env)
        db = env.core.db_path
        client, term = await env.signed_on()
        pan = env.cards["namdong"]["pan"]
        auth = term.preauth(pan, 30_000)
        resp = await client.request(auth)
        other = term.purchase(pan, 1_000)
        await client.request(other)
        wrong_de90 = await client.request(term.completion(other, resp["37"], 10_000))  # DE90 names a purchase
        assert wrong_de90["39"] == "25"
        wrong_rrn = await client.request(term.completion(auth, "999999999999", 10_000))
        assert wrong_rrn["39"] == "25"
        other_card = await client.request(
            {**term.completion(auth, resp["37"], 10_000), "2": env.cards["incheon"]["pan"]})
        assert other_card["39"] == "25"
        not_00 = await client.request({**term.completion(auth, resp["37"], 10_000), "3": "200000"})
        assert not_00["39"] == "12"
        await client.close()
        assert [p["kind"] for p in postings(db)][-2:] == ["hold", "purchase"]  # only the 1,000 purchase
        assert held(env, pan) == 30_000
        assert verify(db).ok


async def test_an_authorization_advice_is_acknowledged_and_its_repeat_posts_nothing(tmp_path):
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH)) as env:
        await provision(env)
        db = env.core.db_path
        client, term = await env.signed_on()
        pan = env.cards["namdong"]["pan"]
        advice = term.preauth(pan, 30_000, advice=True)
        first = await client.request(advice)
        assert (first["t"], first["39"]) == ("0130", "00")
        again = await client.request(term.repeat(advice))
        assert again == first
        assert len(postings(db, "hold")) == 1
        done = await client.request(term.completion(advice, first["37"], 30_000))
        assert done["39"] == "00"
        await client.close()
        assert (cash(env, pan), held(env, pan)) == (70_000, 0)
        assert verify(db).ok


async def test_a_balance_inquiry_may_come_as_an_authorization(tmp_path):
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH)) as env:
        await provision(env)
        client, term = await env.signed_on()
        pan = env.cards["namdong"]["pan"]
        inquiry = {**term.balance(env.cards["namdong"]["pan"]), "t": "0100"}
        answer = await client.request(inquiry)
        await client.close()
        assert (answer["t"], answer["39"], decode_balances(answer["54"])) == ("0110", "00", Balances(100_000, 0))
        assert pan == inquiry["2"]


async def test_the_daily_report_shows_the_holds_and_its_checks_pass(tmp_path):
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH)) as env:
        await provision(env)
        client, term = await env.signed_on()
        pan = env.cards["namdong"]["pan"]
        a1 = term.preauth(pan, 30_000)
        r1 = await client.request(a1)
        await client.request(term.completion(a1, r1["37"], 20_000))
        a2 = term.preauth(pan, 15_000)
        await client.request(a2)
        await client.request(term.reversal(a2))
        a3 = term.preauth(pan, 5_000)
        await client.request(a3)
        await client.close()
        report = build_report(locate(env.data_dir), Period.day("2019-07-20"), verify=True)
        assert report.ok, [c for c in report.failed]
        header, rows = table(report, "holds")
        assert header == ["program", "placed", "placed_amount", "completed", "completed_released", "released",
                          "released_amount", "held_at_end"]
        assert rows == [["namdong", 3, 50_000, 1, 30_000, 1, 15_000, 5_000]]
        spent = {p.program: (p.purchases, p.spent) for p in report.programs}
        assert spent["namdong"] == (1, 20_000)  # the completion is the sale; holds are not spending


async def test_verify_names_a_held_account_its_open_holds_do_not_explain(tmp_path):
    """A hold marked closed while its cash is still held (as a lost completion would leave
    it): the ledger still balances, but verify names the held account and both figures."""
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH)) as env:
        await provision(env)
        client, term = await env.signed_on()
        pan = env.cards["namdong"]["pan"]
        await client.request(term.preauth(pan, 30_000))
        await client.close()
        cid = card_id(env.core.db_path, pan)
    store = locate(tmp_path / "var")
    assert verify(store).ok
    conn = connect(store)
    try:
        conn.execute("BEGIN")
        assert conn.execute("UPDATE postings SET undone = amount WHERE kind = 'hold'").rowcount == 1
        conn.execute("COMMIT")
    finally:
        conn.close()
    result = verify(store)
    assert (result.ok, result.problem) == (
        False, f"account card:{cid}:held holds 30000 but its card's open holds come to 0")
