"""Refunds (by DE37) and reversals (0400/0420, DE90, partial via DE95) over real TCP.

Base case: the Namdong card buys 20,000 at NAMDONG01 on 2019-07-20: cashback 1,500
(national 800, city 400, Namdong 300), fee 100 fully supported by Namdong.
Clawback and fee give-back are proportional, flooring the cumulative share.
"""

from __future__ import annotations

import pytest

from conftest import (LAUNCH, account_balances, card_accounts, payable, posting_count, posting_entries, postings,
                      provision, start_switch)
from conftest import bought as _bought
from switch.ledger.audit import verify
from switch.clock import FixedClock
from switch.wire.messages import Balances, decode_balances
from terminal_sim.terminal import Terminal

pytestmark = pytest.mark.both_stores  # SQLite and PostgreSQL (tests/conftest.py)

UNDONE_ACCOUNTS = ("fee_income", "fee_subsidy:namdong", "cashback_expense:national", "cashback_expense:city",
                   "cashback_expense:namdong")


def balances(resp: dict[str, str]) -> Balances:
    return decode_balances(resp["54"])


def _all_undone(db) -> None:
    acc = account_balances(db)
    for name in UNDONE_ACCOUNTS + (payable("NAMDONG01"),):
        assert acc.get(name, 0) == 0, name


async def test_partial_refund_then_the_rest_claws_back_exactly_what_was_credited(switch_env):
    env = switch_env
    client, term, pan, _, bought = await _bought(env)
    db = env.core.db_path
    cid = postings(db, "purchase")[0]["card_id"]

    r1 = await client.request(term.refund(pan, 3_333, bought["37"]))
    assert (r1["t"], r1["39"], r1["3"]) == ("0210", "00", "200000")
    assert r1["37"] != bought["37"] and len(r1["38"]) == 6
    # share 3,333/20,000: national floor(133.32), city floor(66.66), Namdong floor(49.995); fee floor(16.665)
    assert balances(r1) == Balances(cash=83_333, cashback=1_500 - (133 + 66 + 49))
    refund1 = postings(db, "refund")[0]
    assert (refund1["amount"], refund1["fee"], refund1["support"], refund1["cashback"]) == (3_333, -16, -16, -248)
    assert posting_entries(db, refund1["id"]) == {
        f"card:{cid}:cash": 3_333,
        f"card:{cid}:cashback": -248,
        payable("NAMDONG01"): -3_333,  # -3,333 + fee back 16 - support back 16
        "fee_income": -16,
        "fee_subsidy:namdong": 16,
        "cashback_expense:national": 133,
        "cashback_expense:city": 66,
        "cashback_expense:namdong": 49,
    }

    r2 = await client.request(term.refund(pan, 16_667, bought["37"]))
    await client.close()
    assert r2["39"] == "00"
    assert balances(r2) == Balances(cash=100_000, cashback=0)
    refund2 = postings(db, "refund")[1]
    assert posting_entries(db, refund2["id"]) == {
        f"card:{cid}:cash": 16_667,
        f"card:{cid}:cashback": -1_252,
        payable("NAMDONG01"): -16_667,
        "fee_income": -84,
        "fee_subsidy:namdong": 84,
        "cashback_expense:national": 667,
        "cashback_expense:city": 334,
        "cashback_expense:namdong": 251,
    }
    assert postings(db, "purchase")[0]["undone"] == 20_000
    _all_undone(db)
    assert card_accounts(db, pan) == (100_000, 0)
    assert verify(db).ok


async def test_refund_over_what_is_left_is_declined_13(switch_env):
    env = switch_env
    client, term, pan, _, bought = await _bought(env)
    assert (await client.request(term.refund(pan, 15_000, bought["37"])))["39"] == "00"
    before = posting_count(env.core.db_path)
    over = await client.request(term.refund(pan, 5_001, bought["37"]))
    zero = await client.request(term.refund(pan, 0, bought["37"]))
    rest = await client.request(term.refund(pan, 5_000, bought["37"]))
    await client.close()
    assert (over["39"], zero["39"], rest["39"]) == ("13", "13", "00")
    assert "38" not in over and "54" not in over
    assert posting_count(env.core.db_path) == before + 1
    assert verify(env.core.db_path).ok


async def test_refund_needs_an_original_purchase_of_the_same_card(switch_env):
    env = switch_env
    client, term, pan, _, bought = await _bought(env)
    other = env.cards["incheon"]["pan"]
    charge_rrn = postings(env.core.db_path, "charge")[0]["rrn"]
    before = posting_count(env.core.db_path)
    unknown = await client.request(term.refund(pan, 1_000, "999999999999"))
    wrong_card = await client.request(term.refund(other, 1_000, bought["37"]))
    not_a_purchase = await client.request(term.refund(pan, 1_000, charge_rrn))
    await client.close()
    assert (unknown["39"], wrong_card["39"], not_a_purchase["39"]) == ("25", "25", "25")
    assert posting_count(env.core.db_path) == before
    assert card_accounts(env.core.db_path, other) == (100_000, 0)
    assert verify(env.core.db_path).ok


async def test_full_reversal_undoes_the_purchase_completely(switch_env):
    env = switch_env
    client, term, pan, req, _ = await _bought(env)
    rev = term.reversal(req)
    resp = await client.request(rev)
    await client.close()
    assert (resp["t"], resp["39"], resp["90"]) == ("0410", "00", rev["90"])
    assert balances(resp) == Balances(cash=100_000, cashback=0)
    db = env.core.db_path
    (reversal,) = postings(db, "reversal")
    assert (reversal["amount"], reversal["fee"], reversal["cashback"]) == (20_000, -100, -1_500)
    assert postings(db, "purchase")[0]["undone"] == 20_000
    _all_undone(db)
    assert card_accounts(db, pan) == (100_000, 0)
    assert verify(db).ok


async def test_reversal_advice_0420_is_answered_0430_and_undoes(switch_env):
    env = switch_env
    client, term, pan, req, _ = await _bought(env)
    resp = await client.request(term.reversal(req, advice=True))
    again = await client.request(term.reversal(req, advice=True))  # a new advice: nothing left
    await client.close()
    assert (resp["t"], resp["39"]) == ("0430", "00")
    assert balances(resp) == Balances(cash=100_000, cashback=0)
    assert (again["t"], again["39"]) == ("0430", "00")
    assert len(postings(env.core.db_path, "reversal")) == 1
    _all_undone(env.core.db_path)
    assert verify(env.core.db_path).ok


async def test_partial_reversal_leaves_the_de95_amount_standing(switch_env):
    env = switch_env
    client, term, pan, req, _ = await _bought(env)
    db = env.core.db_path
    cid = postings(db, "purchase")[0]["card_id"]

    resp = await client.request(term.reversal(req, replacement_amount=12_000))
    assert resp["39"] == "00" and resp["95"].startswith("000000012000")
    # 8,000 of 20,000 undone: national 320, city 160, Namdong 120; fee 40, support 40
    assert balances(resp) == Balances(cash=88_000, cashback=900)
    (reversal,) = postings(db, "reversal")
    assert posting_entries(db, reversal["id"]) == {
        f"card:{cid}:cash": 8_000,
        f"card:{cid}:cashback": -600,
        payable("NAMDONG01"): -8_000,
        "fee_income": -40,
        "fee_subsidy:namdong": 40,
        "cashback_expense:national": 320,
        "cashback_expense:city": 160,
        "cashback_expense:namdong": 120,
    }
    assert postings(db, "purchase")[0]["undone"] == 8_000

    # the same partial reversal sent again as a new message: the purchase already stands at 12,000
    same = await client.request(term.reversal(req, replacement_amount=12_000))
    assert same["39"] == "00"
    assert balances(same) == Balances(cash=88_000, cashback=900)
    assert postings(db, "purchase")[0]["undone"] == 8_000

    # a second partial reversal down to 5,000 undoes 7,000 more
    lower = await client.request(term.reversal(req, replacement_amount=5_000))
    assert balances(lower) == Balances(cash=95_000, cashback=375)  # 5,000 × 7.5 %
    assert postings(db, "purchase")[0]["undone"] == 15_000

    # a full reversal takes the rest; cumulative floors add up to exactly what was credited
    full = await client.request(term.reversal(req))
    await client.close()
    assert balances(full) == Balances(cash=100_000, cashback=0)
    _all_undone(db)
    assert verify(db).ok


async def test_reversal_of_a_refund_puts_the_refund_back(switch_env):
    env = switch_env
    client, term, pan, _, bought = await _bought(env)
    refund_req = term.refund(pan, 5_000, bought["37"])
    refunded = await client.request(refund_req)
    # 5,000/20,000: national 200, city 100, Namdong 75; fee 25, support 25
    assert balances(refunded) == Balances(cash=85_000, cashback=1_125)

    rev = await client.request(term.reversal(refund_req))
    assert (rev["t"], rev["39"], rev["3"]) == ("0410", "00", "200000")
    assert balances(rev) == Balances(cash=80_000, cashback=1_500)
    db = env.core.db_path
    acc = account_balances(db)
    assert acc[payable("NAMDONG01")] == 20_000
    assert (acc["fee_income"], acc["fee_subsidy:namdong"]) == (100, -100)
    assert (acc["cashback_expense:national"], acc["cashback_expense:city"], acc["cashback_expense:namdong"]) == (
        -800, -400, -300)
    assert postings(db, "purchase")[0]["undone"] == 0
    assert postings(db, "refund")[0]["undone"] == 5_000

    # reversing the refund again posts nothing; the whole purchase can be refunded once more
    again = await client.request(term.reversal(refund_req))
    assert again["39"] == "00"
    whole = await client.request(term.refund(pan, 20_000, bought["37"]))
    await client.close()
    assert whole["39"] == "00"
    assert balances(whole) == Balances(cash=100_000, cashback=0)
    assert len(postings(db, "reversal")) == 1
    _all_undone(db)
    assert verify(db).ok


async def test_reversal_before_its_original_is_remembered_and_the_late_original_declined(switch_env):
    env = switch_env
    client, term = await env.signed_on()
    pan = env.cards["namdong"]["pan"]
    original = term.purchase(pan, 20_000)  # built, "lost" on its way to the switch
    before = posting_count(env.core.db_path)

    rev = await client.request(term.reversal(original))
    assert (rev["t"], rev["39"]) == ("0410", "00")
    assert "54" not in rev
    late = await client.request(original)
    assert (late["t"], late["39"]) == ("0210", "12")
    assert "37" not in late and "38" not in late
    repeated = await client.request(Terminal.repeat(original))
    await client.close()
    assert repeated["39"] == "12"
    assert posting_count(env.core.db_path) == before
    assert card_accounts(env.core.db_path, pan) == (100_000, 0)
    assert verify(env.core.db_path).ok


async def test_reversal_of_a_declined_original_posts_nothing(switch_env):
    env = switch_env
    client, term = await env.signed_on()
    pan = env.cards["namdong"]["pan"]
    declined = term.purchase(pan, 500_000)
    assert (await client.request(declined))["39"] == "51"
    before = posting_count(env.core.db_path)
    rev = await client.request(term.reversal(declined))
    await client.close()
    assert rev["39"] == "00"
    assert posting_count(env.core.db_path) == before
    assert verify(env.core.db_path).ok


async def test_reversal_with_another_pan_than_the_original_is_declined_25(switch_env):
    env = switch_env
    client, term, pan, req, _ = await _bought(env)
    forged = term.reversal({**req, "2": env.cards["incheon"]["pan"]})
    resp = await client.request(forged)
    await client.close()
    assert resp["39"] == "25"
    assert postings(env.core.db_path, "reversal") == []
    assert card_accounts(env.core.db_path, pan) == (80_000, 1_500)
    assert verify(env.core.db_path).ok


async def test_reversal_after_a_full_refund_has_nothing_left(switch_env):
    env = switch_env
    client, term, pan, req, bought = await _bought(env)
    assert (await client.request(term.refund(pan, 20_000, bought["37"])))["39"] == "00"
    before = posting_count(env.core.db_path)
    rev = await client.request(term.reversal(req))
    await client.close()
    assert rev["39"] == "00"
    assert balances(rev) == Balances(cash=100_000, cashback=0)
    assert posting_count(env.core.db_path) == before
    assert verify(env.core.db_path).ok


async def test_reversal_after_a_partial_refund_undoes_only_what_is_left(switch_env):
    env = switch_env
    client, term, pan, req, bought = await _bought(env)
    assert (await client.request(term.refund(pan, 5_000, bought["37"])))["39"] == "00"
    rev = await client.request(term.reversal(req))
    await client.close()
    assert rev["39"] == "00"
    assert balances(rev) == Balances(cash=100_000, cashback=0)
    assert postings(env.core.db_path, "reversal")[0]["amount"] == 15_000
    _all_undone(env.core.db_path)
    assert verify(env.core.db_path).ok


async def test_refund_then_partial_reversal_undoes_the_de95_difference_of_the_original(switch_env):
    env = switch_env
    client, term, pan, req, bought = await _bought(env)
    assert (await client.request(term.refund(pan, 5_000, bought["37"])))["39"] == "00"
    rev = await client.request(term.reversal(req, replacement_amount=12_000))
    await client.close()
    assert rev["39"] == "00"
    assert postings(env.core.db_path, "reversal")[0]["amount"] == 8_000
    assert postings(env.core.db_path, "purchase")[0]["undone"] == 13_000
    # 7,000 of 20,000 still stands: cashback 7,000 × 7.5 % = 525
    assert balances(rev) == Balances(cash=93_000, cashback=525)
    assert verify(env.core.db_path).ok


async def test_unwinding_in_any_order_returns_exactly_what_was_posted(switch_env):
    """Refund 3,333, refund the rest, reverse the first refund, refund 3,333 again: every
    account is back at zero and the card holds its 100,000, to the won."""
    env = switch_env
    client, term, pan, _, bought = await _bought(env)
    first = term.refund(pan, 3_333, bought["37"])
    assert (await client.request(first))["39"] == "00"
    assert (await client.request(term.refund(pan, 16_667, bought["37"])))["39"] == "00"
    put_back = await client.request(term.reversal(first))
    # the card holds what a purchase of 20,000 with 16,667 refunded leaves: 1,500 - 1,249
    assert balances(put_back) == Balances(cash=96_667, cashback=251)
    last = await client.request(term.refund(pan, 3_333, bought["37"]))
    await client.close()
    assert last["39"] == "00"
    assert balances(last) == Balances(cash=100_000, cashback=0)
    _all_undone(env.core.db_path)
    assert card_accounts(env.core.db_path, pan) == (100_000, 0)
    assert verify(env.core.db_path).ok


async def test_a_partial_reversal_is_remembered_across_a_restart(tmp_path):
    data_dir, clock = tmp_path / "var", FixedClock(LAUNCH)
    term = Terminal("T0000001", "NAMDONG01", stan=70)
    async with start_switch(data_dir, clock=clock) as env:
        await provision(env)
        pan = env.cards["namdong"]["pan"]
        client = await env.client().connect()
        await client.request(term.sign_on())
        req = term.purchase(pan, 20_000)
        assert (await client.request(req))["39"] == "00"
        assert (await client.request(term.reversal(req, replacement_amount=12_000)))["39"] == "00"
        await client.close()
    async with start_switch(data_dir, clock=clock) as env:
        client = await env.client().connect()
        await client.request(term.sign_on())
        again = await client.request(term.reversal(req, replacement_amount=12_000))
        await client.close()
        assert balances(again) == Balances(cash=88_000, cashback=900)
        assert postings(env.core.db_path, "purchase")[0]["undone"] == 8_000
        assert len(postings(env.core.db_path, "reversal")) == 1
        assert verify(env.core.db_path).ok


async def test_the_posting_cache_is_bounded_and_refunds_of_forgotten_purchases_still_work(switch_env):
    env = switch_env
    env.core.state.postings_max = 2
    client, term = await env.signed_on()
    pan = env.cards["incheon"]["pan"]
    bought = [await client.request(term.purchase(pan, 10_000 + i)) for i in range(4)]
    assert len(env.core.state.postings) == 2 and len(env.core.state.rrns) <= 2
    # the first purchase is no longer cached: refund it in two parts, then reverse the refund
    first = await client.request(term.refund(pan, 4_000, bought[0]["37"]))
    second = await client.request(term.refund(pan, 6_000, bought[0]["37"]))
    assert (first["39"], second["39"]) == ("00", "00")
    assert (await client.request(term.refund(pan, 1, bought[0]["37"])))["39"] == "13"  # nothing left
    refund = term.refund(pan, 5_000, bought[1]["37"])
    assert (await client.request(refund))["39"] == "00"
    env.core.state.postings.clear()  # nothing cached: the reversal reads refund and purchase back
    env.core.state.rrns.clear()
    assert (await client.request(term.reversal(refund)))["39"] == "00"
    assert (await client.request(term.refund(pan, 10_001, bought[1]["37"])))["39"] == "00"  # all of it again
    assert verify(env.core.db_path).ok
    assert len(env.core.state.postings) <= 2  # the bound holds: the cache never keeps an uncommitted change
    await client.close()
