"""Fleet scenarios as data (`config/scenarios/<name>.toml`), and the arrival schedule. Pure.

A scenario says *what* a fleet sends: the mix of transaction kinds, the amount
distribution, how many purchases carry an online PIN and how many of those are mistyped,
which part of the population is used, how a terminal behaves when idle or after a timeout,
and, optionally, the shape of a trading day compressed into the run. *How much* is sent
(terminals, rate, duration) is the fleet's config, so one scenario serves a 2-second test
and a 60-second benchmark alike.

Every key is checked at load; an error names the file and the key (`mix.purchase`,
`day_profile.peaks[1].end`), never guesses. Unknown keys are errors too: a typo must not
silently fall back to a default.

Arrivals (`arrival_offsets`) are generated in *expected-arrival* units: a unit-rate
Poisson process (exponential gaps) or a unit-spaced constant one, mapped to seconds through
the run's cumulative intensity. Without a day profile that is `u / rate`; with one, the
inverse of the piecewise-linear cumulative profile, so peaks get proportionally more
arrivals while the mean rate over the run stays the configured one.
"""

from __future__ import annotations

import math
import random
import tomllib
from bisect import bisect
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

from switch.configdir import config_dir

KINDS = ("purchase", "refund", "balance", "reversal")
ARRIVALS = ("poisson", "constant")
MINUTES_PER_DAY = 24 * 60


class ScenarioError(ValueError):
    """A scenario file is missing, unreadable or has a bad key; `key` names it (dotted)."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        super().__init__(f"scenario {source}: {key}: {reason}" if key else f"scenario {source}: {reason}")
        self.source = source
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class Mix:
    """Relative weights of the transaction kinds (any non-negative numbers, not all zero)."""

    purchase: float = 1.0
    refund: float = 0.0
    balance: float = 0.0
    reversal: float = 0.0

    @cached_property
    def _cumulative(self) -> tuple[float, ...]:
        """The weights' running sums, once (frozen: they never change)."""
        sums, total = [], 0.0
        for weight in (self.purchase, self.refund, self.balance, self.reversal):
            total += weight
            sums.append(total)
        return tuple(sums)

    def pick(self, rng: random.Random) -> str:
        """A kind by weight: the draw `rng.choices(KINDS, weights=…)[0]` makes from the same
        state (one `random()` against the running sums), without building them per call."""
        cumulative = self._cumulative
        return KINDS[bisect(cumulative, rng.random() * cumulative[-1], 0, len(KINDS) - 1)]


@dataclass(frozen=True)
class AmountModel:
    """Purchase amounts in whole won: lognormal around `median_won`, rounded to `round_won`,
    clamped to [amount_won_min, amount_won_max]."""

    median_won: int = 20_000
    sigma: float = 0.5
    round_won: int = 100
    amount_won_min: int = 1_000
    amount_won_max: int = 300_000

    def draw(self, rng: random.Random) -> int:
        raw = rng.lognormvariate(math.log(self.median_won), self.sigma)
        rounded = int(round(raw / self.round_won)) * self.round_won
        return min(max(rounded, self.amount_won_min), self.amount_won_max)


@dataclass(frozen=True)
class PinPolicy:
    """`share`: purchases sent with an online PIN (on a DUKPT terminal, with a card that has
    a PIN); `wrong_share`: of those, sent with a wrong PIN."""

    share: float = 0.0
    wrong_share: float = 0.0


@dataclass(frozen=True)
class Pools:
    """Which part of the population a run uses: the first `cards` cards and at most the first
    `terminals` terminals (0: all)."""

    cards: int = 0
    terminals: int = 0


@dataclass(frozen=True)
class TerminalBehaviour:
    """`echo_idle_s`: an idle terminal sends 0800/301 after this long without traffic.
    `reversal_repeats_max`: 0401 repeats of a queued reversal per connection, after its 0400
    (terminal_sim/saf.py: it stays queued, and is sent again on the next connection or run)."""

    echo_idle_s: float = 30.0
    reversal_repeats_max: int = 3


@dataclass(frozen=True)
class Peak:
    start_minute: int
    end_minute: int
    multiplier: float


@dataclass(frozen=True)
class DayProfile:
    """The trading day from `start` to `end` (local HH:MM) compressed into the run: the run's
    first instant is `start`, its end is `end`. Rate multiplier `base`, or a peak's inside
    it; normalised so the run's mean rate is the configured rate."""

    start_minute: int
    end_minute: int
    base: float = 1.0
    peaks: tuple[Peak, ...] = ()

    def segments(self) -> list[tuple[float, float, float]]:
        """(fraction_start, fraction_end, density) over [0, 1): densities integrate to 1."""
        span = self.end_minute - self.start_minute
        cuts: list[tuple[int, int, float]] = []
        cursor = self.start_minute
        for peak in sorted(self.peaks, key=lambda p: p.start_minute):
            if peak.start_minute > cursor:
                cuts.append((cursor, peak.start_minute, self.base))
            cuts.append((peak.start_minute, peak.end_minute, peak.multiplier))
            cursor = peak.end_minute
        if cursor < self.end_minute:
            cuts.append((cursor, self.end_minute, self.base))
        total = sum((b - a) * m for a, b, m in cuts) / span
        return [((a - self.start_minute) / span, (b - self.start_minute) / span, m / total) for a, b, m in cuts]

    def multiplier_at(self, fraction: float) -> float:
        """The rate multiplier (relative to the run's mean rate) at a fraction of the run."""
        for a, b, density in self.segments():
            if a <= fraction < b:
                return density
        return 0.0

    def fraction_of_arrivals(self, share: float) -> float:
        """Inverse cumulative intensity: the run fraction by which `share` of the expected
        arrivals have come."""
        done = 0.0
        end = 1.0
        for a, b, density in self.segments():
            mass = (b - a) * density
            if mass > 0 and share < done + mass:
                return a + (share - done) / density
            done += mass
            end = b if mass > 0 else end
        return end


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str = ""
    mix: Mix = Mix()
    amount: AmountModel = AmountModel()
    pin: PinPolicy = PinPolicy()
    pools: Pools = Pools()
    terminal: TerminalBehaviour = TerminalBehaviour()
    day_profile: DayProfile | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "mix": {k: getattr(self.mix, k) for k in KINDS},
                "amount_median_won": self.amount.median_won, "pin_share": self.pin.share,
                "wrong_pin_share": self.pin.wrong_share, "day_profile": self.day_profile is not None}


# ---------------------------------------------------------------------------- arrivals

def arrival_offsets(rate_per_s: float, duration_s: float, *, arrivals: str, rng: random.Random,
                    phase: float = 0.0, profile: DayProfile | None = None) -> Iterator[float]:
    """Intended send times (seconds from the run's start, < duration_s) of one open-loop
    source at mean rate `rate_per_s`. Constant arrivals start at `phase` (0 ≤ phase < 1) of
    an interval, so n sources with phases i/n interleave evenly."""
    if arrivals not in ARRIVALS:
        raise ValueError(f"arrivals must be one of {', '.join(ARRIVALS)}")
    expected = rate_per_s * duration_s
    u = phase if arrivals == "constant" else rng.expovariate(1.0)
    while u < expected:
        t = u / rate_per_s if profile is None else duration_s * profile.fraction_of_arrivals(u / expected)
        if t >= duration_s:  # rounding at the very end of the run
            return
        yield t
        u += 1.0 if arrivals == "constant" else rng.expovariate(1.0)


# ---------------------------------------------------------------------------- loading

def scenarios_dir() -> Path:
    return config_dir() / "scenarios"


def load_scenario(name_or_path: str | Path, *, directory: Path | None = None) -> Scenario:
    """A scenario by name (`standard` → config/scenarios/standard.toml) or by file path."""
    path = Path(name_or_path)
    if path.suffix != ".toml" and not path.exists():
        path = (directory or scenarios_dir()) / f"{name_or_path}.toml"
    source = str(name_or_path)
    if not path.is_file():
        known = sorted(p.stem for p in (directory or scenarios_dir()).glob("*.toml"))
        raise ScenarioError(source, "", f"no such scenario file; known: {', '.join(known)}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(source, "", f"not valid TOML ({exc})") from None
    return parse_scenario(data, source=source, default_name=path.stem)


def parse_scenario(data: dict[str, Any], *, source: str, default_name: str) -> Scenario:
    r = _Reader(source)
    r.only(data, "", ("name", "description", "mix", "amount", "pin", "pools", "terminal", "day_profile"))
    name = r.text(data, "name", default=default_name)
    description = r.text(data, "description", default="")
    mix_data = r.table(data, "mix", required=True)
    r.only(mix_data, "mix", KINDS)
    weights = {k: r.number(mix_data, k, prefix="mix", default=0.0, low=0.0) for k in KINDS}
    if not any(weights.values()):
        raise ScenarioError(source, "mix", "at least one weight must be positive")
    amount = _amount(r, r.table(data, "amount"))
    pin_data = r.table(data, "pin")
    r.only(pin_data, "pin", ("share", "wrong_share"))
    pin = PinPolicy(share=r.number(pin_data, "share", prefix="pin", default=0.0, low=0.0, high=1.0),
                    wrong_share=r.number(pin_data, "wrong_share", prefix="pin", default=0.0, low=0.0, high=1.0))
    pools_data = r.table(data, "pools")
    r.only(pools_data, "pools", ("cards", "terminals"))
    pools = Pools(cards=r.integer(pools_data, "cards", prefix="pools", default=0, low=0),
                  terminals=r.integer(pools_data, "terminals", prefix="pools", default=0, low=0))
    term_data = r.table(data, "terminal")
    r.only(term_data, "terminal", ("echo_idle_s", "reversal_repeats_max"))
    terminal = TerminalBehaviour(
        echo_idle_s=r.number(term_data, "echo_idle_s", prefix="terminal", default=30.0, low=0.01),
        reversal_repeats_max=r.integer(term_data, "reversal_repeats_max", prefix="terminal", default=3, low=0,
                                       high=100))
    profile = _day_profile(r, data["day_profile"]) if "day_profile" in data else None
    return Scenario(name=name, description=description, mix=Mix(**weights), amount=amount, pin=pin,
                    pools=pools, terminal=terminal, day_profile=profile)


def _amount(r: "_Reader", data: dict[str, Any]) -> AmountModel:
    keys = ("distribution", "median_won", "sigma", "round_won", "amount_won_min", "amount_won_max")
    r.only(data, "amount", keys)
    distribution = r.text(data, "distribution", prefix="amount", default="lognormal")
    if distribution != "lognormal":
        raise ScenarioError(r.source, "amount.distribution", "only 'lognormal' is supported")
    model = AmountModel(
        median_won=r.integer(data, "median_won", prefix="amount", default=20_000, low=1),
        sigma=r.number(data, "sigma", prefix="amount", default=0.5, low=0.0, high=5.0),
        round_won=r.integer(data, "round_won", prefix="amount", default=100, low=1),
        amount_won_min=r.integer(data, "amount_won_min", prefix="amount", default=1_000, low=1),
        amount_won_max=r.integer(data, "amount_won_max", prefix="amount", default=300_000, low=1))
    if model.amount_won_min > model.amount_won_max:
        raise ScenarioError(r.source, "amount.amount_won_max", "must be at least amount.amount_won_min")
    return model


def _day_profile(r: "_Reader", data: Any) -> DayProfile:
    if not isinstance(data, dict):
        raise ScenarioError(r.source, "day_profile", "must be a table")
    r.only(data, "day_profile", ("start", "end", "base", "peaks"))
    start = r.clock(data, "start", prefix="day_profile")
    end = r.clock(data, "end", prefix="day_profile")
    if end <= start:
        raise ScenarioError(r.source, "day_profile.end", "must be after day_profile.start")
    base = r.number(data, "base", prefix="day_profile", default=1.0, low=0.0)
    raw_peaks = data.get("peaks", [])
    if not isinstance(raw_peaks, list):
        raise ScenarioError(r.source, "day_profile.peaks", "must be an array of tables ([[day_profile.peaks]])")
    peaks = []
    for i, p in enumerate(raw_peaks):
        prefix = f"day_profile.peaks[{i}]"
        if not isinstance(p, dict):
            raise ScenarioError(r.source, prefix, "must be a table")
        r.only(p, prefix, ("name", "start", "end", "multiplier"))
        peak = Peak(start_minute=r.clock(p, "start", prefix=prefix), end_minute=r.clock(p, "end", prefix=prefix),
                    multiplier=r.number(p, "multiplier", prefix=prefix, required=True, low=0.0))
        if not start <= peak.start_minute < peak.end_minute <= end:
            raise ScenarioError(r.source, f"{prefix}.end", "a peak must end after it starts, inside the day")
        peaks.append(peak)
    ordered = sorted(peaks, key=lambda p: p.start_minute)
    for i, (a, b) in enumerate(zip(ordered, ordered[1:])):
        if b.start_minute < a.end_minute:
            raise ScenarioError(r.source, "day_profile.peaks", "peaks must not overlap")
    profile = DayProfile(start_minute=start, end_minute=end, base=base, peaks=tuple(peaks))
    if not any(density > 0 for _, _, density in _safe_segments(profile, r.source)):
        raise ScenarioError(r.source, "day_profile.base", "the day has no traffic at all")
    return profile


def _safe_segments(profile: DayProfile, source: str) -> list[tuple[float, float, float]]:
    try:
        return profile.segments()
    except ZeroDivisionError:
        raise ScenarioError(source, "day_profile.base", "the day has no traffic at all") from None


class _Reader:
    """Typed look-ups that blame the key (dotted path) on failure."""

    def __init__(self, source: str) -> None:
        self.source = source

    def _fail(self, key: str, reason: str) -> ScenarioError:
        return ScenarioError(self.source, key, reason)

    def only(self, data: dict[str, Any], prefix: str, allowed: tuple[str, ...]) -> None:
        for key in data:
            if key not in allowed:
                where = f"{prefix}.{key}" if prefix else key
                raise self._fail(where, f"unknown key (allowed: {', '.join(allowed)})")

    def table(self, data: dict[str, Any], key: str, *, required: bool = False) -> dict[str, Any]:
        if key not in data:
            if required:
                raise self._fail(key, "missing (a table)")
            return {}
        if not isinstance(data[key], dict):
            raise self._fail(key, "must be a table")
        return data[key]

    def text(self, data: dict[str, Any], key: str, *, prefix: str = "", default: str) -> str:
        value = data.get(key, default)
        if not isinstance(value, str):
            raise self._fail(f"{prefix}.{key}" if prefix else key, "must be a string")
        return value

    def number(self, data: dict[str, Any], key: str, *, prefix: str, default: float = 0.0, required: bool = False,
               low: float | None = None, high: float | None = None) -> float:
        where = f"{prefix}.{key}"
        if key not in data and required:
            raise self._fail(where, "missing")
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self._fail(where, "must be a number")
        if (low is not None and value < low) or (high is not None and value > high):
            raise self._fail(where, f"must be in [{low}, {high if high is not None else '∞'}]")
        return float(value)

    def integer(self, data: dict[str, Any], key: str, *, prefix: str, default: int, low: int | None = None,
                high: int | None = None) -> int:
        where = f"{prefix}.{key}"
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(where, "must be an integer")
        if (low is not None and value < low) or (high is not None and value > high):
            raise self._fail(where, f"must be in [{low}, {high if high is not None else '∞'}]")
        return value

    def clock(self, data: dict[str, Any], key: str, *, prefix: str) -> int:
        """HH:MM (24:00 allowed as the day's end) → minutes since midnight."""
        where = f"{prefix}.{key}"
        value = data.get(key)
        if not isinstance(value, str) or len(value) != 5 or value[2] != ":" \
                or not (value[:2] + value[3:]).isdigit():
            raise self._fail(where, "must be a time \"HH:MM\"")
        minutes = int(value[:2]) * 60 + int(value[3:])
        if int(value[3:]) > 59 or minutes > MINUTES_PER_DAY:
            raise self._fail(where, "must be a time between 00:00 and 24:00")
        return minutes
