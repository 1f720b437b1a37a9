"""Every fee and cashback figure of the five worked examples in docs/domain.md, "Worked examples".

Payout to the merchant is the amount less what the merchant pays of the fee.
"""

from __future__ import annotations

from datetime import datetime

import pytest

from switch.rules.cashback import CashbackQuote, quote_cashback
from switch.domain import KST, Merchant
from switch.rules.fees import FeeQuote, quote_fee
from switch.rules.policy import default_config_dir, load_rules

RULES = load_rules(default_config_dir())

LAUNCH_LUNCH = datetime(2019, 7, 20, 12, 0, tzinfo=KST)
NAMDONG_SHOP = Merchant("m-namdong", "Namdong kimbap", "namdong", 250_000_000)
YEONSU_SHOP = Merchant("m-yeonsu", "Yeonsu bakery", "yeonsu", 250_000_000)


def fee(
    shop: Merchant, now: datetime, *, program: str = "incheon", amount: int = 20_000
) -> FeeQuote:
    return quote_fee(RULES.fees, merchant=shop, card_program=program, amount=amount, now=now)


def cashback(
    shop: Merchant,
    now: datetime,
    *,
    program: str = "incheon",
    amount: int = 20_000,
    month_spend: int = 0,
) -> CashbackQuote:
    return quote_cashback(
        RULES.cashback,
        card_program=program,
        merchant=shop,
        amount=amount,
        month_spend=month_spend,
        now=now,
    )


def test_namdong_card_at_namdong_merchant_earns_7_5_percent_with_district_share() -> None:
    """docs/domain.md, Worked examples, 1: cashback 1,500 = national 800 + city 400 + Namdong 300."""
    quote = cashback(NAMDONG_SHOP, LAUNCH_LUNCH, program="namdong")
    assert quote.by_funder == (("national", 800), ("city", 400), ("namdong", 300))
    assert (quote.total, quote.eligible) == (1_500, 20_000)


def test_namdong_merchant_fee_is_fully_paid_by_namdong() -> None:
    """docs/domain.md, Worked examples, 1: fee 0.5 % = 100, Namdong support 100, merchant pays 0,
    payout 20,000."""
    quote = fee(NAMDONG_SHOP, LAUNCH_LUNCH, program="namdong")
    assert quote == FeeQuote(tier="micro", rate_bp=50, fee=100, support=(("namdong", 100),))
    assert quote.merchant_fee == 0
    assert 20_000 - quote.merchant_fee == 20_000


def test_namdong_card_at_yeonsu_merchant_earns_the_city_base_only() -> None:
    """docs/domain.md, Worked examples, 2: cashback 6 % = 1,200 (national 800, city 400)."""
    quote = cashback(YEONSU_SHOP, LAUNCH_LUNCH, program="namdong")
    assert quote.by_funder == (("national", 800), ("city", 400))
    assert (quote.total, quote.eligible) == (1_200, 20_000)


def test_yeonsu_merchant_pays_its_own_fee() -> None:
    """docs/domain.md, Worked examples, 2: fee 100 paid by the merchant, no Yeonsu support,
    payout 19,900."""
    quote = fee(YEONSU_SHOP, LAUNCH_LUNCH, program="namdong")
    assert quote == FeeQuote(tier="micro", rate_bp=50, fee=100, support=())
    assert quote.merchant_fee == 100
    assert 20_000 - quote.merchant_fee == 19_900


def test_purchase_straddling_a_spend_tier_is_split_across_rates() -> None:
    """docs/domain.md, Worked examples, 3: 20,000 x 4 % + 30,000 x 2 % = 800 + 600 = 1,400."""
    shop = Merchant("m-jung", "Jung cafe", "jung", 250_000_000)
    quote = cashback(
        shop, datetime(2020, 1, 15, 12, 0, tzinfo=KST), amount=50_000, month_spend=280_000
    )
    assert quote.policy_id == "2020-01"
    assert quote.by_funder == (("national", 700), ("city", 700))
    assert (quote.total, quote.eligible) == (1_400, 50_000)


OCT_2023 = datetime(2023, 10, 10, 12, 0, tzinfo=KST)


@pytest.mark.parametrize(
    ("sales", "eligible", "total"),
    [
        (4_000_000_000, 0, 0),  # > 3B: no cashback, not eligible spend
        (1_000_000_000, 20_000, 1_400),  # 3-30억 tier: 7 %
        (250_000_000, 20_000, 2_000),  # <= 300M: 10 %
    ],
)
def test_2023_10_rate_follows_merchant_annual_sales(sales: int, eligible: int, total: int) -> None:
    """docs/domain.md, Worked examples, 4: 4B -> no cashback; 1B -> 7 %; 250M -> 10 %."""
    shop = Merchant("m-bupyeong", "Bupyeong store", "bupyeong", sales)
    quote = cashback(shop, OCT_2023)
    assert (quote.policy_id, quote.eligible, quote.total) == ("2023-09-25", eligible, total)


def test_2023_10_monthly_cap_limits_earning_to_300k_of_spend() -> None:
    """docs/domain.md, Worked examples, 4 ("within the 300,000/month cap"): at 290,000 already
    spent, a 20,000 purchase earns 10 % on 10,000 only, but all 20,000 is eligible spend."""
    shop = Merchant("m-bupyeong", "Bupyeong store", "bupyeong", 250_000_000)
    quote = cashback(shop, OCT_2023, month_spend=290_000)
    assert quote.by_funder == (("national", 500), ("city", 500))
    assert (quote.total, quote.eligible) == (1_000, 20_000)


def test_2022_03_small1_merchant_pays_check_rate_0_85_percent() -> None:
    """docs/domain.md, Worked examples, 5: 400M sales, 20,000 -> check rate 0.85 % = 170."""
    shop = Merchant("m-gyeyang", "Gyeyang diner", "gyeyang", 400_000_000)
    quote = fee(shop, datetime(2022, 3, 1, 12, 0, tzinfo=KST))
    assert quote == FeeQuote(tier="small1", rate_bp=85, fee=170, support=())
    assert quote.merchant_fee == 170
