"""The certification run as data: the test-card matrix and the case list (config/cert/*.toml).

Pure module: it reads two TOML files and checks them once, at load, so that the switch
(provisioning, journal, report) and the reference terminal (terminal_sim/cert_driver.py)
work from the same frozen description. docs/certification.md is generated from it.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from switch.configdir import config_dir
from switch.domain import luhn_ok, mask_pan

MATRIX_FILE = "matrix.toml"
CASES_FILE = "cases.toml"
PIN_CHOICES = ("right", "wrong")
PROFILES = ("none", "mac", "dukpt-tdes", "dukpt-aes")
SECURED_PROFILES = ("mac", "dukpt-tdes", "dukpt-aes")
# Rules a case may name (docs/certification.md, "Rules and reasons"): each is a check in
# switch/cert/report.py and a behaviour of the reference terminal.
RULES = ("quotes-purchase", "reversal-after-timeout", "repeat", "bad-mac", "incremental", "completion",
         "reverses-purchase", "duplicate", "after-sign-off")
RULES_WITH_OF = {"quotes-purchase", "incremental", "completion", "duplicate"}  # they quote another case


class CertConfigError(ValueError):
    """config/cert/*.toml is inconsistent: one line naming the file, case or card at fault."""


@dataclass(frozen=True, slots=True)
class CertMerchant:
    mid: str
    name: str
    district: str
    annual_sales: int
    category: str


@dataclass(frozen=True, slots=True)
class CertCard:
    """One card of the matrix and the state that makes it produce its code."""

    name: str
    pan: str
    program: str
    expiry: str
    produces: str
    charge_to: int = 0          # charged up to this (cash + cashback) at every start
    status: str = "active"      # or "blocked"
    issued: bool = True         # False: a PAN never issued (14)
    pin: str | None = None      # the test PIN (only its PVV is stored)
    spent_today: int = 0        # made real by a purchase of the switch's own at every start

    @property
    def masked(self) -> str:
        """How the journal shows this card (first 6, last 4): how the report recognises it."""
        return mask_pan(self.pan)


@dataclass(frozen=True, slots=True)
class Timeout:
    card: str
    hold_ms: int
    response_timeout_ms: int
    tolerance_ms: int


@dataclass(frozen=True, slots=True)
class Case:
    id: str
    title: str
    do: str
    mti: str
    expect: str
    fields: tuple[str, ...]
    processing_code: str = ""
    network_code: str = ""
    card: str = ""
    amount: int | None = None
    pin: str | None = None
    entry_mode: str = "051"
    rrn: str = ""
    omit: tuple[str, ...] = ()
    sends: int = 1
    of: str = ""
    rules: tuple[str, ...] = ()
    profiles: tuple[str, ...] = PROFILES

    def applies_to(self, profile: str) -> bool:
        return profile in self.profiles

    @property
    def match_key(self) -> tuple[str, str, str, str, int | None]:
        """What identifies the case's message in the journal: MTI, processing code (first two
        digits) or DE70, card, amount."""
        return (self.mti, self.processing_code[:2], self.network_code, self.card, self.amount)


@dataclass(frozen=True, slots=True)
class CertConfig:
    merchant: CertMerchant
    provisioning_terminal: str
    timeout: Timeout
    cards: dict[str, CertCard]
    cases: tuple[Case, ...]

    def card(self, name: str) -> CertCard:
        return self.cards[name]

    def case(self, case_id: str) -> Case:
        for case in self.cases:
            if case.id == case_id:
                return case
        raise KeyError(case_id)

    def card_by_masked(self, masked: str) -> CertCard | None:
        for card in self.cards.values():
            if card.masked == masked:
                return card
        return None


def cert_dir(directory: Path | None = None) -> Path:
    return directory if directory is not None else config_dir() / "cert"


def load_cert(directory: Path | None = None) -> CertConfig:
    """config/cert/matrix.toml and cases.toml, checked (CertConfigError names the fault)."""
    where = cert_dir(directory)
    matrix = _read(where / MATRIX_FILE)
    cases = _read(where / CASES_FILE)
    try:
        merchant = CertMerchant(**matrix["merchant"])
        cards = {c["name"]: CertCard(**c) for c in matrix["cards"]}
        timeout = Timeout(**matrix["timeout"])
        config = CertConfig(merchant=merchant, provisioning_terminal=matrix["provisioning"]["terminal"],
                            timeout=timeout, cards=cards,
                            cases=tuple(_case(c, cases.get("fields", {})) for c in cases["cases"]))
    except (KeyError, TypeError) as exc:
        raise CertConfigError(f"config/cert: missing or unknown key ({exc})") from None
    _check(config)
    return config


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CertConfigError(f"{path.name}: {exc}") from None


def _case(raw: dict[str, Any], sets: dict[str, list[str]]) -> Case:
    fields: list[str] = []
    for name in raw.pop("fields"):
        if name.startswith("@"):
            if name[1:] not in sets:
                raise CertConfigError(f"case {raw.get('id')}: no field set {name}")
            fields.extend(sets[name[1:]])
        else:
            fields.append(name)
    for key in ("omit", "rules", "profiles"):
        if key in raw:
            raw[key] = tuple(raw[key])
    return Case(fields=tuple(dict.fromkeys(fields)), **raw)


def _check(config: CertConfig) -> None:
    """The relationships a run depends on, asserted once at load."""
    def fail(what: str) -> None:
        raise CertConfigError(f"config/cert: {what}")

    if len(config.provisioning_terminal) != 8:
        fail("provisioning.terminal must be 8 characters (DE41)")
    if config.timeout.card not in config.cards:
        fail(f"timeout.card {config.timeout.card!r} is not a card of the matrix")
    if config.timeout.hold_ms <= config.timeout.response_timeout_ms + config.timeout.tolerance_ms:
        fail("timeout.hold_ms must exceed the terminal's response timeout (and the tolerance)")
    masked = [card.masked for card in config.cards.values()]
    if len(set(masked)) != len(masked):
        fail("two cards look the same masked (first 6, last 4): the report could not tell them apart")
    for card in config.cards.values():
        if not luhn_ok(card.pan):
            fail(f"card {card.name}: the PAN's last digit is not its Luhn digit")
        if card.status not in ("active", "blocked"):
            fail(f"card {card.name}: status must be active or blocked")
    ids = [case.id for case in config.cases]
    if len(set(ids)) != len(ids):
        fail("two cases share an id")
    keys = [case.match_key for case in config.cases]
    if len(set(keys)) != len(keys):
        fail("two cases send the same message (MTI, processing code, card, amount): the report could not tell them apart")
    for case in config.cases:
        if case.card and case.card not in config.cards:
            fail(f"case {case.id}: no card {case.card!r}")
        if case.pin is not None and (case.pin not in PIN_CHOICES or config.cards[case.card].pin is None):
            fail(f"case {case.id}: pin must be right or wrong, with a card that has a PIN")
        unknown = set(case.rules) - set(RULES)
        if unknown:
            fail(f"case {case.id}: unknown rules {sorted(unknown)}")
        if bool(set(case.rules) & RULES_WITH_OF) != bool(case.of):
            fail(f"case {case.id}: `of` goes with a rule that quotes another case")
        if case.of and (case.of not in ids or ids.index(case.of) > ids.index(case.id)):
            fail(f"case {case.id}: quotes {case.of}, which comes after it")
        if set(case.profiles) - set(PROFILES):
            fail(f"case {case.id}: profiles must be among {', '.join(PROFILES)}")
        if "reversal-after-timeout" in case.rules and case.card != config.timeout.card:
            fail(f"case {case.id}: a reversal after timeout needs the timeout card")
