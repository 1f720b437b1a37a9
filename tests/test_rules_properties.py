"""Properties of the fee and cashback rules over random purchases, merchants and instants.

Instants span 2019-04 to 2026 KST and are biased toward every policy boundary.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from switch.rules.cashback import clawback, policy_at, proportional, quote_cashback
from switch.domain import DISTRICTS, KST, PROGRAMS, Merchant
from switch.rules.fees import quote_fee
from switch.rules.policy import default_config_dir, load_rules

RULES = load_rules(default_config_dir())

BOUNDARIES = sorted(
    {p.effective_from for p in RULES.cashback.policies}
    | {s.effective_from for s in RULES.fees.schedules}
    | {r.effective_from for r in RULES.fees.supports}
)
SALES_EDGES = [
    edge + delta
    for edge in (300_000_000, 500_000_000, 1_000_000_000, 3_000_000_000)
    for delta in (-1, 0, 1)
]
CATEGORIES = ["general", "general", "restaurant", "adult_entertainment", "gambling",
              "car_sales", "large_electronics", "large_mart"]

FIRST_POLICY = RULES.cashback.policies[0].effective_from
instants = st.one_of(
    st.datetimes(datetime(2019, 4, 1), datetime(2026, 12, 31, 23, 59, 59), timezones=st.just(KST)),
    st.builds(
        lambda b, s: b + timedelta(seconds=s), st.sampled_from(BOUNDARIES), st.integers(-1, 1)
    ),
).filter(lambda now: now >= FIRST_POLICY)
merchants = st.builds(
    Merchant,
    mid=st.just("m1"),
    name=st.just("shop"),
    district=st.sampled_from(DISTRICTS),
    annual_sales=st.one_of(st.integers(0, 10_000_000_000), st.sampled_from(SALES_EDGES)),
    category=st.sampled_from(CATEGORIES),
    online_mall=st.booleans(),
)
programs = st.sampled_from(PROGRAMS)
amounts = st.integers(1, 2_000_000)
month_spends = st.one_of(
    st.integers(0, 3_000_000), st.sampled_from([0, 299_999, 300_000, 499_999, 1_000_000])
)


@st.composite
def undo_steps(draw: st.DrawFn, amount: int) -> list[int]:
    """Positive steps summing to `amount` (a refund/reversal sequence)."""
    if amount == 1:
        return [1]
    cuts = draw(st.lists(st.integers(1, amount - 1), max_size=8, unique=True))
    points = [0, *sorted(cuts), amount]
    return [b - a for a, b in zip(points, points[1:])]


@settings(max_examples=400)
@given(m=merchants, program=programs, amount=amounts, now=instants)
def test_fee_quote_is_bounded(m: Merchant, program: str, amount: int, now: datetime) -> None:
    quote = quote_fee(RULES.fees, merchant=m, card_program=program, amount=amount, now=now)
    assert quote.fee == amount * quote.rate_bp // 10_000
    assert 0 <= quote.fee <= amount
    assert 0 <= quote.support_total <= quote.fee
    assert quote.merchant_fee == quote.fee - quote.support_total >= 0
    assert all(won > 0 for _, won in quote.support)
    assert {funder for funder, _ in quote.support} <= {m.district}


@settings(max_examples=400)
@given(m=merchants, program=programs, amount=amounts, spend=month_spends, now=instants)
def test_cashback_quote_is_bounded(
    m: Merchant, program: str, amount: int, spend: int, now: datetime
) -> None:
    quote = quote_cashback(
        RULES.cashback, card_program=program, merchant=m, amount=amount, month_spend=spend, now=now
    )
    policy = policy_at(RULES.cashback, now)
    assert policy is not None and quote.policy_id == policy.id
    assert quote.eligible in (0, amount)
    assert all(won > 0 for _, won in quote.by_funder)
    assert len({funder for funder, _ in quote.by_funder}) == len(quote.by_funder)
    assert quote.total <= amount * policy.rate_bp_max // 10_000
    if quote.eligible == 0:
        assert quote.by_funder == ()


@settings(max_examples=400)
@given(
    m=merchants, program=programs, first=amounts, second=amounts, spend=month_spends, now=instants
)
def test_splitting_a_purchase_never_earns_more_and_loses_at_most_1_won_per_funder(
    m: Merchant, program: str, first: int, second: int, spend: int, now: datetime
) -> None:
    def quote(amount: int, month_spend: int):
        return quote_cashback(
            RULES.cashback, card_program=program, merchant=m, amount=amount,
            month_spend=month_spend, now=now,
        )

    whole = quote(first + second, spend)
    a = quote(first, spend)
    b = quote(second, spend + a.eligible)
    single, parts = dict(whole.by_funder), (dict(a.by_funder), dict(b.by_funder))
    split = {f: sum(part.get(f, 0) for part in parts) for f in {*single, *parts[0], *parts[1]}}
    assert whole.eligible == a.eligible + b.eligible
    for funder, won in split.items():
        assert won <= single.get(funder, 0) <= won + 1
    assert sum(split.values()) <= whole.total <= sum(split.values()) + len(single)


@settings(max_examples=300)
@given(
    data=st.data(), m=merchants, program=programs, amount=amounts, spend=month_spends, now=instants
)
def test_clawback_in_any_steps_returns_exactly_the_credit(
    data: st.DataObject, m: Merchant, program: str, amount: int, spend: int, now: datetime
) -> None:
    credit = quote_cashback(
        RULES.cashback, card_program=program, merchant=m, amount=amount, month_spend=spend, now=now
    ).by_funder
    returned: dict[str, int] = {}
    undone = 0
    for step in data.draw(undo_steps(amount)):
        for funder, won in clawback(
            credit, original_amount=amount, undone_before=undone, undone_now=step
        ):
            assert won > 0
            returned[funder] = returned.get(funder, 0) + won
        undone += step
    assert returned == dict(credit)


@settings(max_examples=300)
@given(data=st.data(), total=st.integers(0, 100_000), amount=amounts)
def test_proportional_in_any_steps_sums_to_the_total(
    data: st.DataObject, total: int, amount: int
) -> None:
    undone, shares = 0, []
    for step in data.draw(undo_steps(amount)):
        share = proportional(total, original_amount=amount, undone_before=undone, undone_now=step)
        shares.append(share)
        undone += step
    assert all(share >= 0 for share in shares)
    assert sum(shares) == total


@settings(max_examples=300)
@given(m=merchants, program=programs, amount=amounts, spend=month_spends, now=instants)
def test_more_prior_spend_never_earns_more(
    m: Merchant, program: str, amount: int, spend: int, now: datetime
) -> None:
    """Every configured tier ladder is non-increasing, so earning only falls through a month."""

    def total(month_spend: int) -> int:
        return quote_cashback(
            RULES.cashback, card_program=program, merchant=m, amount=amount,
            month_spend=month_spend, now=now,
        ).total

    assert total(spend + 50_000) <= total(spend)
