"""Purchases and balance inquiries over real TCP, with exact balances, fees, cashback and ledger rows.

The fixture's clock stands at 2019-07-20 12:00 KST (policy "2019-04": 6 % city base,
Namdong card +1.5 % inside Namdong; fee micro tier 0.5 %, Namdong pays 0.5 pp of it).
"""

from __future__ import annotations

from datetime import datetime

import pytest

from conftest import (account, account_balances, card_accounts, payable, posting_count, posting_entries,
                      postings, query)
from switch.ledger.audit import verify
from switch.wire.messages import Balances, decode_balances
from terminal_sim.terminal import Terminal

pytestmark = pytest.mark.both_stores  # SQLite and PostgreSQL (tests/conftest.py)


def balances(resp: dict[str, str]) -> Balances:
    return decode_balances(resp["54"])


async def test_namdong_card_at_namdong_merchant_is_worked_example_1(switch_env):
    env = switch_env
    client, term = await env.signed_on("T0000001", "NAMDONG01")
    pan = env.cards["namdong"]["pan"]
    resp = await client.request(term.purchase(pan, 20_000))
    await client.close()

    assert resp["t"] == "0210"
    assert resp["39"] == "00"
    assert len(resp["38"]) == 6 and resp["38"].isalnum()
    assert len(resp["37"]) == 12 and resp["37"].isdigit()
    assert balances(resp) == Balances(cash=80_000, cashback=1_500)

    (purchase,) = postings(env.core.db_path, "purchase")
    assert purchase["rrn"] == resp["37"]
    assert (purchase["amount"], purchase["fee"], purchase["support"], purchase["cashback"]) == (20_000, 100, 100, 1_500)
    assert (purchase["tid"], purchase["stan"], purchase["mid"]) == ("T0000001", resp["11"], "NAMDONG01".ljust(15))
    cid = purchase["card_id"]
    assert posting_entries(env.core.db_path, purchase["id"]) == {
        f"card:{cid}:cash": -20_000,
        f"card:{cid}:cashback": 1_500,
        payable("NAMDONG01"): 20_000,  # 20,000 - fee 100 + Namdong support 100: payout 20,000
        "fee_income": 100,
        "fee_subsidy:namdong": -100,
        "cashback_expense:national": -800,
        "cashback_expense:city": -400,
        "cashback_expense:namdong": -300,
    }
    assert card_accounts(env.core.db_path, pan) == (80_000, 1_500)
    assert verify(env.core.db_path).ok


async def test_namdong_card_at_yeonsu_merchant_is_worked_example_2(switch_env):
    env = switch_env
    client, term = await env.signed_on("T0000002", "YEONSU01")
    pan = env.cards["namdong"]["pan"]
    resp = await client.request(term.purchase(pan, 20_000))
    await client.close()

    assert resp["39"] == "00"
    assert balances(resp) == Balances(cash=80_000, cashback=1_200)
    (purchase,) = postings(env.core.db_path, "purchase")
    assert (purchase["amount"], purchase["fee"], purchase["support"], purchase["cashback"]) == (20_000, 100, 0, 1_200)
    cid = purchase["card_id"]
    assert posting_entries(env.core.db_path, purchase["id"]) == {
        f"card:{cid}:cash": -20_000,
        f"card:{cid}:cashback": 1_200,
        payable("YEONSU01"): 19_900,  # the merchant pays its own fee: payout 19,900
        "fee_income": 100,
        "cashback_expense:national": -800,
        "cashback_expense:city": -400,
    }
    acc = account_balances(env.core.db_path)
    assert "fee_subsidy:namdong" not in acc and "cashback_expense:namdong" not in acc
    assert verify(env.core.db_path).ok


async def test_both_worked_examples_on_one_card_add_up_in_the_accounts(switch_env):
    env = switch_env
    pan = env.cards["namdong"]["pan"]
    c1, t1 = await env.signed_on("T0000001", "NAMDONG01")
    c2, t2 = await env.signed_on("T0000002", "YEONSU01")
    r1 = await c1.request(t1.purchase(pan, 20_000))
    r2 = await c2.request(t2.purchase(pan, 20_000))
    await c1.close()
    await c2.close()

    assert (r1["39"], r2["39"]) == ("00", "00")
    # the second purchase spends the 1,500 cashback first, then 18,500 cash, and earns 1,200
    assert balances(r2) == Balances(cash=61_500, cashback=1_200)
    db = env.core.db_path
    assert account(db, payable("NAMDONG01")) == 20_000
    assert account(db, payable("YEONSU01")) == 19_900
    assert account(db, "fee_income") == 200
    assert account(db, "fee_subsidy:namdong") == -100
    assert account(db, "cashback_expense:national") == -1_600
    assert account(db, "cashback_expense:city") == -800
    assert account(db, "cashback_expense:namdong") == -300
    assert card_accounts(db, pan) == (61_500, 1_200)
    assert verify(db).ok


async def test_cashback_is_spent_before_cash(switch_env):
    env = switch_env
    pan = env.cards["incheon"]["pan"]
    client, term = await env.signed_on("T0000002", "YEONSU01")
    first = await client.request(term.purchase(pan, 20_000))
    assert balances(first) == Balances(cash=80_000, cashback=1_200)
    # 1,000 is less than the cashback balance: cash is untouched
    second = await client.request(term.purchase(pan, 1_000))
    assert balances(second) == Balances(cash=80_000, cashback=1_200 - 1_000 + 60)
    # 10,000: the 260 cashback left, then 9,740 cash; earns 600
    third = await client.request(term.purchase(pan, 10_000))
    await client.close()
    assert balances(third) == Balances(cash=70_260, cashback=600)

    third_posting = postings(env.core.db_path, "purchase")[-1]
    cid = third_posting["card_id"]
    entries = posting_entries(env.core.db_path, third_posting["id"])
    assert entries[f"card:{cid}:cash"] == -9_740
    assert entries[f"card:{cid}:cashback"] == -260 + 600
    assert card_accounts(env.core.db_path, pan) == (70_260, 600)
    assert verify(env.core.db_path).ok


async def test_balance_inquiry_answers_balances_and_posts_nothing(switch_env):
    env = switch_env
    client, term = await env.signed_on()
    pan = env.cards["namdong"]["pan"]
    before = posting_count(env.core.db_path)
    resp = await client.request(term.balance(pan))
    assert resp["t"] == "0210" and resp["39"] == "00" and resp["3"] == "310000"
    assert balances(resp) == Balances(cash=100_000, cashback=0)
    assert "38" not in resp

    await client.request(term.purchase(pan, 20_000))
    resp = await client.request(term.balance(pan))
    await client.close()
    assert balances(resp) == Balances(cash=80_000, cashback=1_500)
    assert posting_count(env.core.db_path) == before + 1
    assert verify(env.core.db_path).ok


async def test_response_echoes_the_request_fields(switch_env):
    env = switch_env
    client, term = await env.signed_on()
    req = term.purchase(env.cards["namdong"]["pan"], 12_345)
    resp = await client.request(req)
    await client.close()
    for no in ("2", "3", "4", "7", "11", "12", "13", "41", "42", "49"):
        assert resp[no] == req[no], no
    assert resp["39"] == "00"
    # 12,345 at 7.5 %: national floor(493.8) + city floor(246.9) + Namdong floor(185.175)
    assert balances(resp) == Balances(cash=100_000 - 12_345, cashback=493 + 246 + 185)
    assert verify(env.core.db_path).ok


async def test_each_approval_gets_its_own_rrn_and_auth_code(switch_env):
    env = switch_env
    client, term = await env.signed_on()
    pan = env.cards["incheon"]["pan"]
    answers = [await client.request(term.purchase(pan, 1_000 * (i + 1))) for i in range(5)]
    await client.close()
    assert [a["39"] for a in answers] == ["00"] * 5
    assert len({a["37"] for a in answers}) == 5
    assert len({a["38"] for a in answers}) == 5
    assert [p["rrn"] for p in postings(env.core.db_path, "purchase")] == [a["37"] for a in answers]
    assert verify(env.core.db_path).ok


async def test_namdong_fee_support_covers_half_a_point_for_a_400m_merchant(switch_env):
    """2019: a 300–500M Namdong merchant's check rate is 1.0 %; Namdong pays 0.5 pp."""
    env = switch_env
    await env.op("merchant-add", mid="NAMDONG02", name="Namdong Books", district="namdong",
                 annual_sales=400_000_000)
    await env.op("terminal-add", tid="T0000003", mid="NAMDONG02")
    client, term = await env.signed_on("T0000003", "NAMDONG02")
    resp = await client.request(term.purchase(env.cards["incheon"]["pan"], 20_000))
    await client.close()
    assert resp["39"] == "00"
    assert balances(resp) == Balances(cash=80_000, cashback=1_200)  # incheon card: city base 6 %
    db = env.core.db_path
    assert account(db, "fee_income") == 200
    assert account(db, "fee_subsidy:namdong") == -100
    assert account(db, payable("NAMDONG02")) == 19_900
    assert verify(db).ok


async def test_month_tiers_count_spend_across_a_members_two_cards(switch_env):
    """2020-01-15, Incheon cards: 4 % to 300k, 2 % to 500k of the member's month, both cards
    together (worked example 3 over the wire)."""
    env = switch_env
    env.clock.at = datetime.fromisoformat("2020-01-15T12:00:00+09:00")
    first = await env.op("card-issue", program="incheon", member="MEMBER-TIERS")
    second = await env.op("card-issue", program="incheon", member="MEMBER-TIERS")
    other = await env.op("card-issue", program="incheon", member="MEMBER-OTHER")
    await env.op("card-charge", pan=first["pan"], amount=280_000)
    await env.op("card-charge", pan=second["pan"], amount=50_000)
    await env.op("card-charge", pan=other["pan"], amount=50_000)
    client, term = await env.signed_on()

    r1 = await client.request(term.purchase(first["pan"], 280_000))
    assert r1["39"] == "00"
    assert balances(r1) == Balances(cash=0, cashback=11_200)  # 280,000 × 4 %
    r2 = await client.request(term.purchase(second["pan"], 50_000))
    assert r2["39"] == "00"
    assert balances(r2) == Balances(cash=0, cashback=1_400)  # 20,000 × 4 % + 30,000 × 2 %
    r3 = await client.request(term.purchase(other["pan"], 50_000))
    await client.close()
    assert balances(r3) == Balances(cash=0, cashback=2_000)  # another member: 50,000 × 4 %

    db = env.core.db_path
    assert query(db, "SELECT eligible FROM member_months WHERE member=? AND month=?",
                  "MEMBER-TIERS", "2020-01") == [(330_000,)]
    p2 = postings(db, "purchase")[1]
    entries = posting_entries(db, p2["id"])
    assert entries["cashback_expense:national"] == -700 and entries["cashback_expense:city"] == -700
    assert verify(db).ok


async def test_network_management_sign_on_echo_and_sign_off(switch_env):
    env = switch_env
    client = await env.client().connect()
    term = Terminal("T0000002", "YEONSU01", stan=100)
    echo_first = await client.request(term.echo())
    assert (echo_first["t"], echo_first["39"]) == ("0810", "58")
    on = await client.request(term.sign_on())
    assert (on["t"], on["39"], on["70"], on["11"]) == ("0810", "00", "001", "000102")
    echo = await client.request(term.echo())
    assert (echo["39"], echo["70"]) == ("00", "301")
    off = await client.request(term.sign_off())
    assert off["39"] == "00"
    after = await client.request(term.purchase(env.cards["incheon"]["pan"], 1_000))
    await client.close()
    assert after["39"] == "58"
    assert postings(env.core.db_path, "purchase") == []
