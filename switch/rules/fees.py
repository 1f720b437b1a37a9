"""Merchant fees for e-eum payments: the check-card preferential rate and district support.

Pure module: no I/O, no clock. `switch.rules.policy` loads the FeeBook from config/fees.toml.

Rounding rule (the only one): every won amount is floor(amount * rate_bp / 10000) in
integer arithmetic, computed per funder; never via floats. 1 bp = 0.01 %.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from datetime import datetime

from switch.domain import Merchant, fields_of, in_force_at
from switch.record import Record

BP_PER_UNIT = 10_000
ONLINE_MALL_TIER = "online_mall"
# POS entry mode (DE22) positions 1-2 that mean card not present: 01 key-entered PAN,
# 81 e-commerce (ISO 8583:1987 / card-scheme usage). config/fees.toml [online_mall] sets them.
ECOMMERCE_ENTRY_MODES = ("01", "81")


@dataclass(frozen=True, slots=True)
class FeeTier:
    """A merchant annual-sales tier; `sales_max` is an inclusive upper bound, None = open."""

    id: str
    sales_max: int | None

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:  # copy and pickle: see fields_of
        return type(self), fields_of(self)


@dataclass(frozen=True, slots=True)
class FeeSchedule:
    """Check-card rates per tier id, in force from `effective_from` until the next schedule."""

    effective_from: datetime
    check_bp: dict[str, int]

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:  # copy and pickle: see fields_of
        return type(self), fields_of(self)


@dataclass(frozen=True, slots=True)
class FeeSupport:
    """A funder paying part of the fee of merchants located in `district`.

    Exactly one of `support_bp` (funder pays that many bp of the amount, capped at the fee)
    or `net_rate_bp` (the merchant pays at most that rate; the funder pays the rest) is set.
    Applies while effective_from <= now < effective_until, to merchants with
    sales_above < annual_sales <= sales_max, paying with a card in `programs` (None = any).
    """

    funder: str
    district: str
    effective_from: datetime
    sales_max: int
    _: KW_ONLY
    support_bp: int | None = None
    net_rate_bp: int | None = None
    effective_until: datetime | None = None
    sales_above: int | None = None
    programs: tuple[str, ...] | None = None

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:  # copy and pickle: see fields_of
        return type(self), fields_of(self)


@dataclass(frozen=True, slots=True)
class FeeBook:
    tiers: tuple[FeeTier, ...]
    schedules: tuple[FeeSchedule, ...]
    supports: tuple[FeeSupport, ...]
    online_mall_bp: int  # the mall's PG fee: replaces the card schedule, no district support
    ecommerce_entry_modes: tuple[str, ...] = ECOMMERCE_ENTRY_MODES

    def is_ecommerce(self, entry_mode: str) -> bool:
        """True when DE22 says the card was not present (an absent DE22 means present)."""
        return entry_mode[:2] in self.ecommerce_entry_modes

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:  # copy and pickle: see fields_of
        return type(self), fields_of(self)


class FeeQuote(Record, frozen=True):
    tier: str
    rate_bp: int
    fee: int
    support: tuple[tuple[str, int], ...]

    @property
    def support_total(self) -> int:
        return sum(won for _, won in self.support)

    @property
    def merchant_fee(self) -> int:
        """What the merchant pays: the fee less what funders pay toward it."""
        return self.fee - self.support_total


def won_at(amount: int, rate_bp: int) -> int:
    """The rounding rule: floor(amount * rate_bp / 10000)."""
    return amount * rate_bp // BP_PER_UNIT


def quote_fee(
    book: FeeBook, *, merchant: Merchant, card_program: str, amount: int, now: datetime
) -> FeeQuote:
    if amount < 0:
        raise ValueError(f"amount must not be negative, got {amount}")
    schedule = schedule_at(book, now)
    if merchant.online_mall:
        # The mall's PG fee instead of the check-card schedule, and no district fee
        # support: the mall charges merchants only a 3 % PG fee (docs/domain.md, "Merchant fees").
        rate_bp = book.online_mall_bp
        return FeeQuote(ONLINE_MALL_TIER, rate_bp, won_at(amount, rate_bp), ())
    tier = tier_for(book.tiers, merchant.annual_sales)
    rate_bp = schedule.check_bp[tier]
    fee = won_at(amount, rate_bp)
    support = _support(book.supports, merchant, card_program, amount, fee, now)
    return FeeQuote(tier, rate_bp, fee, support)


def schedule_at(book: FeeBook, now: datetime) -> FeeSchedule:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    schedule = in_force_at(book.schedules, now)
    if schedule is None:
        raise ValueError(f"no fee schedule in force at {now.isoformat()}")
    return schedule


def tier_for(tiers: tuple[FeeTier, ...], annual_sales: int) -> str:
    """The first tier whose inclusive upper bound holds the sales (the last is open)."""
    for tier in tiers:
        if tier.sales_max is None or annual_sales <= tier.sales_max:
            return tier.id
    raise AssertionError("the last fee tier is open-ended (checked at load)")


def _support(
    supports: tuple[FeeSupport, ...],
    merchant: Merchant,
    card_program: str,
    amount: int,
    fee: int,
    now: datetime,
) -> tuple[tuple[str, int], ...]:
    """Funders pay in config order, each capped so the total never exceeds the fee."""
    paid: list[tuple[str, int]] = []
    remaining = fee
    for rule in supports:
        if remaining and _applies(rule, merchant, card_program, now):
            won = min(remaining, _support_won(rule, amount, fee))
            if won > 0:
                paid.append((rule.funder, won))
                remaining -= won
    return tuple(paid)


def _applies(rule: FeeSupport, merchant: Merchant, card_program: str, now: datetime) -> bool:
    sales = merchant.annual_sales
    return (
        merchant.district == rule.district
        and rule.effective_from <= now
        and (rule.effective_until is None or now < rule.effective_until)
        and (rule.sales_above is None or sales > rule.sales_above)
        and sales <= rule.sales_max
        and (rule.programs is None or card_program in rule.programs)
    )


def _support_won(rule: FeeSupport, amount: int, fee: int) -> int:
    if rule.support_bp is not None:
        return won_at(amount, rule.support_bp)
    assert rule.net_rate_bp is not None, "exactly one of support_bp / net_rate_bp (load)"
    return max(0, fee - won_at(amount, rule.net_rate_bp))
