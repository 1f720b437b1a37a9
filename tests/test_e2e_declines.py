"""Every decline code over real TCP: the exact DE39, no approval fields, nothing posted."""

from __future__ import annotations

from datetime import datetime

import pytest

from conftest import card_accounts, posting_count, postings
from switch.ledger.audit import verify
from switch.wire.messages import Balances, decode_balances
from terminal_sim.terminal import Terminal

pytestmark = pytest.mark.both_stores  # SQLite and PostgreSQL (tests/conftest.py)


async def declined(env, client, fields: dict[str, str], rc: str, *, mti: str = "0210") -> dict[str, str]:
    """Send, expect `rc` in a `mti` response without approval fields, and nothing posted."""
    before = posting_count(env.core.db_path)
    resp = await client.request(fields)
    assert resp is not None, "the switch closed the connection instead of answering"
    assert (resp["t"], resp["39"]) == (mti, rc)
    assert "38" not in resp and "37" not in resp
    assert posting_count(env.core.db_path) == before
    return resp


async def test_unknown_card_is_declined_14(switch_env):
    env = switch_env
    client, term = await env.signed_on()
    unknown = "9410100000099999"
    await declined(env, client, term.purchase(unknown, 1_000), "14")
    await declined(env, client, term.balance(unknown), "14")
    # a known card with another expiry than the card's is not that card
    await declined(env, client, term.purchase(env.cards["namdong"]["pan"], 1_000, expiry="9912"), "14")
    ok = await client.request(term.purchase(env.cards["namdong"]["pan"], 1_000,
                                            expiry=env.cards["namdong"]["expiry"]))
    await client.close()
    assert ok["39"] == "00"
    assert verify(env.core.db_path).ok


async def test_expired_card_is_declined_54_after_its_expiry_month(switch_env):
    env = switch_env
    old = await env.op("card-issue", program="incheon", expiry="1906")
    last_month = await env.op("card-issue", program="incheon", expiry="1907")
    await env.op("card-charge", pan=old["pan"], amount=50_000)
    await env.op("card-charge", pan=last_month["pan"], amount=50_000)
    client, term = await env.signed_on()
    await declined(env, client, term.purchase(old["pan"], 1_000), "54")
    await declined(env, client, term.balance(old["pan"]), "54")
    assert (await client.request(term.purchase(last_month["pan"], 1_000)))["39"] == "00"
    env.clock.at = datetime.fromisoformat("2019-08-01T00:00:00+09:00")
    await declined(env, client, term.purchase(last_month["pan"], 1_000), "54")
    await client.close()
    assert card_accounts(env.core.db_path, old["pan"]) == (50_000, 0)
    assert verify(env.core.db_path).ok


async def test_blocked_card_is_declined_62_until_unblocked(switch_env):
    env = switch_env
    pan = env.cards["namdong"]["pan"]
    client, term = await env.signed_on()
    await env.op("card-block", pan=pan)
    await declined(env, client, term.purchase(pan, 1_000), "62")
    await declined(env, client, term.balance(pan), "62")
    await env.op("card-unblock", pan=pan)
    resp = await client.request(term.purchase(pan, 1_000))
    await client.close()
    assert resp["39"] == "00"
    assert verify(env.core.db_path).ok


async def test_store_that_does_not_accept_the_card_is_declined_57(switch_env):
    env = switch_env
    await env.op("merchant-add", mid="DEPT0001", name="Big Department Store", district="namdong",
                 annual_sales=250_000_000, category="department_store")
    await env.op("terminal-add", tid="T0000009", mid="DEPT0001")
    client, term = await env.signed_on("T0000009", "DEPT0001")
    await declined(env, client, term.purchase(env.cards["incheon"]["pan"], 10_000), "57")
    await client.close()
    assert card_accounts(env.core.db_path, env.cards["incheon"]["pan"]) == (100_000, 0)
    assert verify(env.core.db_path).ok


async def test_excluded_category_accepts_the_card_but_earns_no_cashback(switch_env):
    """From 2019-08-01 06:00 gambling is excluded from cashback, not from acceptance."""
    env = switch_env
    env.clock.at = datetime.fromisoformat("2019-08-02T12:00:00+09:00")
    await env.op("merchant-add", mid="BET00001", name="Betting Shop", district="yeonsu",
                 annual_sales=250_000_000, category="gambling")
    await env.op("terminal-add", tid="T0000008", mid="BET00001")
    client, term = await env.signed_on("T0000008", "BET00001")
    resp = await client.request(term.purchase(env.cards["incheon"]["pan"], 10_000))
    await client.close()
    assert resp["39"] == "00"
    assert decode_balances(resp["54"]) == Balances(cash=90_000, cashback=0)
    (p,) = postings(env.core.db_path, "purchase")
    assert (p["fee"], p["cashback"]) == (50, 0)
    assert verify(env.core.db_path).ok


async def test_terminal_unknown_not_signed_on_or_other_merchant_is_declined_58(switch_env):
    env = switch_env
    pan = env.cards["incheon"]["pan"]
    client = await env.client().connect()
    stranger = Terminal("T9999999", "NAMDONG01", stan=10)
    await declined(env, client, stranger.sign_on(), "58", mti="0810")
    await declined(env, client, stranger.purchase(pan, 1_000), "58")
    silent = Terminal("T0000002", "YEONSU01", stan=20)  # known, never signed on
    await declined(env, client, silent.purchase(pan, 1_000), "58")
    await declined(env, client, silent.balance(pan), "58")
    await client.close()
    signed, term = await env.signed_on("T0000001", "NAMDONG01")
    impostor = Terminal("T0000001", "YEONSU01", stan=500)  # DE42 is not the terminal's merchant
    await declined(env, signed, impostor.purchase(pan, 1_000), "58")
    assert (await signed.request(term.sign_off()))["39"] == "00"
    await declined(env, signed, term.purchase(pan, 1_000), "58")
    await signed.close()
    assert card_accounts(env.core.db_path, pan) == (100_000, 0)
    assert verify(env.core.db_path).ok


async def test_insufficient_funds_is_declined_51(switch_env):
    env = switch_env
    pan = env.cards["namdong"]["pan"]
    client, term = await env.signed_on()
    await declined(env, client, term.purchase(pan, 100_001), "51")
    exact = await client.request(term.purchase(pan, 100_000))
    assert exact["39"] == "00"
    assert decode_balances(exact["54"]) == Balances(cash=0, cashback=7_500)
    await declined(env, client, term.purchase(pan, 7_501), "51")
    await client.close()
    assert verify(env.core.db_path).ok


async def test_over_the_daily_spend_limit_is_declined_61(switch_env):
    env = switch_env
    limits = env.core.rules.limits(env.clock.now())
    assert (limits.daily_spend_max, limits.holding_max) == (2_000_000, 2_000_000)
    card = await env.op("card-issue", program="incheon")
    pan = card["pan"]
    await env.op("card-charge", pan=pan, amount=2_000_000)
    client, term = await env.signed_on("T0000002", "YEONSU01")
    assert (await client.request(term.purchase(pan, 1_500_000)))["39"] == "00"  # earns 90,000
    await env.op("card-charge", pan=pan, amount=1_000_000)
    await declined(env, client, term.purchase(pan, 500_001), "61")
    at_limit = await client.request(term.purchase(pan, 500_000))
    assert at_limit["39"] == "00"
    await declined(env, client, term.purchase(pan, 1), "61")
    env.clock.advance(days=1)
    next_day = await client.request(term.purchase(pan, 100_000))
    await client.close()
    assert next_day["39"] == "00"
    assert verify(env.core.db_path).ok


async def test_invalid_amounts_are_declined_13(switch_env):
    env = switch_env
    pan = env.cards["namdong"]["pan"]
    client, term = await env.signed_on()
    await declined(env, client, term.purchase(pan, 0), "13")
    await declined(env, client, term.purchase(pan, 2_000_001), "13")  # above the holding maximum
    await declined(env, client, {**term.purchase(pan, 1_000), "49": "840"}, "13")  # not KRW
    await client.close()
    assert card_accounts(env.core.db_path, pan) == (100_000, 0)
    assert verify(env.core.db_path).ok


@pytest.mark.parametrize("field, value", [
    ("4", "00000000abcd"),   # non-numeric amount
    ("4", "0000 0001000"),
    ("7", "1399999999"),     # month 13
    ("7", "0720246000"),     # hour 24
    ("11", "00001A"),        # non-numeric STAN
    ("3", "00000X"),
    ("2", "12345"),          # PAN too short
])
async def test_malformed_field_is_declined_30_with_the_message_echoed(switch_env, field, value):
    env = switch_env
    client, term = await env.signed_on()
    req = {**term.purchase(env.cards["namdong"]["pan"], 1_000), field: value}
    resp = await declined(env, client, req, "30")
    await client.close()
    assert resp["41"] == "T0000001"
    assert resp["11"] == req["11"]
    assert verify(env.core.db_path).ok


async def test_missing_mandatory_field_is_declined_30(switch_env):
    env = switch_env
    client, term = await env.signed_on()
    pan = env.cards["namdong"]["pan"]
    for missing in ("3", "4", "11", "49"):
        req = term.purchase(pan, 1_000)
        del req[missing]
        await declined(env, client, req, "30")
    await client.close()
    assert verify(env.core.db_path).ok


async def test_unsupported_transactions_are_declined_12(switch_env):
    env = switch_env
    client, term = await env.signed_on()
    pan = env.cards["namdong"]["pan"]
    await declined(env, client, {**term.purchase(pan, 1_000), "3": "400000"}, "12")  # transfer
    await declined(env, client, {**term.purchase(pan, 1_000), "3": "010000"}, "12")  # cash
    await declined(env, client, {"t": "0300", "7": "0720120000", "11": "000777", "41": "T0000001"}, "12", mti="0310")
    await declined(env, client, {**term.purchase(pan, 1_000), "t": "0100", "3": "200000"}, "12", mti="0110")  # no refund
    await declined(env, client, {**term.purchase(pan, 1_000), "t": "0220", "3": "310000"}, "12", mti="0230")
    await declined(env, client, {**term.purchase(pan, 1_000), "t": "0500"}, "12", mti="0510")
    await declined(env, client, term.reversal(term.balance(pan)), "12", mti="0410")  # a balance inquiry
    await declined(env, client, term.network("999"), "12", mti="0810")
    ok = await client.request(term.purchase(pan, 1_000))
    await client.close()
    assert ok["39"] == "00"
    assert verify(env.core.db_path).ok
