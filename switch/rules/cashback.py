"""Cashback: layered, tiered by the member's monthly eligible spend, and its clawback.

Pure module: no I/O, no clock. `switch.rules.policy` loads the CashbackBook from
config/programs.toml.

Rounding rule (the only one): every won amount is floor(amount * rate_bp / 10000) in
integer arithmetic, computed per funder; never via floats. A funder's cashback is
floor(sum over its layers and spend bands of band_amount * rate_bp / 10000). A clawback
or any other proportional share floors the cumulative share, so undoing a purchase in
any number of steps returns exactly what was credited.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from datetime import datetime

from switch.domain import DISTRICTS, Merchant, fields_of, in_force_at
from switch.record import Record

BP_PER_UNIT = 10_000
NO_POLICY = "none"
SCOPE_CITY = "city"  # any Incheon merchant
SCOPE_HOME_DISTRICT = "home_district"  # merchant district == the card program's district


@dataclass(frozen=True, slots=True)
class SpendTier:
    """Rate for monthly eligible spend up to `upto` won (exclusive of the previous tier's)."""

    upto: int | None
    rate_bp: int

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:  # copy and pickle: see fields_of
        return type(self), fields_of(self)


@dataclass(frozen=True, slots=True)
class SalesBand:
    """Spend tiers for merchants with annual sales <= `sales_max` (None = any)."""

    sales_max: int | None
    tiers: tuple[SpendTier, ...]

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:  # copy and pickle: see fields_of
        return type(self), fields_of(self)


@dataclass(frozen=True, slots=True)
class Layer:
    funder: str
    scope: str
    programs: tuple[str, ...] | None  # card programs it applies to; None = all
    bands: tuple[SalesBand, ...]  # first band holding the merchant's sales applies
    _: KW_ONLY
    merchant_districts: tuple[str, ...] | None = None  # None = any district

    @property
    def rate_bp_max(self) -> int:
        return max(tier.rate_bp for band in self.bands for tier in band.tiers)

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:  # copy and pickle: see fields_of
        return type(self), fields_of(self)


@dataclass(frozen=True, slots=True)
class CashbackPolicy:
    id: str
    effective_from: datetime
    excluded_categories: frozenset[str]
    layers: tuple[Layer, ...]
    _: KW_ONLY
    merchant_sales_max: int | None = None  # above it: no cashback, spend not eligible

    @property
    def rate_bp_max(self) -> int:
        """Upper bound on the total rate any one purchase can earn under this policy."""
        return sum(layer.rate_bp_max for layer in self.layers)

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:  # copy and pickle: see fields_of
        return type(self), fields_of(self)


@dataclass(frozen=True, slots=True)
class CashbackBook:
    policies: tuple[CashbackPolicy, ...]  # ascending effective_from
    program_districts: dict[str, str | None]  # card program id -> home district

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:  # copy and pickle: see fields_of
        return type(self), fields_of(self)


class CashbackQuote(Record, frozen=True):
    policy_id: str
    eligible: int
    by_funder: tuple[tuple[str, int], ...]

    @property
    def total(self) -> int:
        return sum(won for _, won in self.by_funder)


def quote_cashback(
    book: CashbackBook,
    *,
    card_program: str,
    merchant: Merchant,
    amount: int,
    month_spend: int,
    now: datetime,
) -> CashbackQuote:
    """Cashback for one purchase; `month_spend` is the member's eligible spend this KST
    month before this purchase, across all the member's cards."""
    if amount < 0 or month_spend < 0:
        raise ValueError(f"amount and month_spend must not be negative: {amount}, {month_spend}")
    if card_program not in book.program_districts:
        raise ValueError(f"unknown card program {card_program!r}")
    policy = policy_at(book, now)
    if policy is None:
        return CashbackQuote(NO_POLICY, 0, ())
    if not is_eligible(policy, merchant):
        return CashbackQuote(policy.id, 0, ())
    home = book.program_districts[card_program]
    numerators: dict[str, int] = {}
    for layer in policy.layers:
        if _layer_applies(layer, card_program, home, merchant):
            earned = _layer_numerator(layer, merchant.annual_sales, amount, month_spend)
            numerators[layer.funder] = numerators.get(layer.funder, 0) + earned
    by_funder = ((f, n // BP_PER_UNIT) for f, n in numerators.items())
    return CashbackQuote(policy.id, amount, tuple((f, w) for f, w in by_funder if w))


def policy_at(book: CashbackBook, now: datetime) -> CashbackPolicy | None:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return in_force_at(book.policies, now)


def is_eligible(policy: CashbackPolicy, merchant: Merchant) -> bool:
    """Spend here counts toward the month's eligible spend (even past the last tier)."""
    ceiling = policy.merchant_sales_max
    return (
        merchant.district in DISTRICTS
        and merchant.category not in policy.excluded_categories
        and (ceiling is None or merchant.annual_sales <= ceiling)
    )


def _layer_applies(layer: Layer, card_program: str, home: str | None, merchant: Merchant) -> bool:
    if layer.programs is not None and card_program not in layer.programs:
        return False
    if layer.merchant_districts is not None and merchant.district not in layer.merchant_districts:
        return False
    return layer.scope == SCOPE_CITY or merchant.district == home


def _layer_numerator(layer: Layer, annual_sales: int, amount: int, month_spend: int) -> int:
    """sum(band_amount * rate_bp) for the purchase's slice of the month's spend."""
    for band in layer.bands:
        if band.sales_max is None or annual_sales <= band.sales_max:
            return tiered_numerator(band.tiers, start=month_spend, amount=amount)
    return 0


def tiered_numerator(tiers: tuple[SpendTier, ...], *, start: int, amount: int) -> int:
    """Split [start, start + amount) across the spend tiers: sum(overlap * rate_bp)."""
    end = start + amount
    total, lower = 0, 0
    for tier in tiers:
        upper = end if tier.upto is None else min(end, tier.upto)
        total += max(0, upper - max(start, lower)) * tier.rate_bp
        if tier.upto is None:
            break
        lower = tier.upto
    return total


def proportional(total: int, *, original_amount: int, undone_before: int, undone_now: int) -> int:
    """Share of `total` for undoing `undone_now` more won of `original_amount`.

    Floors the cumulative share, so the steps of a full undo sum to exactly `total`.
    """
    _check_undo(original_amount, undone_before, undone_now)
    done = undone_before + undone_now
    return total * done // original_amount - total * undone_before // original_amount


def clawback(
    by_funder: tuple[tuple[str, int], ...],
    *,
    original_amount: int,
    undone_before: int,
    undone_now: int,
) -> tuple[tuple[str, int], ...]:
    """Per funder, the proportional() share of the credited cashback; nonzero only."""
    _check_undo(original_amount, undone_before, undone_now)
    steps = {"original_amount": original_amount, "undone_before": undone_before,
             "undone_now": undone_now}
    shares = ((funder, proportional(won, **steps)) for funder, won in by_funder)
    return tuple((funder, won) for funder, won in shares if won)


def _check_undo(original_amount: int, undone_before: int, undone_now: int) -> None:
    if (
        original_amount <= 0
        or undone_before < 0
        or undone_now < 0
        or undone_before + undone_now > original_amount
    ):
        raise ValueError(f"cannot undo {undone_now} after {undone_before} of {original_amount}")
