"""Invalid config/programs.toml and config/fees.toml are refused at load, naming the key.

Each case copies config/ into tmp_path, edits ONE value (or adds/removes one line) in the
TOML text and loads it with `load_rules`. A refused edit must raise ValueError with the
EXACT full message (file, key path, problem), so a mutant that changes the field name, the
text or the boundary fails. Every numeric check is tested on both sides of its boundary:
the first refused value and the last accepted one (an accepted edit is also read back).

`Rules.limits` and the notes of `Rules.channel_refusal` (whose parties are covered by
tests/test_online_mall.py) are checked here too.
"""

from __future__ import annotations

import pathlib
import re
import shutil
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import pytest

from switch.domain import Merchant
from switch.rules.policy import (
    CARDHOLDER,
    TERMINAL,
    ChannelRefusal,
    Limits,
    Rules,
    default_config_dir,
    load_rules,
)

KST = timezone(timedelta(hours=9))
P, F = "programs.toml", "fees.toml"
START, END = "<start of file>", "<end of file>"  # `old` sentinels: insert at the start / end

CASHBACK_FUNDERS = (
    "['bupyeong', 'city', 'dong', 'ganghwa', 'gyeyang', 'jung', 'merchant', 'michuhol',"
    " 'namdong', 'national', 'ongjin', 'seo', 'yeonsu']"
)
FEE_FUNDERS = (
    "['bupyeong', 'city', 'dong', 'ganghwa', 'gyeyang', 'jung', 'michuhol', 'namdong',"
    " 'national', 'ongjin', 'seo', 'yeonsu']"
)

# Anchors in the shipped files (each asserted present at edit time).
LIMIT0_FROM = "effective_from = 2019-01-31T00:00:00+09:00\ncharge_min = 10_000"
LIMIT1_FROM = "effective_from = 2023-09-01T00:00:00+09:00\ncharge_min = 10_000"
LIMIT0_HOLDING = "holding_max = 2_000_000        # legal ceiling"
LIMIT0_DAILY = "daily_spend_max = 2_000_000    # Assumption: not published; per card"
FLAT_400 = "tiers = [{ rate_bp = 400 }]"  # policies[0].layers[0] is its first occurrence
SEO_TIERS = "tiers = [{ upto = 300_000, rate_bp = 400 }, { upto = 500_000, rate_bp = 100 }]"
BAND_300M = "{ sales_max = 300_000_000, tiers = [{ upto = 300_000, rate_bp = 500 }] },"
BAND_3B = "{ sales_max = 3_000_000_000, tiers = [{ upto = 300_000, rate_bp = 350 }] },"
OPEN_BAND = "{ tiers = [{ upto = 300_000, rate_bp = 250 }] },"
CHECK0 = "check_bp = { micro = 50, small1 = 100, small2 = 110, small3 = 130, general = 150 }"
SEO_SUPPORT = 'funder = "seo"\ndistrict = "seo"\neffective_from = 2019-04-01T00:00:00+09:00'


def support_rule(funder: str, district: str, extra: str) -> str:
    return f'\n[[support]]\nfunder = "{funder}"\ndistrict = "{district}"\n{extra}\n'


Edit = tuple  # (file, old, new) or (file, old, new, nth): replace the nth occurrence of old


def edited_config(tmp_path: pathlib.Path, edits: list[Edit]) -> pathlib.Path:
    config = tmp_path / "config"
    shutil.copytree(default_config_dir(), config)
    for file, old, new, *rest in edits:
        path = config / file
        text = path.read_text(encoding="utf-8")
        if old == START:
            text = new + text
        elif old == END:
            text = text + new
        elif rest:
            (nth,) = rest
            parts = text.split(old)
            assert len(parts) > nth + 1, f"{old!r} occurs fewer than {nth + 1} times in {file}"
            text = old.join(parts[: nth + 1]) + new + old.join(parts[nth + 1 :])
        else:
            assert text.count(old) == 1, f"{old!r} is not exactly once in {file}"
            text = text.replace(old, new)
        path.write_text(text, encoding="utf-8")
    return config


def refused(id_: str, edits: list[Edit], message: str) -> Any:
    return pytest.param(edits, message, id=id_)


REFUSED = [
    # -- limits: _limit_period ------------------------------------------------------------
    refused("limits charge_min 0", [(P, LIMIT0_FROM, LIMIT0_FROM.replace("10_000", "0"))],
            "programs.toml: limits[0].charge_min: must be positive"),
    refused("limits charge_min negative", [(P, LIMIT0_FROM, LIMIT0_FROM.replace("10_000", "-1"))],
            "programs.toml: limits[0].charge_min: must not be negative, got -1"),
    refused("limits[1] charge_min 0", [(P, LIMIT1_FROM, LIMIT1_FROM.replace("10_000", "0"))],
            "programs.toml: limits[1].charge_min: must be positive"),
    refused("limits charge_min not int", [(P, LIMIT0_FROM, LIMIT0_FROM.replace("10_000", '"10000"'))],
            "programs.toml: limits[0].charge_min: expected int, got '10000'"),
    refused("limits charge_min bool", [(P, LIMIT0_FROM, LIMIT0_FROM.replace("10_000", "true"))],
            "programs.toml: limits[0].charge_min: expected int, got True"),
    refused("limits holding_max below charge_min",
            [(P, LIMIT0_HOLDING, "holding_max = 9_999 #")],
            "programs.toml: limits[0].holding_max: must be at least charge_min (10000)"),
    refused("limits charge_month_max below charge_min",
            [(P, "charge_month_max = 1_500_000", "charge_month_max = 9_999")],
            "programs.toml: limits[1].charge_month_max: must be at least charge_min (10000)"),
    refused("limits charge_month_max negative",
            [(P, "charge_month_max = 1_500_000", "charge_month_max = -1")],
            "programs.toml: limits[1].charge_month_max: must not be negative, got -1"),
    refused("limits daily_spend_max 0", [(P, LIMIT0_DAILY, "daily_spend_max = 0 #")],
            "programs.toml: limits[0].daily_spend_max: must be positive"),
    refused("limits daily_spend_max missing", [(P, LIMIT0_DAILY, "#")],
            "programs.toml: limits[0].daily_spend_max: missing"),
    refused("limits unknown key", [(P, LIMIT0_FROM, LIMIT0_FROM + "\ncharge_max = 5")],
            "programs.toml: limits[0].charge_max: unknown key"),
    refused("limits effective_from not KST",
            [(P, LIMIT0_FROM, LIMIT0_FROM.replace("+09:00", "+00:00"))],
            "programs.toml: limits[0].effective_from: must be a KST date-time like"
            " 2019-08-01T06:00:00+09:00, got 2019-01-31 00:00:00+00:00"),
    # -- limits: _limit_periods -----------------------------------------------------------
    refused("limits periods equal instants",
            [(P, LIMIT1_FROM, LIMIT1_FROM.replace("2023-09-01", "2019-01-31"))],
            "programs.toml: limits[1].effective_from: must be after 2019-01-31T00:00:00+09:00"),
    refused("limits periods descending",
            [(P, LIMIT1_FROM, LIMIT1_FROM.replace("2023-09-01", "2019-01-30"))],
            "programs.toml: limits[1].effective_from: must be after 2019-01-31T00:00:00+09:00"),
    refused("limits none", [(P, "[[limits]]", "[[limits_gone]]", 0),
                            (P, "[[limits]]", "[[limits_gone]]", 0),
                            (P, START, "limits = []\n")],
            "programs.toml: limits: at least one period is required"),
    # -- policies: _policy ----------------------------------------------------------------
    refused("policy duplicate id", [(P, 'id = "2019-08-01"', 'id = "2019-04"')],
            "programs.toml: policies[1].id: duplicate id '2019-04'"),
    refused("policy effective_from equal to previous",
            [(P, "effective_from = 2019-08-01T06:00:00+09:00", "effective_from = 2019-04-01T00:00:00+09:00")],
            "programs.toml: policies[1].effective_from: must be after 2019-04-01T00:00:00+09:00"),
    refused("policy effective_from not KST",
            [(P, "effective_from = 2019-04-01T00:00:00+09:00", "effective_from = 2019-04-01T00:00:00Z")],
            "programs.toml: policies[0].effective_from: must be a KST date-time like"
            " 2019-08-01T06:00:00+09:00, got 2019-04-01 00:00:00+00:00"),
    refused("policy unknown key", [(P, 'id = "2019-04"\n', 'id = "2019-04"\ncap = 1\n')],
            "programs.toml: policies[0].cap: unknown key"),
    refused("policy excluded category not a string", [(P, "excluded_categories = []", "excluded_categories = [1]")],
            "programs.toml: policies[0].excluded_categories[0]: unknown or not a string: 1"),
    refused("policy excluded category not accepted",
            [(P, "excluded_categories = []", 'excluded_categories = ["large_mart"]')],
            "programs.toml: policies[0].excluded_categories: ['large_mart'] are not accepted at all"
            " (acceptance.categories_not_accepted)"),
    refused("policy merchant_sales_max negative",
            [(P, "merchant_sales_max = 3_000_000_000", "merchant_sales_max = -1", 0)],
            "programs.toml: policies[7].merchant_sales_max: must not be negative, got -1"),
    refused("policy band above merchant_sales_max",
            [(P, BAND_3B, BAND_3B.replace("3_000_000_000", "3_000_000_001"), 0)],
            "programs.toml: policies[7].layers[0].sales_bands[1].sales_max: must not exceed the"
            " policy's merchant_sales_max (3000000000)"),
    refused("policy open band under merchant_sales_max",
            [(P, BAND_3B, "{ tiers = [{ upto = 300_000, rate_bp = 350 }] },", 0)],
            "programs.toml: policies[7].layers[0].sales_bands[1].sales_max: must not exceed the"
            " policy's merchant_sales_max (3000000000)"),
    # -- layers ---------------------------------------------------------------------------
    refused("layer unknown scope", [(P, 'scope = "city"', 'scope = "town"', 0)],
            "programs.toml: policies[0].layers[0].scope: must be one of ['city', 'home_district'], got 'town'"),
    refused("layer unknown funder", [(P, 'funder = "national"', 'funder = "bank"', 0)],
            f"programs.toml: policies[0].layers[0].funder: must be one of {CASHBACK_FUNDERS}, got 'bank'"),
    refused("layer home_district program without district",
            [(P, 'programs = ["namdong"]', 'programs = ["incheon"]', 0)],
            "programs.toml: policies[0].layers[2].programs[0]: 'incheon' has no home district for scope"
            " 'home_district'"),
    refused("layer unknown program", [(P, 'programs = ["namdong"]', 'programs = ["busan"]', 0)],
            "programs.toml: policies[0].layers[2].programs[0]: unknown or not a string: 'busan'"),
    refused("layer unknown key", [(P, FLAT_400, FLAT_400 + "\ncap = 1", 0)],
            "programs.toml: policies[0].layers[0].cap: unknown key"),
    # -- _bands ---------------------------------------------------------------------------
    refused("bands neither tiers nor sales_bands", [(P, FLAT_400, "", 0)],
            "programs.toml: policies[0].layers[0].tiers: give exactly one of 'tiers' or 'sales_bands'"),
    refused("bands both tiers and sales_bands",
            [(P, FLAT_400, FLAT_400 + "\nsales_bands = [{ tiers = [{ rate_bp = 1 }] }]", 0)],
            "programs.toml: policies[0].layers[0].tiers: give exactly one of 'tiers' or 'sales_bands'"),
    refused("bands empty", [(P, FLAT_400, "sales_bands = []", 0)],
            "programs.toml: policies[0].layers[0].sales_bands: at least one band is required"),
    refused("bands not a table", [(P, FLAT_400, "sales_bands = [1]", 0)],
            "programs.toml: policies[0].layers[0].sales_bands[0]: expected a table, got 1"),
    refused("bands first sales_max 0", [(P, BAND_300M, BAND_300M.replace("300_000_000", "0"), 0)],
            "programs.toml: policies[6].layers[0].sales_bands[0].sales_max: must be greater than 0, got 0"),
    refused("bands first sales_max negative", [(P, BAND_300M, BAND_300M.replace("300_000_000", "-1"), 0)],
            "programs.toml: policies[6].layers[0].sales_bands[0].sales_max: must not be negative, got -1"),
    refused("bands sales_max equal to previous",
            [(P, BAND_3B, BAND_3B.replace("3_000_000_000", "300_000_000"), 0)],
            "programs.toml: policies[7].layers[0].sales_bands[1].sales_max: must be greater than"
            " 300000000, got 300000000"),
    refused("bands sales_max below previous",
            [(P, BAND_3B, BAND_3B.replace("3_000_000_000", "299_999_999"), 0)],
            "programs.toml: policies[7].layers[0].sales_bands[1].sales_max: must be greater than"
            " 300000000, got 299999999"),
    refused("bands open-ended not last",
            [(P, BAND_300M, "{ tiers = [{ upto = 300_000, rate_bp = 500 }] },", 0)],
            "programs.toml: policies[6].layers[0].sales_bands[0].sales_max: only the last entry may be"
            " open-ended"),
    refused("bands unknown key", [(P, BAND_300M, BAND_300M.replace("{ sales_max", "{ cap = 1, sales_max"), 0)],
            "programs.toml: policies[6].layers[0].sales_bands[0].cap: unknown key"),
    refused("bands tiers empty", [(P, OPEN_BAND, "{ tiers = [] },", 0)],
            "programs.toml: policies[6].layers[0].sales_bands[1].tiers: at least one tier is required"),
    # -- _tiers ---------------------------------------------------------------------------
    refused("tiers empty", [(P, FLAT_400, "tiers = []", 0)],
            "programs.toml: policies[0].layers[0].tiers: at least one tier is required"),
    refused("tiers rate_bp above 10000", [(P, FLAT_400, "tiers = [{ rate_bp = 10_001 }]", 0)],
            "programs.toml: policies[0].layers[0].tiers[0].rate_bp: must be 0..10000 bp, got 10001"),
    refused("tiers rate_bp negative", [(P, FLAT_400, "tiers = [{ rate_bp = -1 }]", 0)],
            "programs.toml: policies[0].layers[0].tiers[0].rate_bp: must be 0..10000 bp, got -1"),
    refused("tiers rate_bp missing", [(P, FLAT_400, "tiers = [{ upto = 5 }]", 0)],
            "programs.toml: policies[0].layers[0].tiers[0].rate_bp: missing"),
    refused("tiers unknown key", [(P, FLAT_400, "tiers = [{ rate_bp = 400, cap = 1 }]", 0)],
            "programs.toml: policies[0].layers[0].tiers[0].cap: unknown key"),
    refused("tiers first upto 0", [(P, SEO_TIERS, SEO_TIERS.replace("300_000", "0"))],
            "programs.toml: policies[1].layers[3].tiers[0].upto: must be greater than 0, got 0"),
    refused("tiers upto negative", [(P, SEO_TIERS, SEO_TIERS.replace("300_000", "-1"))],
            "programs.toml: policies[1].layers[3].tiers[0].upto: must not be negative, got -1"),
    refused("tiers upto equal to previous", [(P, SEO_TIERS, SEO_TIERS.replace("500_000", "300_000"))],
            "programs.toml: policies[1].layers[3].tiers[1].upto: must be greater than 300000, got 300000"),
    refused("tiers upto below previous", [(P, SEO_TIERS, SEO_TIERS.replace("500_000", "299_999"))],
            "programs.toml: policies[1].layers[3].tiers[1].upto: must be greater than 300000, got 299999"),
    refused("tiers open-ended not last", [(P, SEO_TIERS, SEO_TIERS.replace("upto = 300_000, ", ""))],
            "programs.toml: policies[1].layers[3].tiers[0].upto: only the last entry may be open-ended"),
    # -- programs and the root tables -----------------------------------------------------
    refused("programs pan_length 8", [(P, "pan_length = 16", "pan_length = 8", 0)],
            "programs.toml: programs[0].pan_length: must be 9..19"),
    refused("programs pan_length 20", [(P, "pan_length = 16", "pan_length = 20", 0)],
            "programs.toml: programs[0].pan_length: must be 9..19"),
    refused("programs bin ranges touch",
            [(P, 'bins = [["94100000", "94100999"]]', 'bins = [["94100000", "94101000"]]')],
            "programs.toml: BIN ranges overlap: programs[0].bins[0] reaches 94101000, next starts 94101000"),
    refused("programs bin low above high",
            [(P, 'bins = [["94100000", "94100999"]]', 'bins = [["94100999", "94100998"]]')],
            "programs.toml: programs[0].bins[0]: low 94100999 is above high 94100998"),
    refused("programs duplicate id", [(P, 'id = "seo"', 'id = "namdong"')],
            "programs.toml: programs[2].id: duplicate id 'namdong'"),
    refused("programs unknown top-level key", [(P, START, "extra = 1\n")],
            "programs.toml: extra: unknown key"),
    refused("fees unknown top-level key", [(F, START, "extra = 1\n")],
            "fees.toml: extra: unknown key"),
    # -- fees.toml: merchant tiers and schedules ------------------------------------------
    refused("fee tiers first sales_max 0", [(F, "sales_max = 300_000_000", "sales_max = 0")],
            "fees.toml: tiers[0].sales_max: must be greater than 0, got 0"),
    refused("fee tiers sales_max equal to previous", [(F, "sales_max = 500_000_000\n\n", "sales_max = 300_000_000\n\n")],
            "fees.toml: tiers[1].sales_max: must be greater than 300000000, got 300000000"),
    refused("fee tiers last not open-ended", [(F, 'id = "general"', 'id = "general"\nsales_max = 9_000_000_000')],
            "fees.toml: tiers[4].sales_max: the last tier must be open-ended (no sales_max)"),
    refused("fee tiers duplicate id", [(F, 'id = "small2"', 'id = "small1"')],
            "fees.toml: tiers[2].id: duplicate id 'small1'"),
    refused("fee tiers unknown key", [(F, 'id = "micro"', 'id = "micro"\ncap = 1')],
            "fees.toml: tiers[0].cap: unknown key"),
    refused("check_bp above the 250 bp legal cap", [(F, CHECK0, CHECK0.replace("micro = 50", "micro = 251"))],
            "fees.toml: schedules[0].check_bp.micro: must be 0..250 bp, got 251"),
    refused("check_bp negative", [(F, CHECK0, CHECK0.replace("micro = 50", "micro = -1"))],
            "fees.toml: schedules[0].check_bp.micro: must be 0..250 bp, got -1"),
    refused("check_bp tier missing", [(F, CHECK0, CHECK0.replace(", general = 150", ""))],
            "fees.toml: schedules[0].check_bp.general: missing"),
    refused("check_bp unknown tier", [(F, CHECK0, CHECK0.replace("general = 150", "general = 150, mega = 1"))],
            "fees.toml: schedules[0].check_bp.mega: unknown key"),
    refused("schedules equal instants",
            [(F, "effective_from = 2022-01-31T00:00:00+09:00", "effective_from = 2019-01-31T00:00:00+09:00")],
            "fees.toml: schedules[1].effective_from: must be after 2019-01-31T00:00:00+09:00"),
    refused("pg_rate_bp above 10000", [(F, "pg_rate_bp = 300", "pg_rate_bp = 10_001")],
            "fees.toml: online_mall.pg_rate_bp: must be 0..10000 bp, got 10001"),
    refused("online_mall unknown key", [(F, "pg_rate_bp = 300", "pg_rate_bp = 300\ncap = 1")],
            "fees.toml: online_mall.cap: unknown key"),
    # -- fees.toml: _support --------------------------------------------------------------
    refused("support both support_bp and net_rate_bp",
            [(F, "sales_max = 500_000_000\nsupport_bp = 50", "sales_max = 500_000_000\nsupport_bp = 50\nnet_rate_bp = 0")],
            "fees.toml: support[0].support_bp: give exactly one of 'support_bp' or 'net_rate_bp'"),
    refused("support neither support_bp nor net_rate_bp",
            [(F, "sales_max = 999_999_999\nsupport_bp = 50", "sales_max = 999_999_999")],
            "fees.toml: support[3].support_bp: give exactly one of 'support_bp' or 'net_rate_bp'"),
    refused("support support_bp above 10000",
            [(F, "sales_max = 999_999_999\nsupport_bp = 50", "sales_max = 999_999_999\nsupport_bp = 10_001")],
            "fees.toml: support[3].support_bp: must be 0..10000 bp, got 10001"),
    refused("support net_rate_bp above 10000", [(F, "net_rate_bp = 55", "net_rate_bp = 10_001")],
            "fees.toml: support[2].net_rate_bp: must be 0..10000 bp, got 10001"),
    refused("support net_rate_bp negative", [(F, "net_rate_bp = 55", "net_rate_bp = -1")],
            "fees.toml: support[2].net_rate_bp: must be 0..10000 bp, got -1"),
    refused("support effective_until equal to effective_from",
            [(F, "effective_until = 2023-01-01T00:00:00+09:00", "effective_until = 2019-04-01T00:00:00+09:00")],
            "fees.toml: support[0].effective_until: must be after effective_from"),
    refused("support effective_until before effective_from",
            [(F, "effective_until = 2023-01-01T00:00:00+09:00", "effective_until = 2019-03-31T23:59:59+09:00")],
            "fees.toml: support[0].effective_until: must be after effective_from"),
    refused("support sales_above equal to sales_max", [(F, "sales_above = 500_000_000", "sales_above = 1_000_000_000")],
            "fees.toml: support[2].sales_above: must be below sales_max (1000000000)"),
    refused("support sales_above negative", [(F, "sales_above = 500_000_000", "sales_above = -1")],
            "fees.toml: support[2].sales_above: must not be negative, got -1"),
    refused("support unknown funder", [(F, SEO_SUPPORT, SEO_SUPPORT.replace('funder = "seo"', 'funder = "merchant"'))],
            f"fees.toml: support[3].funder: must be one of {FEE_FUNDERS}, got 'merchant'"),
    refused("support unknown key", [(F, SEO_SUPPORT, SEO_SUPPORT + "\ncap = 1")],
            "fees.toml: support[3].cap: unknown key"),
    refused("support effective_from not KST",
            [(F, SEO_SUPPORT, SEO_SUPPORT.replace("+09:00", "+08:00"))],
            "fees.toml: support[3].effective_from: must be a KST date-time like"
            " 2019-08-01T06:00:00+09:00, got 2019-04-01 00:00:00+08:00"),
    # -- fees.toml: _supports_overlap -----------------------------------------------------
    refused("overlap: earlier rule ends 1 s after the next starts",
            [(F, "effective_until = 2023-01-01T00:00:00+09:00", "effective_until = 2023-01-01T00:00:01+09:00")],
            "fees.toml: support[1].funder: overlaps support[0]: same funder and district, period and sales"),
    refused("overlap: later-listed rule ends 1 s after the earlier-listed starts",
            [(F, END, support_rule("seo", "seo", "effective_from = 2019-01-31T00:00:00+09:00\n"
                                   "effective_until = 2019-04-01T00:00:01+09:00\nsales_max = 1\nsupport_bp = 1"))],
            "fees.toml: support[4].funder: overlaps support[3]: same funder and district, period and sales"),
    refused("overlap: sales_above 1 won below the previous rule's sales_max",
            [(F, "sales_above = 500_000_000", "sales_above = 499_999_999")],
            "fees.toml: support[2].funder: overlaps support[1]: same funder and district, period and sales"),
    refused("overlap: later-listed rule's sales_max 1 won above the earlier's sales_above",
            [(F, END, support_rule("yeonsu", "yeonsu", "effective_from = 2020-01-01T00:00:00+09:00\n"
                                   "sales_above = 100\nsales_max = 200\nsupport_bp = 1")
              + support_rule("yeonsu", "yeonsu", "effective_from = 2020-01-01T00:00:00+09:00\n"
                             "sales_max = 101\nsupport_bp = 1"))],
            "fees.toml: support[5].funder: overlaps support[4]: same funder and district, period and sales"),
    refused("overlap: same funder and district, both open-ended",
            [(F, END, support_rule("seo", "seo", "effective_from = 2030-01-01T00:00:00+09:00\n"
                                   "sales_max = 1\nsupport_bp = 1"))],
            "fees.toml: support[4].funder: overlaps support[3]: same funder and district, period and sales"),
]


@pytest.mark.parametrize(("edits", "message"), REFUSED)
def test_invalid_config_is_refused_naming_the_key(
    tmp_path: pathlib.Path, edits: list[Edit], message: str
) -> None:
    config = edited_config(tmp_path, edits)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        load_rules(config)


def accepted(id_: str, edits: list[Edit], check: Callable[[Rules], Any]) -> Any:
    return pytest.param(edits, check, id=id_)


def limits0(rules: Rules) -> Limits:
    return rules.limit_periods[0].limits


def tier_bounds(rules: Rules, policy: int, layer: int, band: int = 0) -> list[int | None]:
    return [t.upto for t in rules.cashback.policies[policy].layers[layer].bands[band].tiers]


def band_bounds(rules: Rules, policy: int, layer: int) -> list[int | None]:
    return [b.sales_max for b in rules.cashback.policies[policy].layers[layer].bands]


ACCEPTED = [
    accepted("limits charge_min 1", [(P, LIMIT0_FROM, LIMIT0_FROM.replace("10_000", "1"))],
             lambda r: limits0(r).charge_min == 1),
    accepted("limits holding_max equal to charge_min", [(P, LIMIT0_HOLDING, "holding_max = 10_000 #")],
             lambda r: limits0(r).holding_max == 10_000),
    accepted("limits charge_month_max equal to charge_min",
             [(P, "charge_month_max = 1_500_000", "charge_month_max = 10_000")],
             lambda r: r.limit_periods[1].limits.charge_month_max == 10_000),
    accepted("limits daily_spend_max 1", [(P, LIMIT0_DAILY, "daily_spend_max = 1 #")],
             lambda r: limits0(r).daily_spend_max == 1),
    accepted("limits periods 1 s apart",
             [(P, LIMIT1_FROM, LIMIT1_FROM.replace("2023-09-01T00:00:00", "2019-01-31T00:00:01"))],
             lambda r: r.limit_periods[1].effective_from == datetime(2019, 1, 31, 0, 0, 1, tzinfo=KST)),
    accepted("policy effective_from 1 s after previous",
             [(P, "effective_from = 2019-08-01T06:00:00+09:00", "effective_from = 2019-04-01T00:00:01+09:00")],
             lambda r: r.cashback.policies[1].effective_from == datetime(2019, 4, 1, 0, 0, 1, tzinfo=KST)),
    accepted("policy band equal to merchant_sales_max", [],
             lambda r: band_bounds(r, 7, 0) == [300_000_000, 3_000_000_000]),
    accepted("bands first sales_max 1", [(P, BAND_300M, BAND_300M.replace("300_000_000", "1"), 0)],
             lambda r: band_bounds(r, 6, 0) == [1, None]),
    accepted("bands sales_max 1 above previous",
             [(P, BAND_3B, BAND_3B.replace("3_000_000_000", "300_000_001"), 0)],
             lambda r: band_bounds(r, 7, 0) == [300_000_000, 300_000_001]),
    accepted("tiers rate_bp 10000", [(P, FLAT_400, "tiers = [{ rate_bp = 10_000 }]", 0)],
             lambda r: r.cashback.policies[0].layers[0].bands[0].tiers[0].rate_bp == 10_000),
    accepted("tiers rate_bp 0", [(P, FLAT_400, "tiers = [{ rate_bp = 0 }]", 0)],
             lambda r: r.cashback.policies[0].layers[0].bands[0].tiers[0].rate_bp == 0),
    accepted("tiers first upto 1", [(P, SEO_TIERS, SEO_TIERS.replace("300_000", "1"))],
             lambda r: tier_bounds(r, 1, 3) == [1, 500_000]),
    accepted("tiers upto 1 above previous", [(P, SEO_TIERS, SEO_TIERS.replace("500_000", "300_001"))],
             lambda r: tier_bounds(r, 1, 3) == [300_000, 300_001]),
    accepted("programs pan_length 9", [(P, "pan_length = 16", "pan_length = 9", 0)],
             lambda r: r.programs["incheon"].pan_length == 9),
    accepted("programs pan_length 19", [(P, "pan_length = 16", "pan_length = 19", 0)],
             lambda r: r.programs["incheon"].pan_length == 19),
    accepted("programs bin low equal to high",
             [(P, 'bins = [["94100000", "94100999"]]', 'bins = [["94100999", "94100999"]]')],
             lambda r: r.programs["incheon"].bins == (("94100999", "94100999"),)),
    accepted("fee tiers first sales_max 1", [(F, "sales_max = 300_000_000", "sales_max = 1")],
             lambda r: r.fees.tiers[0].sales_max == 1),
    accepted("fee tiers sales_max 1 above previous",
             [(F, "sales_max = 500_000_000\n\n", "sales_max = 300_000_001\n\n")],
             lambda r: r.fees.tiers[1].sales_max == 300_000_001),
    accepted("check_bp 250 (the legal cap)", [(F, CHECK0, CHECK0.replace("micro = 50", "micro = 250"))],
             lambda r: r.fees.schedules[0].check_bp["micro"] == 250),
    accepted("check_bp 0", [(F, CHECK0, CHECK0.replace("micro = 50", "micro = 0"))],
             lambda r: r.fees.schedules[0].check_bp["micro"] == 0),
    accepted("schedules 1 s apart",
             [(F, "effective_from = 2022-01-31T00:00:00+09:00", "effective_from = 2019-01-31T00:00:01+09:00")],
             lambda r: r.fees.schedules[1].effective_from == datetime(2019, 1, 31, 0, 0, 1, tzinfo=KST)),
    accepted("pg_rate_bp 10000 (a PG fee, not capped at 250)", [(F, "pg_rate_bp = 300", "pg_rate_bp = 10_000")],
             lambda r: r.fees.online_mall_bp == 10_000),
    accepted("pg_rate_bp 251", [(F, "pg_rate_bp = 300", "pg_rate_bp = 251")],
             lambda r: r.fees.online_mall_bp == 251),
    accepted("support support_bp 10000",
             [(F, "sales_max = 999_999_999\nsupport_bp = 50", "sales_max = 999_999_999\nsupport_bp = 10_000")],
             lambda r: r.fees.supports[3].support_bp == 10_000),
    accepted("support net_rate_bp 0 and 10000", [(F, "net_rate_bp = 55", "net_rate_bp = 10_000")],
             lambda r: (r.fees.supports[1].net_rate_bp, r.fees.supports[2].net_rate_bp) == (0, 10_000)),
    accepted("support effective_until 1 s after effective_from",
             [(F, "effective_until = 2023-01-01T00:00:00+09:00", "effective_until = 2019-04-01T00:00:01+09:00")],
             lambda r: r.fees.supports[0].effective_until == datetime(2019, 4, 1, 0, 0, 1, tzinfo=KST)),
    accepted("support sales_above 1 won below sales_max",
             [(F, "sales_above = 500_000_000", "sales_above = 999_999_999")],
             lambda r: r.fees.supports[2].sales_above == 999_999_999),
    accepted("no overlap: later-listed rule ends as the earlier-listed starts",
             [(F, END, support_rule("seo", "seo", "effective_from = 2019-01-31T00:00:00+09:00\n"
                                    "effective_until = 2019-04-01T00:00:00+09:00\nsales_max = 1\nsupport_bp = 1"))],
             lambda r: len(r.fees.supports) == 5),
    accepted("no overlap: later-listed rule's sales_max equals the earlier's sales_above",
             [(F, END, support_rule("yeonsu", "yeonsu", "effective_from = 2020-01-01T00:00:00+09:00\n"
                                    "sales_above = 100\nsales_max = 200\nsupport_bp = 1")
               + support_rule("yeonsu", "yeonsu", "effective_from = 2020-01-01T00:00:00+09:00\n"
                              "sales_max = 100\nsupport_bp = 1"))],
             lambda r: len(r.fees.supports) == 6),
    accepted("no overlap: same funder, another district",
             [(F, END, support_rule("seo", "yeonsu", "effective_from = 2019-04-01T00:00:00+09:00\n"
                                    "sales_max = 999_999_999\nsupport_bp = 50"))],
             lambda r: r.fees.supports[4].district == "yeonsu"),
    accepted("no overlap: same district, another funder",
             [(F, END, support_rule("city", "seo", "effective_from = 2019-04-01T00:00:00+09:00\n"
                                    "sales_max = 999_999_999\nsupport_bp = 50"))],
             lambda r: r.fees.supports[4].funder == "city"),
    # a [preauth] table that leaves a key out takes its documented default (found by mypy:
    # the defaults were read off a slots dataclass, a member descriptor rather than the number)
    accepted("[preauth] without hold_days", [(P, "hold_days = 7 ", "# hold_days = 7 ")],
             lambda r: (r.preauth.hold_days, r.preauth.completion_tolerance_pct) == (7, 0)),
    accepted("[preauth] without completion_tolerance_pct",
             [(P, "hold_days = 7 ", "hold_days = 5 "),
              (P, "completion_tolerance_pct = 0 ", "# completion_tolerance_pct = 0 ")],
             lambda r: (r.preauth.hold_days, r.preauth.completion_tolerance_pct) == (5, 0)),
]


@pytest.mark.parametrize(("edits", "check"), ACCEPTED)
def test_boundary_value_is_accepted_and_read(
    tmp_path: pathlib.Path, edits: list[Edit], check: Callable[[Rules], Any]
) -> None:
    rules = load_rules(edited_config(tmp_path, edits))
    assert check(rules)


# -- Rules.limits ---------------------------------------------------------------------------

RULES = load_rules(default_config_dir())


def test_limits_before_the_first_period_names_the_instant() -> None:
    with pytest.raises(ValueError, match=f"^{re.escape('no limits in force at 2019-01-30T23:59:59+09:00')}$"):
        RULES.limits(datetime(2019, 1, 30, 23, 59, 59, tzinfo=KST))


def test_limits_in_force_from_the_first_instant() -> None:
    assert RULES.limits(datetime(2019, 1, 31, tzinfo=KST)) == Limits(10_000, 2_000_000, None, 2_000_000)


def test_limits_need_an_aware_instant() -> None:
    with pytest.raises(ValueError, match="^now must be timezone-aware$"):
        RULES.limits(datetime(2023, 9, 1))


# -- Rules.channel_refusal: the notes (the parties are in tests/test_online_mall.py) -----------

SHOP = Merchant("NAMDONG01", "cafe", "namdong", 250_000_000)
MALL = Merchant("MALL01", "mall seller", "namdong", 250_000_000, online_mall=True)


@pytest.mark.parametrize(
    ("merchant", "entry_mode", "refusal"),
    [
        pytest.param(SHOP, "812", ChannelRefusal(CARDHOLDER, "e-commerce entry mode 812 outside the online mall"),
                     id="e-commerce outside the mall"),
        pytest.param(MALL, "051", ChannelRefusal(TERMINAL, "online mall merchant takes e-commerce only, DE22 051"),
                     id="card present at the mall"),
        pytest.param(MALL, "", ChannelRefusal(TERMINAL, "online mall merchant takes e-commerce only, DE22 absent"),
                     id="no DE22 at the mall"),
    ],
)
def test_channel_refusal_notes(merchant: Merchant, entry_mode: str, refusal: ChannelRefusal) -> None:
    assert RULES.channel_refusal(merchant, entry_mode) == refusal


def test_a_fee_book_without_tiers_or_schedules_and_a_program_without_bins_are_refused_by_name(tmp_path) -> None:
    """The three "at least one … is required" checks, with their exact messages."""
    from switch.rules.policy import _fee_schedules, _fee_tiers, _Table

    with pytest.raises(ValueError, match=r"^fees\.toml: tiers: at least one tier is required$"):
        _fee_tiers(_Table({"tiers": []}, "fees.toml", ""))
    with pytest.raises(ValueError, match=r"^fees\.toml: schedules: at least one schedule is required$"):
        _fee_schedules(_Table({"schedules": []}, "fees.toml", ""), ())
    config = edited_config(tmp_path, [("programs.toml", 'bins = [["94100000", "94100999"]]', "bins = []")])
    with pytest.raises(ValueError, match=r"^programs\.toml: programs\[0\]\.bins: at least one range is required$"):
        load_rules(config)


def test_every_instant_of_the_shipped_rules_carries_the_clocks_kst_tzinfo_and_keeps_its_instant():
    """The rules' instants (effective_from, effective_until) are given as +09:00 date-times;
    loaded, each is the same instant with switch.domain.KST itself as its tzinfo, the object the
    clocks use, so comparing one with a clock's now compares fields (docs/performance.md, "The
    rules' instants in the clocks' zone (kept)"). The text and the instant are unchanged."""
    from switch.configdir import config_dir
    from switch.domain import KST
    from switch.rules.policy import load_rules

    rules = load_rules(config_dir())
    instants = [p.effective_from for p in rules.limit_periods] + [s.effective_from for s in rules.fees.schedules]
    instants += [p.effective_from for p in rules.cashback.policies]
    instants += [t for s in rules.fees.supports for t in (s.effective_from, s.effective_until) if t is not None]
    assert len(instants) >= 3 and all(t.tzinfo is KST for t in instants)
    first = instants[0]
    assert first == datetime.fromisoformat(first.isoformat())  # the same instant as the text
    assert first.isoformat().endswith("+09:00") and first.utcoffset() == timedelta(hours=9)
    assert first == first.astimezone(timezone.utc)
