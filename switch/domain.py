"""Domain vocabulary shared by the pure rules and the switch: merchants, cards, clock.

Pure module: imports nothing from I/O modules.
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Final, TypeVar

KST = timezone(timedelta(hours=9), "KST")

DISTRICTS = (
    "jung",
    "dong",
    "michuhol",
    "yeonsu",
    "namdong",
    "bupyeong",
    "gyeyang",
    "seo",
    "ganghwa",
    "ongjin",
)
PROGRAMS = ("incheon", "namdong", "seo", "yeonsu", "michuhol")


@dataclass(frozen=True, slots=True)
class Merchant:
    """A card acceptor. `annual_sales` is in won and picks the fee and cashback tiers."""

    mid: str
    name: str
    district: str
    annual_sales: int
    category: str = "general"
    online_mall: bool = False

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:  # copy and pickle: see fields_of
        return type(self), fields_of(self)


def fields_of(value: object) -> tuple[object, ...]:
    """A frozen dataclass's field values in order: what its `__reduce__` rebuilds it from.

    copy and pickle rebuild a frozen dataclass by assigning its fields, which a compiled
    (mypyc) class refuses; `__reduce__` rebuilds it through `__init__`, the same way in both
    builds (switch/compiled.py)."""
    return tuple(getattr(value, f.name) for f in dataclasses.fields(value))  # type: ignore[arg-type]


T = TypeVar("T")


def in_force_at(items: tuple[T, ...], now: datetime) -> T | None:
    """The last of `items` (each with an `effective_from`, ascending: checked when the rules
    are loaded) whose `effective_from` is at or before `now`, or None. Scanned from the newest,
    so the usual answer, the newest, costs one comparison."""
    for item in reversed(items):
        if item.effective_from <= now:  # type: ignore[attr-defined]
            return item
    return None


# The period keys and the zero-padded numbers below avoid f-strings with a format spec
# (`{n:04d}`): compiled by mypyc, each such field is a `str.format` call of its own, ≈ 1,600
# instructions, and a purchase formatted ≈ 15 of them (docs/performance.md, "Numbers padded
# without a format spec"). Nor `date.isoformat()`: C's printf formats it, ≈ 3,100 instructions,
# six a purchase (docs/performance.md, "Dates without printf (kept)").

TWO_DIGITS: Final = tuple(str(i).zfill(2) for i in range(60))  # "00" … "59": a month, day, hour, minute, second


def date_text(local: datetime) -> str:
    """The date of `local` as `local.date().isoformat()` writes it: YYYY-MM-DD."""
    return zero_padded(local.year, 4) + "-" + TWO_DIGITS[local.month] + "-" + TWO_DIGITS[local.day]


def month_key(now: datetime) -> str:
    """Calendar month in Korea ("2019-07"): cashback tiers count spend per KST month."""
    return kst_instant(now).month


def day_key(now: datetime) -> str:
    """Calendar day in Korea ("2019-07-20"): the daily spending limit counts per KST day."""
    return kst_instant(now).day


def zero_padded(n: int, width: int) -> str:
    """`n` in decimal, zero-padded to `width` (a minus sign first): f"{n:0{width}d}"."""
    return str(n).zfill(width)


def card_accounts(card_id: int) -> tuple[str, str, str]:
    """A card's cash, cashback and receivable accounts (switch/ledger/records.py
    CardState.accounts): here, compiled, as the decision names them once a purchase. The one
    place their names are made (the decision, charges, the seed's opening charges); the SQL
    that reads them by pattern (`card:%:cash`) is in switch/ledger/."""
    prefix = "card:" + str(card_id)
    return (prefix + ":cash", prefix + ":cashback", prefix + ":receivable")


def card_held_account(card_id: int) -> str:
    """Cash held by the card's open pre-authorizations (out of its available cash)."""
    return "card:" + str(card_id) + ":held"


class KstInstant:
    """An instant read once: in KST (`local`), its KST day and month keys, its POSIX seconds."""

    __slots__ = ("instant", "local", "day", "month", "seconds")

    def __init__(self, instant: datetime) -> None:
        self.instant = instant  # held: `is` cannot match a new object at a reused address
        local = instant.astimezone(KST)
        self.local = local
        day = date_text(local)
        self.day = day
        self.month = day[:7]
        self.seconds = instant.timestamp()


# The last instant asked about: one request asks for its day and month about five times (the
# prefetch, the spend checks, the sale), its time once and its seconds once, each a conversion
# to KST or a tzinfo call and attribute reads (docs/performance.md, "The day and month of an
# instant kept (kept)"). One object, replaced whole, so a thread never pairs an instant with
# another's reading.
_last_instant = KstInstant(datetime(2000, 1, 1, tzinfo=timezone.utc))


def kst_instant(now: datetime) -> KstInstant:
    """`now` read once (KstInstant): the last instant's reading is kept and given again."""
    global _last_instant
    last = _last_instant
    if last.instant is now:
        return last
    last = KstInstant(now)
    _last_instant = last
    return last


PARTITIONS = 256  # members are spread over this many partitions (docs/scale-out.md, "Several instances")


def partition_of(member: str) -> int:
    """The member's partition: a stable hash (CRC-32) of the member id. Every card of a member is
    decided by the instance holding it (monthly tiers and caps are counted per member)."""
    return zlib.crc32(member.encode("utf-8")) % PARTITIONS


def mask_pan(pan: str) -> str:
    """First 6, last 4, the rest as '*' (PCI DSS display rule)."""
    if len(pan) < 11:
        return "*" * len(pan)
    return pan[:6] + "*" * (len(pan) - 10) + pan[-4:]


def luhn_digit(body: str) -> str:
    """The Luhn (ISO/IEC 7812-1) check digit of a PAN's body. An ASCII digit's value is its
    code point less 48 (native ints when compiled: a lookup in a module-level dict per digit
    cost ≈ 7,600 instructions a purchase, docs/performance.md "The Luhn digit in native ints
    (kept)"); any other character is given to int() as before (another script's digit, which
    str.isdigit accepts, or a ValueError)."""
    total = 0
    double = True  # the rightmost digit of the body is doubled
    i = len(body) - 1
    while i >= 0:
        ch = body[i]
        d = ord(ch) - 48
        if d < 0 or d > 9:
            d = int(ch)
        if double:
            d = d * 2 - 9 if d * 2 > 9 else d * 2
        total += d
        double = not double
        i -= 1
    return str((10 - total % 10) % 10)


def luhn_ok(pan: str) -> bool:
    """Every issued PAN ends in its Luhn digit: one that does not is a mistyped number."""
    return pan.isdigit() and luhn_digit(pan[:-1]) == pan[-1]


# ---------------------------------------------------------------------------- secrets in logs
#
# Every log line and the switch's canonical line pass through mask_secrets (switch/ops/logs.py):
# compiled here, a loop over the line's values in C.

# Keys whose values never reach a log, whatever they hold.
SECRET_KEYS = frozenset({"pin", "pin_block", "track2", "track_data", "cvv", "cvv2", "key", "keys", "lmk", "pvv",
                         "components"})  # components: a ZMK's clear key components (eum admin kif-zmk)
_PAN_LEN_MIN = 13
_PAN_RE = re.compile(r"(?<!\d)\d{13,19}(?!\d)")


def _mask_text(text: str) -> str:
    return _PAN_RE.sub(_masked_match, text)


def _masked_match(m: re.Match[str]) -> str:
    return mask_pan(m.group(0))


def mask_value(value: Any) -> Any:
    if isinstance(value, str):
        return _mask_text(value) if len(value) >= _PAN_LEN_MIN else value
    if isinstance(value, dict):
        return {k: ("[redacted]" if k in SECRET_KEYS else mask_value(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask_value(v) for v in value]
    return value


def mask_secrets(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Drop secret keys; mask anything that looks like a PAN to first 6 / last 4.

    Any run of 13–19 digits is treated as a PAN: losing such a number from a log is cheaper
    than leaking a card number. RRNs (12 digits) stay readable. The key `pan` is masked
    whatever its length.
    """
    if not SECRET_KEYS.isdisjoint(event):
        for key in SECRET_KEYS.intersection(event):
            del event[key]
    for key, value in event.items():  # values replaced in place: the dict's size does not change
        kind = type(value)
        if kind is str:
            if key == "pan":
                event[key] = mask_pan(value)
            elif len(value) >= _PAN_LEN_MIN:
                event[key] = _mask_text(value)
        elif not (kind is int or value is None or kind is bool or kind is float):
            event[key] = mask_value(value)
    return event
