"""Business rules as data: config/programs.toml and config/fees.toml -> one frozen Rules.

The only I/O is reading the two TOML files in `load_rules`. Relationships between
settings are checked at load; a broken file raises ValueError naming the file and the
key path, e.g. "programs.toml: policies[3].layers[0].tiers[1].upto: ...".

Rounding rule used by the rules (switch/rules/fees.py, switch/rules/cashback.py): every won amount is
floor(amount * rate_bp / 10000), computed per funder, never via floats.
"""

from __future__ import annotations

import pathlib
import tomllib
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from switch.rules.cashback import (
    SCOPE_CITY,
    SCOPE_HOME_DISTRICT,
    CashbackBook,
    CashbackPolicy,
    Layer,
    SalesBand,
    SpendTier,
)
from switch.configdir import config_dir
from switch.domain import DISTRICTS, KST, Merchant, fields_of, in_force_at
from switch.rules.fees import FeeBook, FeeSchedule, FeeSupport, FeeTier

__all__ = [
    "CARDHOLDER",
    "TERMINAL",
    "CashbackBook",
    "ChannelRefusal",
    "FeeBook",
    "Limits",
    "Program",
    "Rules",
    "default_config_dir",
    "load_rules",
]

BIN_PREFIX_LENGTH = 8
PAN_LENGTH_MAX = 19
BP_MAX = 10_000
FEE_RATE_BP_MAX = 250  # legal cap on card merchant fees: 2.5 %
KST_OFFSET = timedelta(hours=9)
CASHBACK_FUNDERS = frozenset({"national", "city", "merchant", *DISTRICTS})
FEE_FUNDERS = frozenset({"national", "city", *DISTRICTS})


@dataclass(frozen=True, slots=True)
class Program:
    id: str
    name: str
    district: str | None
    bins: tuple[tuple[str, str], ...]
    pan_length: int
    launched: date | None = None  # the KST day its first cards were issued (None: always live)

    def live(self, now: datetime) -> bool:
        """Whether the program issues cards at `now`: from 00:00 KST of its launch day. Only a
        caller that asks enforces it (`eum replay`'s sign-ups: docs/replay.md, "Launch dates")."""
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        return self.launched is None or now.astimezone(KST).date() >= self.launched

    def issued(self, pan: str) -> bool:
        """True if the PAN has this program's length and a prefix in one of its ranges."""
        if len(pan) != self.pan_length or not pan.isdigit():
            return False
        prefix = pan[:BIN_PREFIX_LENGTH]
        return any(low <= prefix <= high for low, high in self.bins)

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:  # copy and pickle: see fields_of
        return type(self), fields_of(self)


@dataclass(frozen=True, slots=True)
class Limits:
    charge_min: int
    holding_max: int
    charge_month_max: int | None
    daily_spend_max: int

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:  # copy and pickle: see fields_of
        return type(self), fields_of(self)


@dataclass(frozen=True, slots=True)
class Preauth:
    """Pre-authorization ([preauth] in programs.toml; docs/host-interface.md, "0100 / 0110")."""

    hold_days: int = 7                  # a hold not completed within this many days is released
    completion_tolerance_pct: int = 0   # a completion may exceed its hold by this share (0: never)

    def completion_max(self, hold: int) -> int:
        return hold + hold * self.completion_tolerance_pct // 100

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:  # copy and pickle: see fields_of
        return type(self), fields_of(self)


@dataclass(frozen=True, slots=True)
class LimitPeriod:
    effective_from: datetime
    limits: Limits


# The merchant category of a bank channel: its terminals send members' top-ups (0200, processing
# code 21) and nothing else (docs/host-interface.md, "Charges from a bank channel").

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:  # copy and pickle: see fields_of
        return type(self), fields_of(self)


BANK_CHANNEL = "bank_channel"

# Who is not permitted a transaction (ISO 8583 response codes 57 and 58 respectively).
CARDHOLDER = "cardholder"
TERMINAL = "terminal"


@dataclass(frozen=True, slots=True)
class ChannelRefusal:
    """A channel the merchant does not take: `party` is who is not permitted it."""

    party: str  # CARDHOLDER | TERMINAL
    note: str

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:  # copy and pickle: see fields_of
        return type(self), fields_of(self)


@dataclass(frozen=True, slots=True)
class Rules:
    programs: dict[str, Program]
    fees: FeeBook
    cashback: CashbackBook
    limit_periods: tuple[LimitPeriod, ...]
    categories_not_accepted: frozenset[str]
    preauth: Preauth = Preauth()

    def program_for_pan(self, pan: str) -> Program | None:
        return next((p for p in self.programs.values() if p.issued(pan)), None)

    def accepts(self, merchant: Merchant, now: datetime) -> bool:
        """False where the card is not accepted at all (the switch declines 57).

        `now` is part of the signature so a dated acceptance list is a config change.
        """
        return (
            merchant.district in DISTRICTS
            and merchant.category not in self.categories_not_accepted
        )

    def channel_refusal(self, merchant: Merchant, entry_mode: str) -> ChannelRefusal | None:
        """Why a purchase or refund may not take this channel here, or None if it may.

        The card is a card-present product everywhere except the city's online mall, whose
        merchants take only e-commerce (DE22 01x / 81x, `[online_mall]` in fees.toml). DE22
        is optional in the host interface: a message without it is card present.
        """
        ecommerce = self.fees.is_ecommerce(entry_mode)
        if ecommerce and not merchant.online_mall:
            return ChannelRefusal(CARDHOLDER, f"e-commerce entry mode {entry_mode} outside the online mall")
        if merchant.online_mall and not ecommerce:
            mode = entry_mode or "absent"
            return ChannelRefusal(TERMINAL, f"online mall merchant takes e-commerce only, DE22 {mode}")
        return None

    def limits(self, now: datetime) -> Limits:
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        period = in_force_at(self.limit_periods, now)
        if period is None:
            raise ValueError(f"no limits in force at {now.isoformat()}")
        return period.limits

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:  # copy and pickle: see fields_of
        return type(self), fields_of(self)


def default_config_dir() -> pathlib.Path:
    return config_dir()


def load_rules(config_dir: pathlib.Path) -> Rules:
    programs_root = _Table.read(config_dir / "programs.toml")
    fees_root = _Table.read(config_dir / "fees.toml")
    programs = _programs(programs_root)
    rules = Rules(
        programs=programs,
        fees=_fee_book(fees_root, programs),
        cashback=_cashback_book(programs_root, programs),
        limit_periods=_limit_periods(programs_root),
        categories_not_accepted=_categories_not_accepted(programs_root),
        preauth=_preauth(programs_root),
    )
    _check_acceptance_vs_exclusions(programs_root, rules)
    programs_root.finish()
    fees_root.finish()
    return rules


# -- Reading TOML with blame -------------------------------------------------------------

_MISSING: Any = object()


class _Table:
    """A TOML table plus the file and key path that reached it, so errors name the key."""

    __slots__ = ("data", "file", "path", "_read")

    def __init__(self, data: dict[str, Any], file: str, path: str) -> None:
        self.data, self.file, self.path = data, file, path
        self._read: set[str] = set()

    @classmethod
    def read(cls, path: pathlib.Path) -> _Table:
        try:
            with path.open("rb") as f:
                return cls(tomllib.load(f), path.name, "")
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path.name}: {e}") from e

    def key(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, problem: str) -> ValueError:
        return ValueError(f"{self.file}: {self.key(key)}: {problem}")

    def get(self, key: str, kind: type, default: Any = _MISSING) -> Any:
        self._read.add(key)
        if key not in self.data:
            if default is _MISSING:
                raise self.fail(key, "missing")
            return default
        value = self.data[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(key, f"expected {kind.__name__}, got {value!r}")
        return value

    def won(self, key: str, default: Any = _MISSING) -> Any:
        value = self.get(key, int, default)
        if value is not default and value < 0:
            raise self.fail(key, f"must not be negative, got {value}")
        return value

    def bp(self, key: str, default: Any = _MISSING, *, bp_max: int = BP_MAX) -> Any:
        value = self.get(key, int, default)
        if value is not default and not 0 <= value <= bp_max:
            raise self.fail(key, f"must be 0..{bp_max} bp, got {value}")
        return value

    def instant(self, key: str, default: Any = _MISSING) -> Any:
        value = self.get(key, datetime, default)
        if value is default:
            return value
        if value.utcoffset() != KST_OFFSET:
            example = "2019-08-01T06:00:00+09:00"
            raise self.fail(key, f"must be a KST date-time like {example}, got {value}")
        # The same instant with the clocks' own tzinfo object (switch.domain.KST): two datetimes
        # that share a tzinfo object compare field by field; with two objects, even of the same
        # offset, each side's offset is computed first (≈ 3,500 instructions a comparison, three
        # a purchase: docs/performance.md, "The rules' instants in the clocks' zone (kept)").
        return value.replace(tzinfo=KST)

    def strings(self, key: str, default: Any = _MISSING, *, allowed: Any = None) -> Any:
        values = self.get(key, list, default)
        if values is default:
            return values
        for i, value in enumerate(values):
            if not isinstance(value, str) or (allowed is not None and value not in allowed):
                raise self.fail(f"{key}[{i}]", f"unknown or not a string: {value!r}")
        return tuple(values)

    def choice(self, key: str, allowed: Any) -> str:
        value = self.get(key, str)
        if value not in allowed:
            raise self.fail(key, f"must be one of {sorted(allowed)}, got {value!r}")
        return value

    def table(self, key: str) -> _Table:
        return _Table(self.get(key, dict), self.file, self.key(key))

    def tables(self, key: str) -> list[_Table]:
        items = self.get(key, list)
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise self.fail(f"{key}[{i}]", f"expected a table, got {item!r}")
        return [_Table(item, self.file, self.key(f"{key}[{i}]")) for i, item in enumerate(items)]

    def finish(self) -> None:
        """Reject keys nobody read: a typo must not silently fall back to a default."""
        unknown = sorted(set(self.data) - self._read)
        if unknown:
            raise self.fail(unknown[0], "unknown key")


def _check_ascending(tables: list[_Table], instants: list[datetime]) -> None:
    for i in range(1, len(instants)):
        if instants[i] <= instants[i - 1]:
            raise tables[i].fail("effective_from", f"must be after {instants[i - 1].isoformat()}")


def _check_bounds(tables: list[_Table], bounds: list[int | None], key: str) -> None:
    """Inclusive upper bounds: strictly ascending, positive, only the last open-ended."""
    for i, bound in enumerate(bounds):
        if bound is None and i != len(bounds) - 1:
            raise tables[i].fail(key, "only the last entry may be open-ended")
        previous = bounds[i - 1] if i else 0
        if bound is not None and previous is not None and bound <= previous:
            raise tables[i].fail(key, f"must be greater than {previous}, got {bound}")


def _check_unique(tables: list[_Table], ids: list[str]) -> None:
    for i, id_ in enumerate(ids):
        if id_ in ids[:i]:
            raise tables[i].fail("id", f"duplicate id {id_!r}")


# -- programs.toml: programs ------------------------------------------------------------


def _programs(root: _Table) -> dict[str, Program]:
    tables = root.tables("programs")
    programs = [_program(t) for t in tables]
    _check_unique(tables, [p.id for p in programs])
    _check_bins_disjoint(tables, programs)
    return {p.id: p for p in programs}


def _program(t: _Table) -> Program:
    pan_length = t.get("pan_length", int)
    if not BIN_PREFIX_LENGTH < pan_length <= PAN_LENGTH_MAX:
        raise t.fail("pan_length", f"must be {BIN_PREFIX_LENGTH + 1}..{PAN_LENGTH_MAX}")
    district = t.get("district", str, None)
    if district is not None and district not in DISTRICTS:
        raise t.fail("district", f"unknown district {district!r}")
    bins = tuple(_bin_range(t, i, pair) for i, pair in enumerate(t.get("bins", list)))
    if not bins:
        raise t.fail("bins", "at least one range is required")
    program = Program(t.get("id", str), t.get("name", str), district, bins, pan_length, _launch_day(t))
    t.finish()
    return program


def _launch_day(t: _Table) -> date | None:
    """`launched`: a TOML local date (2019-06-29), a KST calendar day; optional."""
    value = t.get("launched", date, None)
    if isinstance(value, datetime):  # a datetime is a date too: a launch is a day, not an instant
        raise t.fail("launched", f"must be a date like 2019-06-29, got {value.isoformat()}")
    return value


def _bin_range(t: _Table, i: int, pair: Any) -> tuple[str, str]:
    def is_prefix(s: Any) -> bool:
        return isinstance(s, str) and len(s) == BIN_PREFIX_LENGTH and s.isdigit()

    if not (isinstance(pair, list) and len(pair) == 2 and all(map(is_prefix, pair))):
        raise t.fail(f"bins[{i}]", f"expected [low, high] 8-digit prefixes, got {pair!r}")
    if pair[0] > pair[1]:
        raise t.fail(f"bins[{i}]", f"low {pair[0]} is above high {pair[1]}")
    return pair[0], pair[1]


def _check_bins_disjoint(tables: list[_Table], programs: list[Program]) -> None:
    ranges = sorted(
        (low, high, t.key(f"bins[{i}]"), t)
        for t, p in zip(tables, programs)
        for i, (low, high) in enumerate(p.bins)
    )
    for (_, high, where, _), (low, _, _, t) in zip(ranges, ranges[1:]):
        if low <= high:
            problem = f"{where} reaches {high}, next starts {low}"
            raise ValueError(f"{t.file}: BIN ranges overlap: {problem}")


# -- programs.toml: acceptance and limits -------------------------------------------------


def _categories_not_accepted(root: _Table) -> frozenset[str]:
    t = root.table("acceptance")
    categories = frozenset(t.strings("categories_not_accepted"))
    t.finish()
    return categories


def _check_acceptance_vs_exclusions(root: _Table, rules: Rules) -> None:
    for i, policy in enumerate(rules.cashback.policies):
        both = policy.excluded_categories & rules.categories_not_accepted
        if both:
            raise root.fail(
                f"policies[{i}].excluded_categories",
                f"{sorted(both)} are not accepted at all (acceptance.categories_not_accepted)",
            )


def _preauth(root: _Table) -> Preauth:
    if "preauth" not in root.data:
        root.get("preauth", dict, None)
        return Preauth()
    t = root.table("preauth")
    default = Preauth()  # a slots dataclass: its class attributes are descriptors, not the defaults
    preauth = Preauth(hold_days=t.get("hold_days", int, default.hold_days),
                      completion_tolerance_pct=t.get("completion_tolerance_pct", int,
                                                     default.completion_tolerance_pct))
    if not 1 <= preauth.hold_days <= 31:
        raise t.fail("hold_days", f"must be 1..31 days, got {preauth.hold_days}")
    if not 0 <= preauth.completion_tolerance_pct <= 100:
        raise t.fail("completion_tolerance_pct", f"must be 0..100, got {preauth.completion_tolerance_pct}")
    t.finish()
    return preauth


def _limit_periods(root: _Table) -> tuple[LimitPeriod, ...]:
    tables = root.tables("limits")
    periods = tuple(_limit_period(t) for t in tables)
    if not periods:
        raise root.fail("limits", "at least one period is required")
    _check_ascending(tables, [p.effective_from for p in periods])
    return periods


def _limit_period(t: _Table) -> LimitPeriod:
    limits = Limits(
        charge_min=t.won("charge_min"),
        holding_max=t.won("holding_max"),
        charge_month_max=t.won("charge_month_max", None),
        daily_spend_max=t.won("daily_spend_max"),
    )
    if limits.charge_min <= 0:
        raise t.fail("charge_min", "must be positive")
    if limits.holding_max < limits.charge_min:
        raise t.fail("holding_max", f"must be at least charge_min ({limits.charge_min})")
    if limits.charge_month_max is not None and limits.charge_month_max < limits.charge_min:
        raise t.fail("charge_month_max", f"must be at least charge_min ({limits.charge_min})")
    if limits.daily_spend_max <= 0:
        raise t.fail("daily_spend_max", "must be positive")
    period = LimitPeriod(t.instant("effective_from"), limits)
    t.finish()
    return period


# -- programs.toml: cashback policies -------------------------------------------------------


def _cashback_book(root: _Table, programs: dict[str, Program]) -> CashbackBook:
    tables = root.tables("policies")
    policies = tuple(_policy(t, programs) for t in tables)
    _check_unique(tables, [p.id for p in policies])
    _check_ascending(tables, [p.effective_from for p in policies])
    districts = {p.id: p.district for p in programs.values()}
    return CashbackBook(policies=policies, program_districts=districts)


def _policy(t: _Table, programs: dict[str, Program]) -> CashbackPolicy:
    ceiling = t.won("merchant_sales_max", None)
    policy = CashbackPolicy(
        id=t.get("id", str),
        effective_from=t.instant("effective_from"),
        excluded_categories=frozenset(t.strings("excluded_categories")),
        layers=tuple(_layer(lt, programs, ceiling) for lt in t.tables("layers")),
        merchant_sales_max=ceiling,
    )
    t.finish()
    return policy


def _layer(t: _Table, programs: dict[str, Program], ceiling: int | None) -> Layer:
    scope = t.choice("scope", {SCOPE_CITY, SCOPE_HOME_DISTRICT})
    layer = Layer(
        funder=t.choice("funder", CASHBACK_FUNDERS),
        scope=scope,
        programs=_layer_programs(t, programs, scope),
        bands=_bands(t, ceiling),
        merchant_districts=t.strings("merchant_districts", None, allowed=DISTRICTS),
    )
    t.finish()
    return layer


def _layer_programs(t: _Table, programs: dict[str, Program], scope: str) -> tuple[str, ...] | None:
    if t.data.get("programs") == "all":
        t.get("programs", str)
        return None
    ids = t.strings("programs", allowed=programs)
    for i, id_ in enumerate(ids):
        if scope == SCOPE_HOME_DISTRICT and programs[id_].district is None:
            raise t.fail(f"programs[{i}]", f"{id_!r} has no home district for scope {scope!r}")
    return ids


def _bands(t: _Table, ceiling: int | None) -> tuple[SalesBand, ...]:
    if ("tiers" in t.data) == ("sales_bands" in t.data):
        raise t.fail("tiers", "give exactly one of 'tiers' or 'sales_bands'")
    if "tiers" in t.data:
        return (SalesBand(sales_max=None, tiers=_tiers(t)),)
    tables = t.tables("sales_bands")
    if not tables:
        raise t.fail("sales_bands", "at least one band is required")
    bands = tuple(_band(bt) for bt in tables)
    _check_bounds(tables, [b.sales_max for b in bands], "sales_max")
    for bt, band in zip(tables, bands):
        if ceiling is not None and (band.sales_max is None or band.sales_max > ceiling):
            problem = f"must not exceed the policy's merchant_sales_max ({ceiling})"
            raise bt.fail("sales_max", problem)
    return bands


def _band(t: _Table) -> SalesBand:
    band = SalesBand(sales_max=t.won("sales_max", None), tiers=_tiers(t))
    t.finish()
    return band


def _tiers(t: _Table) -> tuple[SpendTier, ...]:
    tables = t.tables("tiers")
    if not tables:
        raise t.fail("tiers", "at least one tier is required")
    tiers = tuple(_tier(tt) for tt in tables)
    _check_bounds(tables, [tier.upto for tier in tiers], "upto")
    return tiers


def _tier(t: _Table) -> SpendTier:
    tier = SpendTier(upto=t.won("upto", None), rate_bp=t.bp("rate_bp"))
    t.finish()
    return tier


# -- fees.toml -------------------------------------------------------------------------------


def _fee_book(root: _Table, programs: dict[str, Program]) -> FeeBook:
    tiers = _fee_tiers(root)
    mall = root.table("online_mall")
    book = FeeBook(
        tiers=tiers,
        schedules=_fee_schedules(root, tiers),
        supports=_supports(root, programs),
        online_mall_bp=mall.bp("pg_rate_bp"),  # a PG fee, not a card fee: the 2.5 % cap does not bound it
        ecommerce_entry_modes=_entry_modes(mall, "ecommerce_entry_modes"),
    )
    mall.finish()
    return book


def _entry_modes(t: _Table, key: str) -> tuple[str, ...]:
    """DE22 PAN-entry modes: two digits each, at least one, no repeats."""
    modes = t.strings(key)
    if not modes:
        raise t.fail(key, "at least one entry mode is required")
    for i, mode in enumerate(modes):
        if len(mode) != 2 or not mode.isdigit():
            raise t.fail(f"{key}[{i}]", f"must be two digits (DE22 positions 1-2), got {mode!r}")
        if mode in modes[:i]:
            raise t.fail(f"{key}[{i}]", f"duplicate entry mode {mode!r}")
    return modes


def _fee_tiers(root: _Table) -> tuple[FeeTier, ...]:
    tables = root.tables("tiers")
    if not tables:
        raise root.fail("tiers", "at least one tier is required")
    tiers = tuple(FeeTier(id=t.get("id", str), sales_max=t.won("sales_max", None)) for t in tables)
    for t in tables:
        t.finish()
    _check_unique(tables, [tier.id for tier in tiers])
    _check_bounds(tables, [tier.sales_max for tier in tiers], "sales_max")
    if tiers[-1].sales_max is not None:
        raise tables[-1].fail("sales_max", "the last tier must be open-ended (no sales_max)")
    return tiers


def _fee_schedules(root: _Table, tiers: tuple[FeeTier, ...]) -> tuple[FeeSchedule, ...]:
    tables = root.tables("schedules")
    if not tables:
        raise root.fail("schedules", "at least one schedule is required")
    schedules = tuple(_fee_schedule(t, tiers) for t in tables)
    _check_ascending(tables, [s.effective_from for s in schedules])
    return schedules


def _fee_schedule(t: _Table, tiers: tuple[FeeTier, ...]) -> FeeSchedule:
    rates = t.table("check_bp")
    check_bp = {tier.id: rates.bp(tier.id, bp_max=FEE_RATE_BP_MAX) for tier in tiers}
    rates.finish()  # a rate for a tier that does not exist is a typo
    schedule = FeeSchedule(t.instant("effective_from"), check_bp)
    t.finish()
    return schedule


def _supports(root: _Table, programs: dict[str, Program]) -> tuple[FeeSupport, ...]:
    tables = root.tables("support")
    supports = tuple(_support(t, programs) for t in tables)
    for j, b in enumerate(supports):
        for i, a in enumerate(supports[:j]):
            if _supports_overlap(a, b):
                raise tables[j].fail(
                    "funder", f"overlaps support[{i}]: same funder and district, period and sales"
                )
    return supports


def _support(t: _Table, programs: dict[str, Program]) -> FeeSupport:
    support_bp, net_rate_bp = t.bp("support_bp", None), t.bp("net_rate_bp", None)
    if (support_bp is None) == (net_rate_bp is None):
        raise t.fail("support_bp", "give exactly one of 'support_bp' or 'net_rate_bp'")
    rule = FeeSupport(
        funder=t.choice("funder", FEE_FUNDERS),
        district=t.choice("district", DISTRICTS),
        effective_from=t.instant("effective_from"),
        effective_until=t.instant("effective_until", None),
        sales_above=t.won("sales_above", None),
        sales_max=t.won("sales_max"),
        support_bp=support_bp,
        net_rate_bp=net_rate_bp,
        programs=t.strings("programs", None, allowed=programs),
    )
    if rule.effective_until is not None and rule.effective_until <= rule.effective_from:
        raise t.fail("effective_until", "must be after effective_from")
    if rule.sales_above is not None and rule.sales_above >= rule.sales_max:
        raise t.fail("sales_above", f"must be below sales_max ({rule.sales_max})")
    t.finish()
    return rule


def _supports_overlap(a: FeeSupport, b: FeeSupport) -> bool:
    def before(end: datetime | None, start: datetime) -> bool:
        return end is not None and end <= start

    def below(top: int, bottom: int | None) -> bool:
        return bottom is not None and top <= bottom

    return (
        a.funder == b.funder
        and a.district == b.district
        and not before(a.effective_until, b.effective_from)
        and not before(b.effective_until, a.effective_from)
        and not below(a.sales_max, b.sales_above)
        and not below(b.sales_max, a.sales_above)
    )
