"""`eum replay`: a published day, replayed through the real switch over TCP (docs/replay.md).

    eum replay [--day 2019-06-04] [--scale 1.0] [--speed 60] [--seed 1] [--scenario day-2019-06]
               [--data-dir DIR] [--out DIR] [--policy-periods] [--no-progress]

A replay runs in three parts:
- the scenario (config/scenarios/replay/day-2019-06.toml): the day's figures as data, each one
  labelled with its source in docs/domain.md or as an assumption; every key is checked;
- the plan (`build_plan`, pure, seeded): the population — members and their opening balances,
  merchants by district, sales tier and category, bank channels — and every event of the day
  with its time, card, terminal and amount. The published totals are met by construction
  (amounts are drawn, then rescaled and the rounding residue placed), never hoped for; and
  every payment is funded before it is sent, so the whole day is approved;
- the run (`run_replay`): a fresh data dir is bulk-loaded (the members' cards and balances
  dated the day before), `eum switch` runs on the previous evening's clock for the payments
  the day will refund, then again from 00:00 of the day (`--clock-start`), and the day's events
  are sent at their times, compressed by `speed`: sign-ups through the control socket
  (`card-issue`, then a first charge on the wire), charges from bank channels' terminals,
  payments, voids (0400) and refunds (0200/20) from the merchants' terminals. Then the day's
  report and its comparison with the published figures (terminal_sim/replay_report.py).

The switch's clock runs at real speed from 00:00: its postings all fall on the replayed KST day,
but within its first minutes; the hour of each event is the plan's (docs/replay.md, "Known
limits").
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import hashlib
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
import tomllib
import zlib
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, time as clock_time, timedelta
from pathlib import Path
from typing import Any, Callable, Sequence

from hdrh.histogram import HdrHistogram

from switch.domain import DISTRICTS, KST
from switch.rules.policy import BANK_CHANNEL, Rules, default_config_dir, load_rules
from switch.wire.codec import Dialect, encode_fields, load_dialect
from switch.wire.framing import frame

from .client import DEFAULT_TPDU, AnswerStream
from .scenario import ScenarioError, _Reader, scenarios_dir
from .terminal import Terminal

DAY_S = 24 * 3600
HOURS = 24
REPLAY_KIND = "replay"
DEFAULT_SCENARIO = "day-2019-06"
CASHBACK_RATE_MAX = 0.15  # the highest rate of config/programs.toml (15 % in Ganghwa/Ongjin, 2025): a balance bound
SPEED_MIN = 2.0  # below it the compressed day would run past midnight on the switch's clock
SWITCH_START_S_MAX = 60.0
SWITCH_STOP_S_MAX = 60.0
CONTROL_TIMEOUT_S = 30.0
EARLIER_IN_FLIGHT_MAX = 64  # the warm-up's payments sent at once
SIGNUP_PAY_GAP_S = 300.0  # a new member pays at least this long after the first charge
CHARGE_STEP_WON = 1_000
LATENCY_US_MAX = 60_000_000

# Event kinds. A charge is ordinary (`charge`), a new member's first (`first_charge`) or an
# auto-charge (`auto_charge`, carried by the payment that triggers it).
SIGNUP, CHARGE, FIRST_CHARGE, AUTO_CHARGE = "signup", "charge", "first_charge", "auto_charge"
PURCHASE, VOID, REFUND, EARLIER = "purchase", "void", "refund", "earlier_purchase"
KINDS = (SIGNUP, FIRST_CHARGE, CHARGE, AUTO_CHARGE, PURCHASE, VOID, REFUND)
CHARGE_KINDS = (CHARGE, FIRST_CHARGE, AUTO_CHARGE)
_ORDER = {SIGNUP: 0, FIRST_CHARGE: 1, CHARGE: 1, PURCHASE: 2, VOID: 3, REFUND: 4}


class ReplayError(RuntimeError):
    """The replay could not run (a busy data dir, a switch that did not start): one line."""


class PlanError(ValueError):
    """The scenario cannot be planned at this scale (e.g. more auto-charges than payers)."""


# ============================================================================ the scenario

@dataclass(frozen=True)
class Published:
    signups: int
    charged_won: int
    spent_won: int
    tolerance_pct: float


@dataclass(frozen=True)
class Category:
    id: str
    count_pct: float
    ticket_won: int


@dataclass(frozen=True)
class SalesTier:
    id: str
    sales_won_min: int
    sales_won_max: int
    spend_pct: float
    merchant_pct: float


@dataclass(frozen=True)
class PopulationModel:
    members: int
    merchants: int
    purchases_per_payer: float
    heavy_user_pct: float
    heavy_value_pct: float
    card_day_spend_max_won: int
    home_district_pct: float
    opening_median_won: int
    opening_sigma: float
    opening_max_won: int
    programs: dict[str, float]
    districts: dict[str, float]


@dataclass(frozen=True)
class Tickets:
    sigma: float
    round_won: int
    amount_won_min: int
    amount_won_max: int


@dataclass(frozen=True)
class WithinHour:
    """`pct` of the hour's count falls in its first `minutes`."""

    hour: int
    minutes: int
    pct: float


@dataclass(frozen=True)
class Profile:
    hourly_pct: tuple[float, ...]
    ticket_weight: tuple[float, ...]
    within_hour: tuple[WithinHour, ...] = ()


@dataclass(frozen=True)
class ChargeModel:
    amounts_won: tuple[int, ...]
    weights: tuple[float, ...]
    auto_pct: float
    auto_mode: str
    auto_threshold_won: int
    payer_pct: float


@dataclass(frozen=True)
class Cancellations:
    void_pct: float
    refund_pct: float
    void_delay_minutes: tuple[float, float]
    earlier_at_minute: int


@dataclass(frozen=True)
class Wire:
    lines: int
    bank_channels: int
    bank_terminals: int
    response_timeout_ms: float


@dataclass(frozen=True)
class PolicyPeriod:
    day: date
    period: str
    rule: str


@dataclass(frozen=True)
class ReplayScenario:
    name: str
    description: str
    day: date
    published: Published
    purchases: int
    charges: int
    population: PopulationModel
    categories: tuple[Category, ...]
    sales_tiers: tuple[SalesTier, ...]
    tickets: Tickets
    profile: Profile
    charge: ChargeModel
    first_charge_delay_minutes: tuple[float, float]
    signup_paying_pct: float
    cancellations: Cancellations
    wire: Wire
    policy_periods: tuple[PolicyPeriod, ...] = ()


AUTO_MODES = ("switch", "emulated")


def replay_scenarios_dir() -> Path:
    return scenarios_dir() / "replay"


def load_replay_scenario(name_or_path: str | Path, *, directory: Path | None = None) -> ReplayScenario:
    """A replay scenario by name (`day-2019-06` → config/scenarios/replay/day-2019-06.toml) or
    path. Replay scenarios have a folder of their own: `eum fleet` lists the others."""
    path = Path(name_or_path)
    if path.suffix != ".toml" and not path.exists():
        path = (directory or replay_scenarios_dir()) / f"{name_or_path}.toml"
    source = str(name_or_path)
    if not path.is_file():
        raise ScenarioError(source, "", "no such scenario file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(source, "", f"not valid TOML ({exc})") from None
    return parse_replay_scenario(data, source=source, default_name=path.stem)


class _Keys(_Reader):
    """The fleet scenario's typed look-ups, with required keys and lists."""

    def need(self, data: dict[str, Any], key: str, prefix: str) -> Any:
        if key not in data:
            raise self._fail(f"{prefix}.{key}" if prefix else key, "missing")
        return data[key]

    def count(self, data: dict[str, Any], key: str, prefix: str, *, low: int = 0) -> int:
        self.need(data, key, prefix)
        return self.integer(data, key, prefix=prefix, default=0, low=low)

    def real(self, data: dict[str, Any], key: str, prefix: str, *, low: float = 0.0,
             high: float | None = None) -> float:
        return self.number(data, key, prefix=prefix, required=True, low=low, high=high)

    def numbers(self, data: dict[str, Any], key: str, prefix: str, *, size: int | None = None) -> tuple[float, ...]:
        value = self.need(data, key, prefix)
        where = f"{prefix}.{key}"
        if not isinstance(value, list) or not value or any(
                isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 for v in value):
            raise self._fail(where, "must be a non-empty list of non-negative numbers")
        if size is not None and len(value) != size:
            raise self._fail(where, f"must have {size} entries, has {len(value)}")
        return tuple(float(v) for v in value)

    def day(self, data: dict[str, Any], key: str, prefix: str) -> date:
        value = self.need(data, key, prefix)
        try:
            if isinstance(value, str) and len(value) == 10:
                return date.fromisoformat(value)
        except ValueError:
            pass
        raise self._fail(f"{prefix}.{key}" if prefix else key, "must be a day \"YYYY-MM-DD\"")

    def weights(self, data: dict[str, Any], key: str, prefix: str, allowed: Sequence[str]) -> dict[str, float]:
        table = self.table(data, key, required=True)
        where = f"{prefix}.{key}" if prefix else key
        self.only(table, where, tuple(allowed))
        out = {k: self.number(table, k, prefix=where, required=True, low=0.0) for k in table}
        if not any(out.values()):
            raise self._fail(where, "at least one weight must be positive")
        return out

    def tables(self, data: dict[str, Any], key: str) -> list[dict[str, Any]]:
        value = self.need(data, key, "")
        if not isinstance(value, list) or not value or not all(isinstance(v, dict) for v in value):
            raise self._fail(key, f"must be an array of tables ([[{key}]])")
        return value


def parse_replay_scenario(data: dict[str, Any], *, source: str, default_name: str) -> ReplayScenario:
    r = _Keys(source)
    r.only(data, "", ("kind", "name", "description", "day", "published", "volume", "population", "categories",
                      "sales_tiers", "tickets", "profile", "charges", "signups", "cancellations", "wire",
                      "policy_periods"))
    if data.get("kind") != REPLAY_KIND:
        raise ScenarioError(source, "kind", f'must be "{REPLAY_KIND}" (a fleet scenario is not a replay)')
    pub = r.table(data, "published", required=True)
    r.only(pub, "published", ("signups", "charged_won", "spent_won", "tolerance_pct"))
    published = Published(signups=r.count(pub, "signups", "published"),
                          charged_won=r.count(pub, "charged_won", "published"),
                          spent_won=r.count(pub, "spent_won", "published"),
                          tolerance_pct=r.real(pub, "tolerance_pct", "published", high=100.0))
    vol = r.table(data, "volume", required=True)
    r.only(vol, "volume", ("purchases", "charges"))
    categories = tuple(_category(r, i, c) for i, c in enumerate(r.tables(data, "categories")))
    tiers = tuple(_tier(r, i, t) for i, t in enumerate(r.tables(data, "sales_tiers")))
    for what, items in (("categories", categories), ("sales_tiers", tiers)):
        ids = [x.id for x in items]
        if len(set(ids)) != len(ids):
            raise ScenarioError(source, what, "ids must be unique")
    for what, shares in (("categories.count_pct", [c.count_pct for c in categories]),
                         ("sales_tiers.spend_pct", [t.spend_pct for t in tiers]),
                         ("sales_tiers.merchant_pct", [t.merchant_pct for t in tiers])):
        if not any(shares):
            raise ScenarioError(source, what, "at least one share must be positive")
    periods = tuple(_period(r, i, p) for i, p in enumerate(r.tables(data, "policy_periods"))) \
        if "policy_periods" in data else ()
    return ReplayScenario(
        name=r.text(data, "name", default=default_name), description=r.text(data, "description", default=""),
        day=r.day(data, "day", ""), published=published,
        purchases=r.count(vol, "purchases", "volume", low=1), charges=r.count(vol, "charges", "volume"),
        population=_population(r, r.table(data, "population", required=True)),
        categories=categories, sales_tiers=tiers, tickets=_tickets(r, r.table(data, "tickets", required=True)),
        profile=_profile(r, r.table(data, "profile", required=True)),
        charge=_charges(r, r.table(data, "charges", required=True)),
        **_signups(r, r.table(data, "signups", required=True)),
        cancellations=_cancellations(r, r.table(data, "cancellations", required=True)),
        wire=_wire(r, r.table(data, "wire", required=True)), policy_periods=periods)


def _category(r: _Keys, i: int, c: dict[str, Any]) -> Category:
    p = f"categories[{i}]"
    r.only(c, p, ("id", "count_pct", "ticket_won"))
    if not isinstance(c.get("id"), str) or not c["id"] or c["id"] == BANK_CHANNEL:
        raise r._fail(f"{p}.id", "must be a merchant category id (not bank_channel)")
    return Category(c["id"], r.real(c, "count_pct", p), r.count(c, "ticket_won", p, low=1))


def _tier(r: _Keys, i: int, t: dict[str, Any]) -> SalesTier:
    p = f"sales_tiers[{i}]"
    r.only(t, p, ("id", "sales_won_min", "sales_won_max", "spend_pct", "merchant_pct"))
    tier = SalesTier(r.text(t, "id", prefix=p, default=""), r.count(t, "sales_won_min", p),
                     r.count(t, "sales_won_max", p), r.real(t, "spend_pct", p), r.real(t, "merchant_pct", p))
    if not tier.id:
        raise r._fail(f"{p}.id", "missing")
    if tier.sales_won_max < tier.sales_won_min:
        raise r._fail(f"{p}.sales_won_max", "must be at least sales_won_min")
    return tier


def _period(r: _Keys, i: int, p: Any) -> PolicyPeriod:
    where = f"policy_periods[{i}]"
    if not isinstance(p, dict):
        raise r._fail(where, "must be a table")
    r.only(p, where, ("day", "period", "rule"))
    return PolicyPeriod(r.day(p, "day", where), r.text(p, "period", prefix=where, default=""),
                        r.text(p, "rule", prefix=where, default=""))


def _population(r: _Keys, d: dict[str, Any]) -> PopulationModel:
    p = "population"
    r.only(d, p, ("members", "merchants", "purchases_per_payer", "heavy_user_pct", "heavy_value_pct",
                  "card_day_spend_max_won", "home_district_pct", "opening_median_won", "opening_sigma",
                  "opening_max_won", "programs", "districts"))
    return PopulationModel(
        members=r.count(d, "members", p, low=1), merchants=r.count(d, "merchants", p, low=1),
        purchases_per_payer=r.real(d, "purchases_per_payer", p, low=1.0),
        heavy_user_pct=r.real(d, "heavy_user_pct", p, high=100.0),
        heavy_value_pct=r.real(d, "heavy_value_pct", p, high=100.0),
        card_day_spend_max_won=r.count(d, "card_day_spend_max_won", p, low=1),
        home_district_pct=r.real(d, "home_district_pct", p, high=100.0),
        opening_median_won=r.count(d, "opening_median_won", p), opening_sigma=r.real(d, "opening_sigma", p, high=5.0),
        opening_max_won=r.count(d, "opening_max_won", p),
        programs=r.weights(d, "programs", p, ("incheon", "namdong", "seo", "yeonsu", "michuhol")),
        districts=r.weights(d, "districts", p, DISTRICTS))


def _tickets(r: _Keys, d: dict[str, Any]) -> Tickets:
    p = "tickets"
    r.only(d, p, ("sigma", "round_won", "amount_won_min", "amount_won_max"))
    t = Tickets(r.real(d, "sigma", p, high=5.0), r.count(d, "round_won", p, low=1), r.count(d, "amount_won_min", p, low=1),
                r.count(d, "amount_won_max", p, low=1))
    if t.amount_won_max < t.amount_won_min:
        raise r._fail("tickets.amount_won_max", "must be at least tickets.amount_won_min")
    return t


def _profile(r: _Keys, d: dict[str, Any]) -> Profile:
    p = "profile"
    r.only(d, p, ("hourly_pct", "ticket_weight", "within_hour"))
    hourly = r.numbers(d, "hourly_pct", p, size=HOURS)
    if not any(hourly):
        raise r._fail("profile.hourly_pct", "the day has no traffic at all")
    within = []
    for i, w in enumerate(d.get("within_hour", [])):
        where = f"profile.within_hour[{i}]"
        if not isinstance(w, dict):
            raise r._fail(where, "must be a table")
        r.only(w, where, ("hour", "minutes", "pct"))
        within.append(WithinHour(r.count(w, "hour", where), r.count(w, "minutes", where, low=1),
                                 r.real(w, "pct", where, high=100.0)))
        if within[-1].hour >= HOURS or within[-1].minutes >= 60:
            raise r._fail(where, "hour must be 0..23 and minutes 1..59")
    return Profile(hourly, r.numbers(d, "ticket_weight", p, size=HOURS), tuple(within))


def _charges(r: _Keys, d: dict[str, Any]) -> ChargeModel:
    p = "charges"
    r.only(d, p, ("amounts_won", "weights", "auto_pct", "auto_mode", "auto_threshold_won", "payer_pct"))
    amounts = r.numbers(d, "amounts_won", p)
    weights = r.numbers(d, "weights", p, size=len(amounts))
    if any(a != int(a) or a < 1 for a in amounts) or not any(weights):
        raise r._fail("charges.amounts_won", "must be whole won, with at least one positive weight")
    mode = r.text(d, "auto_mode", prefix=p, default="switch")
    if mode not in AUTO_MODES:
        raise r._fail("charges.auto_mode", f"must be one of {', '.join(AUTO_MODES)}")
    return ChargeModel(tuple(int(a) for a in amounts), weights, r.real(d, "auto_pct", p, high=100.0), mode,
                       r.count(d, "auto_threshold_won", p, low=1), r.real(d, "payer_pct", p, high=100.0))


def _signups(r: _Keys, d: dict[str, Any]) -> dict[str, Any]:
    p = "signups"
    r.only(d, p, ("first_charge_delay_minutes", "paying_pct"))
    delay = r.numbers(d, "first_charge_delay_minutes", p, size=2)
    if delay[1] < delay[0]:
        raise r._fail("signups.first_charge_delay_minutes", "must be [low, high]")
    return {"first_charge_delay_minutes": (delay[0], delay[1]), "signup_paying_pct": r.real(d, "paying_pct", p, high=100.0)}


def _cancellations(r: _Keys, d: dict[str, Any]) -> Cancellations:
    p = "cancellations"
    r.only(d, p, ("void_pct", "refund_pct", "void_delay_minutes", "earlier_at"))
    delay = r.numbers(d, "void_delay_minutes", p, size=2)
    if delay[1] < delay[0]:
        raise r._fail("cancellations.void_delay_minutes", "must be [low, high]")
    earlier = r.clock(d, "earlier_at", prefix=p)
    if earlier >= DAY_S // 60:
        raise r._fail("cancellations.earlier_at", "must be a time of the day before, before 24:00")
    return Cancellations(r.real(d, "void_pct", p, high=100.0), r.real(d, "refund_pct", p, high=100.0),
                         (delay[0], delay[1]), earlier)


def _wire(r: _Keys, d: dict[str, Any]) -> Wire:
    p = "wire"
    r.only(d, p, ("lines", "bank_channels", "bank_terminals", "response_timeout_ms"))
    w = Wire(r.count(d, "lines", p, low=1), r.count(d, "bank_channels", p, low=1), r.count(d, "bank_terminals", p, low=1),
             r.real(d, "response_timeout_ms", p, low=1.0))
    if w.bank_channels > 99 or w.bank_terminals > 9_999:
        raise r._fail("wire.bank_terminals", "at most 99 bank channels of 9,999 terminals (8-character TIDs)")
    return w


# ============================================================================ the plan

@dataclass(frozen=True, slots=True)
class MerchantSpec:
    mid: str
    tid: str
    name: str
    district: str
    annual_sales: int
    category: str


@dataclass(frozen=True, slots=True)
class CardSpec:
    """A member's card. Existing cards are in the ledger from the start (ledger id = index + 1,
    so their PANs are known); a sign-up's card is issued during the day."""

    program: str
    opening: int = 0
    signup: bool = False


@dataclass(frozen=True, slots=True)
class Event:
    """One thing the day does. `at_s`: seconds after 00:00 KST of its day (the warm-up's: of the
    day before). `card`: index into the plan's cards. `tid`: the merchant's terminal ("" for a
    charge, sent by whichever bank terminal is free, and for a sign-up). `after`: ids of events
    that must have been answered first. `auto_charge`: the auto-charge (won) a payment triggers."""

    id: int
    at_s: float
    kind: str
    card: int
    amount: int
    tid: str = ""
    after: tuple[int, ...] = ()
    original: int = -1
    auto_charge: int = 0


@dataclass(frozen=True)
class Targets:
    """The published figures times the scale: what the day's report must show."""

    signups: int
    charged_won: int
    spent_won: int


@dataclass(frozen=True)
class Plan:
    scenario: str
    day: date
    scale: float
    seed: int
    targets: Targets
    merchants: tuple[MerchantSpec, ...]
    banks: tuple[MerchantSpec, ...]  # bank channels: one MerchantSpec per terminal
    cards: tuple[CardSpec, ...]
    existing: int  # cards[:existing] are in the ledger at the start
    earlier: tuple[Event, ...]  # the day before's payments the day refunds
    events: tuple[Event, ...]  # the day, in time order
    auto_mode: str = "switch"
    auto_settings: tuple[tuple[int, int, int], ...] = ()  # (card, threshold, amount) of the enrolled cards

    def digest(self) -> str:
        """A fingerprint of everything the plan holds: the same seed gives the same one
        (computed once: seconds at full scale)."""
        if "_digest" not in self.__dict__:
            object.__setattr__(self, "_digest", self._fingerprint())
        return self.__dict__["_digest"]

    def _fingerprint(self) -> str:
        h = hashlib.sha256()
        for part in (self.merchants, self.banks, self.cards, self.earlier, self.events):
            h.update(json.dumps([asdict(x) for x in part], separators=(",", ":")).encode())
        h.update(json.dumps(self.auto_settings).encode())
        h.update(repr((self.scenario, self.day.isoformat(), self.scale, self.seed, self.targets)).encode())
        return h.hexdigest()

    def counts(self) -> dict[str, int]:
        out = Counter(e.kind for e in self.events)
        out[AUTO_CHARGE] = sum(1 for e in self.events if e.auto_charge)
        out[EARLIER] = len(self.earlier)
        return {k: out[k] for k in (*KINDS, EARLIER)}


def day_start(day: date) -> datetime:
    return datetime.combine(day, clock_time(0), KST)


def live_programs(rules: Rules, weights: dict[str, float], at: datetime) -> dict[str, float]:
    """The scenario's program weights, for the programs launched by `at` (config `launched`)."""
    unknown = sorted(set(weights) - set(rules.programs))
    if unknown:
        raise PlanError(f"population.programs: {', '.join(unknown)} not in config/programs.toml")
    live = {p: w for p, w in weights.items() if w > 0 and rules.programs[p].live(at)}
    if not live:
        raise PlanError(f"no program of population.programs is live on {at.date()}")
    return live


def _apportion(total: int, weights: Sequence[float]) -> list[int]:
    """`total` split in proportion to `weights`, whole numbers that add up (largest remainder)."""
    s = sum(weights)
    raw = [total * w / s for w in weights]
    out = [int(x) for x in raw]
    for i in sorted(range(len(raw)), key=lambda i: (out[i] - raw[i], i))[: total - sum(out)]:
        out[i] += 1
    return out


def _times(n: int, profile: Profile, rng: random.Random) -> list[float]:
    """n instants of the day (seconds), sorted, with exactly the profile's share in each hour
    (largest remainder) and uniform within it, but for the hours with a `within_hour` share."""
    out: list[float] = []
    shapes = {w.hour: w for w in profile.within_hour}
    for hour, k in enumerate(_apportion(n, profile.hourly_pct)):
        w = shapes.get(hour)
        for _ in range(k):
            if w is not None and rng.random() < w.pct / 100:
                offset = rng.uniform(0, w.minutes * 60)
            elif w is not None:
                offset = rng.uniform(w.minutes * 60, 3600)
            else:
                offset = rng.uniform(0, 3600)
            out.append(hour * 3600 + offset)
    return sorted(out)


def _shuffled(labels: Sequence[str], counts: Sequence[int], rng: random.Random) -> list[str]:
    out = [label for label, k in zip(labels, counts) for _ in range(k)]
    rng.shuffle(out)
    return out


def _ceil_to(amount: int, step: int) -> int:
    return -(-amount // step) * step


def _meet_total(amounts: list[int], indices: Sequence[int], target: int, *, step: int, low: int, high: int,
                rng: random.Random) -> None:
    """Rescale amounts[indices] so that they add up to exactly `target`: scale, round to `step`
    within [low, high], then move the residue `step` by `step` onto random ones (the last
    remainder below a step onto one)."""
    current = sum(amounts[i] for i in indices)
    if not indices or current <= 0:
        raise PlanError("nothing to scale to the published total")
    factor = target / current
    for i in indices:
        amounts[i] = min(max(round(amounts[i] * factor / step) * step, low), high)
    residue = target - sum(amounts[i] for i in indices)
    tries = 0
    while abs(residue) >= step:
        i = indices[rng.randrange(len(indices))]
        move = step if residue > 0 else -step
        if low <= amounts[i] + move <= high:
            amounts[i] += move
            residue -= move
        tries += 1
        if tries > 100 * len(indices) + abs(residue) // step * 10:
            raise PlanError(f"cannot meet the total {target:,} within [{low:,}, {high:,}] per amount")
    if residue:
        i = next((i for i in indices if low <= amounts[i] + residue <= high), None)
        if i is None:
            raise PlanError(f"cannot meet the total {target:,} within [{low:,}, {high:,}] per amount")
        amounts[i] += residue
    assert sum(amounts[i] for i in indices) == target


def build_plan(scenario: ReplayScenario, *, day: date, scale: float, seed: int, rules: Rules) -> Plan:
    """Every event of the replayed day, from the scenario, deterministic for (day, scale, seed)."""
    return _Planner(scenario, day=day, scale=scale, seed=seed, rules=rules).plan()


class _Planner:
    """build_plan's steps, in order; each draws from its own seeded stream, so a change to one
    step does not move the others' draws."""

    def __init__(self, s: ReplayScenario, *, day: date, scale: float, seed: int, rules: Rules) -> None:
        if not 0 < scale <= 10:
            raise PlanError("--scale must be in (0, 10]")
        self.s, self.day, self.scale, self.seed, self.rules = s, day, scale, seed, rules
        pub = s.published
        self.targets = Targets(round(pub.signups * scale), round(pub.charged_won * scale), round(pub.spent_won * scale))
        self.limits = rules.limits(day_start(day))
        self.next_id = 0

    def rng(self, part: str) -> random.Random:
        return random.Random(f"{self.seed}:{self.day.isoformat()}:{part}")

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    # -- the population

    def plan(self) -> Plan:
        s = self.s
        self._merchants()
        members = max(1, round(s.population.members * self.scale))
        before = live_programs(self.rules, s.population.programs, day_start(self.day) - timedelta(days=1))
        rng = self.rng("members")
        programs = _shuffled(list(before), _apportion(members, list(before.values())), rng)
        self.cards: list[CardSpec] = [CardSpec(p) for p in programs]
        self.existing = members
        self._purchases()
        self._signups()
        self._assign_cards()
        self._voids()
        self._choose_merchants()
        self._earlier()
        self._scale_purchases()
        self._charges()
        self._openings()
        return self._events()

    def _merchants(self) -> None:
        s, rng = self.s, self.rng("merchants")
        n = max(len(s.categories) * len(s.sales_tiers), round(s.population.merchants * self.scale))
        cells = [(c, t) for c in s.categories for t in s.sales_tiers]
        counts = [max(1, k) for k in _apportion(n, [c.count_pct * t.merchant_pct for c, t in cells])]
        districts, dweights = list(s.population.districts), list(s.population.districts.values())
        self.merchants: list[MerchantSpec] = []
        self.cell: dict[tuple[str, str], list[int]] = defaultdict(list)
        self.cell_district: dict[tuple[str, str, str], list[int]] = defaultdict(list)
        from switch.ops.seed import mid_for, tid_for

        for (cat, tier), k in zip(cells, counts):
            for _ in range(k):
                i = len(self.merchants) + 1
                district = rng.choices(districts, dweights)[0]
                sales = rng.randint(tier.sales_won_min, tier.sales_won_max)
                sales = sales if tier.sales_won_min == tier.sales_won_max else \
                    min(max(sales // 1_000_000 * 1_000_000, tier.sales_won_min), tier.sales_won_max)
                self.cell[(cat.id, tier.id)].append(i - 1)
                self.cell_district[(cat.id, tier.id, district)].append(i - 1)
                self.merchants.append(MerchantSpec(mid_for(i), tid_for(i), f"{cat.id} {i}", district, sales, cat.id))
        w = s.wire
        # MIDs of 15 characters, as the seed's: DE42 is compared with the stored one as sent
        self.banks = tuple(MerchantSpec(f"BANK{b:011d}", f"BK{b:02d}{t:04d}", f"bank channel {b}", "jung", 0,
                                        BANK_CHANNEL)
                           for b in range(1, w.bank_channels + 1) for t in range(1, w.bank_terminals + 1))

    # -- payments

    def _purchases(self) -> None:
        s, rng = self.s, self.rng("purchases")
        n = max(1, round(s.purchases * self.scale))
        self.p_at = _times(n, s.profile, rng)
        cats = s.categories
        self.p_cat = _shuffled([c.id for c in cats], _apportion(n, [c.count_pct for c in cats]), rng)
        tiers = s.sales_tiers
        self.p_tier = _shuffled([t.id for t in tiers], _apportion(n, [t.spend_pct for t in tiers]), rng)
        ticket = {c.id: c.ticket_won for c in cats}
        sigma = s.tickets.sigma
        low, high = s.tickets.amount_won_min, s.tickets.amount_won_max
        self.p_amount = [min(max(ticket[c] * s.profile.ticket_weight[int(at // 3600)]
                                 * rng.lognormvariate(-sigma * sigma / 2, sigma), low), high)
                         for c, at in zip(self.p_cat, self.p_at)]
        self.p_card = [-1] * n
        self.p_void = [False] * n

    def _signups(self) -> None:
        s, rng = self.s, self.rng("signups")
        n = self.targets.signups
        live = live_programs(self.rules, s.population.programs, day_start(self.day))
        self.s_at = _times(n, s.profile, rng)
        programs = _shuffled(list(live), _apportion(n, list(live.values())), rng)
        low, high = s.first_charge_delay_minutes
        self.s_card = []
        self.s_first_at = []
        for at, program in zip(self.s_at, programs):
            self.s_card.append(len(self.cards))
            self.cards.append(CardSpec(program, signup=True))
            self.s_first_at.append(min(at + rng.uniform(low, high) * 60, DAY_S - 0.001))

    def _assign_cards(self) -> None:
        """Payers among the members; the heavy ones take heavy_value_pct of the value, the others
        the rest at random, each under card_day_spend_max_won; then some sign-ups pay once."""
        s, rng, pop = self.s, self.rng("payers"), self.s.population
        n = len(self.p_at)
        payers = rng.sample(range(self.existing), min(self.existing, max(1, round(n / pop.purchases_per_payer))))
        heavy_n = max(1, round(len(payers) * pop.heavy_user_pct / 100))
        heavy, normal = payers[:heavy_n], payers[heavy_n:] or payers[:heavy_n]
        self.heavy = set(heavy)
        cap = pop.card_day_spend_max_won
        spent: Counter[int] = Counter()
        heavy_target = sum(self.p_amount) * pop.heavy_value_pct / 100
        heavy_value, h = 0.0, 0
        for i in rng.sample(range(n), n):
            amount = self.p_amount[i]
            card = -1
            if heavy_value < heavy_target:
                for k in range(len(heavy)):
                    candidate = heavy[(h + k) % len(heavy)]
                    if spent[candidate] + amount <= cap:
                        card, h = candidate, h + k + 1
                        heavy_value += amount
                        break
            for _ in range(50):
                if card >= 0:
                    break
                candidate = rng.choice(normal)
                card = candidate if spent[candidate] + amount <= cap else -1
            if card < 0:
                raise PlanError("payers cannot take the day's payments under card_day_spend_max_won")
            self.p_card[i] = card
            spent[card] += amount
        self.payers = payers
        # sign-ups who pay: a payment at least SIGNUP_PAY_GAP_S after the first charge moves to them
        paying = rng.sample(range(len(self.s_card)), round(len(self.s_card) * s.signup_paying_pct / 100))
        taken: set[int] = set()
        for k in paying:
            start = bisect.bisect_left(self.p_at, self.s_first_at[k] + SIGNUP_PAY_GAP_S)
            for _ in range(20):
                if start >= n:
                    break
                i = rng.randrange(start, n)
                if i not in taken and self.p_card[i] not in self.heavy and self.p_amount[i] <= 300_000:
                    taken.add(i)
                    self.p_card[i] = self.s_card[k]
                    break

    def _voids(self) -> None:
        s, rng = self.s, self.rng("voids")
        n = len(self.p_at)
        for i in rng.sample(range(n), round(n * s.cancellations.void_pct / 100)):
            self.p_void[i] = True

    def _merchant_for(self, category: str, tier: str, program: str, rng: random.Random) -> int:
        home = self.rules.programs[program].district
        if home is not None and rng.random() < self.s.population.home_district_pct / 100:
            local = self.cell_district.get((category, tier, home))
            if local:
                return rng.choice(local)
        return rng.choice(self.cell[(category, tier)])

    def _choose_merchants(self) -> None:
        rng = self.rng("merchant-choice")
        self.p_merchant = [self._merchant_for(c, t, self.cards[card].program, rng)
                           for c, t, card in zip(self.p_cat, self.p_tier, self.p_card)]

    def _earlier(self) -> None:
        """The payments the day refunds, made the evening before (the warm-up)."""
        s, rng = self.s, self.rng("earlier")
        n = round(len(self.p_at) * s.cancellations.refund_pct / 100)
        cats = s.categories
        t = s.tickets
        self.e_card = [rng.randrange(self.existing) for _ in range(n)]
        self.e_cat = [rng.choices([c.id for c in cats], [c.count_pct for c in cats])[0] for _ in range(n)]
        self.e_tier = [rng.choices([x.id for x in s.sales_tiers], [x.spend_pct for x in s.sales_tiers])[0]
                       for _ in range(n)]
        ticket = {c.id: c.ticket_won for c in cats}
        self.e_amount = [min(max(round(ticket[c] * rng.lognormvariate(-t.sigma ** 2 / 2, t.sigma) / t.round_won)
                                 * t.round_won, t.amount_won_min), t.amount_won_max) for c in self.e_cat]
        self.e_merchant = [self._merchant_for(c, x, self.cards[card].program, rng)
                           for c, x, card in zip(self.e_cat, self.e_tier, self.e_card)]
        self.r_at = _times(n, s.profile, rng)
        order = rng.sample(range(n), n)  # which earlier payment each refund time takes
        self.r_of = order

    def _scale_purchases(self) -> None:
        """The day's payments that stand (not voided) add up to spent + refunded: the day's net
        spending is then exactly the published figure."""
        t, rng = self.s.tickets, self.rng("scale")
        amounts = [round(a) for a in self.p_amount]
        standing = [i for i, v in enumerate(self.p_void) if not v]
        voided = [i for i, v in enumerate(self.p_void) if v]
        factor = (self.targets.spent_won + sum(self.e_amount)) / max(1, sum(amounts[i] for i in standing))
        for i in voided:
            amounts[i] = min(max(round(amounts[i] * factor / t.round_won) * t.round_won, t.amount_won_min),
                             t.amount_won_max)
        _meet_total(amounts, standing, self.targets.spent_won + sum(self.e_amount), step=t.round_won,
                    low=t.amount_won_min, high=t.amount_won_max, rng=rng)
        self.p_amount = amounts
        day_spend: Counter[int] = Counter()
        for card, amount in zip(self.p_card, amounts):
            day_spend[card] += amount
        worst = max(day_spend.values())
        if worst > self.limits.daily_spend_max:
            raise PlanError(f"a card would pay {worst:,} won in the day, over the daily limit "
                            f"{self.limits.daily_spend_max:,}")

    # -- charges

    def _charge_amount(self, rng: random.Random) -> int:
        c = self.s.charge
        return rng.choices(c.amounts_won, c.weights)[0]

    def _charges(self) -> None:
        s, rng = self.s, self.rng("charges")
        n = round(s.charges * self.scale)
        n_auto = round(n * s.charge.auto_pct / 100)
        n_first = len(self.s_card)
        n_ordinary = n - n_auto - n_first
        if n_ordinary < 0:
            raise PlanError(f"{n} charges cannot hold {n_first} first charges and {n_auto} auto-charges")
        by_card: dict[int, list[int]] = defaultdict(list)
        for i, card in enumerate(self.p_card):
            by_card[card].append(i)
        # Auto-charge members: members who pay once on the day (and had nothing refunded), so
        # that their one payment finds the balance below the threshold, whatever cashback the
        # rules of the day pay: exactly one top-up each.
        refunded = set(self.e_card)
        eligible = sorted(c for c, paid in by_card.items() if c < self.existing and len(paid) == 1
                          and c not in refunded)
        if len(eligible) < n_auto:
            raise PlanError(f"{n_auto} auto-charges need as many members paying once; there are {len(eligible)}")
        step = 10_000  # an auto-charge tops up at least the payment, rounded up to 10,000 (scenario)
        self.auto: dict[int, tuple[int, int]] = {}  # card → (trigger payment, amount)
        for card in rng.sample(eligible, n_auto):
            trigger = by_card[card][0]
            self.auto[card] = (trigger, max(self._charge_amount(rng), _ceil_to(self.p_amount[trigger], step)))
        self.first_amount = [self._charge_amount(rng) for _ in range(n_first)]
        for i, card in enumerate(self.p_card):
            if self.cards[card].signup:
                k = card - self.existing
                self.first_amount[k] = max(self.first_amount[k], _ceil_to(self.p_amount[i], step))
        payers = [c for c in self.payers if c not in self.auto]
        self.o_at = _times(n_ordinary, s.profile, rng)
        self.o_card = []
        for _ in range(n_ordinary):
            while True:
                card = rng.choice(payers) if rng.random() < s.charge.payer_pct / 100 else rng.randrange(self.existing)
                if card not in self.auto:
                    break
            self.o_card.append(card)
        self.o_amount = [self._charge_amount(rng) for _ in range(n_ordinary)]
        fixed = sum(a for _, a in self.auto.values()) + sum(self.first_amount)
        if n_ordinary:
            _meet_total(self.o_amount, range(n_ordinary), self.targets.charged_won - fixed, step=CHARGE_STEP_WON,
                        low=self.limits.charge_min, high=max(s.charge.amounts_won) * 2, rng=rng)
        elif fixed != self.targets.charged_won:
            raise PlanError("no ordinary charge is left to meet the published charged total")

    # -- balances

    def _openings(self) -> None:
        """Each member's balance at the start: drawn; for a member active on the day, at least
        what his payments before each of his charges need (an auto-charge member: below the
        threshold and below his one payment, which the top-up then covers). The most
        a card could hold on the day stays under the holding limit."""
        pop, rng, s = self.s.population, self.rng("openings"), self.s
        drawn = [min(round(rng.lognormvariate(math.log(max(1, pop.opening_median_won)), pop.opening_sigma) / 1_000)
                     * 1_000, pop.opening_max_won) for _ in range(self.existing)]
        flows: dict[int, list[tuple[float, int, int]]] = defaultdict(list)  # card → (at, order, ±amount)
        undone: Counter[int] = Counter()
        paid: Counter[int] = Counter()
        for i, card in enumerate(self.p_card):
            flows[card].append((self.p_at[i], 0, -self.p_amount[i]))
            paid[card] += self.p_amount[i]
            if self.p_void[i]:
                undone[card] += self.p_amount[i]
        for k, card in enumerate(self.e_card):
            flows[card].append((-1.0, 0, -self.e_amount[k]))
            paid[card] += self.e_amount[k]
            undone[card] += self.e_amount[k]
        for at, card, amount in zip(self.o_at, self.o_card, self.o_amount):
            flows[card].append((at, 1, amount))
        for k, card in enumerate(self.s_card):
            flows[card].append((self.s_first_at[k], 1, self.first_amount[k]))
        holding = self.limits.holding_max
        threshold = s.charge.auto_threshold_won
        cards = list(self.cards)
        for card in range(self.existing):
            if card not in flows:
                cards[card] = CardSpec(cards[card].program, drawn[card])
                continue
            events = sorted(flows[card])
            if card in self.auto:
                trigger, top_up = self.auto[card]
                opening = least = rng.randrange(min(threshold, self.p_amount[trigger]))
                charged = top_up
            else:
                balance, need = 0, 0
                for _, _, a in events:
                    balance += a
                    need = max(need, -balance)
                least = need
                opening = max(drawn[card], need)
                charged = sum(a for _, _, a in events if a > 0)
            most = charged + undone[card] + math.ceil(paid[card] * CASHBACK_RATE_MAX)
            if opening + most > holding:
                opening = max(least, holding - most)
                if opening + most > holding:
                    raise PlanError(f"a card would exceed the holding limit of {holding:,} won on the day")
            cards[card] = CardSpec(cards[card].program, opening)
        self.cards = cards

    # -- events

    def _events(self) -> Plan:
        earlier = []
        for k, card in enumerate(self.e_card):
            at = self.s.cancellations.earlier_at_minute * 60 + k * 0.001
            earlier.append(Event(self.new_id(), at, EARLIER, card, self.e_amount[k],
                                 tid=self.merchants[self.e_merchant[k]].tid))
        day: list[Event] = []
        signup_ids = []
        for k, card in enumerate(self.s_card):
            signup_ids.append(self.new_id())
            day.append(Event(signup_ids[-1], self.s_at[k], SIGNUP, card, 0))
        charges: dict[int, list[tuple[float, int]]] = defaultdict(list)  # card → (at, event id)
        for k, card in enumerate(self.s_card):
            e = Event(self.new_id(), self.s_first_at[k], FIRST_CHARGE, card, self.first_amount[k],
                      after=(signup_ids[k],))
            day.append(e)
            charges[card].append((e.at_s, e.id))
        for at, card, amount in zip(self.o_at, self.o_card, self.o_amount):
            e = Event(self.new_id(), at, CHARGE, card, amount)
            day.append(e)
            charges[card].append((at, e.id))
        triggers = {trigger: amount for trigger, amount in self.auto.values()}
        delay_low, delay_high = self.s.cancellations.void_delay_minutes
        rng = self.rng("void-times")
        for i, card in enumerate(self.p_card):
            at = self.p_at[i]
            after = tuple(cid for cat, cid in sorted(charges.get(card, ())) if cat < at)
            e = Event(self.new_id(), at, PURCHASE, card, self.p_amount[i], tid=self.merchants[self.p_merchant[i]].tid,
                      after=after, auto_charge=triggers.get(i, 0))
            day.append(e)
            if self.p_void[i]:
                void_at = min(at + rng.uniform(delay_low, delay_high) * 60, DAY_S - 0.0005)
                day.append(Event(self.new_id(), max(void_at, at), VOID, card, e.amount, tid=e.tid, after=(e.id,),
                                 original=e.id))
        for at, k in zip(self.r_at, self.r_of):
            o = earlier[k]
            day.append(Event(self.new_id(), at, REFUND, o.card, o.amount, tid=o.tid, after=(o.id,), original=o.id))
        day.sort(key=lambda e: (e.at_s, _ORDER[e.kind], e.id))
        settings = tuple((card, self.s.charge.auto_threshold_won, amount) for card, (_, amount) in sorted(self.auto.items()))
        plan = Plan(self.s.name, self.day, self.scale, self.seed, self.targets, tuple(self.merchants), self.banks,
                    tuple(self.cards), self.existing, tuple(earlier), tuple(day), self.s.charge.auto_mode, settings)
        _check_plan(plan)
        return plan


def _check_plan(plan: Plan) -> None:
    """The plan's own invariants: it meets the targets to the won."""
    voided = {e.original for e in plan.events if e.kind == VOID}
    standing = sum(e.amount for e in plan.events if e.kind == PURCHASE and e.id not in voided)
    refunded = sum(e.amount for e in plan.events if e.kind == REFUND)
    assert standing - refunded == plan.targets.spent_won, (standing, refunded, plan.targets)
    charged = sum(e.amount for e in plan.events if e.kind in (CHARGE, FIRST_CHARGE)) + \
        sum(e.auto_charge for e in plan.events)
    assert charged == plan.targets.charged_won, (charged, plan.targets)
    assert sum(1 for e in plan.events if e.kind == SIGNUP) == plan.targets.signups


# ============================================================================ the wire

now = time.perf_counter


class _Line(AnswerStream):
    """One VAN line: a TCP connection carrying many terminals' messages (frames in:
    AnswerStream). Answers are matched to their requests by (DE41, DE11): each terminal numbers
    its own messages; an undecodable answer matches none (its request times out)."""

    def __init__(self, dialect: Dialect) -> None:
        super().__init__(dialect)
        self.waiters: dict[tuple[str, str], asyncio.Future] = {}

    def answered(self, fields: dict[str, str], payload: bytes, at: float) -> None:
        waiter = self.waiters.pop((fields.get("41", ""), fields.get("11", "")), None)
        if waiter is not None and not waiter.done():
            waiter.set_result((fields, at))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        for waiter in self.waiters.values():
            if not waiter.done():
                waiter.set_result((None, now()))
        self.waiters.clear()

    def send(self, key: tuple[str, str], data: bytes) -> asyncio.Future:
        waiter = asyncio.get_running_loop().create_future()
        if self.lost or self.transport is None:
            waiter.set_result((None, now()))
            return waiter
        self.waiters[key] = waiter
        self.transport.write(data)
        return waiter


class _Wire:
    """The VAN lines to one switch; a terminal always uses the same line (its messages stay in order)."""

    def __init__(self, host: str, port: int, dialect: Dialect, *, lines: int, timeout_s: float) -> None:
        self.host, self.port, self.dialect, self.timeout_s = host, port, dialect, timeout_s
        self.lines: list[_Line | None] = [None] * lines

    async def _line(self, i: int) -> _Line:
        line = self.lines[i]
        if line is None or line.lost:
            _, line = await asyncio.wait_for(asyncio.get_running_loop().create_connection(
                lambda: _Line(self.dialect), self.host, self.port), self.timeout_s)
            self.lines[i] = line
        return line

    async def exchange(self, fields: dict[str, str]) -> tuple[dict[str, str] | None, float, float]:
        """Send one request: (its answer or None after the timeout or a drop, sent at, answered at)."""
        tid = fields["41"]
        line = await self._line(zlib.crc32(tid.encode()) % len(self.lines))
        data = frame(self.dialect.framing, encode_fields(fields, self.dialect),
                     tpdu=DEFAULT_TPDU if self.dialect.framing.tpdu else b"")
        sent = now()
        waiter = line.send((tid, fields["11"]), data)
        try:
            answer, at = await asyncio.wait_for(waiter, self.timeout_s)
        except asyncio.TimeoutError:
            line.waiters.pop((tid, fields["11"]), None)
            return None, sent, now()
        return answer, sent, at

    def close(self) -> None:
        for line in self.lines:
            if line is not None and line.transport is not None:
                line.transport.close()


class _Till:
    """A terminal: its message builder (STAN), one transaction at a time, signed on once per
    switch run before its first transaction."""

    def __init__(self, tid: str, mid: str) -> None:
        self.builder = Terminal(tid, mid)
        self.lock = asyncio.Lock()
        self.session = -1  # the switch run it signed on in

    async def transact(self, wire: _Wire, session: int, build: Callable[[Terminal], dict[str, str]]
                       ) -> tuple[dict[str, str], dict[str, str] | None, float, float]:
        async with self.lock:
            if self.session != session:
                answer, _, _ = await wire.exchange(self.builder.sign_on())
                if answer is None or answer.get("39") != "00":
                    rc = "no answer" if answer is None else answer.get("39")
                    raise ReplayError(f"terminal {self.builder.tid}: sign-on {rc}")
                self.session = session
            fields = build(self.builder)
            answer, sent, at = await wire.exchange(fields)
            return fields, answer, sent, at


# ============================================================================ the run's record

TIMEOUT_RC = "timeout"
REFUSED_RC = "refused"  # a sign-up the control socket refused
SKIPPED_RC = "skipped"  # not sent: what it depends on was not approved


@dataclass
class Tally:
    """What the replay sent and what the switch answered, by kind; the hour is the plan's."""

    sent: Counter[str] = field(default_factory=Counter)
    approved: Counter[str] = field(default_factory=Counter)
    approved_won: Counter[str] = field(default_factory=Counter)
    by_rc: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    hourly: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0] * HOURS))
    latency: HdrHistogram = field(default_factory=lambda: HdrHistogram(1, LATENCY_US_MAX, 3))
    service: HdrHistogram = field(default_factory=lambda: HdrHistogram(1, LATENCY_US_MAX, 3))

    def record(self, kind: str, rc: str, amount: int, at_s: float, *, intended: float | None = None,
               sent: float | None = None, answered: float | None = None) -> bool:
        self.by_rc[kind][rc] += 1
        if rc != SKIPPED_RC:
            self.sent[kind] += 1
        if intended is not None and answered is not None and rc != TIMEOUT_RC:
            # from the send when it went early (uvloop's timers end up to about a ms early): an
            # early send never shortens a latency
            start = intended if sent is None else min(intended, sent)
            self.latency.record_value(min(max(round((answered - start) * 1e6), 1), LATENCY_US_MAX))
            if sent is not None:
                self.service.record_value(min(max(round((answered - sent) * 1e6), 1), LATENCY_US_MAX))
        if rc != "00":
            return False
        self.approved[kind] += 1
        self.approved_won[kind] += amount
        self.hourly[kind][min(HOURS - 1, int(at_s // 3600))] += 1
        return True

    def to_json(self) -> dict[str, Any]:
        def ms(h: HdrHistogram) -> dict[str, float | None]:
            if not h.get_total_count():
                return {k: None for k in ("p50", "p99", "p999", "max")}
            return {"p50": h.get_value_at_percentile(50) / 1000, "p99": h.get_value_at_percentile(99) / 1000,
                    "p999": h.get_value_at_percentile(99.9) / 1000, "max": h.get_max_value() / 1000}

        return {"sent": dict(self.sent), "approved": dict(self.approved), "approved_won": dict(self.approved_won),
                "by_rc": {k: dict(v) for k, v in self.by_rc.items()}, "hourly": dict(self.hourly),
                "latency_ms": ms(self.latency), "service_ms": ms(self.service)}


# ============================================================================ auto-charge

class SwitchAutoCharge:
    """The switch's own auto-charge (docs/host-interface.md, "Auto-charge"): each auto-charge
    member's card is enrolled (`card-auto-charge` on the control socket) before the day; his
    payment finds the card below its threshold, and the switch charges the set amount and
    decides the payment in one commit. The replay sends the payment alone and counts the
    top-up with it: it exists exactly when the payment is approved."""

    mode = "switch"

    async def provision(self, run: "_DayRun") -> None:
        gate = asyncio.Semaphore(EARLIER_IN_FLIGHT_MAX)

        async def enrol(card: int, threshold: int, amount: int) -> None:
            async with gate:
                await control_call(run.control_path, "card-auto-charge",
                                   {"pan": run.pans[card], "threshold": threshold, "amount": amount})

        await _all(enrol(*setting) for setting in run.plan.auto_settings)

    async def before(self, run: "_DayRun", event: Event) -> None:
        return None

    def after(self, run: "_DayRun", event: Event, rc: str) -> None:
        run.tally.record(AUTO_CHARGE, rc, event.auto_charge, event.at_s)


class EmulatedAutoCharge(SwitchAutoCharge):
    """For a switch without auto-charge: the payment is preceded by a wire charge of the
    auto-charge's amount from a bank terminal, and waits for its answer (as one decision of
    the switch orders them). Nothing is enrolled."""

    mode = "emulated"

    async def provision(self, run: "_DayRun") -> None:
        return None

    async def before(self, run: "_DayRun", event: Event) -> None:
        await run.charge(event, AUTO_CHARGE, event.auto_charge)

    def after(self, run: "_DayRun", event: Event, rc: str) -> None:
        return None


# The one place that says how auto-charges happen (scenario `charges.auto_mode`).
AUTO_CHARGES: dict[str, Callable[[], SwitchAutoCharge]] = {"switch": SwitchAutoCharge, "emulated": EmulatedAutoCharge}


# ============================================================================ playing the plan

class _DayRun:
    """Plays a plan's events against one switch (both runs: the warm-up and the day)."""

    def __init__(self, plan: Plan, rules: Rules, *, control_path: Path, tally: Tally, wire: Wire,
                 dialect: Dialect) -> None:
        from switch.ops.operations import card_pan

        self.plan, self.tally, self.wire_model, self.dialect = plan, tally, wire, dialect
        self.control_path = control_path
        self.pans: list[str | None] = [None] * len(plan.cards)
        for i in range(plan.existing):
            prog = rules.programs[plan.cards[i].program]
            self.pans[i] = card_pan(prog.bins[0][0], i + 1, prog.pan_length)
        self.tills: dict[str, _Till] = {m.tid: _Till(m.tid, m.mid) for m in plan.merchants}
        self.banks: asyncio.Queue[_Till] = asyncio.Queue()
        for b in plan.banks:
            self.banks.put_nowait(_Till(b.tid, b.mid))
        every = (*plan.earlier, *plan.events)
        self.done: dict[int, asyncio.Future] = {e.id: asyncio.get_running_loop().create_future() for e in every}
        self.sent: dict[int, dict[str, str]] = {}
        self.rrn: dict[int, str] = {}
        self.auto = AUTO_CHARGES[plan.auto_mode]()
        self.wire: _Wire | None = None
        self.session = 0
        self.signup_errors: Counter[str] = Counter()
        self.intended: float | None = None  # when the day started (now()); None in the warm-up
        self.speed = 1.0

    def connect(self, port: int) -> None:
        self.session += 1
        self.wire = _Wire("127.0.0.1", port, self.dialect, lines=self.wire_model.lines,
                          timeout_s=self.wire_model.response_timeout_ms / 1000)

    def close(self) -> None:
        if self.wire is not None:
            self.wire.close()

    # -- the kinds

    async def _send(self, till: _Till, build: Callable[[Terminal], dict[str, str]]
                    ) -> tuple[dict[str, str], dict[str, str] | None, float, float]:
        assert self.wire is not None
        return await till.transact(self.wire, self.session, build)

    async def charge(self, event: Event, kind: str, amount: int) -> bool:
        pan = self.pans[event.card]
        if pan is None:  # a sign-up that was refused: no card
            return self.tally.record(kind, SKIPPED_RC, 0, event.at_s)
        till = await self.banks.get()
        try:
            _, answer, sent, at = await self._send(till, lambda t: {**t.purchase(pan, amount), "3": "210000"})
        finally:
            self.banks.put_nowait(till)
        rc = TIMEOUT_RC if answer is None else answer.get("39", "")
        return self.tally.record(kind, rc, amount, event.at_s, intended=self._intended(event), sent=sent, answered=at)

    async def signup(self, event: Event) -> bool:
        program = self.plan.cards[event.card].program
        sent = now()
        try:
            result = await control_call(self.control_path, "card-issue", {"program": program, "live_only": True})
        except OperationRefused as exc:
            self.signup_errors[str(exc)] += 1
            return self.tally.record(SIGNUP, REFUSED_RC, 0, event.at_s)
        self.pans[event.card] = result["pan"]
        return self.tally.record(SIGNUP, "00", 0, event.at_s, intended=self._intended(event), sent=sent, answered=now())

    async def purchase(self, event: Event, kind: str = PURCHASE) -> bool:
        if event.auto_charge:
            await self.auto.before(self, event)
        pan = self.pans[event.card]
        if pan is None:
            return self.tally.record(kind, SKIPPED_RC, 0, event.at_s)
        fields, answer, sent, at = await self._send(self.tills[event.tid], lambda t: t.purchase(pan, event.amount))
        self.sent[event.id] = fields
        rc = TIMEOUT_RC if answer is None else answer.get("39", "")
        if rc == "00":
            self.rrn[event.id] = answer.get("37", "")
        if event.auto_charge:
            self.auto.after(self, event, rc)
        return self.tally.record(kind, rc, event.amount, event.at_s, intended=self._intended(event), sent=sent,
                                 answered=at)

    async def void(self, event: Event) -> bool:
        original = self.sent[event.original]
        _, answer, sent, at = await self._send(self.tills[event.tid], lambda t: t.reversal(original))
        rc = TIMEOUT_RC if answer is None else answer.get("39", "")
        return self.tally.record(VOID, rc, event.amount, event.at_s, intended=self._intended(event), sent=sent,
                                 answered=at)

    async def refund(self, event: Event) -> bool:
        pan, rrn = self.pans[event.card], self.rrn[event.original]
        assert pan is not None
        _, answer, sent, at = await self._send(self.tills[event.tid], lambda t: t.refund(pan, event.amount, rrn))
        rc = TIMEOUT_RC if answer is None else answer.get("39", "")
        return self.tally.record(REFUND, rc, event.amount, event.at_s, intended=self._intended(event), sent=sent,
                                 answered=at)

    # -- scheduling

    def _intended(self, event: Event) -> float | None:
        return None if self.intended is None else self.intended + event.at_s / self.speed

    async def do(self, event: Event) -> None:
        """One event, once what it depends on is answered. A void, a refund or a first charge
        whose original was not approved is not sent (recorded as skipped)."""
        ok = False
        try:
            results = [await self.done[d] for d in event.after]
            hard = event.kind in (VOID, REFUND, FIRST_CHARGE)
            if hard and not all(results):
                self.tally.record(event.kind, SKIPPED_RC, 0, event.at_s)
            elif event.kind == SIGNUP:
                ok = await self.signup(event)
            elif event.kind in (CHARGE, FIRST_CHARGE):
                ok = await self.charge(event, event.kind, event.amount)
            elif event.kind == PURCHASE:
                ok = await self.purchase(event)
            elif event.kind == EARLIER:
                ok = await self.purchase(event, EARLIER)
            elif event.kind == VOID:
                ok = await self.void(event)
            elif event.kind == REFUND:
                ok = await self.refund(event)
        finally:
            if not self.done[event.id].done():
                self.done[event.id].set_result(ok)

    async def warm_up(self) -> None:
        """The day before's payments, as fast as the switch takes them."""
        gate = asyncio.Semaphore(EARLIER_IN_FLIGHT_MAX)

        async def one(e: Event) -> None:
            async with gate:
                await self.do(e)

        await _all(one(e) for e in self.plan.earlier)
        await self.auto.provision(self)

    async def play(self, *, speed: float, progress: Callable[[float, int], None] | None = None) -> None:
        """The day's events at their times, compressed by `speed`; latency counts from there."""
        self.speed = speed
        self.intended = now()
        tasks = []
        shown = 0
        for i, e in enumerate(self.plan.events):
            wait = self.intended + e.at_s / speed - now()
            if wait > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.ensure_future(self.do(e)))
            if progress is not None and e.at_s >= shown * 3600:
                progress(e.at_s, i)
                shown = int(e.at_s // 3600) + 1
        await _all(tasks)


async def _all(aws: Any) -> None:
    """Await them all; the first failure cancels the rest and is raised."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class OperationRefused(RuntimeError):
    """The switch refused an operation on its control socket (its one-line reason)."""


async def control_call(path: Path, op: str, args: dict[str, Any]) -> dict[str, Any]:
    """One operation on the switch's control socket (as `eum admin` sends it while a switch runs)."""
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), CONTROL_TIMEOUT_S)
    try:
        writer.write(json.dumps({"op": op, "args": args}).encode() + b"\n")
        await writer.drain()
        reply = json.loads(await asyncio.wait_for(reader.readline(), CONTROL_TIMEOUT_S))
    finally:
        writer.close()
    if not reply["ok"]:
        raise OperationRefused(reply["error"])
    return reply["result"]


# ============================================================================ the switch process

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SwitchProcess:
    """`eum switch` on the replay's data dir, started and stopped by its PID."""

    def __init__(self, data_dir: Path, clock_start: datetime, *, log_dir: Path, name: str) -> None:
        self.data_dir, self.clock_start, self.log_dir, self.name = data_dir, clock_start, log_dir, name
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> int:
        self.port = _free_port()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._err = (self.log_dir / f"switch-{self.name}.err").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "switch.cli", "switch", "--data-dir", str(self.data_dir), "--store", "sqlite",
             "--listen", f"127.0.0.1:{self.port}", "--clock-start", self.clock_start.isoformat(),
             "--idle-timeout-s", "86400"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._err)
        deadline = time.monotonic() + SWITCH_START_S_MAX
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ReplayError(f"eum switch exited {self.proc.returncode} at start: {self._stderr()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self.port
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise ReplayError(f"eum switch did not listen on {self.port} within {SWITCH_START_S_MAX:g} s")

    def _stderr(self) -> str:
        self._err.flush()
        return (self.log_dir / f"switch-{self.name}.err").read_text()[-1000:].strip()

    def stop(self) -> None:
        """SIGTERM: the switch answers what is in flight and flushes the ledger; exit 0 expected."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=SWITCH_STOP_S_MAX)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=SWITCH_STOP_S_MAX)
            raise ReplayError(f"eum switch did not stop within {SWITCH_STOP_S_MAX:g} s of SIGTERM") from None
        finally:
            self._err.close()
        self.proc = None
        if rc != 0:
            raise ReplayError(f"eum switch exited {rc}: {(self.log_dir / f'switch-{self.name}.err').read_text()[-1000:]}")


# ============================================================================ the population

def load_population(data_dir: Path, plan: Plan, rules: Rules) -> None:
    """The plan's merchants, terminals, bank channels and members' cards, with their opening
    balances as one posting, bulk-loaded into a fresh ledger, dated 00:00 of the day before."""
    from switch.ledger.bulk import BulkLoad
    from switch.ledger.store import open_store
    from switch.ops.operations import card_pan, default_expiry

    at = day_start(plan.day) - timedelta(days=1)
    db = open_store(data_dir, "sqlite")
    with BulkLoad(db) as load:
        ids = load.next_ids()
        if (ids.merchant, ids.card, ids.posting) != (1, 1, 1):
            raise ReplayError(f"the ledger in {data_dir} is not empty: a replay builds its own")
        merchants = [*plan.merchants, *{b.mid: b for b in plan.banks}.values()]
        load.merchants([(m.mid, m.name, m.district, m.annual_sales, m.category) for m in merchants])
        load.terminals([(m.tid, m.mid, "none", "", "") for m in (*plan.merchants, *plan.banks)])
        expiry = default_expiry(at)
        rows, charges = [], []
        for i, card in enumerate(plan.cards[: plan.existing]):
            prog = rules.programs[card.program]
            rows.append((i + 1, card_pan(prog.bins[0][0], i + 1, prog.pan_length), card.program, f"M{i + 1:09d}",
                         expiry, "active", at.isoformat()))
            if card.opening:
                charges.append((i + 1, card.opening))
        load.cards(rows)
        if charges:
            load.opening_charges(ids.posting, at.isoformat(), charges, {"cards": len(rows), "replay": plan.scenario})


# ============================================================================ a whole replay

@dataclass(frozen=True)
class ReplayOptions:
    day: date
    scale: float = 1.0
    speed: float = 60.0
    seed: int = 1
    scenario: str = DEFAULT_SCENARIO
    data_dir: Path = Path("var/replay")
    out: Path | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.speed >= SPEED_MIN:
            raise ValueError(f"--speed must be at least {SPEED_MIN:g}: slower, the day would run past midnight "
                             "on the switch's clock")
        if not 0 < self.scale <= 10:
            raise ValueError("--scale must be in (0, 10]")

    @property
    def out_dir(self) -> Path:
        return self.out if self.out is not None else self.data_dir / "report"


@dataclass
class ReplayRun:
    """A replay's plan, what it sent and got, and how long each part took (seconds)."""

    plan: Plan
    tally: Tally
    seconds: dict[str, float]
    signup_errors: dict[str, int]
    data_dir: Path


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)


def run_replay(options: ReplayOptions) -> ReplayRun:
    """Plan, load, warm up, replay the day; the switch processes are stopped whatever happens."""
    started = now()
    seconds: dict[str, float] = {}
    data_dir = options.data_dir
    if data_dir.exists() and any(data_dir.iterdir()):
        raise ReplayError(f"{data_dir} is not empty: a replay builds its own ledger (choose another --data-dir)")
    rules = load_rules(default_config_dir())
    scenario = load_replay_scenario(options.scenario)
    plan = build_plan(scenario, day=options.day, scale=options.scale, seed=options.seed, rules=rules)
    seconds["plan"] = now() - started
    say = lambda text: _say(options.progress, text)  # noqa: E731
    counts = plan.counts()
    say(f"eum replay: {plan.day} at scale {plan.scale:g}: {plan.existing:,} members, {len(plan.merchants):,} "
        f"merchants; {counts[PURCHASE]:,} payments, {counts[CHARGE] + counts[FIRST_CHARGE] + counts[AUTO_CHARGE]:,} "
        f"charges ({counts[AUTO_CHARGE]:,} auto), {counts[SIGNUP]:,} sign-ups, {counts[VOID]:,} voids, "
        f"{counts[REFUND]:,} refunds; plan {plan.digest()[:12]}")
    t = now()
    load_population(data_dir, plan, rules)
    seconds["load"] = now() - t
    tally = Tally()
    log_dir = options.out_dir
    from switch.authorize.server import control_socket_path

    async def main() -> dict[str, int]:
        run = _DayRun(plan, rules, control_path=control_socket_path(data_dir), tally=tally, wire=scenario.wire,
                      dialect=load_dialect("default"))
        t = now()
        evening = day_start(plan.day) - timedelta(days=1) + timedelta(minutes=scenario.cancellations.earlier_at_minute)
        await _with_switch(run, SwitchProcess(data_dir, evening, log_dir=log_dir, name="warm-up"), run.warm_up)
        seconds["warm_up"] = now() - t
        say(f"warm-up: {tally.approved[EARLIER]:,} payments of {plan.day - timedelta(days=1)} for the day's refunds")
        t = now()

        def progress(at_s: float, i: int) -> None:
            say(f"  {int(at_s // 3600):02d}:00  {i:>8,} of {len(plan.events):,} events sent")

        await _with_switch(run, SwitchProcess(data_dir, day_start(plan.day), log_dir=log_dir, name="day"),
                           lambda: run.play(speed=options.speed, progress=progress if options.progress else None))
        seconds["day"] = now() - t
        return dict(run.signup_errors)

    signup_errors = _run_async(main())
    seconds["total"] = now() - started
    return ReplayRun(plan, tally, {k: round(v, 2) for k, v in seconds.items()}, signup_errors, data_dir)


async def _with_switch(run: _DayRun, switch: SwitchProcess, body: Callable[[], Any]) -> None:
    switch.start()
    try:
        run.connect(switch.port)
        await body()
    finally:
        run.close()
        switch.stop()


def _run_async(coro: Any) -> Any:
    from switch.wire.transport import run

    return run(coro)


# ============================================================================ the command line

def register(sub: Any) -> None:
    """`eum replay` (entry point `eum.commands`, pyproject.toml)."""
    p = sub.add_parser("replay", help="replay a published day through the switch over TCP and compare the "
                                      "day's report with the published figures (docs/replay.md)")
    p.add_argument("--day", help="the KST day to replay, YYYY-MM-DD (default: the scenario's, 2019-06-04)")
    p.add_argument("--scale", type=float, default=1.0, help="share of the day's volume (default 1.0; 0.1 a tenth)")
    p.add_argument("--speed", type=float, default=60.0,
                   help=f"day seconds per real second (default 60: the day in 24 minutes; at least {SPEED_MIN:g})")
    p.add_argument("--seed", type=int, default=1, help="the plan's seed (default 1): the same seed, the same day")
    p.add_argument("--scenario", default=DEFAULT_SCENARIO,
                   help=f"config/scenarios/replay/NAME.toml or a path (default {DEFAULT_SCENARIO})")
    p.add_argument("--data-dir", type=Path, help="a new, empty data dir for the replay's ledger (default "
                                                 "var/replay-<day>)")
    p.add_argument("--out", type=Path, help="where the comparison, its JSON and the plots go (default "
                                            "<data-dir>/report)")
    p.add_argument("--policy-periods", action="store_true",
                   help="replay the scenario's day of each policy period instead (docs/replay.md, "
                        "\"Policy periods\"), each in <data-dir>/<day>, and write their table")
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=run_replay_cli)


def _day_arg(text: str) -> date:
    try:
        return date.fromisoformat(text) if len(text) == 10 else date.fromisoformat("")
    except ValueError:
        raise ValueError(f"--day must be a day YYYY-MM-DD, got {text!r}") from None


def run_replay_cli(args: argparse.Namespace) -> int:
    from .replay_report import policy_periods_cli, report_cli

    try:
        scenario = load_replay_scenario(args.scenario)
        if args.policy_periods:
            return policy_periods_cli(args, scenario)
        day = _day_arg(args.day) if args.day else scenario.day
        options = ReplayOptions(day=day, scale=args.scale, speed=args.speed, seed=args.seed, scenario=args.scenario,
                                data_dir=args.data_dir or Path(f"var/replay-{day.isoformat()}"), out=args.out,
                                progress=not args.no_progress)
        result = run_replay(options)
    except (ReplayError, PlanError, ValueError, OSError) as exc:
        print(f"eum replay: {exc}", file=sys.stderr)
        return 2
    return report_cli(result, options, scenario)

