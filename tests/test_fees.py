"""Merchant fees: check-card tiers and schedules, online mall, district support, fees.toml errors.

Figures from docs/domain.md, "Merchant fees"; amounts are won, rates bp.
"""

from __future__ import annotations

import dataclasses
import pathlib
from datetime import datetime

import pytest

from switch.domain import KST, Merchant
from switch.rules.fees import FeeQuote, quote_fee
from switch.rules.policy import default_config_dir, load_rules

RULES = load_rules(default_config_dir())
FEES = RULES.fees


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=KST)


def merchant(
    district: str = "jung", sales: int = 250_000_000, *, online_mall: bool = False
) -> Merchant:
    return Merchant("m1", "test shop", district, sales, online_mall=online_mall)


def fee(m: Merchant, now: datetime, amount: int = 20_000, program: str = "incheon") -> FeeQuote:
    return quote_fee(FEES, merchant=m, card_program=program, amount=amount, now=now)


# -- tiers and schedules ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("sales", "tier", "rate_bp"),
    [
        (0, "micro", 50),
        (300_000_000, "micro", 50),
        (300_000_001, "small1", 100),
        (500_000_000, "small1", 100),
        (500_000_001, "small2", 110),
        (1_000_000_000, "small2", 110),
        (1_000_000_001, "small3", 130),
        (3_000_000_000, "small3", 130),
        (3_000_000_001, "general", 150),
    ],
)
def test_tier_upper_bounds_are_inclusive(sales: int, tier: str, rate_bp: int) -> None:
    quote = fee(merchant(sales=sales), at(2019, 3, 1))
    assert (quote.tier, quote.rate_bp, quote.fee) == (tier, rate_bp, 20_000 * rate_bp // 10_000)


@pytest.mark.parametrize(
    ("now", "rates_bp"),
    [
        (at(2019, 1, 31), (50, 100, 110, 130, 150)),
        (at(2022, 1, 30, 23, 59, 59), (50, 100, 110, 130, 150)),
        (at(2022, 1, 31), (25, 85, 100, 125, 150)),
        (at(2025, 2, 13, 23, 59, 59), (25, 85, 100, 125, 150)),
        (at(2025, 2, 14), (15, 75, 90, 115, 150)),
        (at(2026, 12, 31), (15, 75, 90, 115, 150)),
    ],
)
def test_check_card_schedule_switches_at_exact_kst_instant(
    now: datetime, rates_bp: tuple[int, ...]
) -> None:
    sales = (250_000_000, 400_000_000, 800_000_000, 2_000_000_000, 4_000_000_000)
    assert tuple(fee(merchant(sales=s), now).rate_bp for s in sales) == rates_bp


def test_general_tier_uses_assumed_negotiated_rate() -> None:
    quote = fee(merchant(sales=10_000_000_000), at(2025, 3, 1), amount=20_000)
    assert (quote.tier, quote.rate_bp, quote.fee) == ("general", 150, 300)


def test_no_fee_schedule_before_2019_01_31() -> None:
    with pytest.raises(ValueError, match="no fee schedule in force at 2019-01-30T23:59:59"):
        fee(merchant(), at(2019, 1, 30, 23, 59, 59))


def test_naive_now_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        fee(merchant(), datetime(2020, 1, 1))


def test_negative_amount_is_rejected() -> None:
    with pytest.raises(ValueError, match="negative"):
        fee(merchant(), at(2020, 1, 1), amount=-1)


def test_fee_is_floored_to_the_won() -> None:
    quote = fee(merchant(sales=250_000_000), at(2019, 7, 1), amount=1_999)
    assert (quote.fee, quote.support, quote.merchant_fee) == (9, (), 9)


# -- online mall ----------------------------------------------------------------------------


def test_online_mall_pays_only_the_3_percent_pg_fee_without_support() -> None:
    mall_shop = merchant("namdong", 250_000_000, online_mall=True)
    quote = fee(mall_shop, at(2019, 7, 20, 12), program="namdong")
    assert quote == FeeQuote(tier="online_mall", rate_bp=300, fee=600, support=())
    assert quote.merchant_fee == 600


# -- district support -------------------------------------------------------------------------


def test_namdong_2019_support_halves_small1_fee() -> None:
    quote = fee(merchant("namdong", 400_000_000), at(2019, 9, 1))
    assert (quote.fee, quote.support, quote.merchant_fee) == (200, (("namdong", 100),), 100)


def test_namdong_2019_support_stops_above_500m() -> None:
    quote = fee(merchant("namdong", 500_000_001), at(2019, 9, 1))
    assert (quote.fee, quote.support, quote.merchant_fee) == (220, (), 220)


def test_namdong_support_floors_per_funder() -> None:
    quote = fee(merchant("namdong", 250_000_000), at(2019, 9, 1), amount=1_999)
    assert (quote.fee, quote.support, quote.merchant_fee) == (9, (("namdong", 9),), 0)


def test_support_follows_merchant_district_for_any_card() -> None:
    namdong_shop = merchant("namdong", 250_000_000)
    by_program = {p: fee(namdong_shop, at(2020, 5, 1), program=p).support for p in RULES.programs}
    assert by_program == {p: (("namdong", 100),) for p in RULES.programs}


def test_support_rule_restricted_to_programs_skips_other_cards() -> None:
    rules = tuple(dataclasses.replace(r, programs=("namdong",)) for r in FEES.supports)
    book = dataclasses.replace(FEES, supports=rules)
    shop = merchant("namdong", 250_000_000)
    now = at(2020, 5, 1)
    city_card = quote_fee(book, merchant=shop, card_program="incheon", amount=20_000, now=now)
    namdong_card = quote_fee(book, merchant=shop, card_program="namdong", amount=20_000, now=now)
    assert (city_card.support, namdong_card.support) == ((), (("namdong", 100),))


@pytest.mark.parametrize(
    ("sales", "fee_won", "support_won", "merchant_won"),
    [
        (250_000_000, 50, 50, 0),  # micro 25 bp, all of it supported (net 0)
        (400_000_000, 170, 170, 0),  # small1 85 bp, net 0
        (700_000_000, 200, 90, 110),  # small2 100 bp, merchant pays 55 bp
        (1_000_000_000, 200, 90, 110),
        (1_000_000_001, 250, 0, 250),  # small3: no support
    ],
)
def test_namdong_2023_net_rate_support(
    sales: int, fee_won: int, support_won: int, merchant_won: int
) -> None:
    quote = fee(merchant("namdong", sales), at(2023, 6, 1))
    expected = (fee_won, support_won, merchant_won)
    assert (quote.fee, quote.support_total, quote.merchant_fee) == expected
    assert quote.support == ((("namdong", support_won),) if support_won else ())


def test_namdong_net_rate_support_starts_at_2023_01_01_midnight() -> None:
    shop = merchant("namdong", 700_000_000)
    before = fee(shop, at(2022, 12, 31, 23, 59, 59))
    after = fee(shop, at(2023, 1, 1))
    assert (before.support, before.merchant_fee) == ((), 200)
    assert (after.support, after.merchant_fee) == ((("namdong", 90),), 110)


def test_namdong_net_rate_floors_what_the_merchant_pays() -> None:
    quote = fee(merchant("namdong", 700_000_000), at(2023, 6, 1), amount=1_999)
    assert (quote.fee, quote.support, quote.merchant_fee) == (19, (("namdong", 9),), 10)


def test_seo_support_applies_under_1b_only() -> None:
    under = fee(merchant("seo", 999_999_999), at(2019, 9, 1))
    at_1b = fee(merchant("seo", 1_000_000_000), at(2019, 9, 1))
    assert (under.fee, under.support, under.merchant_fee) == (220, (("seo", 100),), 120)
    assert (at_1b.fee, at_1b.support, at_1b.merchant_fee) == (220, (), 220)


def test_support_is_capped_at_the_fee() -> None:
    quote = fee(merchant("seo", 250_000_000), at(2022, 3, 1))  # 25 bp fee, 50 bp support
    assert (quote.fee, quote.support, quote.merchant_fee) == (50, (("seo", 50),), 0)


def test_no_support_before_the_first_rule() -> None:
    quote = fee(merchant("namdong", 250_000_000), at(2019, 3, 31, 23, 59, 59))
    assert (quote.fee, quote.support) == (100, ())


# -- fees.toml load errors name the key ----------------------------------------------------


def broken(tmp_path: pathlib.Path, old: str, new: str) -> pathlib.Path:
    for name in ("programs.toml", "fees.toml"):
        text = (default_config_dir() / name).read_text(encoding="utf-8")
        if name == "fees.toml":
            assert old in text
            text = text.replace(old, new, 1)
        (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "micro = 25, small1 = 85, small2 = 100,",
            "micro = 25, small1 = 85,",
            "fees.toml: schedules[1].check_bp.small2: missing",
        ),
        (
            "small3 = 115, general = 150 }",
            "small3 = 115, general = 150, huge = 10 }",
            "fees.toml: schedules[2].check_bp.huge: unknown key",
        ),
        (
            "small3 = 130, general = 150 }",
            "small3 = 130, general = 300 }",
            "fees.toml: schedules[0].check_bp.general: must be 0..250 bp, got 300",
        ),
        (
            "effective_from = 2022-01-31T00:00:00+09:00",
            "effective_from = 2018-01-31T00:00:00+09:00",
            "fees.toml: schedules[1].effective_from: must be after 2019-01-31T00:00:00+09:00",
        ),
        (
            "effective_from = 2022-01-31T00:00:00+09:00",
            "effective_from = 2022-01-31T00:00:00",
            "fees.toml: schedules[1].effective_from: must be a KST date-time",
        ),
        (
            "sales_max = 1_000_000_000\n\n[[tiers]]",
            "sales_max = 400_000_000\n\n[[tiers]]",
            "fees.toml: tiers[2].sales_max: must be greater than 500000000, got 400000000",
        ),
        (
            'id = "general"',
            'id = "general"\nsales_max = 9_000_000_000',
            "fees.toml: tiers[4].sales_max: the last tier must be open-ended",
        ),
        (
            "sales_max = 500_000_000\nsupport_bp = 50",
            "sales_max = 500_000_000\nsupport_bp = 50\nnet_rate_bp = 0",
            "fees.toml: support[0].support_bp: give exactly one of",
        ),
        (
            "effective_until = 2023-01-01T00:00:00+09:00",
            "effective_until = 2023-06-01T00:00:00+09:00",
            "fees.toml: support[1].funder: overlaps support[0]",
        ),
        (
            'funder = "seo"\ndistrict = "seo"',
            'funder = "seo"\ndistrict = "seoul"',
            "fees.toml: support[3].district: must be one of",
        ),
        (
            'funder = "seo"\ndistrict = "seo"',
            'funder = "seo"\ndistrict = "seo"\nprograms = ["gangnam"]',
            "fees.toml: support[3].programs[0]: unknown or not a string: 'gangnam'",
        ),
        ("pg_rate_bp = 300", "pg_rate_bp = 3.0", "fees.toml: online_mall.pg_rate_bp: expected int"),
        ("[online_mall]", "[online_mall", "fees.toml: "),
    ],
)
def test_broken_fees_toml_names_the_key(
    tmp_path: pathlib.Path, old: str, new: str, message: str
) -> None:
    config_dir = broken(tmp_path, old, new)
    with pytest.raises(ValueError) as caught:
        load_rules(config_dir)
    assert str(caught.value).startswith(message), str(caught.value)
