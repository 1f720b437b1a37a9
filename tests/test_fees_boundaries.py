"""Merchant fees at their boundaries: rule end instants, sales bounds, floors, funder caps.

Pure unit tests of switch/rules/fees.py (no event loop, no database). Rules from
docs/domain.md, "Merchant fees", and the comments of config/fees.toml; amounts are won,
rates bp, and every won amount is floor(amount * rate_bp / 10000), per funder.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

from switch.domain import KST, Merchant
from switch.rules.fees import FeeBook, FeeQuote, FeeSupport, quote_fee
from switch.rules.policy import default_config_dir, load_rules

FEES = load_rules(default_config_dir()).fees


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=KST)


def shop(district: str, sales: int) -> Merchant:
    return Merchant("m1", "test shop", district, sales)


def quote(m: Merchant, now: datetime, amount: int = 20_000, book: FeeBook = FEES) -> FeeQuote:
    return quote_fee(book, merchant=m, card_program="incheon", amount=amount, now=now)


def namdong_2019_rule() -> FeeSupport:
    """config/fees.toml: Namdong 2019, support_bp = 50, sales <= 500M, until 2023-01-01 KST."""
    (rule,) = [r for r in FEES.supports if r.funder == "namdong" and r.support_bp == 50]
    assert (rule.effective_until, rule.sales_max) == (at(2023, 1, 1), 500_000_000)
    return rule


def namdong_2023_055_rule() -> FeeSupport:
    """config/fees.toml: from 2023, 500M < sales <= 1B pay 0.55 % (net_rate_bp = 55)."""
    (rule,) = [r for r in FEES.supports if r.net_rate_bp == 55]
    assert (rule.sales_above, rule.sales_max, rule.effective_until) == (
        500_000_000,
        1_000_000_000,
        None,
    )
    return rule


# -- a rule's effective_until is exclusive ----------------------------------------------
# config/fees.toml, "District fee support": a rule applies while
# effective_from <= now < effective_until; the Namdong 2019 rule (0.5 pp) ends at
# 2023-01-01T00:00 KST, exactly when the 2023 net-rate rules (0 % for <= 500M) begin.


def test_namdong_2019_support_does_not_apply_at_its_effective_until_instant() -> None:
    end = namdong_2019_rule().effective_until
    assert end is not None
    m = shop("namdong", 400_000_000)  # small1: 85 bp since 2022-01-31 -> fee 170 on 20,000
    before = quote(m, end - timedelta(microseconds=1))
    at_end = quote(m, end)
    # 1 us before: only the 2019 rule, 50 bp of 20,000 = 100.
    assert (before.fee, before.support, before.merchant_fee) == (170, (("namdong", 100),), 70)
    # At the instant: only the 2023 net 0 % rule, the whole fee; the 2019 rule is over.
    assert (at_end.fee, at_end.support, at_end.merchant_fee) == (170, (("namdong", 170),), 0)


# -- a rule's sales_above is exclusive --------------------------------------------------
# config/fees.toml: rules apply for sales_above < annual sales <= sales_max; the 2023
# 0.55 % rule is for 500M-1B (docs/domain.md, "Merchant fees": "0 % for merchants <= 500M,
# 0.55 % for 500M-1B"), so a merchant at exactly 500M is not in it.


def test_sales_exactly_at_sales_above_does_not_get_the_0_55_percent_rule() -> None:
    book = dataclasses.replace(FEES, supports=(namdong_2023_055_rule(),))
    now = at(2023, 6, 1)  # 2022 schedule: small1 85 bp, small2 100 bp
    at_bound = quote(shop("namdong", 500_000_000), now, book=book)
    above = quote(shop("namdong", 500_000_001), now, book=book)
    assert (at_bound.tier, at_bound.fee, at_bound.support) == ("small1", 170, ())
    # 200 - floor(20,000 * 55 / 10,000) = 200 - 110 = 90
    assert (above.tier, above.fee, above.support, above.merchant_fee) == (
        "small2",
        200,
        (("namdong", 90),),
        110,
    )


def test_sales_exactly_500m_get_the_0_percent_rule_only_with_the_loaded_config() -> None:
    m = shop("namdong", 500_000_000)
    q = quote(m, at(2023, 6, 1))
    assert (q.tier, q.fee, q.support, q.merchant_fee) == ("small1", 170, (("namdong", 170),), 0)


# -- a support that floors to 0 won is not listed -----------------------------------------
# fees.py rounding rule / config/fees.toml "Rounding": floor per funder. 2019 small1 is 100 bp:
# 100 won -> fee 1; Namdong's 50 bp of 100 won floors to 0, so no support line at all.


def test_support_flooring_to_zero_won_is_left_out() -> None:
    q = quote(shop("namdong", 400_000_000), at(2019, 9, 1), amount=100)
    assert q == FeeQuote(tier="small1", rate_bp=100, fee=1, support=())
    assert q.merchant_fee == 1


# -- several funders: each capped by what the earlier ones left of the fee -----------------
# config/fees.toml: support_bp is "capped at the fee"; fees.py: funders pay in config order,
# each capped so the total never exceeds the fee.


def test_second_funder_is_capped_by_what_the_first_left_of_the_fee() -> None:
    base = namdong_2019_rule()
    district = dataclasses.replace(base, support_bp=60)  # 60 bp of 20,000 = 120
    city = dataclasses.replace(base, funder="incheon", support_bp=80)  # 80 bp = 160
    book = dataclasses.replace(FEES, supports=(district, city))
    # 2019 schedule: small1 100 bp -> fee 200 on 20,000.
    q = quote(shop("namdong", 400_000_000), at(2019, 9, 1), book=book)
    # namdong pays 120; incheon would pay 160 but only 200 - 120 = 80 is left.
    assert (q.fee, q.support, q.support_total, q.merchant_fee) == (
        200,
        (("namdong", 120), ("incheon", 80)),
        200,
        0,
    )


def test_three_funders_last_gets_nothing_once_the_fee_is_used_up() -> None:
    base = namdong_2019_rule()
    first = dataclasses.replace(base, support_bp=30)  # 60
    second = dataclasses.replace(base, funder="incheon", support_bp=200)  # 400 -> capped at 140
    third = dataclasses.replace(base, funder="third", support_bp=10)  # nothing left
    book = dataclasses.replace(FEES, supports=(first, second, third))
    q = quote(shop("namdong", 400_000_000), at(2019, 9, 1), book=book)
    assert (q.fee, q.support, q.merchant_fee) == (200, (("namdong", 60), ("incheon", 140)), 0)


# -- net rate at or above the fee rate: the funder pays nothing ----------------------------
# config/fees.toml: net_rate_bp = "the merchant pays at most that rate; the funder pays the
# rest" -- when the fee is already at or below that rate there is no rest.


def test_net_rate_above_the_fee_rate_gives_no_support() -> None:
    rule = dataclasses.replace(namdong_2023_055_rule(), net_rate_bp=100)
    book = dataclasses.replace(FEES, supports=(rule,))
    # 2025-02-14 schedule: small2 90 bp -> fee 180 on 20,000, below the 100 bp (200) net rate.
    q = quote(shop("namdong", 700_000_000), at(2025, 6, 1), book=book)
    assert (q.tier, q.fee, q.support, q.merchant_fee) == ("small2", 180, (), 180)


def test_net_rate_equal_to_the_fee_after_flooring_gives_no_support() -> None:
    # Loaded config, 2025: small2 90 bp; 200 won -> fee floor(1.8) = 1, and the 0.55 % net
    # rate allows floor(1.1) = 1 won: the merchant already pays no more than the net rate.
    q = quote(shop("namdong", 700_000_000), at(2025, 6, 1), amount=200)
    assert (q.tier, q.fee, q.support, q.merchant_fee) == ("small2", 1, (), 1)


# -- zero amount --------------------------------------------------------------------------
# Only a negative amount is an error (fees.py, quote_fee); 0 won carries a 0 fee.


def test_zero_amount_quotes_a_zero_fee() -> None:
    q = quote(shop("namdong", 400_000_000), at(2023, 6, 1), amount=0)
    assert q == FeeQuote(tier="small1", rate_bp=85, fee=0, support=())
    assert q.merchant_fee == 0


def test_a_support_of_exactly_one_won_is_kept():
    """200 won at a 250M Namdong merchant in 2019: fee 0.5 % = 1 won, Namdong pays it all
    (docs/domain.md, "Merchant fees": district fee support): the 1-won support is kept."""
    q = quote(shop("namdong", 250_000_000), at(2019, 7, 20), amount=200)
    assert (q.fee, q.support) == (1, (("namdong", 1),))
