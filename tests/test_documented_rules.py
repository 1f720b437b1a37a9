"""One test per documented rule, end to end over real TCP with exact ledger values.

Each test names the rule it guards and where it is written down:
docs/architecture.md ("Choices made where the issues are silent", "Per-program fairness"),
docs/host-interface.md (§2 messages, §4 response codes) and docs/domain.md ("Limits").
Every one of them fails when its rule is broken in switch/ (the mutation each kills is in
its docstring).

The fixture's population (tests/conftest.py): NAMDONG01 and YEONSU01, both 250M annual
sales (fee micro tier 0.5 % until 2022-01-31; Namdong supports its merchants' fee), one
terminal each (T0000001, T0000002), a Namdong card and an Incheon card holding 100,000
each; the clock stands at 2019-07-20 12:00 KST (policy "2019-04": 6 % = national 4 % +
city 2 %, Namdong card +1.5 % inside Namdong, no monthly cap).
"""

from __future__ import annotations

from datetime import datetime

import pytest
import structlog

from conftest import (LAUNCH, account, account_balances, card_accounts, card_id, payable, posting_count,
                      posting_entries, postings, provision, query, start_switch)
from conftest import bought as _bought
from switch.ledger.audit import verify
from switch.clock import FixedClock
from switch.wire.codec import encode_fields
from switch.wire.framing import frame
from switch.wire.messages import Balances, decode_balances
from switch.ops.operations import OperationError
from terminal_sim.terminal import Terminal

pytestmark = pytest.mark.both_stores  # SQLite and PostgreSQL (tests/conftest.py)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def balances(resp: dict[str, str]) -> Balances:
    return decode_balances(resp["54"])


def eligible(db, member: str) -> dict[str, int]:
    """The member's monthly eligible spend, month → won, as stored in member_months."""
    return dict(query(db, "SELECT month, eligible FROM member_months WHERE member=? ORDER BY month", member))


def card_days(db, cid: int) -> dict[str, int]:
    return dict(query(db, "SELECT day, spent FROM card_days WHERE card_id=? ORDER BY day", cid))


def card_months(db, cid: int) -> dict[str, int]:
    return dict(query(db, "SELECT month, charged FROM card_months WHERE card_id=? ORDER BY month", cid))


async def declined(env, client, fields: dict[str, str], rc: str, *, mti: str = "0210") -> dict[str, str]:
    """Send; expect `rc` without approval fields, and nothing posted."""
    before = posting_count(env.core.db_path)
    resp = await client.request(fields)
    assert resp is not None, f"the switch closed the connection instead of answering {rc}"
    assert (resp["t"], resp["39"]) == (mti, rc)
    assert "37" not in resp and "38" not in resp
    assert posting_count(env.core.db_path) == before
    return resp


async def charged_card(env, *, program: str = "incheon", amount: int, member: str | None = None) -> tuple[str, int]:
    card = await env.op("card-issue", program=program, **({"member": member} if member else {}))
    await env.op("card-charge", pan=card["pan"], amount=amount)
    return card["pan"], card_id(env.core.db_path, card["pan"])


async def refused_charge(env, pan: str, amount: int) -> str:
    """An operator charge that must be refused: its error text, nothing posted."""
    before = posting_count(env.core.db_path)
    with pytest.raises(OperationError) as refused:
        await env.op("card-charge", pan=pan, amount=amount)
    assert posting_count(env.core.db_path) == before
    return str(refused.value)


# ---------------------------------------------------------------------------------------------
# docs/architecture.md, Choices: "The refunded amount leaves the member's monthly eligible spend
# in the original's month."  Policy 2020-01 (Incheon card): national and city 2 % each to 300k
# of the member's month, 1 % each to 500k, 0.5 % each to 1M (4 % / 2 % / 1 % in all).


async def test_refund_gives_back_monthly_eligible_spend_so_the_next_purchase_earns_the_lower_tier_rate(switch_env):
    """Kills: the sign of the give-back flipped in `_undo_purchase` (SQL upsert or hot state),
    and a refund that leaves eligible spend untouched."""
    env = switch_env
    db = env.core.db_path
    env.clock.at = at("2020-01-10T12:00:00+09:00")
    pan, cid = await charged_card(env, amount=1_000_000, member="M-REFUND")
    client, term = await env.signed_on("T0000002", "YEONSU01")

    bought = await client.request(term.purchase(pan, 300_000))
    assert bought["39"] == "00"
    assert balances(bought) == Balances(cash=700_000, cashback=12_000)  # 300,000 × 4 %
    assert eligible(db, "M-REFUND") == {"2020-01": 300_000}

    env.clock.at = at("2020-01-11T12:00:00+09:00")
    refund = await client.request(term.refund(pan, 100_000, bought["37"]))
    assert refund["39"] == "00"
    assert balances(refund) == Balances(cash=800_000, cashback=8_000)  # a third of 12,000 clawed back
    assert eligible(db, "M-REFUND") == {"2020-01": 200_000}

    env.clock.at = at("2020-01-12T12:00:00+09:00")
    after = await client.request(term.purchase(pan, 150_000))
    await client.close()
    assert after["39"] == "00"
    # month spend 200,000 before it: 100,000 × 4 % + 50,000 × 2 % = 5,000 (400,000 would give 2,500)
    purchase = postings(db, "purchase")[-1]
    assert purchase["cashback"] == 5_000
    assert posting_entries(db, purchase["id"]) == {
        f"card:{cid}:cashback": -8_000 + 5_000,  # the 8,000 cashback is spent first, 5,000 earned
        f"card:{cid}:cash": -142_000,
        payable("YEONSU01"): 150_000 - 750,
        "fee_income": 750,
        "cashback_expense:national": -2_500,
        "cashback_expense:city": -2_500,
    }
    assert balances(after) == Balances(cash=658_000, cashback=5_000)
    assert eligible(db, "M-REFUND") == {"2020-01": 350_000}
    assert verify(db).ok


async def test_refund_gives_back_eligible_spend_in_the_original_purchase_month_not_the_refund_month(switch_env):
    """January's purchase refunded on 1 February: January's eligible spend drops, February's
    is untouched, so February's first purchase earns February's full first tier.
    Kills: the give-back booked in the refund's month, and its sign flipped."""
    env = switch_env
    db = env.core.db_path
    env.clock.at = at("2020-01-31T23:00:00+09:00")
    pan, cid = await charged_card(env, amount=1_000_000, member="M-MONTHS")
    client, term = await env.signed_on("T0000002", "YEONSU01")
    bought = await client.request(term.purchase(pan, 300_000))
    assert balances(bought) == Balances(cash=700_000, cashback=12_000)

    env.clock.at = at("2020-02-01T00:00:00+09:00")  # the first instant of February, KST
    refund = await client.request(term.refund(pan, 100_000, bought["37"]))
    assert refund["39"] == "00"
    assert balances(refund) == Balances(cash=800_000, cashback=8_000)
    assert eligible(db, "M-MONTHS") == {"2020-01": 200_000}

    env.clock.at = at("2020-02-03T12:00:00+09:00")
    february = await client.request(term.purchase(pan, 350_000))
    await client.close()
    assert february["39"] == "00"
    # February starts at 0: 300,000 × 4 % + 50,000 × 2 % = 13,000
    purchase = postings(db, "purchase")[-1]
    assert purchase["cashback"] == 13_000
    entries = posting_entries(db, purchase["id"])
    assert (entries["cashback_expense:national"], entries["cashback_expense:city"]) == (-6_500, -6_500)
    assert balances(february) == Balances(cash=458_000, cashback=13_000)
    assert eligible(db, "M-MONTHS") == {"2020-01": 200_000, "2020-02": 350_000}
    assert verify(db).ok


async def test_reversing_a_refund_puts_its_eligible_spend_back_in_the_original_month(switch_env):
    """docs/host-interface.md §2, reversal of a refund: the refund is undone, so the spend it
    took out of the month's eligible spend comes back. Kills: the sign of the give-back
    flipped in `_undo_refund` (SQL upsert or hot state)."""
    env = switch_env
    db = env.core.db_path
    env.clock.at = at("2020-01-15T12:00:00+09:00")
    pan, cid = await charged_card(env, amount=1_000_000, member="M-PUTBACK")
    client, term = await env.signed_on("T0000002", "YEONSU01")
    bought = await client.request(term.purchase(pan, 300_000))
    refund_req = term.refund(pan, 100_000, bought["37"])
    assert (await client.request(refund_req))["39"] == "00"
    assert eligible(db, "M-PUTBACK") == {"2020-01": 200_000}

    put_back = await client.request(term.reversal(refund_req))
    assert (put_back["t"], put_back["39"]) == ("0410", "00")
    assert balances(put_back) == Balances(cash=700_000, cashback=12_000)
    assert eligible(db, "M-PUTBACK") == {"2020-01": 300_000}

    after = await client.request(term.purchase(pan, 100_000))
    await client.close()
    # the month stands at 300,000 again: all of it in the 2 % tier
    assert balances(after) == Balances(cash=612_000, cashback=2_000)
    purchase = postings(db, "purchase")[-1]
    entries = posting_entries(db, purchase["id"])
    assert (purchase["cashback"], entries["cashback_expense:national"], entries["cashback_expense:city"]) == (
        2_000, -1_000, -1_000)
    assert eligible(db, "M-PUTBACK") == {"2020-01": 400_000}
    assert verify(db).ok


# ---------------------------------------------------------------------------------------------
# docs/architecture.md, Choices: "a reversal means the purchase did not happen, so it also gives
# the day's spending limit back; a refund does not."  Daily limit 2,000,000 (config/programs.toml).


async def test_reversal_gives_back_the_daily_limit_and_a_refund_does_not(switch_env):
    """Kills: the reversal's give-back of the day's spend removed (hot state or SQL), and a
    refund that gives the day's spend back."""
    env = switch_env
    db = env.core.db_path
    pan, cid = await charged_card(env, amount=2_000_000)
    client, term = await env.signed_on("T0000002", "YEONSU01")

    first = term.purchase(pan, 2_000_000)
    assert (await client.request(first))["39"] == "00"
    assert card_days(db, cid) == {"2019-07-20": 2_000_000}
    reversed_ = await client.request(term.reversal(first))
    assert reversed_["39"] == "00"
    assert balances(reversed_) == Balances(cash=2_000_000, cashback=0)
    assert card_days(db, cid) == {"2019-07-20": 0}

    again = await client.request(term.purchase(pan, 2_000_000))
    assert again["39"] == "00"  # the whole limit is back
    assert balances(again) == Balances(cash=0, cashback=120_000)
    refund = await client.request(term.refund(pan, 2_000_000, again["37"]))
    assert refund["39"] == "00"
    assert balances(refund) == Balances(cash=2_000_000, cashback=0)
    assert card_days(db, cid) == {"2019-07-20": 2_000_000}  # a refund gives no limit back

    await declined(env, client, term.purchase(pan, 10_000), "61")
    await client.close()
    assert [p["amount"] for p in postings(db, "purchase")] == [2_000_000, 2_000_000]
    assert card_accounts(db, pan) == (2_000_000, 0)
    assert verify(db).ok


# ---------------------------------------------------------------------------------------------
# docs/domain.md, Limits; docs/architecture.md, Choices ("Limits"): minimum charge 10,000;
# holding limit 2,000,000 (cash + cashback) checked on charges; monthly charge cap 1,500,000
# from 2023-09-01 00:00 KST.


async def test_monthly_charge_cap_of_1_500_000_applies_from_2023_09_01_kst_and_rolls_over_monthly(switch_env):
    """Kills: the cap check removed, the cap in force before 2023-09-01, `>=` for `>`, and a
    month that does not roll over at 00:00 KST (e.g. a UTC month)."""
    env = switch_env
    db = env.core.db_path
    env.clock.at = at("2023-08-31T23:59:59+09:00")  # no cap yet: 1,510,000 in August is fine
    august_pan, august_id = await charged_card(env, amount=1_500_000)
    await env.op("card-charge", pan=august_pan, amount=10_000)
    assert card_months(db, august_id) == {"2023-08": 1_510_000}

    env.clock.at = at("2023-09-01T00:00:00+09:00")
    pan, cid = await charged_card(env, amount=1_000_000)
    await env.op("card-charge", pan=pan, amount=490_000)
    assert await refused_charge(env, pan, 10_001) == (
        "charge would exceed the monthly charge limit of 1,500,000 won (charged this month: 1,490,000)")
    done = await env.op("card-charge", pan=pan, amount=10_000)  # exactly the cap
    assert (done["charged"], done["cash"]) == (10_000, 1_500_000)
    assert await refused_charge(env, pan, 10_000) == (
        "charge would exceed the monthly charge limit of 1,500,000 won (charged this month: 1,500,000)")
    # August's charges do not count in September
    assert (await env.op("card-charge", pan=august_pan, amount=10_000))["cash"] == 1_520_000

    env.clock.at = at("2023-09-30T23:59:59.999999+09:00")
    assert await refused_charge(env, pan, 10_000) == (
        "charge would exceed the monthly charge limit of 1,500,000 won (charged this month: 1,500,000)")
    env.clock.at = at("2023-10-01T00:00:00+09:00")  # 2023-09-30 15:00 UTC: October in Korea
    assert (await env.op("card-charge", pan=pan, amount=10_000))["cash"] == 1_510_000

    assert card_months(db, cid) == {"2023-09": 1_500_000, "2023-10": 10_000}
    assert card_accounts(db, pan) == (1_510_000, 0)
    assert card_accounts(db, august_pan) == (1_520_000, 0)
    assert account(db, "bank_settlement") == -(2 * 100_000 + 1_520_000 + 1_510_000)
    assert verify(db).ok


async def test_minimum_charge_is_10_000_and_holding_limit_2_000_000_counts_cash_and_cashback(switch_env):
    """Kills: `<=` for `<` on the minimum, `>=` for `>` on the holding limit, and a holding
    limit that counts cash only."""
    env = switch_env
    db = env.core.db_path
    pan = env.cards["namdong"]["pan"]
    assert await refused_charge(env, pan, 9_999) == "--amount 9,999 is below the minimum charge of 10,000 won"
    assert (await env.op("card-charge", pan=pan, amount=10_000))["cash"] == 110_000

    client, term = await env.signed_on("T0000001", "NAMDONG01")
    spent = await client.request(term.purchase(pan, 20_000))
    await client.close()
    assert balances(spent) == Balances(cash=90_000, cashback=1_500)  # holds 91,500

    assert await refused_charge(env, pan, 1_908_501) == (
        "charge would hold 2,000,001 won, over the holding limit of 2,000,000 won (room: 1,908,500)")
    full = await env.op("card-charge", pan=pan, amount=1_908_500)
    assert (full["cash"], full["cashback"]) == (1_998_500, 1_500)  # exactly 2,000,000 held
    assert await refused_charge(env, pan, 10_000) == (
        "charge would hold 2,010,000 won, over the holding limit of 2,000,000 won (room: 0)")
    assert [p["amount"] for p in postings(db, "charge") if p["card_id"] == card_id(db, pan)] == [
        100_000, 10_000, 1_908_500]
    assert card_accounts(db, pan) == (1_998_500, 1_500)
    assert verify(db).ok


# ---------------------------------------------------------------------------------------------
# docs/architecture.md, Choices: "Sign-on state is in memory: after a switch restart terminals
# sign on again (58 until they do)"; docs/host-interface.md §2, 0800.


async def test_after_a_restart_a_terminal_gets_58_until_it_signs_on_again(tmp_path):
    """Kills: a sign-on that survives a restart (kept in the store or shared between engines)."""
    data_dir, clock = tmp_path / "var", FixedClock(LAUNCH)
    term = Terminal("T0000001", "NAMDONG01", stan=40)
    async with start_switch(data_dir, clock=clock) as env:
        await provision(env)
        pan = env.cards["namdong"]["pan"]
        client = await env.client().connect()
        assert (await client.request(term.sign_on()))["39"] == "00"
        assert (await client.request(term.purchase(pan, 20_000)))["39"] == "00"
        await client.close()

    async with start_switch(data_dir, clock=clock) as env:
        db = env.core.db_path
        client = await env.client().connect()
        await declined(env, client, term.purchase(pan, 20_000), "58")
        await declined(env, client, term.echo(), "58", mti="0810")
        assert len(postings(db, "purchase")) == 1
        assert card_accounts(db, pan) == (80_000, 1_500)

        assert (await client.request(term.sign_on()))["39"] == "00"
        resp = await client.request(term.purchase(pan, 20_000))
        await client.close()
        assert resp["39"] == "00"
        # the 1,500 cashback is spent first, then 18,500 cash; 1,500 earned again
        assert balances(resp) == Balances(cash=61_500, cashback=1_500)
        assert len(postings(db, "purchase")) == 2
        assert verify(db).ok


# ---------------------------------------------------------------------------------------------
# docs/architecture.md, Choices: "Spending order: a purchase spends the cashback balance first,
# then cash; cashback is earned on the full amount and credited in the same posting."
# (docs/domain.md, Spending order and clawback (assumptions).)


async def test_purchase_spends_cashback_first_then_cash_and_earns_on_the_full_amount(switch_env):
    """Kills: cash spent first, and cashback earned on the cash part only."""
    env = switch_env
    db = env.core.db_path
    pan = env.cards["namdong"]["pan"]
    cid = card_id(db, pan)
    client, term = await env.signed_on("T0000002", "YEONSU01")  # Namdong card in Yeonsu: 6 %
    assert balances(await client.request(term.purchase(pan, 20_000))) == Balances(cash=80_000, cashback=1_200)

    exact = await client.request(term.purchase(pan, 1_200))  # all of the cashback, no cash
    assert balances(exact) == Balances(cash=80_000, cashback=72)
    assert posting_entries(db, postings(db, "purchase")[-1]["id"]) == {
        f"card:{cid}:cashback": -1_200 + 72,
        payable("YEONSU01"): 1_200 - 6,
        "fee_income": 6,
        "cashback_expense:national": -48,
        "cashback_expense:city": -24,
    }

    mixed = await client.request(term.purchase(pan, 10_000))  # 72 cashback, then 9,928 cash
    await client.close()
    assert balances(mixed) == Balances(cash=70_072, cashback=600)
    assert posting_entries(db, postings(db, "purchase")[-1]["id"]) == {
        f"card:{cid}:cashback": -72 + 600,  # 6 % of 10,000, not of the 9,928 paid in cash
        f"card:{cid}:cash": -9_928,
        payable("YEONSU01"): 10_000 - 50,
        "fee_income": 50,
        "cashback_expense:national": -400,
        "cashback_expense:city": -200,
    }
    assert card_accounts(db, pan) == (70_072, 600)
    assert verify(db).ok


# ---------------------------------------------------------------------------------------------
# docs/architecture.md, Choices: "A clawback larger than the cashback balance is taken from cash,
# and the rest is recorded on the card's receivable account" and "Receivables left by a clawback
# are settled first by the card's next charge."  (docs/domain.md, Spending order and clawback.)


async def test_a_clawback_larger_than_the_cashback_balance_is_taken_from_cash(switch_env):
    """Kills: a clawback that takes the cashback balance below zero."""
    env = switch_env
    db = env.core.db_path
    pan = env.cards["namdong"]["pan"]
    cid = card_id(db, pan)
    home, home_term = await env.signed_on("T0000001", "NAMDONG01")
    away, away_term = await env.signed_on("T0000002", "YEONSU01")
    bought = await home.request(home_term.purchase(pan, 100_000))
    assert balances(bought) == Balances(cash=0, cashback=7_500)
    spent = await away.request(away_term.purchase(pan, 7_500))  # the cashback is spent; 6 % = 450 earned
    await away.close()
    assert balances(spent) == Balances(cash=0, cashback=450)

    refund = await home.request(home_term.refund(pan, 20_000, bought["37"]))
    await home.close()
    # a fifth of 7,500 is clawed back: 1,500, of which the 450 cashback covers 450 and cash 1,050
    assert (refund["39"], balances(refund)) == ("00", Balances(cash=18_950, cashback=0))
    assert posting_entries(db, postings(db, "refund")[-1]["id"]) == {
        f"card:{cid}:cash": 18_950,
        f"card:{cid}:cashback": -450,
        payable("NAMDONG01"): -20_000,  # - 20,000 + fee back 100 - support back 100
        "fee_income": -100,
        "fee_subsidy:namdong": 100,
        "cashback_expense:national": 800,
        "cashback_expense:city": 400,
        "cashback_expense:namdong": 300,
    }
    assert account(db, f"card:{cid}:receivable") == 0
    assert card_accounts(db, pan) == (18_950, 0)
    assert verify(db).ok


async def test_receivable_left_by_a_clawback_is_settled_first_by_the_next_charges(switch_env):
    """Kills: a charge that ignores the receivable, and a clawback that drives cash or
    cashback below zero instead of recording a receivable."""
    env = switch_env
    db = env.core.db_path
    pan = env.cards["namdong"]["pan"]
    cid = card_id(db, pan)
    home, home_term = await env.signed_on("T0000001", "NAMDONG01")
    away, away_term = await env.signed_on("T0000002", "YEONSU01")

    bought = await home.request(home_term.purchase(pan, 100_000))
    assert balances(bought) == Balances(cash=0, cashback=7_500)  # 7.5 % in Namdong
    refund = home_term.refund(pan, 100_000, bought["37"])
    assert balances(await home.request(refund)) == Balances(cash=100_000, cashback=0)
    spent = await away.request(away_term.purchase(pan, 100_000))  # the refunded money is spent again
    assert balances(spent) == Balances(cash=0, cashback=6_000)

    # reversing the refund takes 100,000 back and re-credits 7,500: 13,500 is covered by the
    # cashback (6,000 + 7,500), the other 86,500 is owed
    undone = await home.request(home_term.reversal(refund))
    assert (undone["39"], balances(undone)) == ("00", Balances(cash=0, cashback=0))
    reversal = postings(db, "reversal")[-1]
    assert posting_entries(db, reversal["id"]) == {
        f"card:{cid}:cashback": -6_000,
        f"card:{cid}:receivable": -86_500,
        payable("NAMDONG01"): 100_000,  # + 100,000 - fee 500 + support 500
        "fee_income": 500,
        "fee_subsidy:namdong": -500,
        "cashback_expense:national": -4_000,
        "cashback_expense:city": -2_000,
        "cashback_expense:namdong": -1_500,
    }
    assert account(db, f"card:{cid}:receivable") == -86_500
    await declined(env, away, away_term.purchase(pan, 1), "51")
    await home.close()
    await away.close()

    part = await env.op("card-charge", pan=pan, amount=50_000)
    assert (part["receivable_repaid"], part["cash"]) == (50_000, 0)
    assert posting_entries(db, part["posting"]) == {"bank_settlement": -50_000, f"card:{cid}:receivable": 50_000}
    rest = await env.op("card-charge", pan=pan, amount=50_000)
    assert (rest["receivable_repaid"], rest["cash"]) == (36_500, 13_500)
    assert posting_entries(db, rest["posting"]) == {
        "bank_settlement": -50_000, f"card:{cid}:receivable": 36_500, f"card:{cid}:cash": 13_500}
    after = await env.op("card-charge", pan=pan, amount=10_000)
    assert (after["receivable_repaid"], after["cash"]) == (0, 23_500)
    assert account(db, f"card:{cid}:receivable") == 0
    assert card_accounts(db, pan) == (23_500, 0)
    assert verify(db).ok


# ---------------------------------------------------------------------------------------------
# docs/architecture.md, Choices: "Partial reversal (DE95): the original stands at the DE95
# amount; the switch records how much has been reversed, so a second reversal with the same
# DE95 undoes nothing more."


async def test_a_second_partial_reversal_with_the_same_de95_and_another_stan_undoes_nothing_more(switch_env):
    """Kills: a partial reversal that undoes `amount − DE95` each time without subtracting what
    was already reversed."""
    env = switch_env
    db = env.core.db_path
    client, term, pan, req, _ = await _bought(env)  # Namdong card, 20,000 at NAMDONG01
    cid = card_id(db, pan)

    first = term.reversal(req, replacement_amount=12_000)
    second = term.reversal(req, replacement_amount=12_000)
    assert first["11"] != second["11"]  # two messages, not a repeat
    r1 = await client.request(first)
    r2 = await client.request(second)
    higher = await client.request(term.reversal(req, replacement_amount=15_000))  # above what stands
    await client.close()
    assert (r1["39"], r2["39"], higher["39"]) == ("00", "00", "00")
    # 8,000 of 20,000 undone once: fee and support 40, national 320, city 160, Namdong 120
    assert balances(r1) == balances(r2) == balances(higher) == Balances(cash=88_000, cashback=900)

    (reversal,) = postings(db, "reversal")
    assert (reversal["amount"], reversal["fee"], reversal["support"], reversal["cashback"]) == (8_000, -40, -40, -600)
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
    assert query(db, "SELECT stan, rc, posting_id FROM messages WHERE mti='0400' ORDER BY stan") == [
        (first["11"], "00", reversal["id"]), (second["11"], "00", None), (higher["11"], "00", None)]
    assert postings(db, "purchase")[0]["undone"] == 8_000
    acc = account_balances(db)
    assert (acc[payable("NAMDONG01")], acc["fee_income"], acc["fee_subsidy:namdong"]) == (12_000, 60, -60)
    assert card_accounts(db, pan) == (88_000, 900)
    assert verify(db).ok


# ---------------------------------------------------------------------------------------------
# docs/architecture.md, Choices: "Reversal before its original: acknowledged (00) and remembered
# in `tombstones`; the late original is declined 12 and not posted."


async def test_a_reversal_before_its_original_is_remembered_across_a_restart_and_the_late_original_declined_12(
        tmp_path):
    """Kills: the tombstone not written to the store (forgotten at restart) and the tombstone
    check removed (the late original approved)."""
    data_dir, clock = tmp_path / "var", FixedClock(LAUNCH)
    term = Terminal("T0000001", "NAMDONG01", stan=300)
    async with start_switch(data_dir, clock=clock) as env:
        await provision(env)
        pan = env.cards["namdong"]["pan"]
        client = await env.client().connect()
        assert (await client.request(term.sign_on()))["39"] == "00"
        original = term.purchase(pan, 20_000)  # lost on its way to the switch
        rev = await client.request(term.reversal(original))
        await client.close()
        assert (rev["t"], rev["39"]) == ("0410", "00")
        assert "54" not in rev and "37" not in rev
        assert query(env.core.db_path, "SELECT tid, stan, tx_time FROM tombstones") == [
            ("T0000001", original["11"], original["7"])]
        before = posting_count(env.core.db_path)

    async with start_switch(data_dir, clock=clock) as env:
        client = await env.client().connect()
        assert (await client.request(term.sign_on()))["39"] == "00"
        await declined(env, client, original, "12")
        await declined(env, client, Terminal.repeat(original), "12")
        await client.close()
        assert posting_count(env.core.db_path) == before
        assert card_accounts(env.core.db_path, pan) == (100_000, 0)
        assert verify(env.core.db_path).ok


# ---------------------------------------------------------------------------------------------
# docs/architecture.md, Choices: "Refund at the selling merchant only: the refund's DE42 must be
# the original's merchant (else 25)"; docs/host-interface.md §3 (refund: same card, same
# merchant, at most what is left) and §4 (13, 25).


async def test_a_refund_only_at_the_selling_merchant_and_elsewhere_25(switch_env):
    """Kills: the merchant check removed (the refund would come out of the selling merchant's
    payable through another merchant's terminal)."""
    env = switch_env
    db = env.core.db_path
    client, term, pan, _, bought = await _bought(env)  # 20,000 at NAMDONG01
    other, other_term = await env.signed_on("T0000002", "YEONSU01")
    await declined(env, other, other_term.refund(pan, 20_000, bought["37"]), "25")
    await other.close()
    assert postings(db, "refund") == []
    assert card_accounts(db, pan) == (80_000, 1_500)
    assert account(db, payable("NAMDONG01")) == 20_000
    assert account(db, payable("YEONSU01")) == 0

    at_seller = await client.request(term.refund(pan, 20_000, bought["37"]))
    await client.close()
    assert at_seller["39"] == "00"
    assert balances(at_seller) == Balances(cash=100_000, cashback=0)
    assert account(db, payable("NAMDONG01")) == 0
    assert verify(db).ok


async def test_a_refund_beyond_what_is_left_is_13_and_with_another_card_25(switch_env):
    """Kills: `>=` for `>` on what is left, a refund that ignores earlier refunds, and a refund
    that does not compare the card."""
    env = switch_env
    db = env.core.db_path
    client, term, pan, _, bought = await _bought(env)
    assert (await client.request(term.refund(pan, 5_000, bought["37"])))["39"] == "00"
    await declined(env, client, term.refund(pan, 15_001, bought["37"]), "13")
    await declined(env, client, term.refund(env.cards["incheon"]["pan"], 1_000, bought["37"]), "25")
    rest = await client.request(term.refund(pan, 15_000, bought["37"]))
    await client.close()
    assert rest["39"] == "00"
    assert [p["amount"] for p in postings(db, "refund")] == [5_000, 15_000]
    assert postings(db, "purchase")[0]["undone"] == 20_000
    assert card_accounts(db, pan) == (100_000, 0)
    assert card_accounts(db, env.cards["incheon"]["pan"]) == (100_000, 0)
    assert verify(db).ok


# ---------------------------------------------------------------------------------------------
# docs/architecture.md, Choices: "Cashback-excluded categories are approved without cashback;
# not-accepted categories (large marts, department stores, franchise company stores) are
# declined 57" (docs/domain.md, Exclusions); config/programs.toml: excluded spend is not
# eligible spend either.


async def test_excluded_category_is_approved_without_cashback_or_eligible_spend_and_not_accepted_is_57(switch_env):
    """Kills: cashback paid at an excluded category, excluded spend counted as eligible spend
    (the next purchase would fall into the 2 % tier), and a not-accepted category approved."""
    env = switch_env
    db = env.core.db_path
    env.clock.at = at("2020-01-15T12:00:00+09:00")
    await env.op("merchant-add", mid="BET00001", name="Betting Shop", district="yeonsu",
                 annual_sales=250_000_000, category="gambling")
    await env.op("terminal-add", tid="T0000008", mid="BET00001")
    await env.op("merchant-add", mid="MART0001", name="Large Mart", district="yeonsu",
                 annual_sales=250_000_000, category="large_mart")
    await env.op("terminal-add", tid="T0000009", mid="MART0001")
    pan, cid = await charged_card(env, amount=1_000_000, member="M-EXCLUDED")

    bet, bet_term = await env.signed_on("T0000008", "BET00001")
    gambled = await bet.request(bet_term.purchase(pan, 300_000))
    await bet.close()
    assert gambled["39"] == "00"
    assert balances(gambled) == Balances(cash=700_000, cashback=0)
    purchase = postings(db, "purchase")[-1]
    assert posting_entries(db, purchase["id"]) == {
        f"card:{cid}:cash": -300_000, payable("BET00001"): 300_000 - 1_500, "fee_income": 1_500}
    assert eligible(db, "M-EXCLUDED") == {"2020-01": 0}

    mart, mart_term = await env.signed_on("T0000009", "MART0001")
    await declined(env, mart, mart_term.purchase(pan, 10_000), "57")
    await mart.close()

    shop, shop_term = await env.signed_on("T0000002", "YEONSU01")
    after = await shop.request(shop_term.purchase(pan, 100_000))
    await shop.close()
    assert balances(after) == Balances(cash=600_000, cashback=4_000)  # still the 4 % tier
    assert eligible(db, "M-EXCLUDED") == {"2020-01": 100_000}
    assert account(db, payable("MART0001")) == 0
    assert verify(db).ok


# ---------------------------------------------------------------------------------------------
# docs/architecture.md, Choices: "DE14 is optional; when present it must equal the card's expiry
# (else 14). Expiry is checked against the switch clock in KST; a card is valid through its
# expiry month."  docs/host-interface.md §4 (14, 54).


async def test_de14_must_equal_the_card_expiry_else_14(switch_env):
    """Kills: DE14 ignored, or compared only when it is in the past."""
    env = switch_env
    card = await env.op("card-issue", program="incheon", expiry="2012")
    await env.op("card-charge", pan=card["pan"], amount=50_000)
    client, term = await env.signed_on("T0000002", "YEONSU01")
    for wrong in ("2011", "2101", "1912"):
        await declined(env, client, term.purchase(card["pan"], 1_000, expiry=wrong), "14")
    assert (await client.request(term.purchase(card["pan"], 1_000, expiry="2012")))["39"] == "00"
    assert (await client.request(term.purchase(card["pan"], 1_000)))["39"] == "00"  # DE14 is optional
    await client.close()
    assert card_accounts(env.core.db_path, card["pan"]) == (48_060, 60)  # the 60 earned is spent first
    assert verify(env.core.db_path).ok


async def test_a_card_is_valid_through_the_last_instant_of_its_expiry_month_in_kst(switch_env):
    """Kills: expiry compared in UTC (00:00 KST on 1 August is still July in UTC), `>=` for
    `>` (the expiry month itself refused), and no expiry check at all."""
    env = switch_env
    card = await env.op("card-issue", program="incheon", expiry="1907")
    await env.op("card-charge", pan=card["pan"], amount=50_000)
    client, term = await env.signed_on("T0000002", "YEONSU01")
    env.clock.at = at("2019-07-31T23:59:59.999999+09:00")
    last = await client.request(term.purchase(card["pan"], 10_000, expiry="1907"))
    assert (last["39"], balances(last)) == ("00", Balances(cash=40_000, cashback=600))
    env.clock.at = at("2019-07-31T15:00:00+00:00")  # 2019-08-01 00:00 KST
    await declined(env, client, term.purchase(card["pan"], 10_000, expiry="1907"), "54")
    await declined(env, client, term.balance(card["pan"]), "54")
    await client.close()
    assert card_accounts(env.core.db_path, card["pan"]) == (40_000, 600)
    assert verify(env.core.db_path).ok


# ---------------------------------------------------------------------------------------------
# docs/architecture.md, Choices ("Limits"): daily spend 2,000,000 per card, checked on purchases
# (61); docs/host-interface.md §4: "the card's spending today (KST) plus this amount exceeds".


async def test_daily_spend_limit_allows_exactly_the_limit_and_declines_61_above_it_per_kst_day(switch_env):
    """Kills: `>=` for `>`, and a day counted in UTC (00:00 KST on the 21st is still the 20th
    in UTC)."""
    env = switch_env
    db = env.core.db_path
    pan, cid = await charged_card(env, amount=2_000_000)
    client, term = await env.signed_on("T0000002", "YEONSU01")
    env.clock.at = at("2019-07-20T23:59:59+09:00")
    big = await client.request(term.purchase(pan, 1_999_999))
    # 6 %: national floor(79,999.96) + city floor(39,999.98)
    assert (big["39"], balances(big)) == ("00", Balances(cash=1, cashback=119_998))
    await declined(env, client, term.purchase(pan, 2), "61")
    assert (await client.request(term.purchase(pan, 1)))["39"] == "00"  # 2,000,000: exactly the limit
    await declined(env, client, term.purchase(pan, 1), "61")
    env.clock.at = at("2019-07-21T00:00:00+09:00")
    next_day = await client.request(term.purchase(pan, 10_000))
    await client.close()
    assert next_day["39"] == "00"
    assert card_days(db, cid) == {"2019-07-20": 2_000_000, "2019-07-21": 10_000}
    assert verify(db).ok


# ---------------------------------------------------------------------------------------------
# docs/architecture.md, Choices: "A program over capacity is answered 91, nothing posted or
# stored, so a repeat is processed afresh."  (tests/test_fairness.py shows the 91 and that
# nothing posts; this one shows nothing is stored.)


async def test_a_request_shed_with_91_is_not_stored_and_the_same_message_again_is_processed_afresh(tmp_path):
    """Kills: a 91 stored as the message's outcome (its repeat would get 91 again, or 94)."""
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH), program_in_flight_max=1,
                            program_queue_max=0) as env:
        await provision(env)
        db = env.core.db_path
        pan = env.cards["incheon"]["pan"]
        client, term = await env.signed_on()
        holder, shed = term.purchase(pan, 1_000), term.purchase(pan, 2_000)
        # one write: the first takes the program's only slot and holds it until its commit;
        # the second finds no slot and no waiting room
        data = b"".join(frame(env.dialect.framing, encode_fields(f, env.dialect)) for f in (holder, shed))
        await client.send_raw(data)
        answers = {a["11"]: a["39"] for a in [await client.receive(), await client.receive()]}
        assert answers == {holder["11"]: "00", shed["11"]: "91"}
        assert query(db, "SELECT stan, rc FROM messages WHERE stan IN (?, ?) ORDER BY stan",
                     holder["11"], shed["11"]) == [(holder["11"], "00")]
        assert [p["amount"] for p in postings(db, "purchase")] == [1_000]

        again = await client.request(shed)  # the terminal sends the very same message again
        await client.close()
        assert (again["39"], balances(again)) == ("00", Balances(cash=97_060, cashback=120))  # 60 spent first, 120 earned
        assert [p["amount"] for p in postings(db, "purchase")] == [1_000, 2_000]
        assert verify(db).ok


async def test_a_reversal_is_never_shed_while_its_programs_slots_are_full(tmp_path):
    """docs/architecture.md, Per-program fairness: "Reversals and network messages are not
    gated: a reversal gives money back and must not be shed by a flood." Kills: reversals
    taking a program slot (the reversal would be answered 91 and the money not given back)."""
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH), program_in_flight_max=1,
                            program_queue_max=0) as env:
        await provision(env)
        db = env.core.db_path
        pan = env.cards["incheon"]["pan"]
        client, term = await env.signed_on()
        original = term.purchase(pan, 20_000)
        assert (await client.request(original))["39"] == "00"
        # one write: a purchase takes the Incheon program's only slot, then its reversal and
        # another purchase of the same program arrive while that slot is held
        holder, reversal, shed = term.purchase(pan, 1_000), term.reversal(original), term.purchase(pan, 2_000)
        await client.send_raw(b"".join(frame(env.dialect.framing, encode_fields(f, env.dialect))
                                       for f in (holder, reversal, shed)))
        answers = {a["11"]: (a["t"], a["39"]) for a in [await client.receive() for _ in range(3)]}
        await client.close()
        assert answers == {holder["11"]: ("0210", "00"), reversal["11"]: ("0410", "00"), shed["11"]: ("0210", "91")}
        (undone,) = postings(db, "reversal")
        assert (undone["amount"], undone["cashback"]) == (20_000, -1_200)
        assert [p["amount"] for p in postings(db, "purchase")] == [20_000, 1_000]
        # the 1,000 spent 1,000 of the 1,200 cashback and earned 60; the reversal gives 20,000 back
        # and claws back the 1,200: 260 from the cashback, 940 from cash
        assert card_accounts(db, pan) == (99_060, 0)
        assert verify(db).ok


# ---------------------------------------------------------------------------------------------
# docs/architecture.md, Choices: "RRN is the posting id, 12 digits; DE38 its last 6 digits.
# Reversal responses carry no RRN of their own."


async def test_rrn_is_the_twelve_digit_posting_id_de38_its_last_six_and_reversals_carry_none(switch_env):
    """Kills: an RRN not derived from the posting id, a DE38 not its last six digits, and a
    reversal answered with an RRN."""
    env = switch_env
    db = env.core.db_path
    client, term, pan, req, resp = await _bought(env)
    (purchase,) = postings(db, "purchase")
    assert resp["37"] == f"{purchase['id']:012d}"
    assert resp["38"] == resp["37"][-6:]
    refund = await client.request(term.refund(pan, 5_000, resp["37"]))
    (refund_posting,) = postings(db, "refund")
    assert (refund["37"], refund["38"]) == (f"{refund_posting['id']:012d}", f"{refund_posting['id']:012d}"[-6:])
    rev = await client.request(term.reversal(req))
    await client.close()
    assert rev["39"] == "00" and len(postings(db, "reversal")) == 1
    assert "37" not in rev and "38" not in rev
    assert verify(db).ok


# ---------------------------------------------------------------------------------------------
# docs/architecture.md, Choices: "Card issuance assigns PANs from the program's first BIN prefix
# + card id + Luhn digit; expiry defaults to 5 years"; docs/host-interface.md §4 (14): a PAN
# whose last digit is not its Luhn check digit is refused before any card look-up.


async def test_card_issuance_gives_bin_prefix_card_id_luhn_digit_and_a_five_year_expiry(switch_env):
    """Kills: another PAN layout, a wrong check digit, and another default expiry."""
    env = switch_env
    card = await env.op("card-issue", program="yeonsu")
    cid = card_id(env.core.db_path, card["pan"])
    body = "94103000" + f"{cid:07d}"
    # Luhn by hand: double every second digit from the right of the body, sum the digits
    total = sum((d * 2 - 9 if d * 2 > 9 else d * 2) if i % 2 == 0 else d
                for i, d in enumerate(int(c) for c in reversed(body)))
    assert card["pan"] == body + str((10 - total % 10) % 10)
    assert card["expiry"] == "2407"  # issued 2019-07-20: valid through July 2024
    assert card["member"] == f"M{cid:09d}"


async def test_a_pan_with_a_wrong_check_digit_is_declined_14_as_a_mistyped_number(switch_env):
    """Kills: the Luhn check removed from the request path (the decline would be logged as
    an unknown card, after a card look-up)."""
    env = switch_env
    pan = env.cards["namdong"]["pan"]
    mistyped = pan[:-1] + str((int(pan[-1]) + 1) % 10)
    unissued = "9410100000099997"  # a valid check digit, but no such card
    client, term = await env.signed_on()
    with structlog.testing.capture_logs() as logged:
        await declined(env, client, term.purchase(mistyped, 1_000), "14")
        await declined(env, client, term.balance(mistyped), "14")
        await declined(env, client, term.purchase(unissued, 1_000), "14")
    await client.close()
    notes = [(e["processing_code"], e["note"]) for e in logged if e["event"] == "message" and e.get("rc") == "14"]
    assert notes == [("000000", "PAN check digit is wrong"), ("310000", "PAN check digit is wrong"),
                     ("000000", "card unknown")]
    assert mistyped not in repr(logged) and unissued not in repr(logged)
    assert card_accounts(env.core.db_path, pan) == (100_000, 0)
    assert verify(env.core.db_path).ok
