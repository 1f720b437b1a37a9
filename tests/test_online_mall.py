"""The city's online mall (인천e몰): e-commerce only, a 3 % PG fee, no district fee support.

DE22 positions 1-2 `01` (key-entered) or `81` (e-commerce) are card-not-present. A mall
merchant takes only those (card present or no DE22: 58); any other merchant takes none of
them (57). Fee = floor(amount x 300 / 10000). Cashback as at any merchant of the mall
merchant's district (docs/domain.md, "Merchant fees": nothing mall-specific is published).

Base case, 2019-07-20 (policy 2019-04): a Namdong card buys 12,345 at MALL01, a Namdong
250M mall merchant: fee floor(370.35) = 370 with no Namdong support (the same sale at a
Namdong shop would cost 61, all paid by Namdong); cashback 7.5 %: national floor(493.8) =
493, city floor(246.9) = 246, Namdong floor(185.175) = 185.
"""

from __future__ import annotations

import pathlib
from datetime import datetime

import pytest

from conftest import account_balances, card_accounts, payable, posting_count, posting_entries, postings
from switch.ledger.audit import verify
from switch.domain import KST, Merchant
from switch.rules.fees import ECOMMERCE_ENTRY_MODES, FeeQuote, quote_fee
from switch.wire.messages import Balances, decode_balances
from switch.rules.policy import CARDHOLDER, TERMINAL, default_config_dir, load_rules

pytestmark = pytest.mark.both_stores  # SQLite and PostgreSQL (tests/conftest.py)

RULES = load_rules(default_config_dir())
MALL_SHOP = Merchant("MALL01", "mall seller", "namdong", 250_000_000, online_mall=True)
NAMDONG_SHOP = Merchant("NAMDONG01", "cafe", "namdong", 250_000_000)


# ---------------------------------------------------------------------------- rules (pure)

@pytest.mark.parametrize(("amount", "fee"), [(20_000, 600), (12_345, 370), (33, 0), (34, 1), (2_000_000, 60_000),
                                             (9_999, 299)])
def test_mall_fee_is_floor_of_3_percent_with_no_support(amount: int, fee: int) -> None:
    for now in (datetime(2019, 7, 20, 12, tzinfo=KST), datetime(2023, 3, 1, tzinfo=KST),
                datetime(2025, 10, 1, tzinfo=KST)):
        quote = quote_fee(RULES.fees, merchant=MALL_SHOP, card_program="namdong", amount=amount, now=now)
        assert quote == FeeQuote(tier="online_mall", rate_bp=300, fee=fee, support=())
        assert quote.merchant_fee == fee == amount * 3 // 100


def test_the_same_sale_at_a_namdong_shop_is_fully_supported() -> None:
    quote = quote_fee(RULES.fees, merchant=NAMDONG_SHOP, card_program="namdong", amount=12_345,
                      now=datetime(2019, 7, 20, 12, tzinfo=KST))
    assert (quote.fee, quote.support, quote.merchant_fee) == (61, (("namdong", 61),), 0)


@pytest.mark.parametrize(("entry_mode", "mall", "refused_to"), [
    ("812", True, None), ("810", True, None), ("012", True, None), ("010", True, None),
    ("051", True, TERMINAL), ("071", True, TERMINAL), ("901", True, TERMINAL), ("", True, TERMINAL),
    ("051", False, None), ("071", False, None), ("021", False, None), ("", False, None),
    ("812", False, CARDHOLDER), ("012", False, CARDHOLDER),
])
def test_channel_rules(entry_mode: str, mall: bool, refused_to: str | None) -> None:
    merchant = MALL_SHOP if mall else NAMDONG_SHOP
    refusal = RULES.channel_refusal(merchant, entry_mode)
    assert (refusal.party if refusal else None) == refused_to


def test_ecommerce_entry_modes_come_from_fees_toml() -> None:
    assert RULES.fees.ecommerce_entry_modes == ECOMMERCE_ENTRY_MODES == ("01", "81")


@pytest.mark.parametrize(("new", "message"), [
    ('ecommerce_entry_modes = ["01", "8"]', "fees.toml: online_mall.ecommerce_entry_modes[1]: must be two digits"),
    ('ecommerce_entry_modes = []', "fees.toml: online_mall.ecommerce_entry_modes: at least one"),
    ('ecommerce_entry_modes = ["81", "81"]', "fees.toml: online_mall.ecommerce_entry_modes[1]: duplicate"),
    ('ecommerce_entry_modes = "81"', "fees.toml: online_mall.ecommerce_entry_modes: expected list"),
    ('', "fees.toml: online_mall.ecommerce_entry_modes: missing"),
])
def test_broken_entry_modes_name_the_key(tmp_path: pathlib.Path, new: str, message: str) -> None:
    config = tmp_path / "config"
    config.mkdir()
    src = default_config_dir()
    (config / "programs.toml").write_text((src / "programs.toml").read_text(encoding="utf-8"), encoding="utf-8")
    text = (src / "fees.toml").read_text(encoding="utf-8")
    old = 'ecommerce_entry_modes = ["01", "81"]'
    assert text.count(old) == 1
    (config / "fees.toml").write_text(text.replace(old, new), encoding="utf-8")
    with pytest.raises(ValueError) as caught:
        load_rules(config)
    assert str(caught.value).startswith(message), str(caught.value)


# ---------------------------------------------------------------------------- over real TCP

async def _mall(env):
    await env.op("merchant-add", mid="MALL01", name="Incheon e-mall seller", district="namdong",
                 annual_sales=250_000_000, online_mall=True)
    await env.op("terminal-add", tid="T0000003", mid="MALL01")
    return await env.signed_on("T0000003", "MALL01")


async def test_mall_purchase_pays_3_percent_and_earns_cashback(switch_env):
    env = switch_env
    client, term = await _mall(env)
    pan = env.cards["namdong"]["pan"]
    resp = await client.request(term.purchase(pan, 12_345, entry_mode="812"))
    await client.close()
    assert resp["39"] == "00"
    assert decode_balances(resp["54"]) == Balances(cash=100_000 - 12_345, cashback=493 + 246 + 185)
    db = env.core.db_path
    (p,) = postings(db, "purchase")
    assert (p["amount"], p["fee"], p["support"], p["cashback"]) == (12_345, 370, 0, 924)
    cid = p["card_id"]
    assert posting_entries(db, p["id"]) == {
        f"card:{cid}:cash": -12_345,
        f"card:{cid}:cashback": 924,
        payable("MALL01"): 12_345 - 370,  # no fee support: the merchant pays the whole PG fee
        "fee_income": 370,
        "cashback_expense:national": -493,
        "cashback_expense:city": -246,
        "cashback_expense:namdong": -185,
    }
    assert not any(k.startswith("fee_subsidy:") for k in account_balances(db))
    assert verify(db).ok


async def test_key_entered_01x_is_ecommerce_too(switch_env):
    env = switch_env
    client, term = await _mall(env)
    resp = await client.request(term.purchase(env.cards["incheon"]["pan"], 20_000, entry_mode="012"))
    await client.close()
    assert resp["39"] == "00"
    (p,) = postings(env.core.db_path, "purchase")
    # Incheon card: 6 % = 800 + 400; fee 3 % = 600
    assert (p["fee"], p["support"], p["cashback"]) == (600, 0, 1_200)
    assert account_balances(env.core.db_path)[payable("MALL01")] == 19_400


async def test_card_present_or_no_entry_mode_at_the_mall_is_declined_58(switch_env):
    env = switch_env
    client, term = await _mall(env)
    pan = env.cards["namdong"]["pan"]
    before = posting_count(env.core.db_path)
    chip = await client.request(term.purchase(pan, 10_000, entry_mode="051"))
    contactless = await client.request(term.purchase(pan, 10_000, entry_mode="071"))
    no_de22 = term.purchase(pan, 10_000)
    del no_de22["22"]
    absent = await client.request(no_de22)
    await client.close()
    assert (chip["39"], contactless["39"], absent["39"]) == ("58", "58", "58")
    assert "38" not in chip and "54" not in chip
    assert posting_count(env.core.db_path) == before
    assert card_accounts(env.core.db_path, pan) == (100_000, 0)


async def test_ecommerce_at_a_shop_is_declined_57(switch_env):
    env = switch_env
    client, term = await env.signed_on("T0000001", "NAMDONG01")
    pan = env.cards["namdong"]["pan"]
    before = posting_count(env.core.db_path)
    online = await client.request(term.purchase(pan, 10_000, entry_mode="812"))
    keyed = await client.request(term.purchase(pan, 10_000, entry_mode="011"))
    chip = await client.request(term.purchase(pan, 10_000, entry_mode="051"))
    await client.close()
    assert (online["39"], keyed["39"], chip["39"]) == ("57", "57", "00")
    assert posting_count(env.core.db_path) == before + 1


async def test_mall_refund_and_reversal_give_back_fee_and_cashback_in_proportion(switch_env):
    env = switch_env
    client, term = await _mall(env)
    pan = env.cards["namdong"]["pan"]
    bought_req = term.purchase(pan, 12_345, entry_mode="812")
    bought = await client.request(bought_req)
    assert bought["39"] == "00"
    # a refund must come through the mall's channel too
    card_present = await client.request(term.refund(pan, 5_000, bought["37"], entry_mode="051"))
    assert card_present["39"] == "58"
    refund = await client.request(term.refund(pan, 5_000, bought["37"], entry_mode="812"))
    assert refund["39"] == "00"
    db = env.core.db_path
    (r,) = postings(db, "refund")
    cid = r["card_id"]
    # 5,000/12,345 of fee 370 = floor(149.86) = 149; of 493/246/185 = 199/99/74
    assert posting_entries(db, r["id"]) == {
        f"card:{cid}:cash": 5_000,
        f"card:{cid}:cashback": -(199 + 99 + 74),
        payable("MALL01"): -5_000 + 149,
        "fee_income": -149,
        "cashback_expense:national": 199,
        "cashback_expense:city": 99,
        "cashback_expense:namdong": 74,
    }
    # the reversal (no DE22 in 0400) undoes the rest: everything is back to zero
    rev = await client.request(term.reversal(bought_req))
    await client.close()
    assert rev["39"] == "00"
    balances = account_balances(db)
    for name in (payable("MALL01"), "fee_income", "cashback_expense:national", "cashback_expense:city",
                 "cashback_expense:namdong"):
        assert balances.get(name, 0) == 0, name
    assert card_accounts(db, pan) == (100_000, 0)
    assert verify(db).ok
