"""Cashback timeline, layers, tiers and clawback; programs, acceptance and limits;
programs.toml load errors.

Figures from docs/domain.md, "Cashback" and "Limits"; amounts are won, rates bp.
"""

from __future__ import annotations

import pathlib
from datetime import datetime

import pytest

from switch.rules.cashback import CashbackQuote, clawback, proportional, quote_cashback
from switch.domain import KST, Merchant
from switch.rules.policy import Limits, default_config_dir, load_rules

RULES = load_rules(default_config_dir())
EXCLUDED = ("adult_entertainment", "gambling", "car_sales", "large_electronics")


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=KST)


def merchant(
    district: str = "jung", sales: int = 250_000_000, *, category: str = "general"
) -> Merchant:
    return Merchant("m1", "test shop", district, sales, category=category)


def cashback(
    now: datetime,
    *,
    program: str = "incheon",
    shop: Merchant | None = None,
    amount: int = 20_000,
    month_spend: int = 0,
) -> CashbackQuote:
    return quote_cashback(
        RULES.cashback,
        card_program=program,
        merchant=shop or merchant(),
        amount=amount,
        month_spend=month_spend,
        now=now,
    )


# -- programs, acceptance, limits -----------------------------------------------------------


@pytest.mark.parametrize(
    ("pan", "program_id", "district"),
    [
        ("9410000000000001", "incheon", None),
        ("9410099999999999", "incheon", None),
        ("9410100012345678", "namdong", "namdong"),
        ("9410299912345678", "seo", "seo"),
        ("9410350012345678", "yeonsu", "yeonsu"),
        ("9410400012345678", "michuhol", "michuhol"),
    ],
)
def test_program_for_pan_finds_each_program(
    pan: str, program_id: str, district: str | None
) -> None:
    program = RULES.program_for_pan(pan)
    assert program is not None
    assert (program.id, program.district, program.pan_length) == (program_id, district, 16)


@pytest.mark.parametrize(
    "pan",
    [
        "9410500012345678",  # no program's range
        "4111111111111111",
        "941000001234567",  # 15 digits
        "94100000123456789",  # 17 digits
        "94100000abcdefgh",
    ],
)
def test_program_for_pan_is_none_for_unknown_bin_or_bad_pan(pan: str) -> None:
    assert RULES.program_for_pan(pan) is None


def test_programs_carry_display_names() -> None:
    names = {p.id: p.name for p in RULES.programs.values()}
    assert names == {
        "incheon": "Incheon e-eum (인천e음)",
        "namdong": "Namdong e-eum (남동e음)",
        "seo": "Seo-gu e-eum (서로e음)",
        "yeonsu": "Yeonsu e-eum (연수e음)",
        "michuhol": "Michuhol e-eum (미추홀e음)",
    }


@pytest.mark.parametrize("category", ["large_mart", "department_store", "franchise_direct"])
def test_card_not_accepted_at_marts_department_stores_and_franchise_direct(category: str) -> None:
    assert RULES.accepts(merchant(category=category), at(2020, 1, 1)) is False


@pytest.mark.parametrize("category", ["general", *EXCLUDED])
def test_card_accepted_at_general_and_cashback_excluded_categories(category: str) -> None:
    assert RULES.accepts(merchant(category=category), at(2020, 1, 1)) is True


def test_card_not_accepted_outside_incheon() -> None:
    assert RULES.accepts(merchant(district="gangnam"), at(2020, 1, 1)) is False


def test_limits_before_and_after_the_2023_09_monthly_charge_cap() -> None:
    before = RULES.limits(at(2023, 8, 31, 23, 59, 59))
    after = RULES.limits(at(2023, 9, 1))
    common = {"charge_min": 10_000, "holding_max": 2_000_000, "daily_spend_max": 2_000_000}
    assert before == Limits(charge_month_max=None, **common)
    assert after == Limits(charge_month_max=1_500_000, **common)


def test_no_limits_before_the_first_period() -> None:
    with pytest.raises(ValueError, match="no limits in force at 2019-01-30T23:59:59"):
        RULES.limits(at(2019, 1, 30, 23, 59, 59))


# -- the timeline ------------------------------------------------------------------------------


def test_no_cashback_policy_before_2019_04() -> None:
    assert cashback(at(2019, 3, 31, 23, 59, 59)) == CashbackQuote("none", 0, ())


def test_policy_switches_at_exactly_2019_08_01_0600_kst() -> None:
    before = cashback(at(2019, 8, 1, 5, 59, 59), month_spend=1_000_000)
    after = cashback(at(2019, 8, 1, 6, 0, 0), month_spend=1_000_000)
    assert before == CashbackQuote("2019-04", 20_000, (("national", 800), ("city", 400)))
    assert after == CashbackQuote("2019-08-01", 20_000, ())


def test_same_instant_in_utc_selects_the_same_policy() -> None:
    from datetime import timezone

    utc = datetime(2019, 7, 31, 21, 0, 0, tzinfo=timezone.utc)  # 06:00 KST
    assert cashback(utc).policy_id == "2019-08-01"


@pytest.mark.parametrize("category", EXCLUDED)
def test_excluded_category_earns_nothing_and_is_not_eligible_from_2019_08_01_0600(
    category: str,
) -> None:
    shop = merchant(category=category)
    before = cashback(at(2019, 8, 1, 5, 59, 59), shop=shop)
    after = cashback(at(2019, 8, 1, 6, 0, 0), shop=shop)
    assert (before.eligible, before.total) == (20_000, 1_200)
    assert after == CashbackQuote("2019-08-01", 0, ())


def test_seo_card_in_seo_gu_2019_08_splits_across_10_and_7_percent_tiers() -> None:
    quote = cashback(
        at(2019, 8, 1, 6), program="seo", shop=merchant("seo"), month_spend=290_000
    )
    # 10,000 at 10 % + 10,000 at 7 %: seo adds 4 % then 1 % on top of the 6 % base
    assert quote.by_funder == (("national", 800), ("city", 400), ("seo", 500))
    assert (quote.total, quote.eligible) == (1_700, 20_000)


def test_seo_card_in_seo_gu_2019_08_full_month_ladder() -> None:
    shop = merchant("seo")
    whole = cashback(at(2019, 9, 2), program="seo", shop=shop, amount=1_000_000)
    above = cashback(at(2019, 9, 2), program="seo", shop=shop, month_spend=1_000_000)
    assert whole.by_funder == (("national", 40_000), ("city", 20_000), ("seo", 14_000))
    assert whole.total == 30_000 + 14_000 + 30_000
    assert above == CashbackQuote("2019-08-01", 20_000, ())


def test_district_card_outside_its_district_earns_the_city_base() -> None:
    quote = cashback(at(2019, 9, 2), program="seo", shop=merchant("jung"))
    assert quote.by_funder == (("national", 800), ("city", 400))


def test_city_card_in_a_district_earns_no_district_top_up() -> None:
    quote = cashback(at(2019, 9, 2), program="incheon", shop=merchant("seo"))
    assert quote.by_funder == (("national", 800), ("city", 400))


def test_yeonsu_card_inside_yeonsu_2019_earns_10_percent() -> None:
    inside = cashback(at(2019, 5, 1), program="yeonsu", shop=merchant("yeonsu"))
    outside = cashback(at(2019, 5, 1), program="yeonsu", shop=merchant("namdong"))
    assert inside.by_funder == (("national", 800), ("city", 400), ("yeonsu", 800))
    assert outside.by_funder == (("national", 800), ("city", 400))


def test_michuhol_card_earns_the_city_base_in_michuhol() -> None:
    quote = cashback(at(2019, 5, 1), program="michuhol", shop=merchant("michuhol"))
    assert quote.by_funder == (("national", 800), ("city", 400))


def test_2019_04_has_no_monthly_cap() -> None:
    quote = cashback(at(2019, 5, 1), amount=2_000_000, month_spend=3_000_000)
    assert quote.by_funder == (("national", 80_000), ("city", 40_000))


def test_2019_10_22_caps_at_9000_per_month() -> None:
    quote = cashback(at(2019, 10, 22), amount=2_000_000)
    assert (quote.policy_id, quote.by_funder, quote.total) == (
        "2019-10-22",
        (("national", 4_500), ("city", 4_500)),
        9_000,
    )


def test_2020_01_caps_at_21000_per_month() -> None:
    quote = cashback(at(2020, 1, 1), amount=2_000_000)
    assert (quote.policy_id, quote.total) == ("2020-01", 21_000)


def test_2020_03_pays_10_percent_to_500k_then_1_percent() -> None:
    quote = cashback(at(2020, 3, 1), amount=2_000_000)
    assert (quote.policy_id, quote.total) == ("2020-03", 55_000)


def test_2022_07_pays_5_percent_to_300k() -> None:
    full = cashback(at(2022, 7, 1), amount=2_000_000)
    exhausted = cashback(at(2022, 7, 1), month_spend=300_000)
    assert (full.total, full.eligible) == (15_000, 2_000_000)
    assert exhausted == CashbackQuote("2022-07", 20_000, ())


@pytest.mark.parametrize(
    ("sales", "total"), [(300_000_000, 2_000), (300_000_001, 1_000), (4_000_000_000, 1_000)]
)
def test_2022_10_rate_depends_on_merchant_sales(sales: int, total: int) -> None:
    quote = cashback(at(2022, 10, 1), shop=merchant(sales=sales))
    assert (quote.policy_id, quote.eligible, quote.total) == ("2022-10", 20_000, total)


def test_sales_ceiling_starts_at_2023_09_25() -> None:
    shop = merchant(sales=4_000_000_000)
    before = cashback(at(2023, 9, 24, 23, 59, 59), shop=shop)
    after = cashback(at(2023, 9, 25), shop=shop)
    assert (before.eligible, before.total) == (20_000, 1_000)
    assert after == CashbackQuote("2023-09-25", 0, ())


def test_3b_is_still_under_the_sales_ceiling() -> None:
    quote = cashback(at(2023, 10, 10), shop=merchant(sales=3_000_000_000))
    assert (quote.eligible, quote.by_funder) == (20_000, (("national", 700), ("city", 700)))


def test_7_percent_tier_ends_2024_01_01() -> None:
    shop = merchant(sales=1_000_000_000)
    december = cashback(at(2023, 12, 31, 23, 59, 59), shop=shop)
    january = cashback(at(2024, 1, 1), shop=shop)
    assert (december.policy_id, december.total) == ("2023-09-25", 1_400)
    assert (january.policy_id, january.total) == ("2024-01", 1_000)


def test_2025_09_pays_15_percent_in_ganghwa_and_ongjin() -> None:
    for district in ("ganghwa", "ongjin"):
        quote = cashback(at(2025, 9, 1), shop=merchant(district))
        assert quote.by_funder == (("national", 1_000), ("city", 2_000))
    elsewhere = cashback(at(2025, 9, 1), shop=merchant("bupyeong", 3_000_000_000))
    assert elsewhere.by_funder == (("national", 1_000), ("city", 1_000))


def test_2025_09_no_cashback_above_3b() -> None:
    quote = cashback(at(2025, 9, 1), shop=merchant("ganghwa", 3_000_000_001))
    assert quote == CashbackQuote("2025-09", 0, ())


def test_each_funder_is_floored_separately() -> None:
    small = cashback(at(2020, 1, 2), amount=99)  # 99 * 200 / 10000 = 1.98 per funder
    tiny = cashback(at(2020, 1, 2), amount=49)
    assert (small.by_funder, small.total) == ((("national", 1), ("city", 1)), 2)
    assert tiny == CashbackQuote("2020-01", 49, ())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"program": "busan"}, "unknown card program 'busan'"),
        ({"amount": -1}, "negative"),
        ({"month_spend": -1}, "negative"),
    ],
)
def test_bad_inputs_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cashback(at(2020, 1, 2), **kwargs)


def test_naive_now_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        cashback(datetime(2020, 1, 2))


# -- clawback -------------------------------------------------------------------------------------

CREDIT = (("national", 800), ("city", 400), ("namdong", 300))


def test_clawback_in_steps_returns_exactly_the_credit() -> None:
    steps = [
        clawback(CREDIT, original_amount=20_000, undone_before=0, undone_now=7_000),
        clawback(CREDIT, original_amount=20_000, undone_before=7_000, undone_now=6_999),
        clawback(CREDIT, original_amount=20_000, undone_before=13_999, undone_now=6_001),
    ]
    assert steps == [
        (("national", 280), ("city", 140), ("namdong", 105)),
        (("national", 279), ("city", 139), ("namdong", 104)),
        (("national", 241), ("city", 121), ("namdong", 91)),
    ]
    for i, (funder, won) in enumerate(CREDIT):
        assert sum(step[i][1] for step in steps) == won


def test_full_reversal_claws_back_everything() -> None:
    assert clawback(CREDIT, original_amount=20_000, undone_before=0, undone_now=20_000) == CREDIT


def test_clawback_omits_zero_entries() -> None:
    credit = (("national", 1), ("city", 400))
    step = clawback(credit, original_amount=20_000, undone_before=0, undone_now=100)
    assert step == (("city", 2),)


def test_proportional_floors_the_cumulative_share() -> None:
    shares = [
        proportional(100, original_amount=3, undone_before=0, undone_now=1),
        proportional(100, original_amount=3, undone_before=1, undone_now=1),
        proportional(100, original_amount=3, undone_before=2, undone_now=1),
    ]
    assert shares == [33, 33, 34]


@pytest.mark.parametrize(
    ("original", "before", "now"),
    [(20_000, 15_000, 5_001), (20_000, -1, 1), (20_000, 0, -1), (0, 0, 0)],
)
def test_undoing_more_than_the_purchase_is_rejected(original: int, before: int, now: int) -> None:
    with pytest.raises(ValueError, match="cannot undo"):
        clawback(CREDIT, original_amount=original, undone_before=before, undone_now=now)
    with pytest.raises(ValueError, match="cannot undo"):
        proportional(100, original_amount=original, undone_before=before, undone_now=now)


# -- programs.toml load errors name the key ------------------------------------------------------


def broken(tmp_path: pathlib.Path, old: str, new: str) -> pathlib.Path:
    for name in ("programs.toml", "fees.toml"):
        text = (default_config_dir() / name).read_text(encoding="utf-8")
        if name == "programs.toml":
            assert old in text
            text = text.replace(old, new, 1)
        (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            'bins = [["94102000", "94102999"]]',
            'bins = [["9410200", "94102999"]]',
            "programs.toml: programs[2].bins[0]: expected [low, high] 8-digit prefixes",
        ),
        (
            'bins = [["94102000", "94102999"]]',
            'bins = [["94102999", "94102000"]]',
            "programs.toml: programs[2].bins[0]: low 94102999 is above high 94102000",
        ),
        (
            'bins = [["94102000", "94102999"]]',
            'bins = [["94101500", "94102999"]]',
            "programs.toml: BIN ranges overlap: programs[1].bins[0] reaches 94101999",
        ),
        (
            'id = "seo"\nname',
            'id = "namdong"\nname',
            "programs.toml: programs[2].id: duplicate id 'namdong'",
        ),
        (
            'district = "yeonsu"',
            'district = "yeonsoo"',
            "programs.toml: programs[3].district: unknown district 'yeonsoo'",
        ),
        (
            "pan_length = 16",
            'pan_length = 16\ncolour = "blue"',
            "programs.toml: programs[0].colour: unknown key",
        ),
        (
            "holding_max = 2_000_000 ",
            "holding_max = 5_000 ",
            "programs.toml: limits[0].holding_max: must be at least charge_min (10000)",
        ),
        (
            "effective_from = 2019-08-01T06:00:00+09:00",
            "effective_from = 2019-08-01T06:00:00",
            "programs.toml: policies[1].effective_from: must be a KST date-time",
        ),
        (
            "effective_from = 2020-01-01T00:00:00+09:00",
            "effective_from = 2019-10-01T00:00:00+09:00",
            "programs.toml: policies[3].effective_from: must be after 2019-10-22T00:00:00+09:00",
        ),
        (
            'id = "2020-03"',
            'id = "2020-01"',
            "programs.toml: policies[4].id: duplicate id '2020-01'",
        ),
        (
            "{ upto = 300_000, rate_bp = 400 }, { upto = 500_000, rate_bp = 100 }",
            "{ upto = 300_000, rate_bp = 400 }, { upto = 200_000, rate_bp = 100 }",
            "programs.toml: policies[1].layers[3].tiers[1].upto: must be greater than 300000",
        ),
        (
            "tiers = [{ rate_bp = 400 }]",
            "tiers = [{ rate_pb = 400 }]",
            "programs.toml: policies[0].layers[0].tiers[0].rate_bp: missing",
        ),
        (
            "tiers = [{ rate_bp = 400 }]",
            "tiers = [{ rate_bp = 40000 }]",
            "programs.toml: policies[0].layers[0].tiers[0].rate_bp: must be 0..10000 bp",
        ),
        (
            "tiers = [{ rate_bp = 400 }]",
            "tiers = [{ rate_bp = 400 }, { rate_bp = 100 }]",
            "programs.toml: policies[0].layers[0].tiers[0].upto:"
            " only the last entry may be open-ended",
        ),
        (
            'funder = "national"',
            'funder = "nation"',
            "programs.toml: policies[0].layers[0].funder: must be one of",
        ),
        (
            'scope = "city"',
            'scope = "town"',
            "programs.toml: policies[0].layers[0].scope: must be one of ['city', 'home_district']",
        ),
        (
            'programs = ["namdong"]',
            'programs = ["incheon"]',
            "programs.toml: policies[0].layers[2].programs[0]: 'incheon' has no home district",
        ),
        (
            'programs = ["namdong"]',
            'programs = ["busan"]',
            "programs.toml: policies[0].layers[2].programs[0]: unknown or not a string: 'busan'",
        ),
        (
            "excluded_categories = []",
            'excluded_categories = ["large_mart"]',
            "programs.toml: policies[0].excluded_categories:"
            " ['large_mart'] are not accepted at all",
        ),
        (
            'merchant_districts = ["ganghwa", "ongjin"]',
            'merchant_districts = ["ganghwa", "jeju"]',
            "programs.toml: policies[9].layers[2].merchant_districts[1]: unknown or not a string",
        ),
        (
            "{ sales_max = 3_000_000_000, tiers = [{ upto = 300_000, rate_bp = 350 }] }",
            "{ sales_max = 4_000_000_000, tiers = [{ upto = 300_000, rate_bp = 350 }] }",
            "programs.toml: policies[7].layers[0].sales_bands[1].sales_max: must not exceed"
            " the policy's merchant_sales_max (3000000000)",
        ),
        (
            "{ tiers = [{ upto = 300_000, rate_bp = 250 }] },",
            "{ tiers = [{ upto = 300_000, rate_bp = 250 }] },\n]\ntiers = [{ rate_bp = 1 }\n",
            "programs.toml: policies[6].layers[0].tiers:"
            " give exactly one of 'tiers' or 'sales_bands'",
        ),
        ("[acceptance]", "[acceptance", "programs.toml: "),
    ],
)
def test_broken_programs_toml_names_the_key(
    tmp_path: pathlib.Path, old: str, new: str, message: str
) -> None:
    config_dir = broken(tmp_path, old, new)
    with pytest.raises(ValueError) as caught:
        load_rules(config_dir)
    assert str(caught.value).startswith(message), str(caught.value)


def test_a_zero_amount_earns_nothing_and_a_negative_one_is_refused():
    """The boundary of quote_cashback's input check: 0 won is a valid (empty) quote."""
    q = cashback(at(2019, 7, 20), amount=0)
    assert (q.total, q.eligible, q.by_funder) == (0, 0, ())
    with pytest.raises(ValueError, match=r"^amount and month_spend must not be negative: -1, 0$"):
        cashback(at(2019, 7, 20), amount=-1)


def test_a_tier_wholly_below_the_months_spend_adds_nothing_even_when_the_floor_is_close():
    """2020-01 tiers (docs/domain.md, "Cashback"): 4 % to 300k, 2 % 300–500k. With 350,000
    already spent, 10,098 won earns 2 %: 201.96 won, floored per funder (1 % each) to 100 + 100.
    The 4 % tier below the month's spend must add nothing (an empty segment is zero won)."""
    q = cashback(at(2020, 1, 15), amount=10_098, month_spend=350_000)
    assert (q.total, q.by_funder, q.eligible) == (200, (("national", 100), ("city", 100)), 10_098)
