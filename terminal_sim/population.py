"""The population a fleet plays: terminals (with their security) and cards, from the JSON
file `eum admin seed --export FILE` writes. Pure: parsing and checks only.

    {"dialect": "default",
     "terminals": [{"tid": "T0000001", "mid": "EUM000000000001", "security": "dukpt-tdes",
                    "keys": "test", "ksn": "FFFF9876540000200000"}, ...],
     "cards": [{"pan": "9410...", "expiry": "3111", "pin": "1234"}, ...]}

Errors name the entry and key (`terminals[3].ksn`), never a PAN or PIN.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .security import DUKPT_PROFILES, KSN_HEX_SIZE, PROFILES, SecurityConfig, SecurityError

KEY_SETS_SIMULATED = ("test",)  # the fleet derives keys itself: only the published test keys


class PopulationError(ValueError):
    """The population file is missing or has a bad entry; `key` names it."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"population: {key}: {reason}" if key else f"population: {reason}")
        self.key = key


@dataclass(frozen=True)
class PopulationTerminal:
    tid: str
    mid: str
    security: str = "none"
    keys: str = "test"
    ksn: str | None = None  # DUKPT: the initial KSN (counter 0)

    @property
    def pin_capable(self) -> bool:
        return self.security in DUKPT_PROFILES


@dataclass(frozen=True, repr=False)
class PopulationCard:
    pan: str
    expiry: str | None = None
    pin: str | None = None

    def __repr__(self) -> str:  # never print a PAN or PIN whole
        return f"PopulationCard(pan={self.pan[:6]}…{self.pan[-4:]}, pin={'set' if self.pin else None})"


@dataclass(frozen=True)
class Population:
    terminals: tuple[PopulationTerminal, ...]
    cards: tuple[PopulationCard, ...]
    dialect: str = "default"

    @classmethod
    def from_dict(cls, data: Any) -> Population:
        if not isinstance(data, dict):
            raise PopulationError("", "must be a JSON object")
        dialect = data.get("dialect", "default")
        if not isinstance(dialect, str) or not dialect:
            raise PopulationError("dialect", "must be a dialect name")
        terminals = tuple(_terminal(i, t) for i, t in enumerate(_list(data, "terminals")))
        cards = tuple(_card(i, c) for i, c in enumerate(_list(data, "cards")))
        seen: set[str] = set()
        for i, t in enumerate(terminals):
            if t.tid in seen:
                raise PopulationError(f"terminals[{i}].tid", "appears twice")
            seen.add(t.tid)
        return cls(terminals=terminals, cards=cards, dialect=dialect)


def load_population(path: str | Path) -> Population:
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PopulationError("", f"no such file {p}") from None
    except json.JSONDecodeError as exc:
        raise PopulationError("", f"{p} is not JSON (line {exc.lineno})") from None
    return Population.from_dict(data)


def _list(data: dict[str, Any], key: str) -> list[Any]:
    value = data.get(key)
    if not isinstance(value, list) or not value:
        raise PopulationError(key, "must be a non-empty list")
    return value


def _terminal(i: int, raw: Any) -> PopulationTerminal:
    where = f"terminals[{i}]"
    if not isinstance(raw, dict):
        raise PopulationError(where, "must be an object")
    tid, mid = raw.get("tid"), raw.get("mid")
    if not isinstance(tid, str) or len(tid) != 8:
        raise PopulationError(f"{where}.tid", "must be 8 characters (DE41)")
    if not isinstance(mid, str) or not 0 < len(mid) <= 15:
        raise PopulationError(f"{where}.mid", "must be 1-15 characters (DE42)")
    security = raw.get("security", "none")
    if security not in PROFILES:
        raise PopulationError(f"{where}.security", f"must be one of {', '.join(PROFILES)}")
    keys = raw.get("keys", "test")
    if security != "none" and keys not in KEY_SETS_SIMULATED:
        raise PopulationError(f"{where}.keys", "the fleet simulates only the test key set ('test')")
    ksn = raw.get("ksn")
    if security in DUKPT_PROFILES:
        size = KSN_HEX_SIZE[security]
        if not isinstance(ksn, str) or len(ksn) != size or not _is_hex(ksn):
            raise PopulationError(f"{where}.ksn", f"must be the initial KSN, {size} hex digits, for {security}")
        try:
            SecurityConfig(profile=security, initial_ksn=ksn)
        except SecurityError as exc:
            raise PopulationError(f"{where}.ksn", str(exc)) from None
    else:
        ksn = None
    return PopulationTerminal(tid=tid, mid=mid, security=security, keys=keys, ksn=ksn)


def _card(i: int, raw: Any) -> PopulationCard:
    where = f"cards[{i}]"
    if not isinstance(raw, dict):
        raise PopulationError(where, "must be an object")
    pan = raw.get("pan")
    if not isinstance(pan, str) or not pan.isdigit() or not 12 <= len(pan) <= 19:
        raise PopulationError(f"{where}.pan", "must be 12-19 digits")
    expiry = raw.get("expiry")
    if expiry is not None and (not isinstance(expiry, str) or len(expiry) != 4 or not expiry.isdigit()):
        raise PopulationError(f"{where}.expiry", "must be YYMM")
    pin = raw.get("pin")
    if pin is not None and (not isinstance(pin, str) or not pin.isdigit() or not 4 <= len(pin) <= 12):
        raise PopulationError(f"{where}.pin", "must be 4-12 digits or null")
    return PopulationCard(pan=pan, expiry=expiry, pin=pin)


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True
